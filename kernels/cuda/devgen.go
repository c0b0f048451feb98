package cuda

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// Generation on the device (`tune generate`, `tune eval bench`'s greedy
// answers): model.Generate asks the model's backend for a decoder. It runs
// the device pass's layer forward (weights uploaded once, the adapter
// applied) with each layer's keys and values appended to a key/value cache
// on the device, the attention kernel's cache form over rows 0..pos, and
// the LM head on the last row only: per call the token ids and positions go
// up and one row of logits comes down for the host's sampler.

// kvCache is the decoder's per-layer key/value rows [maxT, KVH·HD] and the
// position the next tokens take.
type kvCache struct {
	k, v []uint64
	pos0 int
}

// DeviceDecoder decodes one sequence of up to maxT positions.
type DeviceDecoder struct {
	mu   sync.Mutex
	w    *DeviceWindower // the pass and its int32 buffers
	kv   kvCache
	n    int // positions filled
	logs []float32
}

// NewDeviceDecoder returns a *DeviceDecoder for m with the adapter
// m.SetAdapter installed (a *lora.Adapter, or none) and sequences of up to
// maxT positions, or nil and no error where the device pass does not take
// the model (TUNE_CUDA_PASS=host, another adapter type, a trace it does not
// recognise, maxT beyond max_position_embeddings): model.Generate then runs
// op by op.
func (b *Backend) NewDeviceDecoder(m *model.Model, maxT int) (any, error) {
	if !b.devPass || m.Backend() != b {
		return nil, nil
	}
	if mp := m.Config.MaxPositions; mp > 0 && maxT > mp {
		return nil, nil
	}
	var ad *lora.Adapter
	if cur := m.CurrentAdapter(); cur != nil {
		var ok bool
		if ad, ok = cur.(*lora.Adapter); !ok {
			return nil, nil
		}
	}
	w, err := b.newDeviceWindower(m, ad, max(maxT, 2))
	if errors.Is(err, errUnsupported) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	d := &DeviceDecoder{w: w}
	p := w.p
	kvBytes := uint64(w.maxT) * uint64(p.dims.KVH*p.dims.HD) * 4
	err = func() (err error) {
		defer b.enter()()
		for range p.dims.L {
			var k, v uint64
			if k, err = p.own(kvBytes); err != nil {
				return err
			}
			if v, err = p.own(kvBytes); err != nil {
				return err
			}
			d.kv.k, d.kv.v = append(d.kv.k, k), append(d.kv.v, v)
		}
		return nil
	}()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("cuda: device decoder: key/value cache of %d positions: %w", w.maxT, err)
	}
	return d, nil
}

// Decode appends tokens at the next positions and writes the logits of the
// last one into logits [V].
func (d *DeviceDecoder) Decode(tokens []int, logits []float32) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.w
	if w == nil {
		return fmt.Errorf("cuda: device decoder: used after Close")
	}
	T := len(tokens)
	if T == 0 {
		return fmt.Errorf("cuda: device decoder: no tokens")
	}
	if d.n+T > w.maxT {
		return fmt.Errorf("model: forward: %d new tokens at position %d exceed the cache's %d positions", T, d.n, w.maxT)
	}
	if len(logits) < w.V {
		return fmt.Errorf("cuda: device decoder: logits has %d values, want %d", len(logits), w.V)
	}
	p := w.p
	for t, id := range tokens {
		if id < 0 || id >= w.V {
			return fmt.Errorf("model: forward: tokens[%d] = %d outside the vocabulary [0,%d)", t, id, w.V)
		}
		p.host[t] = int32(id)
		p.host[2*p.dims.T+t] = int32(d.n + t)
	}
	b := p.b
	defer b.enter()()
	defer catch("decode", &err)
	dm := p.dims
	b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p.tokens(), unsafe.Pointer(&p.host[0]), uint64(T)*4))
	b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p.positions(), unsafe.Pointer(&p.host[2*dm.T]), uint64(T)*4))
	p.train = false
	p.embedRows(T)
	d.kv.pos0 = d.n
	p.kv = &d.kv
	defer func() { p.kv = nil }()
	for l := range dm.L {
		p.layerForward(l, T, false)
	}
	last := p.xs[dm.L] + uint64((T-1)*dm.C)*4
	p.rmsnorm(p.hidden, last, p.norm, 1, dm.C)
	p.baseGEMM("device decoder lm_head", p.logits, p.hidden, p.lmHead, 1, dm.V, dm.C)
	b.must("cuMemcpyDtoH", b.d.cuMemcpyDtoH(unsafe.Pointer(&logits[0]), p.logits, uint64(dm.V)*4))
	d.n += T
	return nil
}

// Close frees the decoder's device memory.
func (d *DeviceDecoder) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.w != nil {
		d.w.Close()
		d.w = nil
	}
}
