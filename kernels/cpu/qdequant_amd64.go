//go:build amd64 && !noasm

package cpu

import (
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/qblock"
)

// AVX2 dequantizers for the types generation spends its time in (Q8_0,
// Q4_0, and the Q4_K/Q5_K/Q6_K of the K-quant mixes): the same values as kernels/qblock,
// bit for bit (qdequant_amd64.s); the scales are decoded here in Go
// exactly as qblock decodes them.

// dequantQ8_0AVX: for each of nb blocks, dst[32b+j] = float32(int8(q[j])) * d.
//
//go:noescape
func dequantQ8_0AVX(dst *float32, src *byte, nb int)

// nib64AVX: for l < 32, dst[l] = float32(d1*float32(q[l]&15)) - m1 and
// dst[32+l] = float32(d2*float32(q[l]>>4)) - m2.
//
//go:noescape
func nib64AVX(dst *float32, q *byte, d1, m1, d2, m2 float32)

// q6kHalfAVX: one half (128 elements) of a Q6_K block, for l < 32, i = l/16:
//
//	dst[l]    = sc[i]   * float32(int(ql[l]&15    | (qh[l]&3)<<4)    - 32)
//	dst[l+32] = sc[i+2] * float32(int(ql[l+32]&15 | (qh[l]>>2&3)<<4) - 32)
//	dst[l+64] = sc[i+4] * float32(int(ql[l]>>4    | (qh[l]>>4&3)<<4) - 32)
//	dst[l+96] = sc[i+6] * float32(int(ql[l+32]>>4 | (qh[l]>>6&3)<<4) - 32)
//
//go:noescape
func q6kHalfAVX(dst *float32, ql, qh *byte, sc *float32)

// dequantQ4_0AVX: for each of nb blocks, dst[32b+j] = float32(int(q[j]&15)-8) * d
// and dst[32b+16+j] = float32(int(q[j]>>4)-8) * d for j < 16.
//
//go:noescape
func dequantQ4_0AVX(dst *float32, src *byte, nb int)

// nib64hAVX is nib64AVX with Q5_K's fifth bits: for l < 32,
// dst[l] = float32(d1*float32(q[l]&15 | (qh[l]>>shift&1)<<4)) - m1 and
// dst[32+l] = float32(d2*float32(q[l]>>4 | (qh[l]>>(shift+1)&1)<<4)) - m2.
//
//go:noescape
func nib64hAVX(dst *float32, q, qh *byte, shift int, d1, m1, d2, m2 float32)

func dequantQ4_0Fast(dst []float32, src []byte) {
	nb := len(dst) / qblock.Q4_0Elems
	if nb == 0 {
		return
	}
	_ = src[nb*qblock.Q4_0Bytes-1]
	dequantQ4_0AVX(&dst[0], &src[0], nb)
}

func dequantQ5_KFast(dst []float32, src []byte) {
	for i := 0; i < len(dst)/qblock.QK_K; i++ {
		b := src[i*qblock.Q5_KBytes : (i+1)*qblock.Q5_KBytes]
		y := dst[i*qblock.QK_K : (i+1)*qblock.QK_K]
		d, dmin := qblock.F16(b), qblock.F16(b[2:])
		for j := 0; j < 4; j++ {
			sc, m := qblock.ScaleMinK4(2*j, b[4:])
			d1, m1 := d*float32(sc), dmin*float32(m)
			sc, m = qblock.ScaleMinK4(2*j+1, b[4:])
			d2, m2 := d*float32(sc), dmin*float32(m)
			nib64hAVX(&y[64*j], &b[48+32*j], &b[16], 2*j, d1, m1, d2, m2)
		}
	}
}

func dequantQ8_0Fast(dst []float32, src []byte) {
	nb := len(dst) / qblock.Q8_0Elems
	if nb == 0 {
		return
	}
	_ = src[nb*qblock.Q8_0Bytes-1]
	dequantQ8_0AVX(&dst[0], &src[0], nb)
}

func dequantQ4_KFast(dst []float32, src []byte) {
	for i := 0; i < len(dst)/qblock.QK_K; i++ {
		b := src[i*qblock.Q4_KBytes : (i+1)*qblock.Q4_KBytes]
		y := dst[i*qblock.QK_K : (i+1)*qblock.QK_K]
		d, dmin := qblock.F16(b), qblock.F16(b[2:])
		for j := 0; j < 4; j++ {
			sc, m := qblock.ScaleMinK4(2*j, b[4:])
			d1, m1 := d*float32(sc), dmin*float32(m)
			sc, m = qblock.ScaleMinK4(2*j+1, b[4:])
			d2, m2 := d*float32(sc), dmin*float32(m)
			nib64AVX(&y[64*j], &b[16+32*j], d1, m1, d2, m2)
		}
	}
}

func dequantQ6_KFast(dst []float32, src []byte) {
	for i := 0; i < len(dst)/qblock.QK_K; i++ {
		b := src[i*qblock.Q6_KBytes : (i+1)*qblock.Q6_KBytes]
		y := dst[i*qblock.QK_K : (i+1)*qblock.QK_K]
		d := qblock.F16(b[208:])
		var sc [16]float32
		for j := range sc {
			sc[j] = d * float32(int8(b[192+j]))
		}
		q6kHalfAVX(&y[0], &b[0], &b[128], &sc[0])
		q6kHalfAVX(&y[128], &b[64], &b[160], &sc[8])
	}
}

// dequantizer returns the fastest dequantizer of dt.
func dequantizer(dt kernels.DType) func(dst []float32, src []byte) {
	if useAVX2 {
		switch dt {
		case kernels.Q8_0:
			return dequantQ8_0Fast
		case kernels.Q4_K:
			return dequantQ4_KFast
		case kernels.Q6_K:
			return dequantQ6_KFast
		case kernels.Q4_0:
			return dequantQ4_0Fast
		case kernels.Q5_K:
			return dequantQ5_KFast
		}
	}
	return dt.Format().Dequantize
}
