package quantize

import "github.com/tunellm/tune/kernels/qblock"

// Q8_0 (ggml block_q8_0, GGML_TYPE_Q8_0 = 8): blocks of 32 elements,
//
//	[0:2)   d   fp16 scale
//	[2:34)  qs  int8 quants, x ≈ d*qs[j]
const (
	BlockQ8_0Elems = 32
	BlockQ8_0Bytes = 2 + 32
)

// QuantizeRowQ8_0 is quantize_row_q8_0_ref: d = amax/127, qs = round(x/d).
// It takes no importance matrix (llama.cpp ignores one for Q8_0).
// len(src) must be a multiple of 32 and len(dst) = len(src)/32*34.
func QuantizeRowQ8_0(dst []byte, src []float32, _ []float32) {
	for i := 0; i < len(src)/BlockQ8_0Elems; i++ {
		x := src[i*BlockQ8_0Elems : (i+1)*BlockQ8_0Elems]
		y := dst[i*BlockQ8_0Bytes : (i+1)*BlockQ8_0Bytes]
		var amax float32
		for _, v := range x {
			amax = cmax(amax, fabsf(v))
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		putF16(y, d)
		for j, v := range x {
			y[2+j] = byte(cvtt32(roundf(float32(v * id))))
		}
	}
}

// DequantizeRowQ8_0 is dequantize_row_q8_0: x = qs*d.
func DequantizeRowQ8_0(dst []float32, src []byte) { qblock.DequantizeQ8_0(dst, src) }
