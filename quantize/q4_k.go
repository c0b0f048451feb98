package quantize

import "github.com/tunellm/tune/kernels/qblock"

// Q4_K (ggml block_q4_K, GGML_TYPE_Q4_K = 12): super-blocks of 256 elements
// in 8 groups of 32,
//
//	[0:2)     d       fp16 super-scale of the group scales
//	[2:4)     dmin    fp16 super-scale of the group mins
//	[4:16)    scales  8 6-bit scales and 8 6-bit mins (getScaleMinK4)
//	[16:144)  qs      nibbles: byte 32*c+l holds element 64*c+l (low) and
//	                  64*c+32+l (high); x ≈ d*sc*q - dmin*m
const (
	BlockQ4_KElems = qkK
	BlockQ4_KBytes = 2 + 2 + 12 + qkK/2
)

// QuantizeRowQ4_K quantizes one row. Without an importance matrix it is
// quantize_row_q4_K_ref (make_qkx2_quants per group, weights av_x+|x|);
// with one it is quantize_row_q4_K_impl (make_qkx3_quants, weights
// imatrix*sqrt(sigma2+x^2), group scales and mins by make_qp_quants), as
// llama-quantize's quantize_q4_K chooses.
func QuantizeRowQ4_K(dst []byte, src []float32, imatrix []float32) {
	quantizeKMin(dst, src, imatrix, 15, BlockQ4_KBytes, func(y []byte, L []uint8) {
		q := y[16:]
		for j := 0; j < qkK; j += 64 {
			for l := 0; l < 32; l++ {
				q[l] = L[j+l] | L[j+l+32]<<4
			}
			q = q[32:]
		}
	})
}

// DequantizeRowQ4_K is dequantize_row_q4_K.
func DequantizeRowQ4_K(dst []float32, src []byte) { qblock.DequantizeQ4_K(dst, src) }

// quantizeKMin is the shared body of the Q4_K and Q5_K quantizers (nmax 15
// or 31): it fills dst's d, dmin and scales and hands the levels L (one per
// element, in [0, nmax]) to pack.
func quantizeKMin(dst []byte, src, imatrix []float32, nmax, blockBytes int, pack func(y []byte, L []uint8)) {
	var L [qkK]uint8
	var Laux [32]uint8
	var weights [32]float32
	var mins, scales, sw [8]float32
	var Ls, Lm [8]uint8
	for i := 0; i < len(src)/qkK; i++ {
		x := src[i*qkK : (i+1)*qkK]
		y := dst[i*blockBytes : (i+1)*blockBytes]
		clear(y[4:16])
		if imatrix == nil {
			// quantize_row_q{4,5}_K_ref
			var maxScale, maxMin float32
			for j := 0; j < 8; j++ {
				xj := x[32*j : 32*j+32]
				var sumX2 float32
				for _, v := range xj {
					sumX2 += float32(v * v)
				}
				avX := sqrtf(sumX2 / 32)
				for l, v := range xj {
					weights[l] = avX + fabsf(v)
				}
				if nmax == 15 {
					scales[j] = makeQkx2Quants(32, nmax, xj, weights[:], L[32*j:], &mins[j], Laux[:], -1, 0.1, 20, false)
				} else {
					scales[j] = makeQkx2Quants(32, nmax, xj, weights[:], L[32*j:], &mins[j], Laux[:], -0.5, 0.1, 15, false)
				}
				if scales[j] > maxScale {
					maxScale = scales[j]
				}
				if mins[j] > maxMin {
					maxMin = mins[j]
				}
			}
			var invScale, invMin float32
			if maxScale > 0 {
				invScale = 63 / maxScale
			}
			if maxMin > 0 {
				invMin = 63 / maxMin
			}
			for j := 0; j < 8; j++ {
				Ls[j] = min(63, uint8(nearestInt(float32(invScale*scales[j]))))
				Lm[j] = min(63, uint8(nearestInt(float32(invMin*mins[j]))))
			}
			putScaleMinK4(y[4:16], Ls[:], Lm[:])
			putF16(y, maxScale/63)
			putF16(y[2:], maxMin/63)
		} else {
			// quantize_row_q{4,5}_K_impl
			qw := imatrix[i*qkK : (i+1)*qkK]
			var sumX2 float32
			for _, v := range x {
				sumX2 += float32(v * v)
			}
			sigma2 := 2 * sumX2 / qkK
			for j := 0; j < 8; j++ {
				xj := x[32*j : 32*j+32]
				importanceWeights(weights[:], qw[32*j:32*j+32], xj, sigma2)
				var sumw float32
				for _, w := range weights {
					sumw += w
				}
				sw[j] = sumw
				scales[j] = makeQkx3Quants(32, nmax, xj, weights[:], L[32*j:], &mins[j], Laux[:], -0.9, 0.05, 36, false)
			}
			dBlock := makeQpQuants(8, 63, scales[:], Ls[:], sw[:])
			mBlock := makeQpQuants(8, 63, mins[:], Lm[:], sw[:])
			if nmax == 31 {
				// Only quantize_row_q5_K_impl caps here; a level that
				// make_qp_quants wrapped past 63 stays uncapped in Q4_K.
				for j := 0; j < 8; j++ {
					Ls[j], Lm[j] = min(63, Ls[j]), min(63, Lm[j])
				}
			}
			putScaleMinK4(y[4:16], Ls[:], Lm[:])
			putF16(y, dBlock)
			putF16(y[2:], mBlock)
		}
		d, dmin := getF16(y), getF16(y[2:])
		for j := 0; j < 8; j++ {
			sc, m := getScaleMinK4(j, y[4:16])
			dj := d * float32(sc)
			if dj == 0 {
				continue
			}
			dm := dmin * float32(m)
			for ii := 0; ii < 32; ii++ {
				l := nearestInt((x[32*j+ii] + dm) / dj)
				L[32*j+ii] = uint8(clampInt(l, 0, nmax))
			}
		}
		pack(y, L[:])
	}
}
