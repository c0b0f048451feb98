package kernels

import (
	"fmt"

	"github.com/tunellm/tune/kernels/qblock"
)

// DType is the element type of a weight matrix as stored in the checkpoint.
// Compute is always fp32; backends convert weights on the fly. Besides the
// float types there are llama.cpp's block-quantized types (GGUF tensor
// types): a row of Cols elements is Cols/BlockElems blocks of BlockBytes
// bytes each (see kernels/qblock for the layouts).
type DType int

const (
	F32 DType = iota
	F16
	BF16
)

// The block types start at 16, leaving room for more float types.
const (
	Q8_0 DType = 16 + iota
	Q4_0
	Q4_1
	Q5_0
	Q5_1
	Q2_K
	Q3_K
	Q4_K
	Q5_K
	Q6_K
	// NF4 is bitsandbytes' 4-bit NormalFloat with double-quantized absmax
	// (QLoRA), in blocks of 64; the in-memory layout is qblock.NF4Format
	// (36 bytes per block). It has no GGUF type id: it exists only in memory,
	// for a frozen base quantized at load time (model.QuantizeBase).
	NF4
	// INT4, INT4_32, INT8, INT8_32 are the group-wise integer codes of
	// quantize/wq (GPTQ / compressed-tensors, `tune quantize --format
	// safetensors`) in self-contained blocks of 128 or 32 columns (fp16
	// scale, zero point, codes; qblock/intq.go): x = scale*(q-zero), the
	// checkpoint's dequantized values bit for bit. In memory only, for a
	// QLoRA base quantized at load or read from a quantized folder.
	INT4
	INT4_32
	INT8
	INT8_32
	numDTypes
)

var dtypeNames = map[DType]string{F32: "F32", F16: "F16", BF16: "BF16", Q8_0: "Q8_0", Q4_0: "Q4_0", Q4_1: "Q4_1",
	Q5_0: "Q5_0", Q5_1: "Q5_1", Q2_K: "Q2_K", Q3_K: "Q3_K", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K", NF4: "NF4",
	INT4: "INT4", INT4_32: "INT4_32", INT8: "INT8", INT8_32: "INT8_32"}

// DTypes lists the float, GGUF and NF4 dtypes in order (the integer
// blocks are in IntDTypes).
var DTypes = []DType{F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, NF4}

// IntDTypes lists the group-wise integer block dtypes.
var IntDTypes = []DType{INT4, INT4_32, INT8, INT8_32}

// Size is the element size in bytes of a float type, 0 for a block type
// (use RowBytes).
func (d DType) Size() int {
	switch d {
	case F32:
		return 4
	case F16, BF16:
		return 2
	}
	return 0
}

// Quantized reports a block-quantized type.
func (d DType) Quantized() bool { return d >= Q8_0 && d < numDTypes }

// Block returns the elements and bytes of one block (1 and Size() for the
// float types); ok is false for an unknown dtype.
func (d DType) Block() (elems, bytes int, ok bool) {
	if s := d.Size(); s > 0 {
		return 1, s, true
	}
	if !d.Quantized() {
		return 0, 0, false
	}
	f := d.Format()
	return f.BlockElems, f.BlockBytes, true
}

// Format returns the qblock table row of a quantized dtype (its
// dequantizer); the zero Format for the float types.
func (d DType) Format() qblock.Format {
	if !d.Quantized() {
		return qblock.Format{}
	}
	switch d {
	case NF4:
		return qblock.NF4Format
	case INT4:
		return qblock.INT4Format
	case INT4_32:
		return qblock.INT4_32Format
	case INT8:
		return qblock.INT8Format
	case INT8_32:
		return qblock.INT8_32Format
	}
	f, _ := qblock.ByName(d.String())
	return f
}

// RowBytes is the byte length of one row of cols elements, or -1 when cols
// is not a whole number of blocks or the dtype is unknown.
func (d DType) RowBytes(cols int) int {
	e, b, ok := d.Block()
	if !ok || cols < 0 || cols%e != 0 {
		return -1
	}
	return cols / e * b
}

// DTypeByName maps "Q4_K", "BF16", ... to a DType.
func DTypeByName(name string) (DType, bool) {
	for d, n := range dtypeNames {
		if n == name {
			return d, true
		}
	}
	return 0, false
}

func (d DType) String() string {
	if n, ok := dtypeNames[d]; ok {
		return n
	}
	return fmt.Sprintf("DType(%d)", int(d))
}

// Weight is a read-only view of a row-major matrix [Rows, Cols] in little-endian
// bytes, laid out like a Hugging Face nn.Linear weight: Rows = out features,
// Cols = in features. For a quantized dtype each row is Cols/BlockElems
// consecutive blocks, as in a GGUF tensor. Data is usually a zero-copy view
// of an mmapped file, so nothing here may write to it.
type Weight struct {
	DType      DType
	Data       []byte // [Rows*DType.RowBytes(Cols)]
	Rows, Cols int
}

// RowBytes is the byte length of one row.
func (w Weight) RowBytes() int { return w.DType.RowBytes(w.Cols) }

// Check reports whether the view's byte length matches its shape and dtype.
func (w Weight) Check() error {
	e, _, ok := w.DType.Block()
	if !ok {
		return fmt.Errorf("kernels: weight: unsupported dtype %v (supported: %v, %v)", w.DType, DTypes, IntDTypes)
	}
	if w.Rows < 0 || w.Cols < 0 {
		return fmt.Errorf("kernels: weight: negative shape [%d %d]", w.Rows, w.Cols)
	}
	if w.Cols%e != 0 {
		return fmt.Errorf("kernels: weight: %v [%d %d]: %d columns is not a multiple of the block size %d", w.DType, w.Rows, w.Cols, w.Cols, e)
	}
	if want := w.Rows * w.RowBytes(); len(w.Data) != want {
		return fmt.Errorf("kernels: weight: %d bytes, want %d for %v [%d %d]", len(w.Data), want, w.DType, w.Rows, w.Cols)
	}
	return nil
}
