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
// Backward ops follow llm.c's convention: weight grads and the grads of inputs
// that several paths feed (a linear layer's input, the residual stream through
// RMSNorm) accumulate (+=); attention, RoPE, SwiGLU and the loss overwrite.
// Weight-grad reductions over T run in ascending t inside one goroutine per
// output element, so grads are as deterministic as the forward.
//
// Importing the package registers the backend as "cpu".
package cpu

import (
	"runtime"
	"sync"
	"sync/atomic"

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
	emb   embeddingTask
	mm    matmulTask
	qmm   qmmTask
	bf16s bf16State // the bf16-compute matmuls' scratch and tasks (gemm_bf16.go)
	norm  rmsnormTask
	rope  ropeTask
	att   attentionTask
	ew    elementwiseTask
	sm    softmaxTask
	nll   nllTask

	embB  embeddingBackTask
	mmB   matmulBackTask
	normB rmsnormBackTask
	attB  attentionBackTask
	swB   swigluBackTask
	nllB  nllBackTask

	// Backward scratch, grown on first use: per-row 1/rms (RMSNormBackward),
	// per-(row, head) log-sum-exp and dout·out (PackedAttentionBackward).
	rstd, lse, dsum []float32
	// MatMulBackward's transposed dout ([OC,T]) for dW.
	doutT []float32
	// The 8-bit activation rows of the int8 quantized matmul (qint8mm.go).
	qact q8Rows
}

var _ kernels.Backend = (*Backend)(nil)

var defaultWorkers atomic.Int32

// SetDefaultWorkers sets the worker count of backends created afterwards
// with New(0), among them the one kernels.Get("cpu") opens (tune's
// --threads); n <= 0 restores GOMAXPROCS.
func SetDefaultWorkers(n int) { defaultWorkers.Store(int32(max(n, 0))) }

// New returns a backend with the given number of workers (<= 0: the
// SetDefaultWorkers value, else GOMAXPROCS). The workers live as long as the
// process.
func New(workers int) *Backend {
	if workers <= 0 {
		workers = int(defaultWorkers.Load())
	}
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

		kernels.OpEmbeddingBack:     true,
		kernels.OpMatMulBack:        true,
		kernels.OpRMSNormBack:       true,
		kernels.OpRoPEBack:          true,
		kernels.OpAttentionBack:     true,
		kernels.OpSwiGLUBack:        true,
		kernels.OpLogSoftmaxNLLBack: true,
	}
}
