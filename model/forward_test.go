package model

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tunellm/tune/model/safetensors"
)

func newTestModel(t testing.TB, c *Config, dt safetensors.DType, seed uint64) *Model {
	t.Helper()
	m, err := New(c, randomSource(c, dt, seed), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func randTokens(r *rand.Rand, n, V int) []int {
	ids := make([]int, n)
	for i := range ids {
		ids[i] = r.IntN(V)
	}
	return ids
}

// forwardChunks runs tokens through a fresh cache in chunks of the given sizes
// (cycled) and returns all hidden states.
func forwardChunks(t *testing.T, m *Model, tokens []int, chunks []int) []float32 {
	t.Helper()
	C := m.Config.Hidden
	c := m.NewCache(len(tokens))
	out := make([]float32, len(tokens)*C)
	for i, k := 0, 0; i < len(tokens); k++ {
		n := min(chunks[k%len(chunks)], len(tokens)-i)
		if err := m.Forward(c, tokens[i:i+n], out[i*C:(i+n)*C]); err != nil {
			t.Fatal(err)
		}
		i += n
	}
	if c.Len() != len(tokens) {
		t.Fatalf("cache holds %d positions after %d tokens", c.Len(), len(tokens))
	}
	return out
}

// TestIncrementalEqualsFull: the KV-cache path (one token at a time, or uneven
// chunks) gives bit-identical hidden states to one full pass. The CPU kernels
// compute each output as one sequential sum, so no tolerance is needed.
func TestIncrementalEqualsFull(t *testing.T) {
	variants := []struct {
		name   string
		mutate func(*Config)
		dt     safetensors.DType
	}{
		{"qwen3-bf16", func(*Config) {}, safetensors.BF16},
		{"llama-f16-bias", func(c *Config) {
			c.ModelType, c.QKNorm, c.QKVBias, c.OBias = "llama", false, true, false
		}, safetensors.F16},
		{"window3", func(c *Config) { c.Windows = []int{3, 0} }, safetensors.F32},
	}
	r := rand.New(rand.NewPCG(1, 1))
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			c := smallConfig()
			v.mutate(c)
			m := newTestModel(t, c, v.dt, 3)
			tokens := randTokens(r, 23, c.Vocab)
			full := forwardChunks(t, m, tokens, []int{len(tokens)})
			for _, chunks := range [][]int{{1}, {5, 2, 7}, {4}} {
				got := forwardChunks(t, m, tokens, chunks)
				if !slices.Equal(got, full) {
					t.Errorf("chunks %v: hidden states differ from the full pass", chunks)
				}
			}
		})
	}
}

// TestSlidingWindowReach: with one layer and window W, the output at position
// p depends on tokens p-W+1..p only.
func TestSlidingWindowReach(t *testing.T) {
	c := smallConfig()
	c.Layers, c.Windows = 1, []int{4}
	m := newTestModel(t, c, safetensors.F32, 5)
	r := rand.New(rand.NewPCG(2, 2))
	tokens := randTokens(r, 12, c.Vocab)
	C, p := c.Hidden, 10
	base := forwardChunks(t, m, tokens, []int{12})[p*C : (p+1)*C]
	for q, wantChange := range map[int]bool{p - 4: false, 0: false, p - 3: true, p: true} {
		mod := slices.Clone(tokens)
		mod[q] = (mod[q] + 1) % c.Vocab
		got := forwardChunks(t, m, mod, []int{12})[p*C : (p+1)*C]
		if changed := !slices.Equal(got, base); changed != wantChange {
			t.Errorf("changing token %d: output at %d changed=%v, want %v", q, p, changed, wantChange)
		}
	}
}

