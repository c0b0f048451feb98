package kernels

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Backend runs the ops. Arguments follow llm.c's order: outputs first, then
// inputs, then weights, then dimensions. Every forward output is overwritten,
// never accumulated into; backward ops state their convention.
// Slices may be longer than the dimensions need; a slice that is too short or a
// dimension that does not fit is a programmer error and panics: callers such as
// the model validate shapes once, at load time.
//
// A Backend may be used from several goroutines; implementations serialize or
// otherwise make that safe. Ops are parallel internally.
type Backend interface {
	Name() string
	// Supports lists the ops this backend implements; calling another panics.
	Supports() map[Op]bool

	// EmbeddingForward: out[t,:] = table[tokens[t],:].
	EmbeddingForward(out []float32 /*[T,C]*/, tokens []int /*[T]*/, table Weight /*[V,C]*/)

	// MatMulForward: out[t,o] = sum_c in[t,c]*w[o,c] (+ bias[o] when bias != nil),
	// i.e. nn.Linear over T rows.
	MatMulForward(out []float32 /*[T,OC]*/, in []float32 /*[T,C]*/, w Weight /*[OC,C]*/, bias []float32 /*[OC] or nil*/, T int)

	// RMSNormForward normalizes each of N rows of width C as transformers'
	// LlamaRMSNorm does in fp32: out = x * rsqrt(mean(x²) + eps) * w. out may alias in.
	RMSNormForward(out, in []float32 /*[N,C]*/, w []float32 /*[C]*/, eps float64, N, C int)

	// RoPEForward rotates each head of x in place, rotate-half layout (HF
	// apply_rotary_pos_emb): for i < HD/2, with a=x[i], b=x[i+HD/2]:
	// x[i] = a*cos[t,i] - b*sin[t,i]; x[i+HD/2] = b*cos[t,i] + a*sin[t,i].
	// cos/sin hold the angles for each row's position.
	RoPEForward(x []float32 /*[T,NH,HD]*/, cos, sin []float32 /*[T,HD/2]*/, T, NH, HD int)

	// AttentionForward is causal grouped-query attention of T new queries at
	// positions pos0..pos0+T-1 over the cache rows 0..pos0+T-1 (which already
	// hold the new keys and values). Query head h reads kv head h/(NH/KVH).
	// Scores are q·k/sqrt(HD); with window > 0 a query at position p sees only
	// keys at positions > p-window (transformers' sliding_window mask).
	AttentionForward(out []float32 /*[T,NH*HD]*/, q []float32 /*[T,NH*HD]*/, k, v []float32 /*[S,KVH*HD]*/, pos0, T, NH, KVH, HD, window int)

	// PackedAttentionForward is the padding-free (varlen) form of
	// AttentionForward for T rows holding several sequences back to back, with
	// no cache: k and v are the T rows' own keys and values, and query t sees
	// keys s with max(segStart[t], t-window+1) <= s <= t (window <= 0: no window
	// limit), segStart[t] being the row where t's sequence begins. It is what
	// flash_attn_varlen_func computes from cu_seqlens. Part of OpAttention.
	PackedAttentionForward(out []float32 /*[T,NH*HD]*/, q []float32 /*[T,NH*HD]*/, k, v []float32 /*[T,KVH*HD]*/, segStart []int /*[T]*/, T, NH, KVH, HD, window int)

	// SwiGLUForward: out = silu(gate) * up elementwise, silu(x) = x/(1+exp(-x)).
	SwiGLUForward(out, gate, up []float32 /*[N]*/)

	// AddForward: out = a + b elementwise (the residual stream); out may alias a or b.
	AddForward(out, a, b []float32 /*[N]*/)

	// SoftmaxForward: softmax over each of N rows of width C. out may alias in.
	SoftmaxForward(out, in []float32 /*[N,C]*/, N, C int)

	// LogSoftmaxNLLForward: nll[n] = -log softmax(logits[n,:])[targets[n]],
	// stable (max-subtracted) with float64 accumulation.
	LogSoftmaxNLLForward(nll []float64 /*[N]*/, logits []float32 /*[N,V]*/, targets []int /*[N]*/, N, V int)

	// Backward ops (training). Arguments follow llm.c's backward order: input
	// grads, weight grads, dout, then the saved forward tensors, weights and
	// dimensions. Which outputs accumulate (+=) and which overwrite is stated per
	// op: grads that several paths feed (the residual stream, a linear layer's
	// input, every weight grad) accumulate; the others overwrite.

	// EmbeddingBackward differentiates out[t,:] = table[tokens[t],:]:
	// dtable[tokens[t],c] += dout[t,c], summed over t in ascending order.
	EmbeddingBackward(dtable []float32 /*[V,C]*/, dout []float32 /*[T,C]*/, tokens []int /*[T]*/, C int)

	// MatMulBackward differentiates out[t,o] = sum_c in[t,c]*w[o,c] + bias[o]:
	// din[t,c] += sum_o dout[t,o]*w[o,c]; dw[o,c] += sum_t dout[t,o]*in[t,c];
	// dbias[o] += sum_t dout[t,o]. A nil din, dw or dbias is skipped, so frozen
	// (bf16/f16) weights get no grad and no fp32 copy.
	MatMulBackward(din []float32 /*[T,C] or nil*/, dw []float32 /*[OC,C] or nil*/, dbias []float32 /*[OC] or nil*/, dout []float32 /*[T,OC]*/, in []float32 /*[T,C]*/, w Weight /*[OC,C]*/, T int)

	// RMSNormBackward differentiates out = x * r * w, r = rsqrt(mean(x²)+eps):
	// din += r*(w⊙dout) - x*r³/C*sum(w⊙dout⊙x) and dw += sum_n dout⊙x*r
	// (dw nil: frozen). in is the forward's input; r is recomputed from it.
	RMSNormBackward(din []float32 /*[N,C]*/, dw []float32 /*[C] or nil*/, dout, in []float32 /*[N,C]*/, w []float32 /*[C]*/, eps float64, N, C int)

	// RoPEBackward is the inverse rotation of RoPEForward, in place on the grad
	// (the rotation is orthogonal): with a=dx[i], b=dx[i+HD/2]:
	// dx[i] = a*cos + b*sin; dx[i+HD/2] = b*cos - a*sin.
	RoPEBackward(dx []float32 /*[T,NH,HD]*/, cos, sin []float32 /*[T,HD/2]*/, T, NH, HD int)

	// PackedAttentionBackward differentiates PackedAttentionForward given the
	// saved (post-RoPE) q, k, v; dq, dk, dv are overwritten. The softmax is
	// recomputed from q and k (each row's log-sum-exp first, then the
	// probabilities), as flash-attention's backward does, so no T×T matrix is
	// ever kept.
	PackedAttentionBackward(dq []float32 /*[T,NH*HD]*/, dk, dv []float32 /*[T,KVH*HD]*/, dout, q []float32 /*[T,NH*HD]*/, k, v []float32 /*[T,KVH*HD]*/, segStart []int /*[T]*/, T, NH, KVH, HD, window int)

	// SwiGLUBackward differentiates out = silu(gate)*up: dgate = dout*up*silu'(gate),
	// dup = dout*silu(gate), overwritten; dgate or dup may alias dout.
	SwiGLUBackward(dgate, dup, dout, gate, up []float32 /*[N]*/)

	// LogSoftmaxNLLBackward differentiates dloss * sum_n nll[n]:
	// dlogits[n,:] = dloss*(softmax(logits[n,:]) - onehot(targets[n])),
	// overwritten; dlogits may alias logits.
	LogSoftmaxNLLBackward(dlogits, logits []float32 /*[N,V]*/, targets []int /*[N]*/, dloss float32, N, V int)
}

