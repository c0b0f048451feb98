package cpu

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/tunellm/tune/kernels"
)

// f16Table maps every IEEE half bit pattern to its float32 value; a lookup is
// cheaper than the bit manipulation in the hot matmul tile conversion.
var f16Table = func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for i := range t {
		t[i] = f16ToF32(uint16(i))
	}
	return &t
}()

func f16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // inf, nan
		return math.Float32frombits(sign | 0xff<<23 | man<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
	case man == 0:
		return math.Float32frombits(sign)
	}
	// subnormal half: value = man * 2^-24, exact in float32
	v := float32(man) * (1.0 / (1 << 24))
	if sign != 0 {
		v = -v
	}
	return v
}

// convertRow decodes len(dst) elements of dtype dt from src (little-endian).
func convertRow(dst []float32, src []byte, dt kernels.DType) {
	switch dt {
	case kernels.BF16:
		src = src[:2*len(dst)]
		for i := convertFast(dst, src, true); i < len(dst); i++ {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
		}
	case kernels.F16:
		src = src[:2*len(dst)]
		t := f16Table
		for i := convertFast(dst, src, false); i < len(dst); i++ {
			dst[i] = t[binary.LittleEndian.Uint16(src[2*i:])]
		}
	case kernels.F32:
		src = src[:4*len(dst)]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	default:
		panic(fmt.Sprintf("cpu: unsupported weight dtype %v", dt))
	}
}

func checkWeight(op string, w kernels.Weight) {
	if err := w.Check(); err != nil {
		panic(fmt.Sprintf("cpu: %s: %v", op, err))
	}
}

func need(op, name string, got, want int) {
	if got < want {
		panic(fmt.Sprintf("cpu: %s: %s has %d elements, need %d", op, name, got, want))
	}
}
