package model

import (
	"fmt"
	"math"

	"github.com/tunellm/tune/kernels"
)

// Cache is the KV cache of one sequence: per layer, the post-RoPE keys and the
// values of every position seen so far, fp32, plus the RoPE angle tables for
// positions 0..S-1.
type Cache struct {
	k, v     [][]float32 // [L][S*KVH*HD]
	cos, sin []float32   // [S, HD/2]
	n, size  int
}

// NewCache allocates a cache for up to maxT positions.
func (m *Model) NewCache(maxT int) *Cache {
	c := m.Config
	kvd, half := c.KVHeads*c.HeadDim, c.HeadDim/2
	kc := &Cache{k: make([][]float32, c.Layers), v: make([][]float32, c.Layers), size: maxT,
		cos: make([]float32, maxT*half), sin: make([]float32, maxT*half)}
	for l := range kc.k {
		kc.k[l] = make([]float32, maxT*kvd)
		kc.v[l] = make([]float32, maxT*kvd)
	}
	for p := 0; p < maxT; p++ {
		m.ropeAngles(kc.cos[p*half:(p+1)*half], kc.sin[p*half:(p+1)*half], p)
	}
	return kc
}

// ropeAngles writes the RoPE cos/sin row [HD/2] of position p. transformers:
// freqs = inv_freq ⊗ position in fp32, then cos/sin in fp32. Every path (cache,
// packed) takes its angles from here so that equal positions rotate equally.
func (m *Model) ropeAngles(cos, sin []float32, p int) {
	for i, f := range m.inv {
		a := float64(float32(p) * f)
		cos[i] = float32(math.Cos(a))
		sin[i] = float32(math.Sin(a))
	}
}

// Len is the number of positions held.
func (c *Cache) Len() int { return c.n }

// Cap is the number of positions the cache can hold.
func (c *Cache) Cap() int { return c.size }

// Reset empties the cache for a new sequence (no memory is released).
func (c *Cache) Reset() { c.n = 0 }

// activations are the per-forward scratch buffers, sized for T rows and grown
// when a longer call arrives.
type activations struct {
	rows     int
	x        []float32 // [T,C] residual stream
	xn       []float32 // [T,C] normed input of a block
	q        []float32 // [T,NH*HD]
	att      []float32 // [T,NH*HD] attention output, heads concatenated
	proj     []float32 // [T,C] block output before the residual add
	gate, up []float32 // [T,I]

	packed packedScratch // ForwardPacked and PackedNLL (packed.go)
}

// acts returns views of the scratch for exactly T rows.
func (m *Model) acts(T int) *activations {
	c := m.Config
	a := &m.act
	if T > a.rows {
		C, qd, I := c.Hidden, c.Heads*c.HeadDim, c.Intermediate
		a.rows = T
		a.x, a.xn, a.proj = make([]float32, T*C), make([]float32, T*C), make([]float32, T*C)
		a.q, a.att = make([]float32, T*qd), make([]float32, T*qd)
		a.gate, a.up = make([]float32, T*I), make([]float32, T*I)
	}
	return a
}

// Forward runs T new tokens at positions c.Len()..c.Len()+T-1, appends their
// keys and values to c, and writes the final-normed hidden states (the input
// of the LM head) to hidden [T,C].
func (m *Model) Forward(c *Cache, tokens []int, hidden []float32) error {
	if err := m.checkForward(c, tokens, len(hidden)); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forward(c, tokens, hidden)
	return nil
}

func (m *Model) checkForward(c *Cache, tokens []int, hiddenLen int) error {
	cfg := m.Config
	T := len(tokens)
	if T == 0 {
		return fmt.Errorf("model: forward: no tokens")
	}
	if len(c.k) != cfg.Layers || (c.size > 0 && len(c.cos) != c.size*cfg.HeadDim/2) {
		return fmt.Errorf("model: forward: cache was made for another model")
	}
	if c.n+T > c.size {
		return fmt.Errorf("model: forward: %d new tokens at position %d exceed the cache's %d positions", T, c.n, c.size)
	}
	if hiddenLen < T*cfg.Hidden {
		return fmt.Errorf("model: forward: hidden has %d elements, want %d (T=%d × hidden_size=%d)", hiddenLen, T*cfg.Hidden, T, cfg.Hidden)
	}
	for i, id := range tokens {
		if id < 0 || id >= cfg.Vocab {
			return fmt.Errorf("model: forward: tokens[%d] = %d outside the vocabulary [0,%d)", i, id, cfg.Vocab)
		}
	}
	return nil
}

// forward is Forward without the checks; m.mu is held.
func (m *Model) forward(c *Cache, tokens []int, hidden []float32) {
	cfg, be := m.Config, m.be
	T, C, half := len(tokens), cfg.Hidden, cfg.HeadDim/2
	a := m.acts(T)
	pos0 := c.n
	x := a.x[:T*C]
	be.EmbeddingForward(x, tokens, m.embed)
	cos := c.cos[pos0*half : (pos0+T)*half]
	sin := c.sin[pos0*half : (pos0+T)*half]
	for l := range m.layers {
		m.attentionForward(a, l, c.k[l], c.v[l], cos, sin, nil, pos0, T)
		m.mlpForward(a, l, T)
	}
	be.RMSNormForward(hidden[:T*C], x, m.norm, cfg.RMSNormEps, T, C)
	c.n += T
}

