package model

import (
	"fmt"

	"github.com/tunellm/tune/kernels"
)

// Layer-by-layer access for calibration-based quantization (GPTQ's
// sequential mode): embed a sequence, run one decoder layer at a time on its
// hidden states, and swap a layer's projection weights for quantized ones
// before the next layer sees them. Composed, Embed, every LayerForward and
// FinalNorm compute what Forward computes on a fresh cache, bit for bit.

// Embed writes the token embeddings of one sequence to x [T,C].
func (m *Model) Embed(x []float32, tokens []int) error {
	T, C, V := len(tokens), m.Config.Hidden, m.Config.Vocab
	if T == 0 {
		return fmt.Errorf("model: embed: no tokens")
	}
	if len(x) < T*C {
		return fmt.Errorf("model: embed: x has %d elements, want %d (T=%d × hidden_size=%d)", len(x), T*C, T, C)
	}
	for t, id := range tokens {
		if id < 0 || id >= V {
			return fmt.Errorf("model: embed: tokens[%d] = %d outside the vocabulary [0,%d)", t, id, V)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.be.EmbeddingForward(x[:T*C], tokens, m.embed)
	return nil
}

// LayerForward runs decoder layer l in place on x [T,C], the hidden states of
// one sequence at positions 0..T-1 (causal attention, sliding window where the
// layer has one, no KV cache). An installed Adapter sees the layer's
// projections as in Forward.
func (m *Model) LayerForward(l int, x []float32, T int) error {
	cfg := m.Config
	C, half := cfg.Hidden, cfg.HeadDim/2
	switch {
	case l < 0 || l >= len(m.layers):
		return fmt.Errorf("model: layer forward: layer %d outside [0,%d)", l, len(m.layers))
	case T <= 0:
		return fmt.Errorf("model: layer forward: T = %d, want > 0", T)
	case len(x) < T*C:
		return fmt.Errorf("model: layer forward: x has %d elements, want %d (T=%d × hidden_size=%d)", len(x), T*C, T, C)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	a := m.acts(T)
	s := m.packedScratch(T) // k/v scratch for T rows and the angles of positions 0..T-1
	copy(a.x[:T*C], x[:T*C])
	m.attentionForward(a, l, s.k, s.v, s.tabCos[:T*half], s.tabSin[:T*half], nil, 0, T)
	m.mlpForward(a, l, T)
	copy(x[:T*C], a.x[:T*C])
	return nil
}

// FinalNorm writes the final RMSNorm of x [T,C] to hidden [T,C] (the LM
// head's input); hidden may alias x.
func (m *Model) FinalNorm(hidden, x []float32, T int) error {
	C := m.Config.Hidden
	if T <= 0 || len(x) < T*C || len(hidden) < T*C {
		return fmt.Errorf("model: final norm: x has %d and hidden %d elements, want %d (T=%d × hidden_size=%d)", len(x), len(hidden), T*C, T, C)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.be.RMSNormForward(hidden[:T*C], x[:T*C], m.norm, m.Config.RMSNormEps, T, C)
	return nil
}

// linearSlot returns a pointer to layer l's projection named module (one of
// AdapterModules).
func (m *Model) linearSlot(op string, l int, module string) (*kernels.Weight, error) {
	if l < 0 || l >= len(m.layers) {
		return nil, fmt.Errorf("model: %s: layer %d outside [0,%d)", op, l, len(m.layers))
	}
	L := &m.layers[l]
	slots := [numModules]*kernels.Weight{&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}
	for i, name := range AdapterModules {
		if name == module {
			return slots[i], nil
		}
	}
	return nil, fmt.Errorf("model: %s: unknown module %q (want one of %v)", op, module, AdapterModules)
}

// LinearWeight returns layer l's projection weight [OC,C] for module (one of
// AdapterModules). The view is read-only.
func (m *Model) LinearWeight(l int, module string) (kernels.Weight, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, err := m.linearSlot("linear weight", l, module)
	if err != nil {
		return kernels.Weight{}, err
	}
	return *p, nil
}

// SetLinearWeight replaces layer l's projection weight for module by w, which
// must have the same shape; the model keeps w.Data and computes with it from
// the next call on. A BaseAware adapter bound earlier keeps the old view:
// call SetAdapter again if it needs the new one.
func (m *Model) SetLinearWeight(l int, module string, w kernels.Weight) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, err := m.linearSlot("set linear weight", l, module)
	if err != nil {
		return err
	}
	if err := w.Check(); err != nil {
		return fmt.Errorf("model: set linear weight: layer %d %s: %w", l, module, err)
	}
	if w.Rows != p.Rows || w.Cols != p.Cols {
		return fmt.Errorf("model: set linear weight: layer %d %s: shape [%d %d], want [%d %d]", l, module, w.Rows, w.Cols, p.Rows, p.Cols)
	}
	*p = w
	return nil
}

// CurrentAdapter returns the adapter SetAdapter installed (nil when none), so
// that a caller that installs its own can put it back.
func (m *Model) CurrentAdapter() Adapter {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.adapter
}
