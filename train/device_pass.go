package train

import (
	"fmt"

	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// A backend with an accelerator may run the whole LoRA training pass on
// its device (kernels/cuda's LoRAPass: base weights, activations, LoRA
// slabs and AdamW moments stay in device memory) instead of op by op over
// host slices. NewLoRA asks the model's backend for one through
// devicePasser; package train does not import the backend (its tests
// import train).
//
// By default the device pass keeps the adapter's host slabs in step with
// the trainer's host AdamW: it uploads the parameters when the host slab
// changed and downloads the gradients after each Backward (a few MB per
// micro-batch, no activations). A trainer that uses DeviceOptimizer
// instead moves only token ids in and the loss and grad norm out.

// devicePasser is implemented by backends with a device-resident LoRA
// pass. NewLoRADevicePass returns nil (and no error) when the backend
// prefers its per-op path for this adapter or options.
type devicePasser interface {
	NewLoRADevicePass(m *model.Model, a *lora.Adapter, maxT int, opts model.TrainOptions) (any, error)
}

// devicePass is what LoRA calls on a device pass.
type devicePass interface {
	Forward(tokens, positions, segIDs, labels []int32) (lossSum float64, n int, err error)
	Eval(tokens, positions, segIDs, labels []int32) (lossSum float64, n int, err error)
	Backward(scale float32) error
	ZeroGrads()
	SetDropoutStep(step uint64)
	ActivationBytes() uint64
	DeviceOptimizer()
	Step(lr, maxNorm, beta1, beta2, eps, weightDecay float64) (norm float64, err error)
	SyncToHost(m, v []float32) (step int64, err error)
	LoadFromHost(m, v []float32, step int64) error
	Close()
}

// DeviceOptimizer is implemented by Params whose optimizer can run on the
// device holding the gradients (a LoRA on a backend with a device pass).
// A trainer that uses it calls EnableDeviceOptimizer once before the first
// step, StepDevice instead of GradNorm, ClipGrads and AdamW.Update, and
// SyncToHost before it reads the host slabs (checkpoints, Save) and
// LoadFromHost after it wrote them (resume).
type DeviceOptimizer interface {
	// EnableDeviceOptimizer reports whether the optimizer runs on the
	// device from now on (false: keep the host path).
	EnableDeviceOptimizer() bool
	// StepDevice clips the gradients to maxNorm (<= 0: off) and applies one
	// AdamW step with lr; it returns the gradient norm before clipping
	// (NaN or Inf: nothing was updated).
	StepDevice(lr, maxNorm float64, cfg AdamWConfig) (norm float64, err error)
	// SyncToHost copies the parameters to the host slabs and the moments
	// and step count into opt.
	SyncToHost(opt *AdamW) error
	// LoadFromHost copies the host slabs and opt's moments and step count
	// to the device.
	LoadFromHost(opt *AdamW) error
}

// DeviceGradReducer is implemented by Params whose gradients live in device
// memory and can be summed there across ranks (a LoRA on a device pass): a
// data-parallel trainer with a device communicator (NCCL, see
// Trainer.OpenDevice) then keeps the optimizer on the device as one process
// does (DeviceOptimizer), and calls AllReduceGrads once per step, after the
// backwards and before StepDevice, instead of summing the host grad slabs.
type DeviceGradReducer interface {
	DeviceOptimizer
	// DeviceGrads reports whether the gradients are on the device and
	// AllReduceGrads can sum them (false: the host path; for a LoRA, when
	// the backend trains it op by op, as with TUNE_CUDA_PASS=host).
	DeviceGrads() bool
	// AllReduceGrads replaces the device gradients by their sum over the
	// ranks with sum (dist.DeviceComm.AllReduceF32: device addresses,
	// float32 count, CUDA stream).
	AllReduceGrads(sum func(send, recv uint64, count int, stream uint64) error) error
}

// deviceReducer is a device pass that sums its gradients across ranks in
// device memory (kernels/cuda's LoRAPass.AllReduceGrads).
type deviceReducer interface {
	AllReduceGrads(sum func(send, recv uint64, count int, stream uint64) error) error
}

// DeviceGrads implements DeviceGradReducer.
func (l *LoRA) DeviceGrads() bool {
	_, ok := l.dev.(deviceReducer)
	return ok
}

// AllReduceGrads implements DeviceGradReducer.
func (l *LoRA) AllReduceGrads(sum func(send, recv uint64, count int, stream uint64) error) error {
	r, ok := l.dev.(deviceReducer)
	if !ok {
		return fmt.Errorf("train: AllReduceGrads: the gradients are not on a device that sums them")
	}
	return r.AllReduceGrads(sum)
}

// newDevicePass asks m's backend for a device pass (nil when it has none).
func newDevicePass(m *model.Model, a *lora.Adapter, maxT int, opts model.TrainOptions) (devicePass, error) {
	dp, ok := m.Backend().(devicePasser)
	if !ok {
		return nil, nil
	}
	p, err := dp.NewLoRADevicePass(m, a, maxT, opts)
	if err != nil || p == nil {
		return nil, err
	}
	d, ok := p.(devicePass)
	if !ok {
		return nil, fmt.Errorf("train: backend %s: its device pass (%T) lacks the methods LoRA calls", m.Backend().Name(), p)
	}
	return d, nil
}

// EnableDeviceOptimizer implements DeviceOptimizer.
func (l *LoRA) EnableDeviceOptimizer() bool {
	if l.dev == nil {
		return false
	}
	l.dev.DeviceOptimizer()
	return true
}

// StepDevice implements DeviceOptimizer.
func (l *LoRA) StepDevice(lr, maxNorm float64, c AdamWConfig) (float64, error) {
	if l.dev == nil {
		return 0, fmt.Errorf("train: StepDevice: no device pass")
	}
	return l.dev.Step(lr, maxNorm, c.Beta1, c.Beta2, c.Eps, c.WeightDecay)
}

// SyncToHost implements DeviceOptimizer.
func (l *LoRA) SyncToHost(opt *AdamW) error {
	if l.dev == nil {
		return nil
	}
	var m, v []float32
	if opt != nil {
		m, v = opt.M, opt.V
	}
	step, err := l.dev.SyncToHost(m, v)
	if err == nil && opt != nil {
		opt.Step = step
	}
	return err
}

// LoadFromHost implements DeviceOptimizer.
func (l *LoRA) LoadFromHost(opt *AdamW) error {
	if l.dev == nil {
		return nil
	}
	if opt == nil {
		return l.dev.LoadFromHost(nil, nil, 0)
	}
	return l.dev.LoadFromHost(opt.M, opt.V, opt.Step)
}

// OnDevice reports whether the backend's device-resident pass computes.
func (l *LoRA) OnDevice() bool { return l.dev != nil }

// ActivationBytes is the training pass's activation memory: the device
// slab when the device pass computes, else the host pass's.
func (l *LoRA) ActivationBytes() int64 {
	if l.dev != nil {
		return int64(l.dev.ActivationBytes())
	}
	return l.Pass.ActivationBytes()
}

// Close frees the device pass's memory (a no-op on the host path).
func (l *LoRA) Close() {
	if l.dev != nil {
		l.dev.Close()
		l.dev = nil
	}
}

var _ DeviceGradReducer = (*LoRA)(nil)
