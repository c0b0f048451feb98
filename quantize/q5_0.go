package quantize

import (
	"encoding/binary"

	"github.com/tunellm/tune/kernels/qblock"
)

// Q5_0 (ggml block_q5_0, GGML_TYPE_Q5_0 = 6): blocks of 32 elements,
//
//	[0:2)   d   fp16 scale
//	[2:6)   qh  uint32 LE: bit j is the fifth bit of element j
//	[6:22)  qs  nibbles: low = element j, high = element j+16; x ≈ d*(q-16)
const (
	BlockQ5_0Elems = 32
	BlockQ5_0Bytes = 2 + 4 + 16
)

// QuantizeRowQ5_0 quantizes one row: quantize_row_q5_0_ref (d = max/-16,
// q = trunc(x/d+16.5) capped at 31) without an importance matrix,
// quantize_row_q5_0_impl (make_qx_quants, nmax 16) with one.
func QuantizeRowQ5_0(dst []byte, src []float32, imatrix []float32) {
	if imatrix != nil {
		sigma2 := rowSigma2(src)
		var weight [32]float32
		var L [32]int8
		for ib := 0; ib < len(src)/32; ib++ {
			xb := src[ib*32 : ib*32+32]
			importanceWeights(weight[:], imatrix[ib*32:ib*32+32], xb, sigma2)
			d := makeQxQuants(32, 16, xb, L[:], weight[:])
			y := dst[ib*BlockQ5_0Bytes : (ib+1)*BlockQ5_0Bytes]
			putF16(y, d)
			packQ5(y[2:], func(j int) uint8 { return uint8(L[j]) })
		}
		return
	}
	for i := 0; i < len(src)/32; i++ {
		x := src[i*32 : i*32+32]
		y := dst[i*BlockQ5_0Bytes : (i+1)*BlockQ5_0Bytes]
		_, maxv := signedAbsMax(x)
		d := maxv / -16
		var id float32
		if d != 0 {
			id = 1 / d
		}
		putF16(y, d)
		packQ5(y[2:], func(j int) uint8 {
			return uint8(min(31, int(int8(cvtt32(float32(x[j]*id)+16.5)))))
		})
	}
}

// packQ5 writes qh (4 bytes) then qs (16 bytes) from 5-bit levels q(j).
func packQ5(b []byte, q func(j int) uint8) {
	var qh uint32
	for j := 0; j < 16; j++ {
		xi0, xi1 := q(j), q(j+16)
		b[4+j] = xi0&0x0F | (xi1&0x0F)<<4
		qh |= uint32(xi0&0x10) >> 4 << j
		qh |= uint32(xi1&0x10) >> 4 << (j + 16)
	}
	binary.LittleEndian.PutUint32(b, qh)
}

// DequantizeRowQ5_0 is dequantize_row_q5_0.
func DequantizeRowQ5_0(dst []float32, src []byte) { qblock.DequantizeQ5_0(dst, src) }
