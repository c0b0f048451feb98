package cpu

import "github.com/tunellm/tune/kernels"

// din = dout·W through a block-quantized weight (a frozen QLoRA base, or a
// GGUF model being differentiated): gemm's B is W itself, B[k,n] = W[k,n]
// with k over the output features and n over the input features, so a
// packed [kc, nv] block needs columns n0..n0+nv of kc weight rows. Each row's
// run of blocks covering those columns is dequantized with the same
// dequantizer the forward uses and copied into the panels. Every din element
// is then the same fma chain as the fp32 gemm over the dequantized matrix:
// din equals "dequantize W, then MatMulBackward in F32" bit for bit.
//
// A column tile (gemmNC = 128, or 2*gemmNR = 64 when gemm splits a short
// tile) need not start on a block boundary of the 256-element K-quants, so
// a block straddling two tiles is dequantized once per tile (at most 2x, 4x
// on the 64-column split, the dequantization work of a forward).

// packQuant is gemmB.pack for bWeight on a quantized weight.
func packQuant(wk *worker, w kernels.Weight, dst []float32, k0, kc, n0, nv int) {
	const nr = gemmNR
	pb := kc * nr
	f := w.DType.Format()
	deq := dequantizer(w.DType)
	rb := w.RowBytes()
	e := f.BlockElems
	b0 := n0 / e
	b1 := (n0 + nv + e - 1) / e
	skip := n0 - b0*e
	run := grow(&wk.row, (b1-b0)*e)
	for k := 0; k < kc; k++ {
		o := (k0+k)*rb + b0*f.BlockBytes
		deq(run, w.Data[o:o+(b1-b0)*f.BlockBytes])
		src := run[skip : skip+nv]
		for p := 0; p*nr < nv; p++ {
			cols := min(nr, nv-p*nr)
			copy(dst[p*pb+k*nr:p*pb+k*nr+cols], src[p*nr:p*nr+cols])
		}
	}
}