// attentionForward is one self-attention block with its residual:
//
//	xn = rmsnorm(x) · input_layernorm                        [T,C]
//	q = xn·Wqᵀ (+bq) [T,NH*HD]; k, v = xn·Wk,vᵀ (+b) [T,KVH*HD] (into the cache rows pos0..)
//	q, k = rmsnorm per head · q_norm, k_norm                   (qwen3)
//	q, k = rope(q, k) at positions pos0..pos0+T-1 (cos, sin [T,HD/2] hold their angles)
//	att = softmax(q·kᵀ/sqrt(HD), causal, window) · v           [T,NH*HD]
//	x += att·Woᵀ (+bo)                                        [T,C]
//
// With segStart != nil the T rows are packed sequences (ForwardPacked): pos0 is
// 0, kc and vc are scratch for the T rows, and row t attends from segStart[t].
func (m *Model) attentionForward(a *activations, l int, kc, vc, cos, sin []float32, segStart []int, pos0, T int) {
	cfg, be, L := m.Config, m.be, &m.layers[l]
	C, NH, KVH, HD := cfg.Hidden, cfg.Heads, cfg.KVHeads, cfg.HeadDim
	kvd := KVH * HD
	x, xn := a.x[:T*C], a.xn[:T*C]
	q := a.q[:T*NH*HD]
	k := kc[pos0*kvd : (pos0+T)*kvd]
	v := vc[pos0*kvd : (pos0+T)*kvd]
	be.RMSNormForward(xn, x, L.inputNorm, cfg.RMSNormEps, T, C)
	m.linear(l, modQ, q, xn, L.q, L.qBias, T)
	m.linear(l, modK, k, xn, L.k, L.kBias, T)
	m.linear(l, modV, v, xn, L.v, L.vBias, T)
	if L.qNorm != nil {
		be.RMSNormForward(q, q, L.qNorm, cfg.RMSNormEps, T*NH, HD)
		be.RMSNormForward(k, k, L.kNorm, cfg.RMSNormEps, T*KVH, HD)
	}
	be.RoPEForward(q, cos, sin, T, NH, HD)
	be.RoPEForward(k, cos, sin, T, KVH, HD)
	att := a.att[:T*NH*HD]
	if segStart != nil {
		be.PackedAttentionForward(att, q, k, v, segStart, T, NH, KVH, HD, L.window)
	} else {
		be.AttentionForward(att, q, kc, vc, pos0, T, NH, KVH, HD, L.window)
	}
	proj := a.proj[:T*C]
	m.linear(l, modO, proj, att, L.o, L.oBias, T)
	be.AddForward(x, x, proj)
}

// mlpForward is one SwiGLU MLP block with its residual:
//
//	xn = rmsnorm(x) · post_attention_layernorm                 [T,C]
//	h = silu(xn·Wgateᵀ) * (xn·Wupᵀ)                            [T,I]
//	x += h·Wdownᵀ                                              [T,C]
func (m *Model) mlpForward(a *activations, l int, T int) {
	cfg, be, L := m.Config, m.be, &m.layers[l]
	C, I := cfg.Hidden, cfg.Intermediate
	x, xn := a.x[:T*C], a.xn[:T*C]
	gate, up := a.gate[:T*I], a.up[:T*I]
	be.RMSNormForward(xn, x, L.postNorm, cfg.RMSNormEps, T, C)
	m.linear(l, modGate, gate, xn, L.gate, L.gateBias, T)
	m.linear(l, modUp, up, xn, L.up, L.upBias, T)
	be.SwiGLUForward(gate, gate, up)
	proj := a.proj[:T*C]
	m.linear(l, modDown, proj, gate, L.down, L.downBias, T)
	be.AddForward(x, x, proj)
}

// linear is one inference projection: out = in·Wᵀ (+b), plus the adapter's delta
// when SetAdapter attached one that covers (layer l, module mod).
func (m *Model) linear(l, mod int, out, in []float32, w kernels.Weight, bias []float32, T int) {
	m.be.MatMulForward(out, in, w, bias, T)
	if m.adapter != nil && m.adapterHas[l][mod] {
		m.adapter.Forward(l, AdapterModules[mod], out, in, T, false)
	}
}

// SetAdapter makes every inference path (Forward, ForwardPacked, WindowNLL,
// Generate) add a's deltas to the projections it covers, unmerged, as PEFT's
// PeftModel does; nil removes it. Training passes take their adapter from
// TrainOptions instead.
func (m *Model) SetAdapter(a Adapter) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.adapter, m.adapterHas = a, nil
	if a == nil {
		return
	}
	m.adapterHas = make([][len(AdapterModules)]bool, m.Config.Layers)
	for l := range m.adapterHas {
		for i, mod := range AdapterModules {
			m.adapterHas[l][i] = a.Has(l, mod)
		}
	}
	bindBase(a, m.be, m.layers, m.adapterHas)
}

// Logits writes the LM head's output for one hidden state: dst[v] = h·W[v,:]
// with W = lm_head.weight, or the embedding when tied.
func (m *Model) Logits(dst []float32 /*[V]*/, h []float32 /*[C]*/) {
	m.be.MatMulForward(dst[:m.Config.Vocab], h[:m.Config.Hidden], m.lmHead, nil, 1)
}

// ForwardLogits runs Forward and returns the logits of every new position
// ([T][V]). It materializes T×V floats: meant for tests and short prompts.
func (m *Model) ForwardLogits(c *Cache, tokens []int) ([][]float32, error) {
	cfg := m.Config
	T := len(tokens)
	hidden := make([]float32, T*cfg.Hidden)
	if err := m.Forward(c, tokens, hidden); err != nil {
		return nil, err
	}
	flat := make([]float32, T*cfg.Vocab)
	m.be.MatMulForward(flat, hidden, m.lmHead, nil, T)
	rows := make([][]float32, T)
	for t := range rows {
		rows[t] = flat[t*cfg.Vocab : (t+1)*cfg.Vocab : (t+1)*cfg.Vocab]
	}
	return rows, nil
}
