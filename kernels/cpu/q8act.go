package cpu

import (
	"math"
	"unsafe"

	"github.com/tunellm/tune/kernels/qblock"
)

// Activation rows quantized to 8 bits, as llama.cpp quantizes the right-hand
// side of a matmul on a quantized weight (ggml's vec_dot_type).
//
// Q8_0 (32-element blocks; quantize_row_q8_0 as the x86 build runs it):
// amax = max|x|, d = amax/127 stored as a half (so the scale the dot
// products use is that half's value), q = round-half-even(x * (127/amax)).
//
// Q8_K (256-element super-blocks; quantize_row_q8_K_ref): max is the
// first element of largest magnitude, iscale = -127/max, q =
// min(127, nearest_int(iscale*x)), d = 1/iscale in float32, bsums = sums of
// each 16 q. bp holds the sums of each 32 (bsums[2j]+bsums[2j+1]) that the
// Q4_K/Q5_K mins need.
//
// T rows live in one buffer, row t at t*stride bytes: qs (C int8), d
// (C/32 or C/256 float32), and for Q8_K bs (C/16 int16) then bp (C/32
// int16), so the assembly reaches every part of row t with one stride.
type q8Rows struct {
	buf                []byte
	stride             int
	C, nd              int
	dOff, bsOff, bpOff int
	n128Off, n8Off     int
}

// resize makes room for T rows of C elements, Q8_K (k) or Q8_0.
func (q *q8Rows) resize(T, C int, k bool) {
	q.C = C
	q.nd = C / 32
	if k {
		q.nd = C / qblock.QK_K
	}
	q.dOff = C
	q.bsOff = C + 4*q.nd
	q.bpOff = q.bsOff
	var n int
	if k {
		q.bpOff += 2 * (C / 16)
		n = q.bpOff + 2*(C/32)
	} else {
		// Q8_0: -128 and -8 times each block's sum of levels, the
		// corrections of the VNNI kernels' unsigned weights (w+128, q4).
		q.n128Off = q.bsOff
		q.n8Off = q.n128Off + 4*q.nd
		n = q.n8Off + 4*q.nd
	}
	q.stride = (n + 63) &^ 63
	if cap(q.buf) < T*q.stride {
		q.buf = make([]byte, T*q.stride)
	}
	q.buf = q.buf[:T*q.stride]
}

func (q *q8Rows) row(t int) []byte { return q.buf[t*q.stride : (t+1)*q.stride] }

func (q *q8Rows) qs(t int) []int8 {
	return unsafe.Slice((*int8)(unsafe.Pointer(&q.buf[t*q.stride])), q.C)
}

func (q *q8Rows) d(t int) []float32 {
	return unsafe.Slice((*float32)(unsafe.Pointer(&q.buf[t*q.stride+q.dOff])), q.nd)
}

func (q *q8Rows) bs(t int) []int16 {
	return unsafe.Slice((*int16)(unsafe.Pointer(&q.buf[t*q.stride+q.bsOff])), q.C/16)
}

func (q *q8Rows) n128(t int) []int32 {
	return unsafe.Slice((*int32)(unsafe.Pointer(&q.buf[t*q.stride+q.n128Off])), q.nd)
}

func (q *q8Rows) n8(t int) []int32 {
	return unsafe.Slice((*int32)(unsafe.Pointer(&q.buf[t*q.stride+q.n8Off])), q.nd)
}

func (q *q8Rows) bp(t int) []int16 {
	return unsafe.Slice((*int16)(unsafe.Pointer(&q.buf[t*q.stride+q.bpOff])), q.C/32)
}

// f32ToF16 is GGML_FP32_TO_FP16 on x86 (vcvtps2ph, round to nearest even),
// returning the half's bits.
func f32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23&0xff) - 127
	man := b & 0x7fffff
	switch {
	case exp == 128: // inf, nan
		if man != 0 {
			return sign | 0x7e00 | uint16(man>>13)
		}
		return sign | 0x7c00
	case exp > 15:
		return sign | 0x7c00
	case exp >= -14:
		h := uint32(exp+15)<<10 | man>>13
		rem := man & 0x1fff
		if rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
			h++ // may carry into the exponent, up to inf: still correct
		}
		return sign | uint16(h)
	case exp >= -25:
		m := man | 0x800000
		shift := uint(-exp - 14 + 13) // bits dropped
		h := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && h&1 == 1 {
			h++
		}
		return sign | uint16(h)
	}
	return sign
}

// roundEven is round-half-even of |v| < 2^22 in float32 (nearest_int's
// magic-number addition); larger |v| and NaN are passed to sat8 unrounded
// by the callers' clamps.
func roundEven(v float32) float32 {
	const magic = 12582912 // 1.5 * 2^23
	if v >= -4194304 && v <= 4194304 {
		return float32(float32(v+magic) - magic)
	}
	return v
}

func abs32(v float32) float32 { return math.Float32frombits(math.Float32bits(v) &^ (1 << 31)) }

// quantQ8_0Row quantizes x (len a multiple of 32) into qs and d.
func quantQ8_0Row(qs []int8, d []float32, x []float32) {
	for b := 0; b < len(x)/32; b++ {
		blk := x[32*b : 32*b+32 : 32*b+32]
		var amax float32 // of the non-NaN |x|
		for _, v := range blk {
			if a := abs32(v); a > amax {
				amax = a
			}
		}
		h := f32ToF16(amax / 127)
		d[b] = qblock.F16([]byte{byte(h), byte(h >> 8)})
		var id float32
		if amax != 0 {
			id = 127 / amax
		}
		q := qs[32*b : 32*b+32 : 32*b+32]
		for j, v := range blk {
			q[j] = sat8(roundEven(v * id))
		}
	}
}

func sat8(r float32) int8 {
	if r != r || r < -128 {
		return -128
	}
	if r > 127 {
		return 127
	}
	return int8(r)
}

// quantQ8_KRow quantizes x (len a multiple of 256) into qs, d, bs and bp.
func quantQ8_KRow(qs []int8, d []float32, bs, bp []int16, x []float32) {
	for b := 0; b < len(x)/qblock.QK_K; b++ {
		blk := x[256*b : 256*b+256]
		q := qs[256*b : 256*b+256]
		var amax, mx float32
		for _, v := range blk {
			if a := abs32(v); a > amax {
				amax, mx = a, v
			}
		}
		if amax == 0 {
			d[b] = 0
			clear(q)
		} else {
			iscale := -127 / mx
			for j, v := range blk {
				q[j] = sat8(min(roundEven(iscale*v), 127))
			}
			d[b] = 1 / iscale
		}
		for j := 0; j < 16; j++ {
			var s int16
			for _, v := range q[16*j : 16*j+16] {
				s += int16(v)
			}
			bs[16*b+j] = s
		}
		for j := 0; j < 8; j++ {
			bp[8*b+j] = bs[16*b+2*j] + bs[16*b+2*j+1]
		}
	}
}

func growI16(b *[]int16, n int) []int16 {
	if cap(*b) < n {
		*b = make([]int16, n)
	}
	return (*b)[:n]
}
