package quantize

import "github.com/tunellm/tune/kernels/qblock"

// Q4_0 (ggml block_q4_0, GGML_TYPE_Q4_0 = 2): blocks of 32 elements,
//
//	[0:2)   d   fp16 scale
//	[2:18)  qs  nibbles: qs[j] low = element j, high = element j+16;
//	            x ≈ d*(q-8)
const (
	BlockQ4_0Elems = 32
	BlockQ4_0Bytes = 2 + 16
)

// QuantizeRowQ4_0 quantizes one row. Without an importance matrix it is
// quantize_row_q4_0_ref (d = max/-8 with max the signed value of largest
// magnitude, q = trunc(x/d+8.5) capped at 15); with one (len(imatrix) =
// len(src)) it is quantize_row_q4_0_impl: make_qx_quants weighted by
// imatrix[j]*sqrt(sigma2+x[j]^2), sigma2 the row's mean square.
func QuantizeRowQ4_0(dst []byte, src []float32, imatrix []float32) {
	if imatrix != nil {
		sigma2 := rowSigma2(src)
		var weight [32]float32
		var L [32]int8
		for ib := 0; ib < len(src)/32; ib++ {
			xb := src[ib*32 : ib*32+32]
			importanceWeights(weight[:], imatrix[ib*32:ib*32+32], xb, sigma2)
			d := makeQxQuants(32, 8, xb, L[:], weight[:])
			y := dst[ib*BlockQ4_0Bytes:]
			putF16(y, d)
			for j := 0; j < 16; j++ {
				y[2+j] = byte(L[j]) | byte(L[j+16])<<4
			}
		}
		return
	}
	for i := 0; i < len(src)/32; i++ {
		x := src[i*32 : i*32+32]
		y := dst[i*BlockQ4_0Bytes : (i+1)*BlockQ4_0Bytes]
		_, maxv := signedAbsMax(x)
		d := maxv / -8
		var id float32
		if d != 0 {
			id = 1 / d
		}
		putF16(y, d)
		for j := 0; j < 16; j++ {
			x0 := float32(x[j] * id)
			x1 := float32(x[j+16] * id)
			xi0 := min(15, int(int8(cvtt32(x0+8.5))))
			xi1 := min(15, int(int8(cvtt32(x1+8.5))))
			y[2+j] = byte(xi0) | byte(xi1)<<4
		}
	}
}

// DequantizeRowQ4_0 is dequantize_row_q4_0.
func DequantizeRowQ4_0(dst []float32, src []byte) { qblock.DequantizeQ4_0(dst, src) }

// signedAbsMax returns the largest |x| and the first x attaining it (the
// "max" of the symmetric formats, whose sign fixes the scale's).
func signedAbsMax(x []float32) (amax, maxv float32) {
	for _, v := range x {
		if amax < fabsf(v) {
			amax = fabsf(v)
			maxv = v
		}
	}
	return amax, maxv
}

// rowSigma2 is the row's mean square, sum(x^2)/n, summed in order as the
// legacy _impl quantizers do.
func rowSigma2(x []float32) float32 {
	var s float32
	for _, v := range x {
		s += float32(v * v)
	}
	return s / float32(len(x))
}

// importanceWeights sets w[j] = qw[j]*sqrt(sigma2 + x[j]^2), the weighting
// every imatrix path uses.
func importanceWeights(w, qw, x []float32, sigma2 float32) {
	for j := range w {
		w[j] = qw[j] * sqrtf(sigma2+float32(x[j]*x[j]))
	}
}
