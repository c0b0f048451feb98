// Package wq is weight-only integer quantization for GPU serving: INT8 and
// INT4 codes with one scale (and zero point) per group of input columns of
// each output row, as GPTQ, AWQ and compressed-tensors checkpoints store them.
// It holds the in-memory form every method produces (round-to-nearest here,
// GPTQ in quantize/gptq) and the checkpoint layouts vLLM and transformers load.
//
// It is not llama.cpp's block quantization (package quantize): those are GGUF
// types with their own search; these are the GPU layouts.
package wq

import (
	"fmt"
	"math"

	"github.com/tunellm/tune/model/safetensors"
)

// Scheme is how a matrix is quantized.
type Scheme struct {
	Bits      int  // 4 or 8
	GroupSize int  // input columns per scale; -1: one group per output row (per channel)
	Sym       bool // symmetric: the zero point is fixed at 2^(Bits-1)
	// V1Zeros keeps asymmetric zero points in [1, MaxQ]: a GPTQ v1
	// checkpoint (checkpoint_format "gptq", what vLLM's gptq kernels and
	// AutoGPTQ read) stores zero-1 in Bits bits and the loaders add the 1
	// back, so a zero point of 0 cannot be stored. FindParams clamps to 1
	// instead of 0; the codes are chosen against that zero point, so what
	// is saved dequantizes exactly as quantized. Ignored when Sym.
	V1Zeros bool
}

// MaxQ is the largest code, 2^Bits - 1.
func (s Scheme) MaxQ() int { return 1<<s.Bits - 1 }

// Groups is the number of groups a row of cols input columns has.
func (s Scheme) Groups(cols int) int {
	if s.GroupSize <= 0 {
		return 1
	}
	return (cols + s.GroupSize - 1) / s.GroupSize
}

// Check validates the scheme for a matrix with cols input columns.
func (s Scheme) Check(cols int) error {
	if s.Bits != 4 && s.Bits != 8 {
		return fmt.Errorf("wq: bits: want 4 or 8, got %d", s.Bits)
	}
	if s.GroupSize == 0 || s.GroupSize < -1 {
		return fmt.Errorf("wq: group size: want -1 (per channel) or > 0, got %d", s.GroupSize)
	}
	if s.GroupSize > 0 && cols%s.GroupSize != 0 {
		return fmt.Errorf("wq: %d input columns are not a multiple of the group size %d", cols, s.GroupSize)
	}
	return nil
}

func (s Scheme) String() string {
	g := "per-channel"
	if s.GroupSize > 0 {
		g = fmt.Sprintf("g%d", s.GroupSize)
	}
	kind := "asym"
	if s.Sym {
		kind = "sym"
	}
	return fmt.Sprintf("int%d %s %s", s.Bits, g, kind)
}

// QTensor is a quantized nn.Linear weight [Rows (out), Cols (in)]:
//
//	w[r,c] ≈ Scales[r*G+g] * (Q[r*Cols+c] - Zeros[r*G+g]),  g = GIdx[c] (nil: c/GroupSize)
//
// Codes and zero points are unsigned, 0..MaxQ; a symmetric scheme has every
// zero point at 2^(Bits-1). Scales are exactly representable in fp16, the
// precision every layout stores them in, so the codes were chosen against the
// scale the file holds and dequantization is the same before and after saving.
type QTensor struct {
	Name       string
	Rows, Cols int
	Scheme     Scheme
	Q          []uint8   // [Rows*Cols]
	Scales     []float32 // [Rows*G]
	Zeros      []uint8   // [Rows*G]
	GIdx       []int32   // [Cols] group of each input column (act-order); nil: c/GroupSize
}

// Group is the group input column c belongs to.
func (t *QTensor) Group(c int) int {
	switch {
	case t.GIdx != nil:
		return int(t.GIdx[c])
	case t.Scheme.GroupSize <= 0:
		return 0
	}
	return c / t.Scheme.GroupSize
}

// Check validates lengths and code ranges.
func (t *QTensor) Check() error {
	if err := t.Scheme.Check(t.Cols); err != nil {
		return fmt.Errorf("%s: %w", t.Name, err)
	}
	G := t.Scheme.Groups(t.Cols)
	switch {
	case len(t.Q) != t.Rows*t.Cols:
		return fmt.Errorf("wq: %s: %d codes, want %d×%d", t.Name, len(t.Q), t.Rows, t.Cols)
	case len(t.Scales) != t.Rows*G || len(t.Zeros) != t.Rows*G:
		return fmt.Errorf("wq: %s: %d scales and %d zeros, want %d×%d", t.Name, len(t.Scales), len(t.Zeros), t.Rows, G)
	case t.GIdx != nil && len(t.GIdx) != t.Cols:
		return fmt.Errorf("wq: %s: g_idx has %d entries, want %d", t.Name, len(t.GIdx), t.Cols)
	}
	maxq := uint8(t.Scheme.MaxQ())
	for i, q := range t.Q {
		if q > maxq {
			return fmt.Errorf("wq: %s: code %d at %d exceeds %d", t.Name, q, i, maxq)
		}
	}
	for c, g := range t.GIdx {
		if g < 0 || int(g) >= G {
			return fmt.Errorf("wq: %s: g_idx[%d] = %d outside [0,%d)", t.Name, c, g, G)
		}
	}
	return nil
}

