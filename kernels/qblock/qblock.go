// Package qblock holds the block layouts of llama.cpp's quantization types
// (ggml-common.h block_q8_0 … block_q6_K) and their dequantize_row
// functions, ported from ggml-quants.c. It is the one implementation that
// both the quantizers' round-trip code (package quantize) and the CPU
// kernels that compute on quantized weights (kernels/cpu) use, so a matmul
// on a GGUF weight sees exactly the values llama.cpp's dequantize_row
// produces. It imports nothing from the project (a leaf) and does not
// quantize.
//
// Every Dequantize* function expands len(dst)/BlockElems whole blocks of src
// into dst; the caller guarantees the lengths (len(src) >= blocks*BlockBytes).
package qblock

import (
	"encoding/binary"
	"math"
)

// QK_K is the super-block size of the K-quants.
const QK_K = 256

// Block sizes, as in ggml-common.h.
const (
	Q4_0Elems, Q4_0Bytes = 32, 2 + 16
	Q4_1Elems, Q4_1Bytes = 32, 2 + 2 + 16
	Q5_0Elems, Q5_0Bytes = 32, 2 + 4 + 16
	Q5_1Elems, Q5_1Bytes = 32, 2 + 2 + 4 + 16
	Q8_0Elems, Q8_0Bytes = 32, 2 + 32
	Q2_KElems, Q2_KBytes = QK_K, QK_K/16 + QK_K/4 + 2 + 2
	Q3_KElems, Q3_KBytes = QK_K, QK_K/8 + QK_K/4 + 12 + 2
	Q4_KElems, Q4_KBytes = QK_K, 2 + 2 + 12 + QK_K/2
	Q5_KElems, Q5_KBytes = QK_K, 2 + 2 + 12 + QK_K/8 + QK_K/2
	Q6_KElems, Q6_KBytes = QK_K, QK_K/2 + QK_K/4 + QK_K/16 + 2
)

// Format is one row of the table: a GGML type's name, GGUF type id, block
// geometry and dequantizer.
type Format struct {
	Name       string
	GGUFType   uint32
	BlockElems int
	BlockBytes int
	Dequantize func(dst []float32, src []byte)
}

// Formats lists every supported type, in GGUF type id order.
var Formats = []Format{
	{"Q4_0", 2, Q4_0Elems, Q4_0Bytes, DequantizeQ4_0},
	{"Q4_1", 3, Q4_1Elems, Q4_1Bytes, DequantizeQ4_1},
	{"Q5_0", 6, Q5_0Elems, Q5_0Bytes, DequantizeQ5_0},
	{"Q5_1", 7, Q5_1Elems, Q5_1Bytes, DequantizeQ5_1},
	{"Q8_0", 8, Q8_0Elems, Q8_0Bytes, DequantizeQ8_0},
	{"Q2_K", 10, Q2_KElems, Q2_KBytes, DequantizeQ2_K},
	{"Q3_K", 11, Q3_KElems, Q3_KBytes, DequantizeQ3_K},
	{"Q4_K", 12, Q4_KElems, Q4_KBytes, DequantizeQ4_K},
	{"Q5_K", 13, Q5_KElems, Q5_KBytes, DequantizeQ5_K},
	{"Q6_K", 14, Q6_KElems, Q6_KBytes, DequantizeQ6_K},
}

// ByName returns the format called name ("Q4_K").
func ByName(name string) (Format, bool) {
	for _, f := range Formats {
		if f.Name == name {
			return f, true
		}
	}
	return Format{}, false
}

// ByGGUFType returns the format of a GGUF tensor type id.
func ByGGUFType(t uint32) (Format, bool) {
	for _, f := range Formats {
		if f.GGUFType == t {
			return f, true
		}
	}
	return Format{}, false
}

// f16Table maps every IEEE half bit pattern to its exact float32 value
// (GGML_FP16_TO_FP32; NaNs come out quiet, as vcvtph2ps makes them).
var f16Table = func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for i := range t {
		t[i] = halfToFloat(uint16(i))
	}
	return &t
}()

func halfToFloat(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	em := uint32(h & 0x7fff)
	switch {
	case em >= 0x0400 && em < 0x7c00:
		return math.Float32frombits(sign | (em<<13 + (127-15)<<23))
	case em == 0x7c00:
		return math.Float32frombits(sign | 0x7f800000)
	case em > 0x7c00:
		return math.Float32frombits(sign | 0x7fc00000 | (em&0x3ff)<<13)
	case em == 0:
		return math.Float32frombits(sign)
	}
	m, e := em, uint32(127-15+1)
	for m&0x400 == 0 {
		m <<= 1
		e--
	}
	return math.Float32frombits(sign | e<<23 | (m&0x3ff)<<13)
}

