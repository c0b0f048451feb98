package kernels

import "fmt"

// DType is the element type of a weight matrix as stored in the checkpoint.
// Compute is always fp32; backends convert weights on the fly.
type DType int

const (
	F32 DType = iota
	F16
	BF16
)

// Size is the element size in bytes.
func (d DType) Size() int {
	switch d {
	case F32:
		return 4
	case F16, BF16:
		return 2
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case F16:
		return "F16"
	case BF16:
		return "BF16"
	}
	return fmt.Sprintf("DType(%d)", int(d))
}

// Weight is a read-only view of a row-major matrix [Rows, Cols] in little-endian
// bytes, laid out like a Hugging Face nn.Linear weight: Rows = out features,
// Cols = in features. Data is usually a zero-copy view of an mmapped file, so
// nothing here may write to it.
type Weight struct {
	DType      DType
	Data       []byte // [Rows*Cols*DType.Size()]
	Rows, Cols int
}

// Check reports whether the view's byte length matches its shape and dtype.
func (w Weight) Check() error {
	if w.DType.Size() == 0 {
		return fmt.Errorf("kernels: weight: unsupported dtype %v (supported: F32, F16, BF16)", w.DType)
	}
	if w.Rows < 0 || w.Cols < 0 || len(w.Data) != w.Rows*w.Cols*w.DType.Size() {
		return fmt.Errorf("kernels: weight: %d bytes, want %d for %v [%d %d]", len(w.Data), w.Rows*w.Cols*w.DType.Size(), w.DType, w.Rows, w.Cols)
	}
	return nil
}
