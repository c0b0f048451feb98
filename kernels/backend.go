package kernels

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Backend runs the ops. Arguments follow llm.c's order: outputs first, then
// inputs, then weights, then dimensions. Every output is overwritten, never
// accumulated into (backward ops, when they arrive, state their convention).
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