// F16 reads the little-endian half at b[0:2].
func F16(b []byte) float32 { return f16Table[uint16(b[0])|uint16(b[1])<<8] }

// ScaleMinK4 is get_scale_min_k4: the j-th 6-bit scale and min of a
// Q4_K/Q5_K 12-byte scales field.
func ScaleMinK4(j int, q []byte) (d, m uint8) {
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return q[j+4]&0xF | (q[j-4]>>6)<<4, q[j+4]>>4 | (q[j]>>6)<<4
}

// unpackQ5 returns the 5-bit level of element j from qh (4 bytes) and qs.
func unpackQ5(b []byte, j int) int {
	qh := binary.LittleEndian.Uint32(b)
	if j < 16 {
		return int(b[4+j]&0xF) | int(qh>>j&1)<<4
	}
	return int(b[4+j-16]>>4) | int(qh>>j&1)<<4
}

// The float32(...) conversions below are not noise: they forbid the
// compiler from fusing a product and a sum into one FMA, so every value is
// rounded exactly as ggml-quants.c's separate multiply and add round it.

// DequantizeQ4_0 is dequantize_row_q4_0: x = (q-8)*d.
func DequantizeQ4_0(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		y := src[i*Q4_0Bytes : (i+1)*Q4_0Bytes]
		d := F16(y)
		for j := 0; j < 16; j++ {
			dst[i*32+j] = float32(int(y[2+j]&0xF)-8) * d
			dst[i*32+j+16] = float32(int(y[2+j]>>4)-8) * d
		}
	}
}

// DequantizeQ4_1 is dequantize_row_q4_1: x = q*d + m.
func DequantizeQ4_1(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		y := src[i*Q4_1Bytes : (i+1)*Q4_1Bytes]
		d, m := F16(y), F16(y[2:])
		for j := 0; j < 16; j++ {
			dst[i*32+j] = float32(float32(y[4+j]&0xF)*d) + m
			dst[i*32+j+16] = float32(float32(y[4+j]>>4)*d) + m
		}
	}
}

// DequantizeQ5_0 is dequantize_row_q5_0: x = (q-16)*d.
func DequantizeQ5_0(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		y := src[i*Q5_0Bytes : (i+1)*Q5_0Bytes]
		d := F16(y)
		for j := 0; j < 32; j++ {
			dst[i*32+j] = float32(unpackQ5(y[2:], j)-16) * d
		}
	}
}

// DequantizeQ5_1 is dequantize_row_q5_1: x = q*d + m.
func DequantizeQ5_1(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		y := src[i*Q5_1Bytes : (i+1)*Q5_1Bytes]
		d, m := F16(y), F16(y[2:])
		for j := 0; j < 32; j++ {
			dst[i*32+j] = float32(float32(unpackQ5(y[4:], j))*d) + m
		}
	}
}

// DequantizeQ8_0 is dequantize_row_q8_0: x = q*d.
func DequantizeQ8_0(dst []float32, src []byte) {
	for i := 0; i < len(dst)/32; i++ {
		y := src[i*Q8_0Bytes : (i+1)*Q8_0Bytes]
		d := F16(y)
		q := y[2:34]
		o := dst[i*32 : i*32+32]
		for j := range o {
			o[j] = float32(int8(q[j])) * d
		}
	}
}

// DequantizeQ2_K is dequantize_row_q2_K.
func DequantizeQ2_K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/QK_K; i++ {
		b := src[i*Q2_KBytes : (i+1)*Q2_KBytes]
		y := dst[i*QK_K : (i+1)*QK_K]
		d, dmin := F16(b[80:]), F16(b[82:])
		q := b[16:80]
		is, k := 0, 0
		for n := 0; n < QK_K; n += 128 {
			for shift := 0; shift < 8; shift += 2 {
				for half := 0; half < 2; half++ {
					sc := b[is]
					is++
					dl, ml := d*float32(sc&0xF), dmin*float32(sc>>4)
					for l := 0; l < 16; l++ {
						y[k] = float32(dl*float32(q[16*half+l]>>shift&3)) - ml
						k++
					}
				}
			}
			q = q[32:]
		}
	}
}

