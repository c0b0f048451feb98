package gguf

import (
	"fmt"
	"math"
	"math/bits"
	"sort"
	"strings"
)

// Type is a ggml tensor element type, as stored in a tensor info
// (enum ggml_type in ggml/include/ggml.h).
type Type uint32

const (
	TypeF32  Type = 0
	TypeF16  Type = 1
	TypeQ4_0 Type = 2
	TypeQ4_1 Type = 3
	TypeQ5_0 Type = 6
	TypeQ5_1 Type = 7
	TypeQ8_0 Type = 8
	TypeQ8_1 Type = 9
	TypeQ2_K Type = 10
	TypeQ3_K Type = 11
	TypeQ4_K Type = 12
	TypeQ5_K Type = 13
	TypeQ6_K Type = 14
	TypeQ8_K Type = 15
	TypeBF16 Type = 30
)

// Traits is one row of the type table: a tensor of this type stores its
// elements in blocks of BlockElems elements taking BlockBytes bytes each,
// along the innermost (ggml ne[0]) dimension.
type Traits struct {
	Name       string
	BlockElems int64
	BlockBytes int64
}

// types lists the types this package can size. ggml has more; a file using
// one of them is reported as unsupported rather than guessed at.
// Sizes are ggml-common.h's block structs (QK_K = 256).
var types = map[Type]Traits{
	TypeF32:  {"F32", 1, 4},
	TypeF16:  {"F16", 1, 2},
	TypeQ4_0: {"Q4_0", 32, 18},   // f16 d + 16 nibble bytes
	TypeQ4_1: {"Q4_1", 32, 20},   // f16 d, m + 16
	TypeQ5_0: {"Q5_0", 32, 22},   // f16 d + 4 high bits + 16
	TypeQ5_1: {"Q5_1", 32, 24},   // f16 d, m + 4 + 16
	TypeQ8_0: {"Q8_0", 32, 34},   // block_q8_0: f16 scale + 32 int8
	TypeQ8_1: {"Q8_1", 32, 36},   // f16 d, s + 32 int8
	TypeQ2_K: {"Q2_K", 256, 84},  // 16 scales + 64 qs + f16 d, dmin
	TypeQ3_K: {"Q3_K", 256, 110}, // 32 hmask + 64 qs + 12 scales + f16 d
	TypeQ4_K: {"Q4_K", 256, 144}, // f16 d, dmin + 12 scales + 128 qs
	TypeQ5_K: {"Q5_K", 256, 176}, // f16 d, dmin + 12 scales + 32 qh + 128 qs
	TypeQ6_K: {"Q6_K", 256, 210}, // 128 ql + 64 qh + 16 scales + f16 d
	TypeQ8_K: {"Q8_K", 256, 292}, // f32 d + 256 int8 + 16 int16 bsums
	TypeBF16: {"BF16", 1, 2},
}

// TraitsOf returns the row of the type table for t.
func TraitsOf(t Type) (Traits, bool) {
	tr, ok := types[t]
	return tr, ok
}

func (t Type) String() string {
	if tr, ok := types[t]; ok {
		return tr.Name
	}
	return fmt.Sprintf("Type(%d)", uint32(t))
}

// validTypes names the supported types, for "unsupported" errors.
func validTypes() string {
	ids := make([]int, 0, len(types))
	for t := range types {
		ids = append(ids, int(t))
	}
	sort.Ints(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("%s (%d)", types[Type(id)].Name, id)
	}
	return strings.Join(parts, ", ")
}

// TensorBytes returns the byte size of a tensor of type t and the given
// shape (numpy order). It fails, rather than overflow or round, when the
// element count overflows int64 or the innermost dimension is not a whole
// number of blocks.
func TensorBytes(t Type, shape []int) (int64, error) {
	dims := make([]uint64, len(shape))
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension %d in shape %v", d, shape)
		}
		dims[len(shape)-1-i] = uint64(d)
	}
	return tensorBytes(t, dims)
}

// tensorBytes is TensorBytes over ggml-order dims (ne[0] innermost).
func tensorBytes(t Type, ne []uint64) (int64, error) {
	tr, ok := types[t]
	if !ok {
		return 0, fmt.Errorf("unsupported ggml type %d, want one of %s", uint32(t), validTypes())
	}
	n := uint64(1)
	for _, d := range ne {
		if d > math.MaxInt64 {
			return 0, fmt.Errorf("dimension %d overflows int64", d)
		}
		hi, lo := bits.Mul64(n, d)
		if hi != 0 || lo > math.MaxInt64 {
			return 0, fmt.Errorf("element count of dims %v overflows int64", ne)
		}
		n = lo
	}
	inner := uint64(1)
	if len(ne) > 0 {
		inner = ne[0]
	}
	if inner%uint64(tr.BlockElems) != 0 {
		return 0, fmt.Errorf("type %s: row of %d elements is not a multiple of the block size %d", tr.Name, inner, tr.BlockElems)
	}
	blocks := n / uint64(tr.BlockElems)
	hi, lo := bits.Mul64(blocks, uint64(tr.BlockBytes))
	if hi != 0 || lo > math.MaxInt64 {
		return 0, fmt.Errorf("byte size of dims %v overflows int64", ne)
	}
	return int64(lo), nil
}

