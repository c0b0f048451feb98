package quantize

import "github.com/tunellm/tune/kernels/qblock"

// Q5_1 (ggml block_q5_1, GGML_TYPE_Q5_1 = 7): blocks of 32 elements,
//
//	[0:2)   d   fp16 scale
//	[2:4)   m   fp16 min
//	[4:8)   qh  uint32 LE: bit j is the fifth bit of element j
//	[8:24)  qs  nibbles: low = element j, high = element j+16; x ≈ d*q + m
const (
	BlockQ5_1Elems = 32
	BlockQ5_1Bytes = 2 + 2 + 4 + 16
)

// QuantizeRowQ5_1 quantizes one row: quantize_row_q5_1_ref (d =
// (max-min)/31, q = uint8(trunc((x-min)/d+0.5)), uncapped: a level of 32
// wraps to 0 exactly as in llama.cpp) without an importance matrix,
// quantize_row_q5_1_impl (make_qkx3_quants, nmax 31) with one.
func QuantizeRowQ5_1(dst []byte, src []float32, imatrix []float32) {
	if imatrix != nil {
		quantizeImplMin(dst, src, imatrix, 31, BlockQ5_1Bytes, func(y []byte, L []uint8) {
			packQ5(y[4:], func(j int) uint8 { return L[j] })
		})
		return
	}
	for i := 0; i < len(src)/32; i++ {
		x := src[i*32 : i*32+32]
		y := dst[i*BlockQ5_1Bytes : (i+1)*BlockQ5_1Bytes]
		minv, maxv := minMax(x)
		d := (maxv - minv) / 31
		var id float32
		if d != 0 {
			id = 1 / d
		}
		putF16(y, d)
		putF16(y[2:], minv)
		packQ5(y[4:], func(j int) uint8 {
			return uint8(cvtt32(float32((x[j]-minv)*id) + 0.5))
		})
	}
}

// DequantizeRowQ5_1 is dequantize_row_q5_1.
func DequantizeRowQ5_1(dst []float32, src []byte) { qblock.DequantizeQ5_1(dst, src) }