// DequantizeQ3_K is dequantize_row_q3_K.
func DequantizeQ3_K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/QK_K; i++ {
		b := src[i*Q3_KBytes : (i+1)*Q3_KBytes]
		y := dst[i*QK_K : (i+1)*QK_K]
		dAll := F16(b[108:])
		hm, q, sc := b[0:32], b[32:96], b[96:108]
		var scales [16]int
		for j := 0; j < 16; j++ {
			var lo uint8
			if j < 8 {
				lo = sc[j] & 0xF
			} else {
				lo = sc[j-8] >> 4
			}
			scales[j] = int(lo|(sc[8+j%4]>>(2*(j/4))&3)<<4) - 32
		}
		is, k := 0, 0
		m := uint8(1)
		for n := 0; n < QK_K; n += 128 {
			for shift := 0; shift < 8; shift += 2 {
				for half := 0; half < 2; half++ {
					dl := dAll * float32(scales[is])
					is++
					for l := 0; l < 16; l++ {
						v := int(q[16*half+l] >> shift & 3)
						if hm[16*half+l]&m == 0 {
							v -= 4
						}
						y[k] = dl * float32(v)
						k++
					}
				}
				m <<= 1
			}
			q = q[32:]
		}
	}
}

// DequantizeQ4_K is dequantize_row_q4_K: x = d*sc*q - dmin*m per group of 32.
func DequantizeQ4_K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/QK_K; i++ {
		b := src[i*Q4_KBytes : (i+1)*Q4_KBytes]
		y := dst[i*QK_K : (i+1)*QK_K]
		d, dmin := F16(b), F16(b[2:])
		q := b[16:]
		for j, is := 0, 0; j < QK_K; j, is = j+64, is+2 {
			sc, m := ScaleMinK4(is, b[4:])
			d1, m1 := d*float32(sc), dmin*float32(m)
			sc, m = ScaleMinK4(is+1, b[4:])
			d2, m2 := d*float32(sc), dmin*float32(m)
			ql := q[:32]
			lo, hi := y[j:j+32], y[j+32:j+64]
			for l, v := range ql {
				lo[l] = float32(d1*float32(v&0xF)) - m1
				hi[l] = float32(d2*float32(v>>4)) - m2
			}
			q = q[32:]
		}
	}
}

// DequantizeQ5_K is dequantize_row_q5_K.
func DequantizeQ5_K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/QK_K; i++ {
		b := src[i*Q5_KBytes : (i+1)*Q5_KBytes]
		y := dst[i*QK_K : (i+1)*QK_K]
		d, dmin := F16(b), F16(b[2:])
		qh, ql := b[16:48], b[48:]
		u1, u2 := uint8(1), uint8(2)
		for j, is := 0, 0; j < QK_K; j, is = j+64, is+2 {
			sc, m := ScaleMinK4(is, b[4:])
			d1, m1 := d*float32(sc), dmin*float32(m)
			sc, m = ScaleMinK4(is+1, b[4:])
			d2, m2 := d*float32(sc), dmin*float32(m)
			for l := 0; l < 32; l++ {
				h1, h2 := 0, 0
				if qh[l]&u1 != 0 {
					h1 = 16
				}
				if qh[l]&u2 != 0 {
					h2 = 16
				}
				y[j+l] = float32(d1*float32(int(ql[l]&0xF)+h1)) - m1
				y[j+32+l] = float32(d2*float32(int(ql[l]>>4)+h2)) - m2
			}
			ql = ql[32:]
			u1 <<= 2
			u2 <<= 2
		}
	}
}

// DequantizeQ6_K is dequantize_row_q6_K: x = d*scale*(q-32) per group of 16.
func DequantizeQ6_K(dst []float32, src []byte) {
	for i := 0; i < len(dst)/QK_K; i++ {
		b := src[i*Q6_KBytes : (i+1)*Q6_KBytes]
		y := dst[i*QK_K : (i+1)*QK_K]
		d := F16(b[208:])
		ql, qh, sc := b[0:128], b[128:192], b[192:208]
		for n := 0; n < QK_K; n += 128 {
			for l := 0; l < 32; l++ {
				is := l / 16
				q1 := int(ql[l]&0xF|(qh[l]>>0&3)<<4) - 32
				q2 := int(ql[l+32]&0xF|(qh[l]>>2&3)<<4) - 32
				q3 := int(ql[l]>>4|(qh[l]>>4&3)<<4) - 32
				q4 := int(ql[l+32]>>4|(qh[l]>>6&3)<<4) - 32
				y[n+l] = d * float32(int8(sc[is])) * float32(q1)
				y[n+l+32] = d * float32(int8(sc[is+2])) * float32(q2)
				y[n+l+64] = d * float32(int8(sc[is+4])) * float32(q3)
				y[n+l+96] = d * float32(int8(sc[is+6])) * float32(q4)
			}
			ql, qh, sc = ql[64:], qh[32:], sc[8:]
		}
	}
}