// ValueType is the type tag of a metadata value (enum gguf_type).
type ValueType uint32

const (
	ValueUint8   ValueType = 0
	ValueInt8    ValueType = 1
	ValueUint16  ValueType = 2
	ValueInt16   ValueType = 3
	ValueUint32  ValueType = 4
	ValueInt32   ValueType = 5
	ValueFloat32 ValueType = 6
	ValueBool    ValueType = 7
	ValueString  ValueType = 8
	ValueArray   ValueType = 9
	ValueUint64  ValueType = 10
	ValueInt64   ValueType = 11
	ValueFloat64 ValueType = 12
)

var valueTypeNames = [...]string{"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64", "float64"}

func (v ValueType) String() string {
	if int(v) < len(valueTypeNames) {
		return valueTypeNames[v]
	}
	return fmt.Sprintf("ValueType(%d)", uint32(v))
}

// fixedSize is the encoded size of a scalar value type, 0 for string/array.
func (v ValueType) fixedSize() int {
	switch v {
	case ValueUint8, ValueInt8, ValueBool:
		return 1
	case ValueUint16, ValueInt16:
		return 2
	case ValueUint32, ValueInt32, ValueFloat32:
		return 4
	case ValueUint64, ValueInt64, ValueFloat64:
		return 8
	}
	return 0
}

// valueTypeOf maps a Go value to its GGUF type. Scalars are uint8, int8,
// uint16, int16, uint32, int32, float32, bool, string, uint64, int64 and
// float64; arrays are slices of those. Plain int is refused on purpose:
// llama.cpp reads most integers as exactly u32 (gguf_get_val_u32 asserts the
// type), so the caller must choose the width.
func valueTypeOf(v any) (typ, elem ValueType, ok bool) {
	switch v.(type) {
	case uint8:
		return ValueUint8, 0, true
	case int8:
		return ValueInt8, 0, true
	case uint16:
		return ValueUint16, 0, true
	case int16:
		return ValueInt16, 0, true
	case uint32:
		return ValueUint32, 0, true
	case int32:
		return ValueInt32, 0, true
	case float32:
		return ValueFloat32, 0, true
	case bool:
		return ValueBool, 0, true
	case string:
		return ValueString, 0, true
	case uint64:
		return ValueUint64, 0, true
	case int64:
		return ValueInt64, 0, true
	case float64:
		return ValueFloat64, 0, true
	case []uint8:
		return ValueArray, ValueUint8, true
	case []int8:
		return ValueArray, ValueInt8, true
	case []uint16:
		return ValueArray, ValueUint16, true
	case []int16:
		return ValueArray, ValueInt16, true
	case []uint32:
		return ValueArray, ValueUint32, true
	case []int32:
		return ValueArray, ValueInt32, true
	case []float32:
		return ValueArray, ValueFloat32, true
	case []bool:
		return ValueArray, ValueBool, true
	case []string:
		return ValueArray, ValueString, true
	case []uint64:
		return ValueArray, ValueUint64, true
	case []int64:
		return ValueArray, ValueInt64, true
	case []float64:
		return ValueArray, ValueFloat64, true
	}
	return 0, 0, false
}

// KV is one metadata entry. Value holds one of the Go types listed at
// valueTypeOf.
type KV struct {
	Key   string
	Value any
}

const (
	// DefaultAlignment applies when general.alignment is absent.
	DefaultAlignment = 32
	// KeyAlignment is the metadata key that overrides the alignment (u32).
	KeyAlignment = "general.alignment"
	// MaxDims is GGML_MAX_DIMS: llama.cpp refuses tensors of higher rank.
	MaxDims = 4
	// MaxNameLen is GGML_MAX_NAME-1: llama.cpp refuses longer tensor names.
	MaxNameLen = 63
	// Version is the GGUF version this package writes.
	Version = 3
)

var magic = [4]byte{'G', 'G', 'U', 'F'}

func padTo(n, align int64) int64 {
	return (n + align - 1) / align * align
}
