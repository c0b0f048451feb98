package model

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/qblock"
	"github.com/tunellm/tune/model/safetensors"
)

// QLoRA: the frozen base's linear projections stored block-quantized in
// memory and dequantized block by block inside the matmuls (forward and
// din; kernels/cpu qmatmul.go, qback.go). Embeddings, norms and lm_head stay
// as loaded.

// BaseQuantizer quantizes the row-major [rows, cols] fp32 matrix src into
// dst (rows*dt.RowBytes(cols) bytes) as dtype dt. Package model cannot
// import package quantize (which imports model), so the caller passes
// quantize.Quantize for the GGUF block types; NF4 needs none.
type BaseQuantizer func(dt kernels.DType, dst []byte, src []float32, rows, cols int) error

// QuantizeBase replaces the seven linear projections of every decoder layer
// (q,k,v,o,gate,up,down) by copies quantized to dt: kernels.NF4
// (bitsandbytes' NF4 with double quantization, blocks of 64 over the whole
// flattened matrix, as quantize_4bit does), or a GGUF block type through q.
// It runs workers tensors at a time, each holding one fp32 copy of its
// matrix. The model must not be in use; call it before SetAdapter/NewPass.
// A weight already quantized, or whose columns are not a whole number of
// blocks, is an error naming it; after an error the model may be partly
// quantized and should be closed.
func (m *Model) QuantizeBase(dt kernels.DType, workers int, q BaseQuantizer) error {
	if !dt.Quantized() {
		return fmt.Errorf("model: quantize base: %v is not a block-quantized dtype", dt)
	}
	if slices.Contains(kernels.IntDTypes, dt) {
		return fmt.Errorf("model: quantize base: %v: use QuantizeBaseInt", dt)
	}
	if dt != kernels.NF4 && q == nil {
		return fmt.Errorf("model: quantize base: %v needs a quantizer", dt)
	}
	return m.eachLinear(workers, func(l int, mod string) error { return m.quantizeLinear(l, mod, dt, q) })
}

// eachLinear runs f on every decoder linear (layer, module), workers at a
// time, and joins the errors (a worker stops at its first).
func (m *Model) eachLinear(workers int, f func(l int, mod string) error) error {
	type job struct {
		l   int
		mod string
	}
	var jobs []job
	for l := range m.layers {
		for _, mod := range AdapterModules {
			jobs = append(jobs, job{l, mod})
		}
	}
	workers = max(1, min(workers, len(jobs)))
	ch := make(chan job)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				if errs[w] != nil {
					continue
				}
				errs[w] = f(j.l, j.mod)
			}
		}()
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
	return errors.Join(errs...)
}

// quantizeLinear quantizes layer l's module in place (see QuantizeBase).
func (m *Model) quantizeLinear(l int, mod string, dt kernels.DType, q BaseQuantizer) error {
	name := linearName(l, mod)
	w, err := m.LinearWeight(l, mod)
	if err != nil {
		return err
	}
	if w.DType.Quantized() {
		return fmt.Errorf("model: quantize base: %s is already %v (a quantized checkpoint cannot be requantized for training; load the bf16 model)", name, w.DType)
	}
	rb := dt.RowBytes(w.Cols)
	if rb < 0 {
		e, _, _ := dt.Block()
		return fmt.Errorf("model: quantize base: %s: %d columns is not a multiple of the %v block size %d", name, w.Cols, dt, e)
	}
	f, err := weightFloat32(w)
	if err != nil {
		return fmt.Errorf("model: quantize base: %s: %w", name, err)
	}
	var data []byte
	if dt == kernels.NF4 {
		s := qblock.QuantizeNF4(f, true)
		data = s.AppendBlocks(make([]byte, 0, w.Rows*rb))
	} else {
		data = make([]byte, w.Rows*rb)
		if err := q(dt, data, f, w.Rows, w.Cols); err != nil {
			return fmt.Errorf("model: quantize base: %s: %w", name, err)
		}
	}
	return m.SetLinearWeight(l, mod, kernels.Weight{DType: dt, Data: data, Rows: w.Rows, Cols: w.Cols})
}

// weightFloat32 widens a float weight to a new fp32 slice.
func weightFloat32(w kernels.Weight) ([]float32, error) {
	st, ok := map[kernels.DType]safetensors.DType{kernels.F32: safetensors.F32, kernels.F16: safetensors.F16, kernels.BF16: safetensors.BF16}[w.DType]
	if !ok {
		return nil, fmt.Errorf("unsupported dtype %v", w.DType)
	}
	f := make([]float32, w.Rows*w.Cols)
	if err := safetensors.ToFloat32(f, w.Data, st); err != nil {
		return nil, err
	}
	return f, nil
}

// linearName is the Hugging Face name of layer l's projection module.
func linearName(l int, mod string) string {
	switch mod {
	case "q_proj", "k_proj", "v_proj", "o_proj":
		return fmt.Sprintf("model.layers.%d.self_attn.%s.weight", l, mod)
	}
	return fmt.Sprintf("model.layers.%d.mlp.%s.weight", l, mod)
}

// BaseLinearBytes is the bytes the decoder layers' linear projections take
// as currently stored (after QuantizeBase, in their quantized form).
func (m *Model) BaseLinearBytes() int64 {
	var n int64
	for l := range m.layers {
		for _, mod := range AdapterModules {
			w, err := m.LinearWeight(l, mod)
			if err == nil {
				n += int64(len(w.Data))
			}
		}
	}
	return n
}

// BaseLinearBytesAs is the bytes the decoder layers' linear projections
// would take stored as dt, or -1 when a matrix's columns are not a whole
// number of dt's blocks.
func (m *Model) BaseLinearBytesAs(dt kernels.DType) int64 {
	var n int64
	for l := range m.layers {
		for _, mod := range AdapterModules {
			w, err := m.LinearWeight(l, mod)
			rb := dt.RowBytes(w.Cols)
			if err != nil || rb < 0 {
				return -1
			}
			n += int64(w.Rows) * int64(rb)
		}
	}
	return n
}
