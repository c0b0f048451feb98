package quantize

import "github.com/tunellm/tune/kernels/qblock"

// Q2_K (ggml block_q2_K, GGML_TYPE_Q2_K = 10): super-blocks of 256 elements
// in 16 groups of 16,
//
//	[0:16)   scales  per group: low nibble scale, high nibble min
//	[16:80)  qs      2-bit levels: per half h, byte 32h+l holds elements
//	                 128h+l, +32, +64, +96 at bits 0, 2, 4, 6
//	[80:82)  d       fp16 super-scale of the scales
//	[82:84)  dmin    fp16 super-scale of the mins; x ≈ d*sc*q - dmin*m
const (
	BlockQ2_KElems = qkK
	BlockQ2_KBytes = qkK/16 + qkK/4 + 2 + 2
)

// QuantizeRowQ2_K quantizes one row: quantize_row_q2_K_ref
// (make_qkx2_quants on absolute error, weights |x|) without an importance
// matrix, quantize_row_q2_K_impl (make_qkx3_quants, make_qp_quants) with one.
func QuantizeRowQ2_K(dst []byte, src []float32, imatrix []float32) {
	var L [qkK]uint8
	var Laux [16]uint8
	var weights [16]float32
	var mins, scales, sw [16]float32
	var Ls, Lm [16]uint8
	for i := 0; i < len(src)/qkK; i++ {
		x := src[i*qkK : (i+1)*qkK]
		y := dst[i*BlockQ2_KBytes : (i+1)*BlockQ2_KBytes]
		sc := y[0:16]
		if imatrix == nil {
			var maxScale, maxMin float32
			for j := 0; j < 16; j++ {
				xj := x[16*j : 16*j+16]
				for l, v := range xj {
					weights[l] = fabsf(v)
				}
				scales[j] = makeQkx2Quants(16, 3, xj, weights[:], L[16*j:], &mins[j], Laux[:], -0.5, 0.1, 15, true)
				if scales[j] > maxScale {
					maxScale = scales[j]
				}
				if mins[j] > maxMin {
					maxMin = mins[j]
				}
			}
			if maxScale > 0 {
				iscale := 15 / maxScale
				for j := 0; j < 16; j++ {
					sc[j] = uint8(nearestInt(float32(iscale * scales[j])))
				}
				putF16(y[80:], maxScale/15)
			} else {
				clear(sc)
				putF16(y[80:], 0)
			}
			if maxMin > 0 {
				iscale := 15 / maxMin
				for j := 0; j < 16; j++ {
					sc[j] |= uint8(nearestInt(float32(iscale*mins[j])) << 4)
				}
				putF16(y[82:], maxMin/15)
			} else {
				putF16(y[82:], 0)
			}
		} else {
			qw := imatrix[i*qkK : (i+1)*qkK]
			clear(sw[:])
			var sumX2 float32
			for _, v := range x {
				sumX2 += float32(v * v)
			}
			sigma2 := sumX2 / qkK
			for j := 0; j < 16; j++ {
				xj := x[16*j : 16*j+16]
				importanceWeights(weights[:], qw[16*j:16*j+16], xj, sigma2)
				for _, w := range weights {
					sw[j] += w
				}
				scales[j] = makeQkx3Quants(16, 3, xj, weights[:], L[16*j:], &mins[j], Laux[:], -0.9, 0.05, 36, false)
			}
			dm := makeQpQuants(16, 15, scales[:], Ls[:], sw[:])
			mm := makeQpQuants(16, 15, mins[:], Lm[:], sw[:])
			putF16(y[80:], dm)
			putF16(y[82:], mm)
			for j := 0; j < 16; j++ {
				sc[j] = Ls[j] | Lm[j]<<4
			}
		}
		d, dmin := getF16(y[80:]), getF16(y[82:])
		for j := 0; j < 16; j++ {
			dj := d * float32(sc[j]&0xF)
			if dj == 0 {
				continue
			}
			m := dmin * float32(sc[j]>>4)
			for ii := 0; ii < 16; ii++ {
				L[16*j+ii] = uint8(clampInt(nearestInt((x[16*j+ii]+m)/dj), 0, 3))
			}
		}
		pack2Bit(y[16:80], L[:])
	}
}

// pack2Bit stores 256 2-bit levels as Q2_K's and Q3_K's qs.
func pack2Bit(qs []byte, L []uint8) {
	for j := 0; j < qkK; j += 128 {
		for l := 0; l < 32; l++ {
			qs[j/4+l] = L[j+l] | L[j+l+32]<<2 | L[j+l+64]<<4 | L[j+l+96]<<6
		}
	}
}

// DequantizeRowQ2_K is dequantize_row_q2_K.
func DequantizeRowQ2_K(dst []float32, src []byte) { qblock.DequantizeQ2_K(dst, src) }
