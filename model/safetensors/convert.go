package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// BF16ToFloat32 widens a bfloat16: its bits are the upper half of a float32.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// Float32ToBF16 rounds to nearest, ties to even, as c10::BFloat16 does
// (round_to_nearest_even in c10/util/BFloat16.h). Overflow rounds to ±inf.
// Every NaN becomes the quiet NaN 0x7fc0, like c10's scalar path; torch's
// vectorised Tensor.to(torch.bfloat16) gives 0xffff instead, so only
// "is NaN" is portable.
func Float32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return 0x7fc0
	}
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

// F16ToFloat32 widens an IEEE half exactly: subnormals are normalised, and
// NaNs keep sign and payload (shifted into the top mantissa bits) but come
// out quiet, as x86 F16C's vcvtph2ps and torch do; this matches torch's
// Half -> float conversion for all 65536 inputs.
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	em := uint32(h & 0x7fff)
	switch {
	case em >= 0x0400 && em < 0x7c00: // normal: rebias exponent 15 -> 127
		return math.Float32frombits(sign | (em<<13 + (127-15)<<23))
	case em == 0x7c00: // inf
		return math.Float32frombits(sign | 0x7f800000)
	case em > 0x7c00: // NaN, quieted
		return math.Float32frombits(sign | 0x7fc00000 | (em&0x3ff)<<13)
	case em == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal: value = m * 2^-24 with m < 2^10. Shift m up until its
	// leading bit is the implicit bit (bit 10), lowering the exponent.
	m, e := em, uint32(127-15+1)
	for m&0x400 == 0 {
		m <<= 1
		e--
	}
	return math.Float32frombits(sign | e<<23 | (m&0x3ff)<<13)
}

// Float32ToF16 rounds to nearest, ties to even, with IEEE subnormals, and
// overflow (|f| >= 65520) to ±inf. NaN becomes the quiet NaN 0x7e00 with the
// input's sign, as torch does (c10 fp16_ieee_from_fp32_value).
func Float32ToF16(f float32) uint16 {
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	a := u & 0x7fffffff
	switch {
	case a > 0x7f800000: // NaN
		return sign | 0x7e00
	case a >= 0x477ff000: // >= 65520 (tie above max 65504 rounds to even = inf)
		return sign | 0x7c00
	case a >= 0x38800000: // >= 2^-14: normal half
		// Round the 13 dropped mantissa bits to nearest even; a carry
		// propagates into the exponent, which is what rounding up needs.
		r := a + 0x0fff + (a>>13)&1
		return sign | uint16((r-(127-15)<<23)>>13)
	case a >= 0x33000000: // >= 2^-25: rounds to a subnormal (or 0 on the tie)
		// value = m * 2^(e-150); in units of 2^-24 that is m >> (126-e).
		e := a >> 23
		m := a&0x7fffff | 0x800000
		shift := 126 - e // 14..24
		q := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && q&1 == 1) {
			q++
		}
		return sign | uint16(q)
	default:
		return sign
	}
}

// littleEndian reports whether the host stores integers little-endian; the
// unsafe fast paths below reinterpret file bytes in place only then.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// ToFloat32 converts len(dst) elements of F32, F16 or BF16 little-endian
// data in src to float32. len(src) must be exactly len(dst)*dt.Size().
// Conversions are exact (widening). It allocates nothing.
func ToFloat32(dst []float32, src []byte, dt DType) error {
	if err := toFloat32(dst, src, dt); err != nil {
		return fmt.Errorf("safetensors: ToFloat32: %w", err)
	}
	return nil
}

func toFloat32(dst []float32, src []byte, dt DType) error {
	switch dt {
	case F32, F16, BF16:
	default:
		return fmt.Errorf("cannot convert %s to float32 (supported: F32, F16, BF16)", string(dt))
	}
	if len(src) != len(dst)*dt.Size() {
		return fmt.Errorf("%d bytes of %s for %d elements, want %d", len(src), dt, len(dst), len(dst)*dt.Size())
	}
	if len(dst) == 0 {
		return nil
	}
	switch dt {
	case F32:
		if littleEndian {
			// A byte copy needs no alignment of src.
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), len(src)), src)
			return nil
		}
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case BF16:
		bf16ToFloat32(dst, src)
	case F16:
		f16ToFloat32(dst, src)
	}
	return nil
}

// bf16ToFloat32 is the hot loop of matmuls over bf16 weights. Reading u16
// via binary.LittleEndian compiles to one (unaligned-safe) load on amd64 and
// arm64; unrolling by 8 with one bounds check per block roughly triples the
// throughput of the plain loop.
func bf16ToFloat32(dst []float32, src []byte) {
	n := len(dst)
	i := 0
	for ; i+8 <= n; i += 8 {
		s := src[2*i : 2*i+16 : 2*i+16]
		d := dst[i : i+8 : i+8]
		d[0] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(s[0:])) << 16)
		d[1] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(s[2:])) << 16)
		d[2] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(s[4:])) << 16)
		d[3] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(s[6:])) << 16)
		d[4] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(s[8:])) << 16)
		d[5] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(s[10:])) << 16)
		d[6] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(s[12:])) << 16)
		d[7] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(s[14:])) << 16)
	}
	for ; i < n; i++ {
		dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
	}
}

// f16ToFloat32 inlines F16ToFloat32's normal-number case, which is nearly
// every weight, and calls out only for zeros, subnormals, inf and NaN.
func f16ToFloat32(dst []float32, src []byte) {
	src = src[:2*len(dst)]
	for i := range dst {
		h := uint32(binary.LittleEndian.Uint16(src[2*i:]))
		if em := h & 0x7fff; em-0x0400 < 0x7c00-0x0400 {
			dst[i] = math.Float32frombits((h&0x8000)<<16 | (em<<13 + (127-15)<<23))
		} else {
			dst[i] = F16ToFloat32(uint16(h))
		}
	}
}

// FromFloat32 encodes src as F32, F16 or BF16 little-endian bytes into dst,
// rounding to nearest even. len(dst) must be exactly len(src)*dt.Size().
func FromFloat32(dst []byte, src []float32, dt DType) error {
	switch dt {
	case F32, F16, BF16:
	default:
		return fmt.Errorf("safetensors: FromFloat32: cannot convert float32 to %s (supported: F32, F16, BF16)", string(dt))
	}
	if len(dst) != len(src)*dt.Size() {
		return fmt.Errorf("safetensors: FromFloat32: %d bytes of %s for %d elements, want %d", len(dst), dt, len(src), len(src)*dt.Size())
	}
	switch dt {
	case F32:
		for i, f := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(f))
		}
	case F16:
		for i, f := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], Float32ToF16(f))
		}
	case BF16:
		for i, f := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], Float32ToBF16(f))
		}
	}
	return nil
}
