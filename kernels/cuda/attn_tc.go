package cuda

import (
	"math"
	"os"
)

// Tensor-core attention (kernels.cu's "tensor-core attention" section): the
// same causal GQA attention with packed documents and sliding windows as
// attention_fwd / attention_bwd_q / attention_bwd_kv, FA2-style, with bf16
// wmma tiles and fp32 accumulation. The device pass uses it in the bf16 GEMM
// mode (tcAttention), where the GEMMs already round their inputs to bf16; the
// fp32 mode keeps the warp kernels, which match the CPU backend closely.

// tcKernels are the entry points of the tensor-core attention.
var tcKernels = []string{"attention_fwd_tc", "attention_bwd_tc_pre", "attention_bwd_tc_dq", "attention_bwd_tc_dkv"}

func init() { kernelNames = append(kernelNames, tcKernels...) }

const (
	tcRows    = 64  // rows a block owns (TC_BM)
	tcThreads = 128 // TC_WARPS warps
	tcMaxHD   = 128 // the kernels' largest HD bucket
)

// tcAttention reports whether attention at head dim HD runs on the
// tensor-core kernels: HD a multiple of 16 up to 128, in the bf16 GEMM mode.
// TUNE_CUDA_ATTN=tc or =warp overrides the mode's choice (tc still needs the
// HD the kernels support).
func tcAttention(HD int, bf16 bool) bool {
	if HD%16 != 0 || HD <= 0 || HD > tcMaxHD {
		return false
	}
	switch os.Getenv("TUNE_CUDA_ATTN") {
	case "tc":
		return true
	case "warp":
		return false
	}
	return bf16
}

// attnFwdTC computes out [T,NH,HD] and, when lse != 0, lse [T,NH] (the rows'
// log-sum-exp of scaled scores, which attnBwdTC needs). segStart 0: one
// document.
func (b *Backend) attnFwdTC(out, lse, q, k, v, segStart uint64, T, NH, KVH, HD, window int) {
	scale := float32(1 / math.Sqrt(float64(HD)))
	b.launch("attention_fwd_tc", blocks(T, tcRows)*NH, tcThreads, out, lse, q, k, v, segStart, T, NH, KVH, HD, window, scale)
}

// attnBwdTC computes dq [T,NH,HD], dk and dv [T,KVH,HD] (overwritten) from
// dout and the forward's out and lse; dsum [T,NH] is scratch (FA2's D).
func (b *Backend) attnBwdTC(dq, dk, dv, lse, dsum, dout, out, q, k, v, segStart uint64, T, NH, KVH, HD, window int) {
	scale := float32(1 / math.Sqrt(float64(HD)))
	b.launch("attention_bwd_tc_pre", blocks(T*NH, tcThreads/32), tcThreads, dsum, dout, out, T*NH, HD)
	b.launch("attention_bwd_tc_dq", blocks(T, tcRows)*NH, tcThreads, dq, lse, dsum, dout, q, k, v, segStart, T, NH, KVH, HD, window, scale)
	b.launch("attention_bwd_tc_dkv", blocks(T, tcRows)*KVH, tcThreads, dk, dv, lse, dsum, dout, q, k, v, segStart, T, NH, KVH, HD, window,
		scale)
}