// TestTiedEqualsUntiedCopy: an untied model whose lm_head is a copy of the
// embedding gives the tied model's logits.
func TestTiedEqualsUntiedCopy(t *testing.T) {
	c := smallConfig()
	src := randomSource(c, safetensors.BF16, 9)
	tied, err := New(c, src, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cu := *c
	cu.TieEmbeddings = false
	srcU := memSource{}
	for k, v := range src {
		srcU[k] = v
	}
	e := src["model.embed_tokens.weight"]
	srcU["lm_head.weight"] = safetensors.Tensor{Name: "lm_head.weight", DType: e.DType, Shape: e.Shape, Data: slices.Clone(e.Data)}
	untied, err := New(&cu, srcU, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tokens := []int{1, 5, 9, 33}
	a, err := tied.ForwardLogits(tied.NewCache(4), tokens)
	if err != nil {
		t.Fatal(err)
	}
	b, err := untied.ForwardLogits(untied.NewCache(4), tokens)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		if !slices.Equal(a[i], b[i]) {
			t.Errorf("row %d: tied and untied-copy logits differ", i)
		}
	}
	// And a different lm_head must change them (the head is really used).
	delete(srcU, "lm_head.weight")
	other := randomSource(&cu, safetensors.BF16, 10)
	srcU["lm_head.weight"] = other["lm_head.weight"]
	untied2, err := New(&cu, srcU, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := untied2.ForwardLogits(untied2.NewCache(4), tokens)
	if slices.Equal(d[0], a[0]) {
		t.Error("a different lm_head.weight left the logits unchanged")
	}
}

// TestWindowNLLMatchesLogits: WindowNLL equals a float64 log-softmax of
// ForwardLogits rows computed here.
func TestWindowNLLMatchesLogits(t *testing.T) {
	c := smallConfig()
	m := newTestModel(t, c, safetensors.BF16, 11)
	r := rand.New(rand.NewPCG(3, 3))
	for _, T := range []int{1, 2, 17, 40} {
		tokens := randTokens(r, T, c.Vocab)
		sum, n, err := m.WindowNLL(tokens)
		if err != nil {
			t.Fatal(err)
		}
		if n != max(T-1, 0) {
			t.Errorf("T=%d: n = %d", T, n)
		}
		rows, err := m.ForwardLogits(m.NewCache(T), tokens)
		if err != nil {
			t.Fatal(err)
		}
		var want float64
		for i := 0; i+1 < T; i++ {
			var z float64
			for _, v := range rows[i] {
				z += math.Exp(float64(v))
			}
			want += math.Log(z) - float64(rows[i][tokens[i+1]])
		}
		if math.Abs(sum-want) > 1e-9*(1+math.Abs(want)) {
			t.Errorf("T=%d: WindowNLL = %.12g, want %.12g", T, sum, want)
		}
	}
}

func TestForwardErrors(t *testing.T) {
	c := smallConfig()
	m := newTestModel(t, c, safetensors.F32, 1)
	h := make([]float32, 10*c.Hidden)
	cache := m.NewCache(4)
	tests := []struct {
		tokens []int
		hidden []float32
		want   string
	}{
		{[]int{1, 2, 3, 4, 5}, h, "5 new tokens at position 0 exceed the cache's 4 positions"},
		{[]int{1, 70}, h, "tokens[1] = 70 outside the vocabulary [0,70)"},
		{[]int{1, 2}, h[:c.Hidden], "hidden has 48 elements, want 96"},
		{nil, h, "no tokens"},
	}
	for _, tt := range tests {
		err := m.Forward(cache, tt.tokens, tt.hidden)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Forward(%v): %v, want %q", tt.tokens, err, tt.want)
		}
	}
}

// writeBroken copies testdata/models/qwen3-tied to a temp dir with its tensors
// passed through edit.
func writeBroken(t *testing.T, edit func(ts []safetensors.WriteTensor) []safetensors.WriteTensor, config func([]byte) []byte) string {
	t.Helper()
	srcDir := filepath.Join("..", "testdata", "models", "qwen3-tied")
	r, err := safetensors.Open(srcDir)
	if err != nil {
		t.Skip(err)
	}
	defer r.Close()
	var ts []safetensors.WriteTensor
	for _, name := range r.Names() {
		tt, err := r.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, safetensors.WriteTensor{Name: name, DType: tt.DType, Shape: tt.Shape, Write: safetensors.Bytes(slices.Clone(tt.Data))})
	}
	dir := t.TempDir()
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), edit(ts), nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(filepath.Join(srcDir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), config(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoadErrors(t *testing.T) {
	const victim = "model.layers.1.self_attn.q_proj.weight"
	same := func(b []byte) []byte { return b }
	keep := func(ts []safetensors.WriteTensor) []safetensors.WriteTensor { return ts }
	tests := []struct {
		name   string
		edit   func([]safetensors.WriteTensor) []safetensors.WriteTensor
		config func([]byte) []byte
		want   string
	}{
		{"ok", keep, same, ""},
		{"missing", func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			return slices.DeleteFunc(ts, func(w safetensors.WriteTensor) bool { return w.Name == victim })
		}, same, `missing tensor "` + victim + `"`},
		{"shape", func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			for i := range ts {
				if ts[i].Name == victim {
					ts[i].Shape = []int{ts[i].Shape[1], ts[i].Shape[0]}
				}
			}
			return ts
		}, same, victim + `: shape [64 128], want [128 64] (from config.json num_attention_heads=4, head_dim=32, hidden_size=64)`},
		{"dtype", func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			for i := range ts {
				if ts[i].Name == victim {
					n := ts[i].Shape[0] * ts[i].Shape[1]
					ts[i].DType = safetensors.I8
					ts[i].Write = safetensors.Bytes(make([]byte, n))
				}
			}
			return ts
		}, same, victim + `: dtype I8 unsupported (supported: BF16, F16, F32)`},
		{"model_type", keep, func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"qwen3"`, `"gemma3"`, 1))
		}, `config.json: unsupported model_type "gemma3" (supported: llama, mistral, qwen2, qwen3)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeBroken(t, tt.edit, tt.config)
			m, err := Load(dir, LoadOptions{})
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				m.Close()
				return
			}
			if err == nil {
				m.Close()
				t.Fatalf("Load succeeded, want error containing %q", tt.want)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("Load error:\n %v\nwant one line containing\n %s", err, tt.want)
			}
		})
	}
	if _, err := Load(t.TempDir(), LoadOptions{}); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of an empty folder: %v, want a not-exist error", err)
	}
}
