package eval

import (
	"fmt"

	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// A backend with an accelerator may score perplexity windows on its device
// (kernels/cuda's DeviceWindower: weights uploaded once, only the token ids
// going up and the NLL sum coming down per window) instead of op by op over
// host slices. DeviceWindower asks the model's backend for one through
// deviceWindowerMaker; package eval does not import the backend.

// deviceWindowerMaker is implemented by backends that can score windows on
// their device. NewDeviceWindower returns nil (and no error) when the
// backend prefers its per-op path for this model (kernels/cuda:
// TUNE_CUDA_PASS=host, a model its device pass does not recognise).
type deviceWindowerMaker interface {
	NewDeviceWindower(m *model.Model, a *lora.Adapter, maxT int) (any, error)
}

// deviceWindower is what a device windower must provide.
type deviceWindower interface {
	Windower
	Close()
}

// DeviceWindower returns a Windower that scores m's windows of up to maxT
// tokens on its backend's device, with the adapter m.SetAdapter installed,
// and the function that frees it. Where the backend has none for m (the CPU
// backend, TUNE_CUDA_PASS=host, DoRA, a quantized base, an adapter that is
// not a *lora.Adapter) it returns m itself and a no-op: the result is the
// same, computed by m.WindowNLL.
func DeviceWindower(m *model.Model, maxT int) (Windower, func(), error) {
	none := func() {}
	dm, ok := m.Backend().(deviceWindowerMaker)
	if !ok {
		return m, none, nil
	}
	var ad *lora.Adapter
	if cur := m.CurrentAdapter(); cur != nil {
		if ad, ok = cur.(*lora.Adapter); !ok {
			return m, none, nil
		}
	}
	w, err := dm.NewDeviceWindower(m, ad, maxT)
	if err != nil {
		return nil, none, fmt.Errorf("eval: device windower on backend %s: %w", m.Backend().Name(), err)
	}
	if w == nil {
		return m, none, nil
	}
	dw, ok := w.(deviceWindower)
	if !ok {
		return nil, none, fmt.Errorf("eval: device windower on backend %s: %T lacks WindowNLL or Close", m.Backend().Name(), w)
	}
	return dw, dw.Close, nil
}

// deviceKLDMaker is implemented by backends that can score KL divergence
// windows of two models on their device (kernels/cuda's DeviceKLD: both
// models' weights uploaded once; per window the token ids up and four
// float64 per scored token down). NewDeviceKLD returns nil (and no error)
// when the backend prefers its per-op path.
type deviceKLDMaker interface {
	NewDeviceKLD(base, m *model.Model, ab, am *lora.Adapter, maxT int) (any, error)
}

// deviceKLDer is what a device KLD scorer must provide: Window writes, for
// rows first..len(w)-2 of window w, the model's NLL of the next token, the
// base's, KL(P_base || P_model) and 1 when the argmaxes agree (else 0), 4
// values a row, as KLDAcc.Add computes them.
type deviceKLDer interface {
	Window(w []int, first int, stats []float64) error
	Close()
}

// deviceKLD returns a device scorer for base and m (windows of up to maxT
// tokens, the adapters SetAdapter installed) and the function that frees
// it, or nil and a no-op where the backend has none: different backends,
// the CPU, an adapter that is not a *lora.Adapter, TUNE_CUDA_PASS=host.
func deviceKLD(base, m *model.Model, maxT int) (deviceKLDer, func(), error) {
	none := func() {}
	dm, ok := m.Backend().(deviceKLDMaker)
	if !ok || base.Backend() != m.Backend() {
		return nil, none, nil
	}
	var ads [2]*lora.Adapter
	for i, mm := range []*model.Model{base, m} {
		if cur := mm.CurrentAdapter(); cur != nil {
			if ads[i], ok = cur.(*lora.Adapter); !ok {
				return nil, none, nil
			}
		}
	}
	k, err := dm.NewDeviceKLD(base, m, ads[0], ads[1], maxT)
	if err != nil {
		return nil, none, fmt.Errorf("eval: kld on backend %s: %w", m.Backend().Name(), err)
	}
	if k == nil {
		return nil, none, nil
	}
	dk, ok := k.(deviceKLDer)
	if !ok {
		return nil, none, fmt.Errorf("eval: kld on backend %s: %T lacks Window or Close", m.Backend().Name(), k)
	}
	return dk, dk.Close, nil
}
