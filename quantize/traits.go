// Package quantize converts Hugging Face checkpoints to llama.cpp's formats:
// GGUF export (export_gguf.go) and the ggml quantization types, each a
// bit-exact Go port of llama.cpp's ggml-quants.c reference quantizer and
// dequantizer (q8_0.go … q6_k.go) driven by one Traits table. It does not
// run quantized models; kernels that consume these blocks live elsewhere.
package quantize

import (
	"fmt"
	"math"
	"strings"

	"github.com/tunellm/tune/quantize/gguf"
)

// Traits is one row of the quantization type table (llama.cpp's
// type_traits[]): a row of Type stores BlockElems elements per BlockBytes
// bytes, quantized by QuantizeRow and expanded by DequantizeRow. Those
// per-type functions (QuantizeRowQ4_K, ...) trust their arguments' lengths
// and may panic on a mismatch or return garbage for NaN; Quantize and
// Dequantize validate first.
type Traits struct {
	Name       string    // ggml's name, e.g. "Q4_K"
	Type       gguf.Type // GGUF tensor type id
	BlockElems int
	BlockBytes int
	// Imatrix reports whether QuantizeRow uses an importance matrix
	// (Q8_0 ignores it, as llama.cpp does).
	Imatrix bool
	// QuantizeRow quantizes src (whole blocks) into dst (RowSize bytes);
	// imatrix, when non-nil, has len(src) values and src is one row.
	QuantizeRow func(dst []byte, src []float32, imatrix []float32)
	// DequantizeRow expands src into dst (whole blocks).
	DequantizeRow func(dst []float32, src []byte)
}

var traits = []Traits{
	{"Q4_0", gguf.TypeQ4_0, BlockQ4_0Elems, BlockQ4_0Bytes, true, QuantizeRowQ4_0, DequantizeRowQ4_0},
	{"Q4_1", gguf.TypeQ4_1, BlockQ4_1Elems, BlockQ4_1Bytes, true, QuantizeRowQ4_1, DequantizeRowQ4_1},
	{"Q5_0", gguf.TypeQ5_0, BlockQ5_0Elems, BlockQ5_0Bytes, true, QuantizeRowQ5_0, DequantizeRowQ5_0},
	{"Q5_1", gguf.TypeQ5_1, BlockQ5_1Elems, BlockQ5_1Bytes, true, QuantizeRowQ5_1, DequantizeRowQ5_1},
	{"Q8_0", gguf.TypeQ8_0, BlockQ8_0Elems, BlockQ8_0Bytes, false, QuantizeRowQ8_0, DequantizeRowQ8_0},
	{"Q2_K", gguf.TypeQ2_K, BlockQ2_KElems, BlockQ2_KBytes, true, QuantizeRowQ2_K, DequantizeRowQ2_K},
	{"Q3_K", gguf.TypeQ3_K, BlockQ3_KElems, BlockQ3_KBytes, true, QuantizeRowQ3_K, DequantizeRowQ3_K},
	{"Q4_K", gguf.TypeQ4_K, BlockQ4_KElems, BlockQ4_KBytes, true, QuantizeRowQ4_K, DequantizeRowQ4_K},
	{"Q5_K", gguf.TypeQ5_K, BlockQ5_KElems, BlockQ5_KBytes, true, QuantizeRowQ5_K, DequantizeRowQ5_K},
	{"Q6_K", gguf.TypeQ6_K, BlockQ6_KElems, BlockQ6_KBytes, true, QuantizeRowQ6_K, DequantizeRowQ6_K},
}

// TypeTraits returns the table row of t.
func TypeTraits(t gguf.Type) (Traits, bool) {
	for _, tr := range traits {
		if tr.Type == t {
			return tr, true
		}
	}
	return Traits{}, false
}

// AllTraits returns a copy of the table.
func AllTraits() []Traits { return append([]Traits(nil), traits...) }

func validQuantTypes() string {
	names := make([]string, len(traits))
	for i, tr := range traits {
		names[i] = tr.Name
	}
	return strings.Join(names, ", ")
}

// ParseType maps a type name ("q4_k", "Q8_0") to its GGUF type.
func ParseType(name string) (gguf.Type, error) {
	for _, tr := range traits {
		if strings.EqualFold(tr.Name, name) {
			return tr.Type, nil
		}
	}
	return 0, fmt.Errorf("quantize: unsupported type %q, want one of %s", name, validQuantTypes())
}

func lookup(t gguf.Type) (Traits, error) {
	tr, ok := TypeTraits(t)
	if !ok {
		return tr, fmt.Errorf("quantize: unsupported type %s, want one of %s", t, validQuantTypes())
	}
	return tr, nil
}

// RowSize is ggml_row_size: the bytes of n elements of type t. n must be a
// whole number of blocks.
func RowSize(t gguf.Type, n int) (int, error) {
	tr, err := lookup(t)
	if err != nil {
		return 0, err
	}
	if n < 0 || n%tr.BlockElems != 0 {
		return 0, fmt.Errorf("quantize: %s: %d elements is not a multiple of the block size %d", tr.Name, n, tr.BlockElems)
	}
	return n / tr.BlockElems * tr.BlockBytes, nil
}

// Quantize quantizes src into dst (RowSize(t, len(src)) bytes) as llama.cpp's
// quantize_<type> does. With imatrix nil the _ref quantizer runs and rows do
// not matter. With an importance matrix (one non-negative weight per column,
// as llama-imatrix writes), src holds rows of len(imatrix) elements, each
// quantized by the _impl quantizer. Non-finite inputs are refused with the
// index of the first one (llama.cpp asserts instead).
func Quantize(t gguf.Type, dst []byte, src []float32, imatrix []float32) error {
	tr, err := lookup(t)
	if err != nil {
		return err
	}
	size, err := RowSize(t, len(src))
	if err != nil {
		return err
	}
	if len(dst) != size {
		return fmt.Errorf("quantize: %s: dst has %d bytes, want %d for %d elements", tr.Name, len(dst), size, len(src))
	}
	for i, v := range src {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("quantize: %s: non-finite input %v at index %d", tr.Name, v, i)
		}
	}
	if imatrix == nil || !tr.Imatrix {
		tr.QuantizeRow(dst, src, nil)
		return nil
	}
	n := len(imatrix)
	if n == 0 || n%tr.BlockElems != 0 || len(src)%n != 0 {
		return fmt.Errorf("quantize: %s: imatrix has %d values, want a multiple of %d dividing the %d inputs", tr.Name, n, tr.BlockElems, len(src))
	}
	for i, v := range imatrix {
		if !(v >= 0) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("quantize: %s: imatrix value %v at index %d, want finite and >= 0", tr.Name, v, i)
		}
	}
	rowBytes := n / tr.BlockElems * tr.BlockBytes
	for r := 0; r < len(src)/n; r++ {
		tr.QuantizeRow(dst[r*rowBytes:(r+1)*rowBytes], src[r*n:(r+1)*n], imatrix)
	}
	return nil
}

// Dequantize expands src (RowSize(t, len(dst)) bytes) into dst.
func Dequantize(t gguf.Type, dst []float32, src []byte) error {
	tr, err := lookup(t)
	if err != nil {
		return err
	}
	size, err := RowSize(t, len(dst))
	if err != nil {
		return err
	}
	if len(src) != size {
		return fmt.Errorf("quantize: %s: src has %d bytes, want %d for %d elements", tr.Name, len(src), size, len(dst))
	}
	tr.DequantizeRow(dst, src)
	return nil
}
