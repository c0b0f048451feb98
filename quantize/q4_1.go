package quantize

import "github.com/tunellm/tune/kernels/qblock"

// Q4_1 (ggml block_q4_1, GGML_TYPE_Q4_1 = 3): blocks of 32 elements,
//
//	[0:2)   d   fp16 scale
//	[2:4)   m   fp16 min
//	[4:20)  qs  nibbles: low = element j, high = element j+16; x ≈ d*q + m
const (
	BlockQ4_1Elems = 32
	BlockQ4_1Bytes = 2 + 2 + 16
)

// QuantizeRowQ4_1 quantizes one row: quantize_row_q4_1_ref (d =
// (max-min)/15, q = trunc((x-min)/d+0.5) capped at 15) without an importance
// matrix, quantize_row_q4_1_impl (make_qkx3_quants) with one.
func QuantizeRowQ4_1(dst []byte, src []float32, imatrix []float32) {
	if imatrix != nil {
		quantizeImplMin(dst, src, imatrix, 15, BlockQ4_1Bytes, func(y []byte, L []uint8) {
			for j := 0; j < 16; j++ {
				y[4+j] = L[j] | L[j+16]<<4
			}
		})
		return
	}
	for i := 0; i < len(src)/32; i++ {
		x := src[i*32 : i*32+32]
		y := dst[i*BlockQ4_1Bytes : (i+1)*BlockQ4_1Bytes]
		minv, maxv := minMax(x)
		d := (maxv - minv) / 15
		var id float32
		if d != 0 {
			id = 1 / d
		}
		putF16(y, d)
		putF16(y[2:], minv)
		for j := 0; j < 16; j++ {
			x0 := float32((x[j] - minv) * id)
			x1 := float32((x[j+16] - minv) * id)
			xi0 := min(15, int(int8(cvtt32(x0+0.5))))
			xi1 := min(15, int(int8(cvtt32(x1+0.5))))
			y[4+j] = byte(xi0) | byte(xi1)<<4
		}
	}
}

// DequantizeRowQ4_1 is dequantize_row_q4_1.
func DequantizeRowQ4_1(dst []float32, src []byte) { qblock.DequantizeQ4_1(dst, src) }

// minMax starts from ±FLT_MAX as the _ref quantizers do.
func minMax(x []float32) (minv, maxv float32) {
	minv, maxv = 3.40282346638528859811704183484516925440e+38, -3.40282346638528859811704183484516925440e+38
	for _, v := range x {
		if v < minv {
			minv = v
		}
		if v > maxv {
			maxv = v
		}
	}
	return minv, maxv
}

// quantizeImplMin is the shared body of quantize_row_q4_1_impl and
// quantize_row_q5_1_impl: per block, make_qkx3_quants(32, nmax) weighted by
// the importance matrix, d and m = -min stored as fp16, then pack(L).
func quantizeImplMin(dst []byte, src, imatrix []float32, nmax, blockBytes int, pack func(y []byte, L []uint8)) {
	sigma2 := rowSigma2(src)
	var weight [32]float32
	var L, Laux [32]uint8
	for ib := 0; ib < len(src)/32; ib++ {
		xb := src[ib*32 : ib*32+32]
		importanceWeights(weight[:], imatrix[ib*32:ib*32+32], xb, sigma2)
		var m float32
		d := makeQkx3Quants(32, nmax, xb, weight[:], L[:], &m, Laux[:], -0.9, 0.05, 36, false)
		y := dst[ib*blockBytes : (ib+1)*blockBytes]
		putF16(y, d)
		putF16(y[2:], -m)
		pack(y, L[:])
	}
}
