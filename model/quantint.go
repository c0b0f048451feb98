package model

import (
	"fmt"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/qblock"
)

// Group-wise integer QLoRA bases (lora.base_quant int4/int8, or a quantized
// folder read as stored): the codes, fp16 scales and zero points of
// quantize/wq held in kernels.INT4/INT4_32/INT8/INT8_32 blocks, which
// dequantize to wq's scale*(q-zero) bit for bit.

// IntLinear is a weight-only integer-quantized linear [Rows (out), Cols
// (in)] with wq.QTensor's fields (package model cannot import quantize/wq):
//
//	w[r,c] = Scales[r*G+g] * (Q[r*Cols+c] - Zeros[r*G+g]),  g = GIdx[c] (nil: c/GroupSize; 0 per channel)
type IntLinear struct {
	Name                        string
	Rows, Cols, Bits, GroupSize int // GroupSize -1: one scale per row
	Q                           []uint8
	Scales                      []float32 // fp16 values
	Zeros                       []uint8
	GIdx                        []int32 // act-order column groups; nil or c/GroupSize
}

// IntWeight encodes t as in-memory integer blocks (qblock.IntFormat picks
// the block size). Act-order (a g_idx other than c/GroupSize), a group size
// the blocks cannot tile, lengths that do not match the shape or a scale
// that is not an fp16 value are errors naming the tensor.
func IntWeight(t IntLinear) (kernels.Weight, error) {
	f, err := qblock.IntFormat(t.Bits, t.GroupSize, t.Cols)
	if err != nil {
		return kernels.Weight{}, fmt.Errorf("%s: %w", t.Name, err)
	}
	dt, ok := kernels.DTypeByName(f.Name)
	if !ok {
		return kernels.Weight{}, fmt.Errorf("%s: no dtype %s", t.Name, f.Name)
	}
	gs := t.GroupSize
	if gs == -1 {
		gs = t.Cols
	}
	G := t.Cols / max(gs, 1)
	switch {
	case t.Rows <= 0 || t.Cols <= 0:
		return kernels.Weight{}, fmt.Errorf("%s: shape [%d %d]", t.Name, t.Rows, t.Cols)
	case len(t.Q) != t.Rows*t.Cols:
		return kernels.Weight{}, fmt.Errorf("%s: %d codes, want %d×%d", t.Name, len(t.Q), t.Rows, t.Cols)
	case len(t.Scales) != t.Rows*G || len(t.Zeros) != t.Rows*G:
		return kernels.Weight{}, fmt.Errorf("%s: %d scales and %d zero points, want %d×%d", t.Name, len(t.Scales), len(t.Zeros), t.Rows, G)
	case t.GIdx != nil && len(t.GIdx) != t.Cols:
		return kernels.Weight{}, fmt.Errorf("%s: g_idx has %d entries, want %d", t.Name, len(t.GIdx), t.Cols)
	}
	for c, g := range t.GIdx {
		if int(g) != c/gs {
			return kernels.Weight{}, fmt.Errorf("%s: act-order checkpoint (g_idx[%d] = %d, not column/group_size = %d): its groups are not runs of consecutive columns, which the in-memory blocks need (quantize without --act-order to train on it)", t.Name, c, g, c/gs)
		}
	}
	e, bb := f.BlockElems, f.BlockBytes
	w := kernels.Weight{DType: dt, Rows: t.Rows, Cols: t.Cols, Data: make([]byte, t.Rows*(t.Cols/e)*bb)}
	for r := 0; r < t.Rows; r++ {
		for b := 0; b < t.Cols/e; b++ {
			g := r*G + b*e/gs
			dst := w.Data[(r*(t.Cols/e)+b)*bb:]
			if err := qblock.PutIntBlock(f, dst, t.Scales[g], t.Zeros[g], t.Q[r*t.Cols+b*e:]); err != nil {
				return kernels.Weight{}, fmt.Errorf("%s: row %d, columns %d..%d: %w", t.Name, r, b*e, (b+1)*e-1, err)
			}
		}
	}
	return w, nil
}

// IntQuantizer quantizes the fp32 matrix src [rows, cols] named name to
// integer codes (quantize/wq's RTN, passed in by the caller).
type IntQuantizer func(name string, src []float32, rows, cols int) (IntLinear, error)

// QuantizeBaseInt replaces the seven linear projections of every decoder
// layer by integer blocks of what q makes of them (see QuantizeBase for the
// workers, the state after an error and a weight already quantized).
func (m *Model) QuantizeBaseInt(workers int, q IntQuantizer) error {
	if q == nil {
		return fmt.Errorf("model: quantize base: int: no quantizer")
	}
	return m.eachLinear(workers, func(l int, mod string) error {
		name := linearName(l, mod)
		w, err := m.LinearWeight(l, mod)
		if err != nil {
			return err
		}
		if w.DType.Quantized() {
			return fmt.Errorf("model: quantize base: %s is already %v (a quantized checkpoint cannot be requantized for training; load the bf16 model)", name, w.DType)
		}
		f, err := weightFloat32(w)
		if err != nil {
			return fmt.Errorf("model: quantize base: %s: %w", name, err)
		}
		t, err := q(name, f, w.Rows, w.Cols)
		if err != nil {
			return fmt.Errorf("model: quantize base: %w", err)
		}
		if t.Rows != w.Rows || t.Cols != w.Cols {
			return fmt.Errorf("model: quantize base: %s: quantized to [%d %d], want [%d %d]", name, t.Rows, t.Cols, w.Rows, w.Cols)
		}
		t.Name = name
		qw, err := IntWeight(t)
		if err != nil {
			return fmt.Errorf("model: quantize base: %w", err)
		}
		return m.SetLinearWeight(l, mod, qw)
	})
}

// BaseLinearBytesInt is the bytes the decoder layers' linear projections
// would take as bits-wide integer blocks with groupSize columns per scale,
// or an error naming the first matrix the blocks cannot hold.
func (m *Model) BaseLinearBytesInt(bits, groupSize int) (int64, error) {
	var n int64
	for l := range m.layers {
		for _, mod := range AdapterModules {
			w, err := m.LinearWeight(l, mod)
			if err != nil {
				return 0, err
			}
			f, err := qblock.IntFormat(bits, groupSize, w.Cols)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", linearName(l, mod), err)
			}
			n += int64(w.Rows) * int64(w.Cols/f.BlockElems*f.BlockBytes)
		}
	}
	return n, nil
}
