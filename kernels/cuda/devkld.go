package cuda

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// KL divergence on the device (`tune eval kld`): the base model and the
// model under test each run their device pass (deveval.go's windower:
// weights uploaded once) over the same window, leaving the final-normed
// hidden states on the device; the scored rows' logits are made LossChunk
// rows at a time for both models (the LM heads' GEMMs), and kld_rows
// (kld.cu) reduces each row pair to the four numbers eval's KLDAcc
// accumulates: the two NLLs of the next token, KL(P_base || P_model) and
// whether the argmaxes agree. Per window the int32 tokens and targets go
// up and 32 bytes per scored token come down, instead of two [V] logits
// rows per token.

func init() { kernelNames = append(kernelNames, "kld_rows") }

// DeviceKLD scores windows of two models on one device.
type DeviceKLD struct {
	mu      sync.Mutex
	b       *Backend
	base, m *DeviceWindower
	tg, st  uint64  // int32 [maxT] targets, float64 [4·LC] stats (base pass-owned)
	hostTg  []int32 // the targets of a window
	lab     []int32 // all IgnoreIndex: the forward scores nothing itself
}

// NewDeviceKLD returns a *DeviceKLD for base and m (both loaded on this
// backend, with adapters ab and am, nil for none) and windows of up to maxT
// tokens, or nil and no error when the device pass does not take one of
// them (TUNE_CUDA_PASS=host, a trace it does not recognise, maxT beyond
// max_position_embeddings): the caller keeps the per-op path.
func (b *Backend) NewDeviceKLD(base, m *model.Model, ab, am *lora.Adapter, maxT int) (any, error) {
	if !b.devPass {
		return nil, nil
	}
	if base.Backend() != m.Backend() {
		return nil, nil
	}
	if base.Config.Vocab != m.Config.Vocab {
		return nil, fmt.Errorf("cuda: device kld: base vocabulary has %d tokens, model %d", base.Config.Vocab, m.Config.Vocab)
	}
	for _, mm := range []*model.Model{base, m} {
		if mp := mm.Config.MaxPositions; mp > 0 && maxT > mp {
			return nil, nil
		}
	}
	k, err := b.newDeviceKLD(base, m, ab, am, maxT)
	if errors.Is(err, errUnsupported) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return k, nil
}

func (b *Backend) newDeviceKLD(base, m *model.Model, ab, am *lora.Adapter, maxT int) (k *DeviceKLD, err error) {
	k = &DeviceKLD{b: b, hostTg: make([]int32, maxT), lab: make([]int32, maxT)}
	if k.base, err = b.newDeviceWindower(base, ab, maxT); err != nil {
		return nil, err
	}
	if k.m, err = b.newDeviceWindower(m, am, maxT); err != nil {
		k.base.Close()
		return nil, err
	}
	for t := range k.lab {
		k.lab[t] = model.IgnoreIndex
	}
	func() {
		defer b.enter()()
		p := k.base.p
		if k.tg, err = p.own(uint64(maxT) * 4); err == nil {
			k.st, err = p.own(uint64(4*p.dims.LC) * 8)
		}
	}()
	if err != nil {
		k.base.Close()
		k.m.Close()
		return nil, err
	}
	return k, nil
}

// Window scores rows first..len(w)-2 of window w (row t predicts w[t+1])
// and writes 4 numbers per row into stats[4(t-first)...]: NLL under the
// model, NLL under the base, KL(P_base || P_model), 1 if the argmaxes
// agree else 0, as eval.KLDAcc.Add computes them.
func (k *DeviceKLD) Window(w []int, first int, stats []float64) (err error) {
	T := len(w)
	n := T - 1 - first
	if first < 0 || n <= 0 {
		return nil
	}
	if len(stats) < 4*n {
		return fmt.Errorf("cuda: device kld: stats has %d values for %d scored rows, want %d", len(stats), n, 4*n)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.base == nil {
		return fmt.Errorf("cuda: device kld: used after Close")
	}
	maxT := k.base.maxT
	if T > maxT {
		return fmt.Errorf("cuda: device kld: window of %d tokens exceeds the %d it was built for", T, maxT)
	}
	V := k.base.V
	for t, id := range w {
		if id < 0 || id >= V {
			return fmt.Errorf("model: forward: tokens[%d] = %d outside the vocabulary [0,%d)", t, id, V)
		}
		k.base.ids[t] = int32(id)
		if t > first {
			k.hostTg[t-first-1] = int32(id)
		}
	}
	// The forwards leave the final-normed hidden states in each pass's
	// p.hidden (labels all ignored: the forward itself scores nothing).
	for _, s := range []*DeviceWindower{k.base, k.m} {
		if _, _, err := s.p.Eval(k.base.ids[:T], k.base.pos[:T], k.base.seg[:T], k.lab[:T]); err != nil {
			return err
		}
	}
	b := k.b
	defer b.enter()()
	defer catch("kld", &err)
	b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(k.tg, unsafe.Pointer(&k.hostTg[0]), uint64(n)*4))
	pb, pm := k.base.p, k.m.p
	LC := min(pb.dims.LC, pm.dims.LC)
	for j0 := 0; j0 < n; j0 += LC {
		r := min(LC, n-j0)
		row := uint64(first + j0)
		pb.baseGEMM("device kld base lm_head", pb.logits, pb.hidden+row*uint64(pb.dims.C)*4, pb.lmHead, r, V, pb.dims.C)
		pm.baseGEMM("device kld lm_head", pm.logits, pm.hidden+row*uint64(pm.dims.C)*4, pm.lmHead, r, V, pm.dims.C)
		b.launch("kld_rows", r, rowThreads, k.st, pb.logits, pm.logits, k.tg+uint64(j0)*4, r, V)
		b.must("cuMemcpyDtoH", b.d.cuMemcpyDtoH(unsafe.Pointer(&stats[4*j0]), k.st, uint64(4*r)*8))
	}
	return nil
}

// MaxT is the longest window Window takes.
func (k *DeviceKLD) MaxT() int { return k.base.maxT }

// Close frees both passes' device memory.
func (k *DeviceKLD) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.base != nil {
		k.base.Close()
		k.m.Close()
		k.base, k.m = nil, nil
	}
}
