// Package model is the decoder-only transformer of the supported families
// (Qwen3, Llama, Mistral, Qwen2): config.json parsing, binding the checkpoint's
// tensors by their Hugging Face names, the explicit forward pass with its KV
// cache, perplexity windows and sampling.
//
// It computes through a kernels.Backend and never names a concrete one. It does
// not know about LoRA, training loops or tokenizers: token ids in, hidden
// states, logits and token ids out.
//
// Shape legend: T new tokens, S cache length, C hidden, I intermediate, V vocab,
// L layers, NH query heads, KVH key/value heads, HD head dim.
package model

import (
	"io"
	"sync"

	"github.com/tunellm/tune/kernels"
)

// Model is a loaded decoder. Big matrices are read-only views of the
// checkpoint (usually mmapped); norms and biases are fp32 copies.
//
// Methods may be called from several goroutines; the forward pass is
// serialized because the activation buffers are shared.
type Model struct {
	Config *Config
	be     kernels.Backend

	embed  kernels.Weight // [V,C]
	lmHead kernels.Weight // [V,C]; the embedding when tied
	norm   []float32      // [C]
	layers []layer
	inv    []float32 // [HD/2] RoPE inverse frequencies

	closer io.Closer

	mu  sync.Mutex
	act activations
	nll nllState

	// adapter (SetAdapter) adds unmerged LoRA deltas at inference.
	adapter    Adapter
	adapterHas [][len(AdapterModules)]bool // [L][module]
}

// layer holds one decoder block's parameters under their HF names
// (model.layers.N.*). Biases and q/k norms are nil when the family has none.
type layer struct {
	inputNorm, postNorm []float32      // [C]
	q                   kernels.Weight // [NH*HD, C]
	k, v                kernels.Weight // [KVH*HD, C]
	o                   kernels.Weight // [C, NH*HD]
	qBias               []float32      // [NH*HD]
	kBias, vBias        []float32      // [KVH*HD]
	oBias               []float32      // [C]
	qNorm, kNorm        []float32      // [HD]
	gate, up            kernels.Weight // [I, C]
	down                kernels.Weight // [C, I]
	gateBias, upBias    []float32      // [I]
	downBias            []float32      // [C]
	window              int            // 0: full causal attention
}

// Backend is the backend the model computes with.
func (m *Model) Backend() kernels.Backend { return m.be }

// Close releases the checkpoint mapping. The model must not be used after.
func (m *Model) Close() error {
	if m.closer == nil {
		return nil
	}
	err := m.closer.Close()
	m.closer = nil
	return err
}