// DequantizeRow writes row r of the matrix to dst[:Cols].
func (t *QTensor) DequantizeRow(dst []float32, r int) {
	G := t.Scheme.Groups(t.Cols)
	q := t.Q[r*t.Cols : (r+1)*t.Cols]
	s, z := t.Scales[r*G:(r+1)*G], t.Zeros[r*G:(r+1)*G]
	for c := range q {
		g := t.Group(c)
		dst[c] = s[g] * float32(int(q[c])-int(z[g]))
	}
}

// Dequantize returns the whole matrix [Rows*Cols] in fp32.
func (t *QTensor) Dequantize() []float32 {
	out := make([]float32, t.Rows*t.Cols)
	for r := 0; r < t.Rows; r++ {
		t.DequantizeRow(out[r*t.Cols:(r+1)*t.Cols], r)
	}
	return out
}

// f16 rounds to the nearest fp16 value.
func f16(x float32) float32 { return safetensors.F16ToFloat32(safetensors.Float32ToF16(x)) }

// FindParams picks a group's scale and zero point from its values the way
// GPTQ's Quantizer.find_params does (min/max including 0; symmetric uses the
// larger magnitude on both sides; an all-zero group gets [-1, 1]), with the
// scale rounded to fp16 as stored.
func (s Scheme) FindParams(x []float32) (scale float32, zero uint8) {
	var xmin, xmax float32
	for _, v := range x {
		xmin = min(xmin, v)
		xmax = max(xmax, v)
	}
	maxq := float32(s.MaxQ())
	if s.Sym {
		xmax = max(-xmin, xmax)
		if xmin < 0 {
			xmin = -xmax
		}
	}
	if xmin == 0 && xmax == 0 {
		xmin, xmax = -1, 1
	}
	scale = f16((xmax - xmin) / maxq)
	if scale == 0 { // a range below fp16's smallest subnormal
		scale = f16(float32(math.SmallestNonzeroFloat32))
		if scale == 0 {
			scale = 5.960464477539063e-08 // fp16's smallest subnormal
		}
	}
	if s.Sym {
		return scale, uint8((s.MaxQ() + 1) / 2)
	}
	z := math.RoundToEven(float64(-xmin / scale))
	lo := 0.0
	if s.V1Zeros {
		lo = 1
	}
	return scale, uint8(max(lo, min(float64(s.MaxQ()), z)))
}

// Code is the nearest code of x: clamp(round(x/scale) + zero, 0, MaxQ), with
// torch.round's ties-to-even.
func (s Scheme) Code(x, scale float32, zero uint8) uint8 {
	q := math.RoundToEven(float64(x/scale)) + float64(zero)
	return uint8(max(0, min(float64(s.MaxQ()), q)))
}

// RTN quantizes w [rows*cols] by round-to-nearest with per-group min/max
// parameters. NaN or Inf weights are an error naming the first bad index.
func RTN(name string, w []float32, rows, cols int, s Scheme) (*QTensor, error) {
	if err := s.Check(cols); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(w) != rows*cols {
		return nil, fmt.Errorf("wq: %s: %d values, want %d×%d", name, len(w), rows, cols)
	}
	for i, v := range w {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("wq: %s: weight [%d,%d] is %v", name, i/cols, i%cols, v)
		}
	}
	G := s.Groups(cols)
	gs := cols / G
	t := &QTensor{Name: name, Rows: rows, Cols: cols, Scheme: s,
		Q: make([]uint8, rows*cols), Scales: make([]float32, rows*G), Zeros: make([]uint8, rows*G)}
	for r := 0; r < rows; r++ {
		for g := 0; g < G; g++ {
			x := w[r*cols+g*gs : r*cols+(g+1)*gs]
			scale, zero := s.FindParams(x)
			t.Scales[r*G+g], t.Zeros[r*G+g] = scale, zero
			q := t.Q[r*cols+g*gs : r*cols+(g+1)*gs]
			for i, v := range x {
				q[i] = s.Code(v, scale, zero)
			}
		}
	}
	return t, nil
}
