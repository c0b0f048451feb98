package cuda

import (
	"errors"
	"fmt"
	"sync"

	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// Evaluation on the device: `tune eval ppl` (eval.Perplexity) scores
// windows through model.Model.WindowNLL, which on this backend runs op by
// op over host slices (every operand copied up and back per op). The
// device-resident LoRA pass (devpass.go) already computes the same forward
// and the summed NLL of the scored rows with the weights uploaded once;
// DeviceWindower drives its Eval with one window as one packed document,
// so per window only the int32 inputs go up and the NLL sum (8 bytes)
// comes down.

// DeviceWindower scores eval windows on the device with model.Model's
// WindowNLL contract: tokens run as one document from position 0, and
// every token but the first is scored against the model's prediction from
// the tokens before it (sum of -log p, float64, and T-1 terms). With an
// adapter it is the model with that adapter applied unmerged, as
// model.Model.SetAdapter computes. It holds device memory until Close; it
// is safe for concurrent use (windows run one at a time).
type DeviceWindower struct {
	mu   sync.Mutex
	p    *LoRAPass
	V    int
	maxT int
	// The pass's int32 inputs of one window: positions 0..maxT-1, one
	// segment, labels = the tokens (the pass scores row t with labels[t+1]).
	ids, pos, seg []int32
	lab           []int32 // labels of WindowNLLFrom
}

// NewDeviceWindower is newDeviceWindower for callers that must not import
// this package (package eval checks for it with an interface): it returns
// a *DeviceWindower, or nil and no error when the device pass does not take
// the model (TUNE_CUDA_PASS=host, a trace it does not recognise, maxT
// beyond max_position_embeddings), so the caller keeps
// model.Model.WindowNLL's per-op path, which computes the same, slower.
func (b *Backend) NewDeviceWindower(m *model.Model, a *lora.Adapter, maxT int) (any, error) {
	if !b.devPass {
		return nil, nil
	}
	if mp := m.Config.MaxPositions; mp > 0 && maxT > mp {
		// The pass's RoPE table stops at max_position_embeddings;
		// WindowNLL extrapolates past it.
		return nil, nil
	}
	w, err := b.newDeviceWindower(m, a, maxT)
	if errors.Is(err, errUnsupported) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return w, nil
}

// newDeviceWindower builds the device pass of m with adapter a (nil: the
// base model) for windows of up to maxT tokens. The adapter's parameters
// are uploaded once: changing them afterwards does not change the scores.
func (b *Backend) newDeviceWindower(m *model.Model, a *lora.Adapter, maxT int) (*DeviceWindower, error) {
	if maxT < 2 {
		return nil, fmt.Errorf("cuda: device windower: maxT = %d, want at least 2 (a window scores tokens 1..T-1)", maxT)
	}
	if a == nil {
		// An adapter with no modules: the pass adds no low-rank path and
		// its LoRA slabs are empty.
		a = new(lora.Adapter)
	}
	// Checkpointing keeps one layer's activations instead of every
	// layer's (eval never runs Backward); the forward is the same.
	p, err := b.NewLoRAPass(m, a, PassOptions{MaxT: maxT, Checkpointing: true})
	if err != nil {
		return nil, err
	}
	// Eval does not train the adapter: no per-window memcmp of the host
	// slab against the uploaded one.
	p.hostSync = false
	w := &DeviceWindower{p: p, V: m.Config.Vocab, maxT: maxT,
		ids: make([]int32, maxT), pos: make([]int32, maxT), seg: make([]int32, maxT), lab: make([]int32, maxT)}
	for t := range w.pos {
		w.pos[t] = int32(t)
	}
	return w, nil
}

// WindowNLL implements eval.Windower as model.Model.WindowNLL does, on the
// device. A window longer than the maxT the windower was built for is an
// error: eval.Perplexity builds it for its longest window, and growing
// would mean a second activation slab beside the first.
func (w *DeviceWindower) WindowNLL(tokens []int) (sum float64, n int, err error) {
	return w.WindowNLLFrom(tokens, 0)
}

// WindowNLLFrom is WindowNLL scoring rows first..len(tokens)-2 only (row t
// predicts tokens[t+1]): the negative log-likelihood of tokens[first+1:]
// given what precedes them (eval's bench continuations).
func (w *DeviceWindower) WindowNLLFrom(tokens []int, first int) (sum float64, n int, err error) {
	T := len(tokens)
	if first < 0 {
		return 0, 0, fmt.Errorf("cuda: device windower: first scored row %d, want >= 0", first)
	}
	if T-1-first <= 0 {
		return 0, 0, nil
	}
	if T > w.maxT {
		return 0, 0, fmt.Errorf("cuda: device windower: window of %d tokens exceeds the %d it was built for", T, w.maxT)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.p == nil {
		return 0, 0, fmt.Errorf("cuda: device windower: used after Close")
	}
	for t, id := range tokens {
		if id < 0 || id >= w.V {
			return 0, 0, fmt.Errorf("model: forward: tokens[%d] = %d outside the vocabulary [0,%d)", t, id, w.V)
		}
		w.ids[t] = int32(id)
		w.lab[t] = int32(id)
		if t <= first {
			w.lab[t] = model.IgnoreIndex
		}
	}
	// Row t is scored with labels[t+1].
	sum, n, err = w.p.Eval(w.ids[:T], w.pos[:T], w.seg[:T], w.lab[:T])
	if err != nil {
		return 0, 0, err
	}
	if n != T-1-first {
		return 0, 0, fmt.Errorf("cuda: device windower: the pass scored %d rows of a %d-token window from row %d, want %d", n, T, first, T-1-first)
	}
	return sum, n, nil
}

// MaxT is the longest window the windower takes.
func (w *DeviceWindower) MaxT() int { return w.maxT }

// Close frees the windower's device memory.
func (w *DeviceWindower) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.p != nil {
		w.p.Close()
		w.p = nil
	}
}
