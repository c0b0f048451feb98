package cpu

import "github.com/tunellm/tune/kernels"

// Matmuls on block-quantized weights (GGUF Q8_0 … Q6_K), in the exact mode
// (QExact, the default; qmode.go). The q8 mode, llama.cpp's 8-bit
// activations and integer dot products, is qint8mm.go.
//
// Several rows (T > 1, prompt processing, perplexity) go through the same
// packed gemm as the float weights: pack decodes the [kc, nc] block of Wᵀ
// that the micro-kernels read, dequantizing each weight row's run of blocks
// with kernels/qblock (ggml's dequantize_row) instead of widening bf16. The
// gemm's k blocks (gemmKC, 4*gemmKC) are multiples of every block size (32,
// 256), so a run never starts inside a block. Every output is therefore the
// same fma chain as the fp32 gemm over the dequantized matrix: the results
// equal "dequantize the whole matrix, then MatMulForward in F32" bit for bit,
// whatever T, the worker count or the ISA.
//
// One row (T = 1, a decoding step) is bound by streaming the weight, and
// packing a panel per step costs more than the dot products: gemvQuant
// instead dequantizes qgemvK elements of 4 rows at a time into an L1
// buffer and takes their dot products with the vector kernel of dot.go,
// adding each chunk's dot to the row's sum. That is a different summation
// order from gemm's single chain, so a T = 1 output differs from the same
// row computed in a batch in the last bits (within 1e-5 relative; the tests
// check both against a float64 dot product).

// qgemvK is the chunk of k that gemvQuant dequantizes at once: a multiple of
// every block size, 4 rows of it (16 KiB) stay in L1.
const qgemvK = 1024

// dequantRow writes elements [k0, k0+len(dst)) of row r of the quantized w
// into dst; k0 and len(dst) are multiples of the block size.
func dequantRow(dst []float32, w kernels.Weight, r, k0 int) {
	f := w.DType.Format()
	deq := dequantizer(w.DType)
	rb := w.RowBytes()
	off := r*rb + k0/f.BlockElems*f.BlockBytes
	deq(dst, w.Data[off:off+len(dst)/f.BlockElems*f.BlockBytes])
}

// packQuantT is gemmB.pack for bWeightT on a quantized weight: B[k,n] =
// W[n0+n, k0+k], written as panels of gemmNR columns. Eight rows are
// dequantized at a time and interleaved, so the panel is written in runs of
// eight consecutive floats rather than one float per cache line.
func packQuantT(wk *worker, w kernels.Weight, dst []float32, k0, kc, n0, nv int) {
	const nr = gemmNR
	pb := kc * nr
	f := w.DType.Format()
	deq := dequantizer(w.DType)
	rb := w.RowBytes()
	src := w.Data[k0/f.BlockElems*f.BlockBytes:]
	nbytes := kc / f.BlockElems * f.BlockBytes
	rows := grow(&wk.row, 8*kc)
	n := 0
	for ; n+8 <= nv; n += 8 {
		for j := 0; j < 8; j++ {
			o := (n0 + n + j) * rb
			deq(rows[j*kc:(j+1)*kc], src[o:o+nbytes])
		}
		d := dst[(n/nr)*pb+n%nr:]
		r0, r1, r2, r3 := rows[0:kc], rows[kc:2*kc], rows[2*kc:3*kc], rows[3*kc:4*kc]
		r4, r5, r6, r7 := rows[4*kc:5*kc], rows[5*kc:6*kc], rows[6*kc:7*kc], rows[7*kc:8*kc]
		for k := 0; k < kc; k++ {
			p := d[k*nr : k*nr+8 : k*nr+8]
			p[0], p[1], p[2], p[3] = r0[k], r1[k], r2[k], r3[k]
			p[4], p[5], p[6], p[7] = r4[k], r5[k], r6[k], r7[k]
		}
	}
	for ; n < nv; n++ {
		o := (n0 + n) * rb
		deq(rows[:kc], src[o:o+nbytes])
		scatterCol(dst[(n/nr)*pb+n%nr:], rows[:kc])
	}
}

// gemvQuant computes out[r] = sum_k a[k]*W[r,k] for the rows of the
// quantized w (rows [n0, n0+len(out))), as described at the top of this
// file.
func gemvQuant(wk *worker, out, a []float32, w kernels.Weight, n0 int) {
	C := w.Cols
	f := w.DType.Format()
	deq := dequantizer(w.DType)
	rb := w.RowBytes()
	kc := min(qgemvK, C)
	buf := grow(&wk.row, 4*kc)
	r := 0
	for ; r+4 <= len(out); r += 4 {
		var s0, s1, s2, s3 float32
		for k0 := 0; k0 < C; k0 += kc {
			n := min(kc, C-k0)
			b0, b1, b2, b3 := buf[0:n], buf[kc:kc+n], buf[2*kc:2*kc+n], buf[3*kc:3*kc+n]
			off := k0 / f.BlockElems * f.BlockBytes
			nb := n / f.BlockElems * f.BlockBytes
			for j, b := range [4][]float32{b0, b1, b2, b3} {
				o := (n0+r+j)*rb + off
				deq(b, w.Data[o:o+nb])
			}
			d0, d1, d2, d3 := mmDot1x4(a[k0:k0+n], b0, b1, b2, b3)
			s0 += d0
			s1 += d1
			s2 += d2
			s3 += d3
		}
		out[r], out[r+1], out[r+2], out[r+3] = s0, s1, s2, s3
	}
	for ; r < len(out); r++ {
		var s float32
		for k0 := 0; k0 < C; k0 += kc {
			n := min(kc, C-k0)
			b := buf[:n]
			o := (n0+r)*rb + k0/f.BlockElems*f.BlockBytes
			deq(b, w.Data[o:o+n/f.BlockElems*f.BlockBytes])
			s += mmDot1(a[k0:k0+n], b)
		}
		out[r] = s
	}
}
