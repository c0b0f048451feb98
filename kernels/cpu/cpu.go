// Package cpu is the reference backend of kernels: Go, fp32 compute over
// F32/F16/BF16 weights, parallel over all cores through a persistent worker pool.
// The matmul and attention inner loops have AVX2/FMA assembly on amd64
// (dot_amd64.s, chosen at run time by CPUID); -tags noasm builds the pure-Go
// kernels of dot.go instead, which CI also tests.
//
// It is the oracle other backends are checked against, so each output element
// is computed by exactly one goroutine with a fixed loop order: results do not
// depend on the number of workers, nor on how many rows a call carries (every
// dot product is computed with the same per-output arithmetic whichever
// micro-kernel runs it, so a KV-cache step equals a full pass bit for bit). Kernels do not allocate in steady state: per-worker scratch grows
// on first use and is reused.
//
// Importing the package registers the backend as "cpu".
package cpu

import (
	"runtime"
	"sync"

	"github.com/tunellm/tune/kernels"
)

func init() {
	kernels.Register("cpu", func() (kernels.Backend, error) { return New(0), nil })
}

// Backend is the CPU implementation of kernels.Backend. Calls are serialized
// by a mutex (each op already uses every worker), so it is safe to share.
type Backend struct {
	mu   sync.Mutex
	pool *pool

	// One task value per op, reused so that dispatching does not allocate.
	emb  embeddingTask
	mm   matmulTask
	norm rmsnormTask
	rope ropeTask
	att  attentionTask
	ew   elementwiseTask
	sm   softmaxTask
	nll  nllTask
}

var _ kernels.Backend = (*Backend)(nil)

// New returns a backend with the given number of workers (<= 0: GOMAXPROCS).
// The workers live as long as the process.
func New(workers int) *Backend {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	return &Backend{pool: newPool(workers)}
}

func (b *Backend) Name() string { return "cpu" }

// Workers is the size of the worker pool.
func (b *Backend) Workers() int { return len(b.pool.workers) }

func (b *Backend) Supports() map[kernels.Op]bool {
	return map[kernels.Op]bool{
		kernels.OpEmbedding:     true,
		kernels.OpMatMul:        true,
		kernels.OpRMSNorm:       true,
		kernels.OpRoPE:          true,
		kernels.OpAttention:     true,
		kernels.OpSwiGLU:        true,
		kernels.OpSoftmax:       true,
		kernels.OpAdd:           true,
		kernels.OpLogSoftmaxNLL: true,
	}
}
