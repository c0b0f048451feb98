package safetensors

import (
	"fmt"
	"strings"
)

// DType is a safetensors element type, spelled as in the header ("BF16").
type DType string

const (
	F64    DType = "F64"
	F32    DType = "F32"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I64    DType = "I64"
	I32    DType = "I32"
	I16    DType = "I16"
	I8     DType = "I8"
	U64    DType = "U64"
	U32    DType = "U32"
	U16    DType = "U16"
	U8     DType = "U8"
	BOOL   DType = "BOOL"
	F8E4M3 DType = "F8_E4M3"
	F8E5M2 DType = "F8_E5M2"
	F8E8M0 DType = "F8_E8M0"
)

// dtypeRank orders dtypes by alignment the way the Rust crate's Dtype enum
// does (declaration order BOOL < U8 < I8 < F8_E5M2 < F8_E4M3 < I16 < U16 <
// F16 < BF16 < I32 < U32 < F32 < F64 < I64 < U64). Its writer lays tensors
// out by descending rank, then name, so every tensor starts aligned to its
// element size; we do the same so our files match its byte for byte.
var dtypeRank = map[DType]int{
	BOOL: 0, U8: 1, I8: 2, F8E5M2: 3, F8E4M3: 4, F8E8M0: 5, I16: 6, U16: 7,
	F16: 8, BF16: 9, I32: 10, U32: 11, F32: 12, F64: 13, I64: 14, U64: 15,
}

// Size is the number of bytes per element, or 0 for an unknown dtype. A
// switch, not a map: ToFloat32 calls it per row on the matmul path.
func (d DType) Size() int {
	switch d {
	case F64, I64, U64:
		return 8
	case F32, I32, U32:
		return 4
	case F16, BF16, I16, U16:
		return 2
	case I8, U8, BOOL, F8E4M3, F8E5M2, F8E8M0:
		return 1
	}
	return 0
}

// supportedDTypes lists the known dtypes for error messages.
func supportedDTypes() string {
	return "BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64"
}

func (d DType) check() error {
	if d.Size() == 0 {
		return fmt.Errorf("unknown dtype %q (supported: %s)", string(d), supportedDTypes())
	}
	return nil
}

// Tensor is one named tensor. Data is a view into the mapped file, valid
// until the Reader is closed; it is mapped read-only on Linux and macOS, so a
// write to it faults there. Never write to it.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte // row-major, little-endian
}

// NumElements is the product of Shape (1 for a scalar, 0 if any dim is 0).
func (t Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Float32 converts an F32, F16 or BF16 tensor into a new []float32.
func (t Tensor) Float32() ([]float32, error) {
	dst := make([]float32, t.NumElements())
	if err := toFloat32(dst, t.Data, t.DType); err != nil {
		return nil, fmt.Errorf("safetensors: tensor %q: %w", t.Name, err)
	}
	return dst, nil
}

func shapeString(shape []int) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, d := range shape {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprint(&b, d)
	}
	b.WriteByte(']')
	return b.String()
}
