package qblock

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Group-wise integer blocks: the in-memory form of the weight-only INT4 and
// INT8 schemes of quantize/wq (GPTQ, compressed-tensors, `tune quantize
// --format safetensors`), for a QLoRA base quantized at load or read from a
// quantized folder. A block of E consecutive columns of one row is
//
//	[fp16 scale, little-endian][uint8 zero point][codes]
//
// with E/2 code bytes for INT4 (element 2j in the low nibble of byte j,
// 2j+1 in the high one) or E for INT8, and dequantizes exactly as wq's
// QTensor.DequantizeRow does:
//
//	x = scale * float32(q - zero)      (one float32 product, q and zero unsigned)
//
// wq's scales are fp16 values (every layout stores them so), so the block
// holds them without loss and the values a matmul sees are those of the
// dequantized checkpoint bit for bit. A wq group spans one or more blocks
// (each repeats the group's scale and zero point): E = 128 serves groups of
// 128, 256, ... and one scale per row (a width that is a multiple of 128);
// E = 32 serves groups of 32 and 64 and other per-row widths. These types
// have no GGUF type id; they exist only in memory.
const (
	INT4Elems, INT4Bytes       = 128, 3 + 64
	INT4_32Elems, INT4_32Bytes = 32, 3 + 16
	INT8Elems, INT8Bytes       = 128, 3 + 128
	INT8_32Elems, INT8_32Bytes = 32, 3 + 32
)

// The integer rows of the format table (not in Formats: no GGUF type id).
var (
	INT4Format    = Format{Name: "INT4", BlockElems: INT4Elems, BlockBytes: INT4Bytes, Dequantize: DequantizeINT4}
	INT4_32Format = Format{Name: "INT4_32", BlockElems: INT4_32Elems, BlockBytes: INT4_32Bytes, Dequantize: DequantizeINT4_32}
	INT8Format    = Format{Name: "INT8", BlockElems: INT8Elems, BlockBytes: INT8Bytes, Dequantize: DequantizeINT8}
	INT8_32Format = Format{Name: "INT8_32", BlockElems: INT8_32Elems, BlockBytes: INT8_32Bytes, Dequantize: DequantizeINT8_32}
)

// IntFormats lists the integer formats, largest block first per width.
var IntFormats = []Format{INT4Format, INT4_32Format, INT8Format, INT8_32Format}

// IntFormat picks the integer format of a bits-wide scheme with groupSize
// input columns per scale (-1: one per row) for rows of cols columns: the
// largest block that tiles both the group and the row.
func IntFormat(bits, groupSize, cols int) (Format, error) {
	var big, small Format
	switch bits {
	case 4:
		big, small = INT4Format, INT4_32Format
	case 8:
		big, small = INT8Format, INT8_32Format
	default:
		return Format{}, fmt.Errorf("int%d: want 4 or 8 bits", bits)
	}
	span := groupSize
	if groupSize == -1 {
		span = cols
	} else if groupSize <= 0 {
		return Format{}, fmt.Errorf("group size %d: want -1 (per channel) or > 0", groupSize)
	} else if cols%groupSize != 0 {
		return Format{}, fmt.Errorf("%d columns are not a multiple of the group size %d", cols, groupSize)
	}
	for _, f := range []Format{big, small} {
		if span%f.BlockElems == 0 && cols%f.BlockElems == 0 {
			return f, nil
		}
	}
	what := fmt.Sprintf("group size %d", groupSize)
	if groupSize == -1 {
		what = fmt.Sprintf("per-channel rows of %d columns", cols)
	}
	return Format{}, fmt.Errorf("int%d %s: the in-memory blocks need a multiple of %d columns", bits, what, small.BlockElems)
}

