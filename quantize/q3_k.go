package quantize

import "github.com/tunellm/tune/kernels/qblock"

// Q3_K (ggml block_q3_K, GGML_TYPE_Q3_K = 11): super-blocks of 256 elements
// in 16 groups of 16,
//
//	[0:32)     hmask   bit b of hmask[m] is the high bit of element 32b+m
//	[32:96)    qs      low 2 bits, laid out as Q2_K's
//	[96:108)   scales  16 6-bit scales (biased by 32): low nibbles in bytes
//	                   0..7 (group j and j+8), top 2 bits in bytes 8..11
//	[108:110)  d       fp16 super-scale; x ≈ d*(sc-32)*(q-4)
const (
	BlockQ3_KElems = qkK
	BlockQ3_KBytes = qkK/8 + qkK/4 + 12 + 2
)

// QuantizeRowQ3_K quantizes one row: quantize_row_q3_K_ref (make_q3_quants)
// without an importance matrix, quantize_row_q3_K_impl (make_qx_quants on
// groups and on the scales) with one.
func QuantizeRowQ3_K(dst []byte, src []float32, imatrix []float32) {
	var L [qkK]int8
	var scales, weight, sw [16]float32
	var Ls [16]int8
	for i := 0; i < len(src)/qkK; i++ {
		x := src[i*qkK : (i+1)*qkK]
		y := dst[i*BlockQ3_KBytes : (i+1)*BlockQ3_KBytes]
		sc := y[96:108]
		clear(sc)
		putScale := func(j int, l int) {
			if j < 8 {
				sc[j] = uint8(l & 0xF)
			} else {
				sc[j-8] |= uint8((l & 0xF) << 4)
			}
			l >>= 4
			sc[j%4+8] |= uint8(l << (2 * (j / 4)))
		}
		if imatrix == nil {
			var maxScale, amax float32
			for j := 0; j < 16; j++ {
				scales[j] = makeQ3Quants(16, 4, x[16*j:16*j+16], L[16*j:])
				if s := fabsf(scales[j]); s > amax {
					amax = s
					maxScale = scales[j]
				}
			}
			if maxScale != 0 {
				iscale := -32 / maxScale
				for j := 0; j < 16; j++ {
					l := int8(nearestInt(float32(iscale * scales[j])))
					putScale(j, int(int8(max(-32, min(31, int(l)))+32)))
				}
				putF16(y[108:], 1/iscale)
			} else {
				putF16(y[108:], 0)
			}
		} else {
			qw := imatrix[i*qkK : (i+1)*qkK]
			var sumX2 float32
			for _, v := range x {
				sumX2 += float32(v * v)
			}
			sigma2 := 2 * sumX2 / qkK
			for j := 0; j < 16; j++ {
				xj := x[16*j : 16*j+16]
				importanceWeights(weight[:], qw[16*j:16*j+16], xj, sigma2)
				var sumw float32
				for _, w := range weight {
					sumw += w
				}
				sw[j] = sumw
				scales[j] = makeQxQuants(16, 4, xj, L[16*j:], weight[:])
			}
			dBlock := makeQxQuants(16, 32, scales[:], Ls[:], sw[:])
			for j := 0; j < 16; j++ {
				putScale(j, int(Ls[j]))
			}
			putF16(y[108:], dBlock)
		}
		d := getF16(y[108:])
		for j := 0; j < 16; j++ {
			var s int8
			if j < 8 {
				s = int8(sc[j] & 0xF)
			} else {
				s = int8(sc[j-8] >> 4)
			}
			s = int8(int(s)|int(sc[8+j%4]>>(2*(j/4))&3)<<4) - 32
			dj := d * float32(s)
			if dj == 0 {
				continue
			}
			for ii := 0; ii < 16; ii++ {
				l := clampInt(nearestInt(x[16*j+ii]/dj), -4, 3)
				L[16*j+ii] = int8(l + 4)
			}
		}
		hmask := y[0:32]
		clear(hmask)
		m, hm := 0, uint8(1)
		for j := 0; j < qkK; j++ {
			if L[j] > 3 {
				hmask[m] |= hm
				L[j] -= 4
			}
			if m++; m == qkK/8 {
				m = 0
				hm <<= 1
			}
		}
		var Lu [qkK]uint8
		for j := range L {
			Lu[j] = uint8(L[j])
		}
		pack2Bit(y[32:96], Lu[:])
	}
}

// DequantizeRowQ3_K is dequantize_row_q3_K.
func DequantizeRowQ3_K(dst []float32, src []byte) { qblock.DequantizeQ3_K(dst, src) }
