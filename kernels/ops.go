// Package kernels is the op set every compute backend implements: the list of
// ops (forward and backward, one enum), the Backend interface the model calls,
// the weight view type, and the registry backends add themselves to.
//
// It is not a tensor library: ops take flat []float32 slices with explicit
// dimensions, and it knows nothing about models, files or LoRA. Backends live
// in sub-packages (kernels/cpu) and register in init; a command picks one by a
// blank import, and the model only ever sees a Backend.
//
// Shape legend: T rows (tokens), C input width, OC output width, V vocab,
// NH query heads, KVH key/value heads, HD head dim, S cache length.
package kernels

import "fmt"

// Op names one operation of the op set. Backward ops are first-class entries,
// so a backend's coverage of training can be stated and tested like inference.
type Op int

const (
	OpEmbedding Op = iota
	OpMatMul
	OpRMSNorm
	OpRoPE
	OpAttention
	OpSwiGLU
	OpSoftmax
	OpAdd
	OpLogSoftmaxNLL

	OpEmbeddingBack
	OpMatMulBack
	OpRMSNormBack
	OpRoPEBack
	OpAttentionBack
	OpSwiGLUBack
	OpSoftmaxBack
	OpLogSoftmaxNLLBack

	OpCount // number of ops; keep last
)

var opNames = [...]string{
	OpEmbedding:     "embedding",
	OpMatMul:        "matmul",
	OpRMSNorm:       "rmsnorm",
	OpRoPE:          "rope",
	OpAttention:     "attention",
	OpSwiGLU:        "swiglu",
	OpSoftmax:       "softmax",
	OpAdd:           "add",
	OpLogSoftmaxNLL: "log_softmax_nll",

	OpEmbeddingBack:     "embedding_back",
	OpMatMulBack:        "matmul_back",
	OpRMSNormBack:       "rmsnorm_back",
	OpRoPEBack:          "rope_back",
	OpAttentionBack:     "attention_back",
	OpSwiGLUBack:        "swiglu_back",
	OpSoftmaxBack:       "softmax_back",
	OpLogSoftmaxNLLBack: "log_softmax_nll_back",
}

// The array above must list every op: a new Op without a name fails to build.
var _ = [1]struct{}{}[len(opNames)-int(OpCount)]

func (o Op) String() string {
	if o >= 0 && int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// Ops returns every op in enum order.
func Ops() []Op {
	ops := make([]Op, OpCount)
	for i := range ops {
		ops[i] = Op(i)
	}
	return ops
}