var (
	regMu    sync.Mutex
	registry = map[string]func() (Backend, error){}
	opened   = map[string]Backend{}
)

// Register makes a backend constructor available by name. It is called from a
// backend package's init; registering a name twice panics.
func Register(name string, open func() (Backend, error)) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("kernels: Register called twice for backend " + name)
	}
	registry[name] = open
}

// Backends lists the registered backend names, sorted.
func Backends() []string {
	regMu.Lock()
	defer regMu.Unlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Get opens the named backend once and returns the same instance afterwards.
// An empty name picks "cpu", the reference backend.
func Get(name string) (Backend, error) {
	if name == "" {
		name = "cpu"
	}
	regMu.Lock()
	defer regMu.Unlock()
	if b, ok := opened[name]; ok {
		return b, nil
	}
	open, ok := registry[name]
	if !ok {
		names := make([]string, 0, len(registry))
		for n := range registry {
			names = append(names, n)
		}
		sort.Strings(names)
		if len(names) == 0 {
			return nil, fmt.Errorf("kernels: backend %q not registered (none are: import _ \"github.com/tunellm/tune/kernels/cpu\")", name)
		}
		return nil, fmt.Errorf("kernels: backend %q not registered (registered: %s)", name, strings.Join(names, ", "))
	}
	b, err := open()
	if err != nil {
		return nil, fmt.Errorf("kernels: open backend %q: %w", name, err)
	}
	opened[name] = b
	return b, nil
}
