package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// SampleOptions choose the next token from logits. Temperature 0 is greedy
// (argmax, ties to the lowest id). Otherwise, in transformers' warper order:
// logits/Temperature, then top-k (TopK > 0; ties with the k-th value are
// kept), then top-p (0 < TopP < 1; the smallest most-probable set whose
// probability reaches TopP, at least one token), then a draw from a PCG
// generator seeded by Seed, so equal options give equal outputs.
type SampleOptions struct {
	Temperature float64
	TopP        float64
	TopK        int
	Seed        uint64
}

// Generate feeds prompt in one Forward, then produces up to maxNew tokens one
// at a time through the KV cache, calling emit for each. It stops after a
// token in stop (which is emitted, as transformers includes the EOS), after
// maxNew tokens, or when emit returns false.
func (m *Model) Generate(prompt []int, maxNew int, stop []int, opts SampleOptions, emit func(id int) bool) error {
	if len(prompt) == 0 {
		return fmt.Errorf("model: generate: empty prompt")
	}
	if maxNew <= 0 {
		return nil
	}
	if opts.Temperature < 0 || math.IsNaN(opts.Temperature) {
		return fmt.Errorf("model: generate: temperature %g, want >= 0", opts.Temperature)
	}
	cfg := m.Config
	decode, done, err := m.decoder(len(prompt) + maxNew)
	if err != nil {
		return err
	}
	defer done()
	logits := make([]float32, cfg.Vocab)
	if err := decode(prompt, logits); err != nil {
		return err
	}
	s := newSampler(opts, cfg.Vocab)
	next := []int{0}
	for i := 0; ; i++ {
		id := s.pick(logits)
		if !emit(id) || slices.Contains(stop, id) || i+1 == maxNew {
			return nil
		}
		next[0] = id
		if err := decode(next, logits); err != nil {
			return err
		}
	}
}

// A backend with an accelerator may decode on its device (kernels/cuda's
// DeviceDecoder: weights uploaded once, a key/value cache on the device,
// one row of logits down per call) instead of op by op. Generate asks the
// backend through deviceDecoderMaker; NewDeviceDecoder returns nil (and no
// error) where the backend prefers its per-op path.
type deviceDecoderMaker interface {
	NewDeviceDecoder(m *Model, maxT int) (any, error)
}

// deviceDecoder appends tokens at the next positions of its cache and
// writes the last one's logits [V].
type deviceDecoder interface {
	Decode(tokens []int, logits []float32) error
	Close()
}

// decoder returns the function Generate feeds tokens through (appending
// them to a sequence of up to maxT positions and writing the last one's
// logits) and the one that frees it: the backend's device decoder, or
// Forward over a Cache and Logits.
func (m *Model) decoder(maxT int) (func(tokens []int, logits []float32) error, func(), error) {
	if dm, ok := m.Backend().(deviceDecoderMaker); ok {
		d, err := dm.NewDeviceDecoder(m, maxT)
		if err != nil {
			return nil, nil, fmt.Errorf("model: generate on backend %s: %w", m.Backend().Name(), err)
		}
		if d != nil {
			dd, ok := d.(deviceDecoder)
			if !ok {
				return nil, nil, fmt.Errorf("model: generate on backend %s: %T lacks Decode or Close", m.Backend().Name(), d)
			}
			return dd.Decode, dd.Close, nil
		}
	}
	C := m.Config.Hidden
	c := m.NewCache(maxT)
	var hidden []float32
	return func(tokens []int, logits []float32) error {
		if need := len(tokens) * C; cap(hidden) < need {
			hidden = make([]float32, need)
		}
		h := hidden[:len(tokens)*C]
		if err := m.Forward(c, tokens, h); err != nil {
			return err
		}
		m.Logits(logits, h[(len(tokens)-1)*C:])
		return nil
	}, func() {}, nil
}

type sampler struct {
	opts  SampleOptions
	rng   *rand.Rand
	idx   []int     // candidate ids, most probable first
	probs []float64 // [V] scratch
}

func newSampler(opts SampleOptions, V int) *sampler {
	return &sampler{opts: opts, rng: rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)),
		idx: make([]int, V), probs: make([]float64, V)}
}

// argmax returns the index of the largest value, the lowest on ties.
func argmax(x []float32) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

func (s *sampler) pick(logits []float32) int {
	o := s.opts
	if o.Temperature == 0 {
		return argmax(logits)
	}
	V := len(logits)
	scaled := s.probs[:V]
	for i, v := range logits {
		scaled[i] = float64(v) / o.Temperature
	}
	idx := s.idx[:V]
	for i := range idx {
		idx[i] = i
	}
	// Most probable first; equal scores by id, so the order is reproducible.
	slices.SortFunc(idx, func(a, b int) int {
		switch {
		case scaled[a] > scaled[b]:
			return -1
		case scaled[a] < scaled[b]:
			return 1
		}
		return a - b
	})
	n := V
	if o.TopK > 0 && o.TopK < V {
		kth := scaled[idx[o.TopK-1]]
		n = o.TopK
		for n < V && scaled[idx[n]] == kth {
			n++
		}
	}
	// Softmax over the survivors, as a value per rank.
	mx := scaled[idx[0]]
	var z float64
	for _, id := range idx[:n] {
		z += math.Exp(scaled[id] - mx)
	}
	if o.TopP > 0 && o.TopP < 1 {
		var cum float64
		keep := 0
		for _, id := range idx[:n] {
			if keep > 0 && cum >= o.TopP {
				break
			}
			cum += math.Exp(scaled[id]-mx) / z
			keep++
		}
		n = keep
		z = 0
		for _, id := range idx[:n] {
			z += math.Exp(scaled[id] - mx)
		}
	}
	u := s.rng.Float64() * z
	var cum float64
	for _, id := range idx[:n] {
		cum += math.Exp(scaled[id] - mx)
		if u < cum {
			return id
		}
	}
	return idx[n-1]
}
