package quantize

import "github.com/tunellm/tune/kernels/qblock"

// Q5_K (ggml block_q5_K, GGML_TYPE_Q5_K = 13): super-blocks of 256 elements
// in 8 groups of 32,
//
//	[0:2)     d       fp16 super-scale of the group scales
//	[2:4)     dmin    fp16 super-scale of the group mins
//	[4:16)    scales  8 6-bit scales and 8 6-bit mins (getScaleMinK4)
//	[16:48)   qh      bit 2c of qh[l] is the fifth bit of element 64c+l,
//	                  bit 2c+1 that of element 64c+32+l
//	[48:176)  qs      low nibbles, laid out as Q4_K's; x ≈ d*sc*q - dmin*m
const (
	BlockQ5_KElems = qkK
	BlockQ5_KBytes = 2 + 2 + 12 + qkK/8 + qkK/2
)

// QuantizeRowQ5_K quantizes one row: quantize_row_q5_K_ref
// (make_qkx2_quants, nmax 31) without an importance matrix,
// quantize_row_q5_K_impl with one.
func QuantizeRowQ5_K(dst []byte, src []float32, imatrix []float32) {
	quantizeKMin(dst, src, imatrix, 31, BlockQ5_KBytes, func(y []byte, L []uint8) {
		qh, ql := y[16:48], y[48:]
		clear(qh)
		m1, m2 := uint8(1), uint8(2)
		for n := 0; n < qkK; n += 64 {
			for j := 0; j < 32; j++ {
				l1, l2 := L[n+j], L[n+j+32]
				if l1 > 15 {
					l1 -= 16
					qh[j] |= m1
				}
				if l2 > 15 {
					l2 -= 16
					qh[j] |= m2
				}
				ql[j] = l1 | l2<<4
			}
			m1 <<= 2
			m2 <<= 2
			ql = ql[32:]
		}
	})
}

// DequantizeRowQ5_K is dequantize_row_q5_K.
func DequantizeRowQ5_K(dst []float32, src []byte) { qblock.DequantizeQ5_K(dst, src) }
