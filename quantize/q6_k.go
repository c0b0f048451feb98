package quantize

import "github.com/tunellm/tune/kernels/qblock"

// Q6_K (ggml block_q6_K, GGML_TYPE_Q6_K = 14): super-blocks of 256 elements
// in 16 groups of 16,
//
//	[0:128)    ql      low nibbles: per half h (128 elements), ql[64h+l]
//	                   holds elements l (low) and l+64 (high), ql[64h+32+l]
//	                   elements l+32 and l+96
//	[128:192)  qh      per half, qh[32h+l] holds the top 2 bits of elements
//	                   l, l+32, l+64, l+96 at bits 0, 2, 4, 6
//	[192:208)  scales  int8 group scales
//	[208:210)  d       fp16 super-scale; x ≈ d*scale*(q-32)
const (
	BlockQ6_KElems = qkK
	BlockQ6_KBytes = qkK/2 + qkK/4 + qkK/16 + 2
)

// QuantizeRowQ6_K quantizes one row: quantize_row_q6_K_ref (make_qx_quants,
// nmax 32, weights x^2) without an importance matrix, quantize_row_q6_K_impl
// (weights = the raw imatrix values) with one.
func QuantizeRowQ6_K(dst []byte, src []float32, imatrix []float32) {
	var L [qkK]int8
	var scales [16]float32
	for i := 0; i < len(src)/qkK; i++ {
		x := src[i*qkK : (i+1)*qkK]
		y := dst[i*BlockQ6_KBytes : (i+1)*BlockQ6_KBytes]
		var maxScale, maxAbsScale float32
		for ib := 0; ib < 16; ib++ {
			var qw []float32
			if imatrix != nil {
				qw = imatrix[i*qkK+16*ib : i*qkK+16*ib+16]
			}
			scale := makeQxQuants(16, 32, x[16*ib:16*ib+16], L[16*ib:], qw)
			scales[ib] = scale
			if abs := fabsf(scale); abs > maxAbsScale {
				maxAbsScale = abs
				maxScale = scale
			}
		}
		if maxAbsScale < groupMaxEps {
			clear(y)
			continue
		}
		iscale := -128 / maxScale
		putF16(y[208:], 1/iscale)
		for ib := 0; ib < 16; ib++ {
			y[192+ib] = byte(int8(min(127, nearestInt(float32(iscale*scales[ib])))))
		}
		d := getF16(y[208:])
		for j := 0; j < 16; j++ {
			dj := d * float32(int8(y[192+j]))
			if dj == 0 {
				continue
			}
			for ii := 0; ii < 16; ii++ {
				l := clampInt(nearestInt(x[16*j+ii]/dj), -32, 31)
				L[16*j+ii] = int8(l + 32)
			}
		}
		ql, qh := y[0:128], y[128:192]
		for j := 0; j < qkK; j += 128 {
			for l := 0; l < 32; l++ {
				q1 := uint8(L[j+l]) & 0xF
				q2 := uint8(L[j+l+32]) & 0xF
				q3 := uint8(L[j+l+64]) & 0xF
				q4 := uint8(L[j+l+96]) & 0xF
				ql[l] = q1 | q3<<4
				ql[l+32] = q2 | q4<<4
				qh[l] = uint8(L[j+l])>>4 | uint8(L[j+l+32])>>4<<2 | uint8(L[j+l+64])>>4<<4 | uint8(L[j+l+96])>>4<<6
			}
			ql = ql[64:]
			qh = qh[32:]
		}
	}
}

// DequantizeRowQ6_K is dequantize_row_q6_K.
func DequantizeRowQ6_K(dst []float32, src []byte) { qblock.DequantizeQ6_K(dst, src) }
