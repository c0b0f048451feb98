package gptq

import (
	"fmt"
	"time"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/wq"
)

// ModuleReport is what GPTQ achieved on one linear layer.
type ModuleReport struct {
	Name       string
	Rows, Cols int
	// GPTQError and RTNError are ‖WX−QX‖²/‖WX‖² on the layer's calibration
	// inputs (those it saw with earlier layers already quantized), for the
	// GPTQ codes and for round-to-nearest with the same scheme.
	GPTQError, RTNError float64
	Damp                float64 // damping fraction used
	Dead                int     // input columns never active in calibration
}

// Report summarizes a Run.
type Report struct {
	Scheme            wq.Scheme
	Sequences, Tokens int
	Modules           []ModuleReport
	// MeanGPTQError and MeanRTNError average the modules' relative errors.
	MeanGPTQError, MeanRTNError float64
	Seconds                     float64
}

// moduleInput maps each of model.AdapterModules to the index of its input:
// q/k/v read the attention's normed input, o the attention output, gate/up
// the MLP's normed input, down the SwiGLU output.
var moduleInput = [7]int{0, 0, 0, 1, 2, 2, 3}

// Run quantizes the 7 linear layers of every decoder layer of m with GPTQ,
// layer by layer (GPTQ's sequential mode): the calibration sequences' hidden
// states go through layer l once with its original weights to build the
// Hessians of its inputs, the layer's modules are quantized and replaced in m
// by their dequantized values (owned F32 weights), and the sequences go
// through layer l again to become layer l+1's inputs. Each QTensor goes to
// emit in layer then module order (q, k, v, o, gate, up, down); HF names
// model.layers.<l>.self_attn.<m>.weight / model.layers.<l>.mlp.<m>.weight.
//
// m is left holding the dequantized weights. An adapter installed in m is
// set aside during Run and put back after. Memory: the hidden states of every
// sequence (Σ T × hidden_size fp32) and the Hessians of one layer.
//
// With opts.Comm (W ranks, every one calling Run with the same calib and
// options) rank r runs only sequences r, r+W, ... through the layers (and
// keeps only their hidden states); each Hessian's float64 sums and token
// count are all-reduced before it is factored, so every rank quantizes the
// same H into the same codes, puts the same weights into its m, and emits
// the same tensors (the caller writes them on one rank). The sums differ
// from one process's only by float64 summation order (per-rank partial sums
// added at the end), which is exact whenever the sums of the fp32 chunk
// products are; see docs/SCALING.md for what was measured.
func Run(m *model.Model, calib [][]int, opts Options, emit func(*wq.QTensor) error) (*Report, error) {
	start := time.Now()
	if opts.Backend == nil {
		opts.Backend = m.Backend()
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg := m.Config
	C := cfg.Hidden
	if len(calib) == 0 {
		return nil, fmt.Errorf("gptq: no calibration sequences")
	}
	rep := &Report{Scheme: o.Scheme, Sequences: len(calib)}
	rank, size := 0, 1
	if o.Comm != nil && o.Comm.Size() > 1 {
		rank, size = o.Comm.Rank(), o.Comm.Size()
	}
	for n, seq := range calib {
		rep.Tokens += len(seq)
		if size == 1 || n%size == rank {
			continue
		}
		// Another rank embeds it; fail here too, rather than wait for it.
		if len(seq) == 0 {
			return nil, fmt.Errorf("gptq: calibration sequence %d: no tokens", n)
		}
		for i, id := range seq {
			if id < 0 || id >= cfg.Vocab {
				return nil, fmt.Errorf("gptq: calibration sequence %d: token %d at %d is outside the vocabulary (%d)", n, id, i, cfg.Vocab)
			}
		}
	}
	// This rank's sequences and their hidden states.
	var mine [][]int
	var xs [][]float32
	maxT := 0
	for n, seq := range calib {
		if n%size != rank {
			continue
		}
		x := make([]float32, len(seq)*C)
		if err := m.Embed(x, seq); err != nil {
			return nil, fmt.Errorf("gptq: calibration sequence %d: %w", n, err)
		}
		mine, xs = append(mine, seq), append(xs, x)
		maxT = max(maxT, len(seq))
	}
	calib = mine
	buf := make([]float32, maxT*C)

	capt := &capture{layer: -1}
	prev := m.CurrentAdapter()
	m.SetAdapter(capt)
	defer m.SetAdapter(prev)

	widths := [4]int{C, cfg.Heads * cfg.HeadDim, C, cfg.Intermediate}
	// Without TrueSequential one pass captures the four inputs of a layer;
	// with it, each input is captured after the modules before it are
	// quantized (GPTQModel's true_sequential).
	stages := [][]int{{0, 1, 2, 3}}
	if o.TrueSequential {
		stages = [][]int{{0}, {1}, {2}, {3}}
	}
	for l := 0; l < cfg.Layers; l++ {
		for _, stage := range stages {
			capt.h = [4]*Hessian{}
			for _, in := range stage {
				capt.h[in] = NewHessian(widths[in], o.Backend)
			}
			capt.layer = l
			for n, seq := range calib {
				T := len(seq)
				copy(buf, xs[n])
				if err := m.LayerForward(l, buf[:T*C], T); err != nil {
					return nil, fmt.Errorf("gptq: %w", err)
				}
			}
			capt.layer = -1
			for _, in := range stage {
				if size > 1 {
					if err := capt.h[in].AllReduce(o.Comm); err != nil {
						return nil, fmt.Errorf("gptq: layer %d: Hessian all-reduce: %w", l, err)
					}
				}
				h := capt.h[in].Matrix()
				var f *Factor
				for mi, mod := range model.AdapterModules {
					if moduleInput[mi] != in {
						continue
					}
					if f == nil {
						if f, err = Factorize(WeightName(l, mod), h, widths[in], o); err != nil {
							return nil, err
						}
					}
					mr, err := quantizeModule(m, l, mod, h, f, o, emit)
					if err != nil {
						return nil, err
					}
					rep.Modules = append(rep.Modules, *mr)
				}
			}
		}
		capt.h = [4]*Hessian{}
		for n, seq := range calib {
			if err := m.LayerForward(l, xs[n], len(seq)); err != nil {
				return nil, fmt.Errorf("gptq: %w", err)
			}
		}
		if o.Progress != nil {
			o.Progress(l+1, cfg.Layers)
		}
	}
	for _, mr := range rep.Modules {
		rep.MeanGPTQError += mr.GPTQError / float64(len(rep.Modules))
		rep.MeanRTNError += mr.RTNError / float64(len(rep.Modules))
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// WeightName is the HF name of layer l's module weight.
func WeightName(l int, module string) string {
	switch module {
	case "gate_proj", "up_proj", "down_proj":
		return fmt.Sprintf("model.layers.%d.mlp.%s.weight", l, module)
	}
	return fmt.Sprintf("model.layers.%d.self_attn.%s.weight", l, module)
}

// quantizeModule runs GPTQ (and RTN, for the report) on one module, emits the
// QTensor and puts the dequantized weight into m.
func quantizeModule(m *model.Model, l int, mod string, h []float64, f *Factor, o Options, emit func(*wq.QTensor) error) (*ModuleReport, error) {
	name := WeightName(l, mod)
	kw, err := m.LinearWeight(l, mod)
	if err != nil {
		return nil, fmt.Errorf("gptq: %w", err)
	}
	rows, cols := kw.Rows, kw.Cols
	w := make([]float32, rows*cols)
	dt, ok := map[kernels.DType]safetensors.DType{kernels.F32: safetensors.F32, kernels.F16: safetensors.F16, kernels.BF16: safetensors.BF16}[kw.DType]
	if !ok {
		return nil, fmt.Errorf("gptq: %s: weight type %v: want F32, F16 or BF16 (an already quantized model?)", name, kw.DType)
	}
	if err := safetensors.ToFloat32(w, kw.Data, dt); err != nil {
		return nil, fmt.Errorf("gptq: %s: %w", name, err)
	}
	if cols != f.Cols {
		return nil, fmt.Errorf("gptq: %s: %d input columns, the captured input has %d", name, cols, f.Cols)
	}
	res, err := f.Quantize(name, w, rows, o)
	if err != nil {
		return nil, err
	}
	rtn, err := wq.RTN(name, w, rows, cols, o.Scheme)
	if err != nil {
		return nil, fmt.Errorf("gptq: %w", err)
	}
	dq := res.Dequantize()
	errs := OutputErrors(o.Backend, w, [][]float32{dq, rtn.Dequantize()}, rows, cols, h)
	if emit != nil {
		if err := emit(res.QTensor); err != nil {
			return nil, fmt.Errorf("gptq: %s: %w", name, err)
		}
	}
	if err := m.SetLinearWeight(l, mod, kernels.Weight{DType: kernels.F32, Data: f32Bytes(dq), Rows: rows, Cols: cols}); err != nil {
		return nil, fmt.Errorf("gptq: %w", err)
	}
	return &ModuleReport{Name: name, Rows: rows, Cols: cols, GPTQError: errs[0], RTNError: errs[1], Damp: res.Damp, Dead: res.Dead}, nil
}

// capture is a model.Adapter that adds nothing and accumulates the Hessian of
// each distinct projection input of one layer while it runs.
type capture struct {
	layer int // -1: off
	h     [4]*Hessian
}

func (c *capture) Has(int, string) bool { return true }

func (c *capture) Forward(layer int, module string, out, in []float32, T int, train bool) {
	if layer != c.layer {
		return
	}
	i := -1
	switch module {
	case "q_proj":
		i = 0
	case "o_proj":
		i = 1
	case "gate_proj":
		i = 2
	case "down_proj":
		i = 3
	}
	if i >= 0 && c.h[i] != nil {
		c.h[i].Add(in, T)
	}
}

func (c *capture) Backward(int, string, []float32, []float32, []float32, int) {}
