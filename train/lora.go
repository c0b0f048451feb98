package train

import (
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// LoRA couples a training pass and an adapter as the trainer's Model and
// Params: the pass computes, the adapter holds the trained slabs.
type LoRA struct {
	Pass    *model.Pass // the host pass; nil when the device pass (dev) computes
	Adapter *lora.Adapter
	hook    *evalHook
	dev     devicePass // the backend's device-resident pass computes when set (device_pass.go)
}

// NewLoRA allocates a training pass of m for sequences of up to maxT tokens
// with adapter a (opts.Adapter is set here).
func NewLoRA(m *model.Model, a *lora.Adapter, maxT int, opts model.TrainOptions) (*LoRA, error) {
	h := &evalHook{a: a}
	opts.Adapter = h
	dev, err := newDevicePass(m, a, maxT, opts)
	if err != nil {
		return nil, err
	}
	if dev != nil {
		// The device holds the pass: no host activations at all.
		return &LoRA{Adapter: a, hook: h, dev: dev}, nil
	}
	p, err := m.NewPass(maxT, opts)
	if err != nil {
		return nil, err
	}
	return &LoRA{Pass: p, Adapter: a, hook: h}, nil
}

// evalHook passes the adapter through, turning its training mode (dropout)
// off while Eval runs: the pass always runs its adapter as in training.
type evalHook struct {
	a    *lora.Adapter
	eval bool
}

func (h *evalHook) Has(layer int, module string) bool { return h.a.Has(layer, module) }
func (h *evalHook) Forward(layer int, module string, out, in []float32, T int, train bool) {
	h.a.Forward(layer, module, out, in, T, train && !h.eval)
}
func (h *evalHook) Backward(layer int, module string, din, dout, in []float32, T int) {
	h.a.Backward(layer, module, din, dout, in, T)
}

// BindBase passes the base projections a DoRA adapter needs (model.BaseAware)
// through to the adapter.
func (h *evalHook) BindBase(layer int, module string, be kernels.Backend, w kernels.Weight, bias []float32) {
	h.a.BindBase(layer, module, be, w, bias)
}

func (l *LoRA) Forward(tokens, positions, segIDs, labels []int32) (float64, int, error) {
	if l.dev != nil {
		return l.dev.Forward(tokens, positions, segIDs, labels)
	}
	return l.Pass.Forward(tokens, positions, segIDs, labels)
}
func (l *LoRA) Backward(scale float32) error {
	if l.dev != nil {
		return l.dev.Backward(scale)
	}
	return l.Pass.Backward(scale)
}

// Eval is a forward without dropout whose state no Backward uses.
func (l *LoRA) Eval(tokens, positions, segIDs, labels []int32) (float64, int, error) {
	if l.dev != nil {
		return l.dev.Eval(tokens, positions, segIDs, labels)
	}
	l.hook.eval = true
	defer func() { l.hook.eval = false }()
	return l.Pass.Forward(tokens, positions, segIDs, labels)
}

func (l *LoRA) Slabs() ([][]float32, [][]float32) {
	return [][]float32{l.Adapter.Params()}, [][]float32{l.Adapter.Grads()}
}
func (l *LoRA) ZeroGrads() {
	l.Adapter.ZeroGrads()
	if l.dev != nil {
		l.dev.ZeroGrads()
	}
}
func (l *LoRA) Save(dir, dtype string) error { return l.Adapter.Save(dir, dtype) }
func (l *LoRA) SetDropoutStep(step uint64) {
	l.Adapter.SetDropoutStep(step)
	if l.dev != nil {
		l.dev.SetDropoutStep(step)
	}
}

var (
	_ Model          = (*LoRA)(nil)
	_ Params         = (*LoRA)(nil)
	_ DropoutStepper = (*LoRA)(nil)
)