// PutIntBlock writes one block of f (an integer format) to dst[:f.BlockBytes]:
// codes q[:f.BlockElems] (each at most 2^bits-1), the group's scale (which
// must be an fp16 value) and zero point.
func PutIntBlock(f Format, dst []byte, scale float32, zero uint8, q []uint8) error {
	h, ok := exactHalf(scale)
	if !ok {
		return fmt.Errorf("%s: scale %v is not an fp16 value", f.Name, scale)
	}
	binary.LittleEndian.PutUint16(dst, h)
	dst[2] = zero
	codes := dst[3:f.BlockBytes]
	if f.BlockBytes-3 == f.BlockElems { // INT8
		copy(codes, q[:f.BlockElems])
		return nil
	}
	if zero > 15 {
		return fmt.Errorf("%s: zero point %d exceeds 15", f.Name, zero)
	}
	for j := range codes {
		lo, hi := q[2*j], q[2*j+1]
		if lo > 15 || hi > 15 {
			return fmt.Errorf("%s: code %d exceeds 15", f.Name, max(lo, hi))
		}
		codes[j] = lo | hi<<4
	}
	return nil
}

// exactHalf encodes a float32 that is exactly an fp16 value (zero, subnormal,
// normal or infinite; NaN is refused) as its bits.
func exactHalf(x float32) (uint16, bool) {
	if x != x {
		return 0, false
	}
	b := math.Float32bits(x)
	sign := uint16(b>>16) & 0x8000
	a := math.Abs(float64(x))
	switch {
	case a == 0:
		return sign, true
	case math.IsInf(float64(x), 0):
		return sign | 0x7c00, true
	case a >= 0x1p-14 && a <= 65504:
		e := int(b>>23&0xff) - 127
		if b&(1<<13-1) != 0 {
			return 0, false
		}
		return sign | uint16(e+15)<<10 | uint16(b>>13&0x3ff), true
	case a < 0x1p-14:
		m := a / 0x1p-24 // subnormal: a multiple of 2^-24
		if m != math.Trunc(m) {
			return 0, false
		}
		return sign | uint16(m), true
	}
	return 0, false
}

// DequantizeINT4 expands len(dst)/128 INT4 blocks.
func DequantizeINT4(dst []float32, src []byte) { dequantInt4(dst, src, INT4Elems) }

// DequantizeINT4_32 expands len(dst)/32 INT4_32 blocks.
func DequantizeINT4_32(dst []float32, src []byte) { dequantInt4(dst, src, INT4_32Elems) }

// DequantizeINT8 expands len(dst)/128 INT8 blocks.
func DequantizeINT8(dst []float32, src []byte) { dequantInt8(dst, src, INT8Elems) }

// DequantizeINT8_32 expands len(dst)/32 INT8_32 blocks.
func DequantizeINT8_32(dst []float32, src []byte) { dequantInt8(dst, src, INT8_32Elems) }

// dequantInt4 expands INT4 blocks of e elements (3+e/2 bytes): each block
// builds its 16 values scale*float32(q-zero) once and looks the nibbles up.
func dequantInt4(dst []float32, src []byte, e int) {
	bb := 3 + e/2
	for i := 0; i < len(dst)/e; i++ {
		b := src[i*bb : (i+1)*bb]
		s, z := F16(b), int(b[2])
		var lut [16]float32
		for q := range lut {
			lut[q] = s * float32(q-z)
		}
		d := dst[i*e : (i+1)*e]
		for j, c := range b[3:bb] {
			d[2*j] = lut[c&15]
			d[2*j+1] = lut[c>>4]
		}
	}
}

// dequantInt8 expands INT8 blocks of e elements (3+e bytes).
func dequantInt8(dst []float32, src []byte, e int) {
	bb := 3 + e
	for i := 0; i < len(dst)/e; i++ {
		b := src[i*bb : (i+1)*bb]
		s, z := F16(b), int(b[2])
		d := dst[i*e : (i+1)*e]
		for j, c := range b[3:bb] {
			d[j] = s * float32(int(c)-z)
		}
	}
}
