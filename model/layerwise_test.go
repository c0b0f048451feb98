package model

import (
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model/safetensors"
)

// layerwiseHidden runs Embed, every LayerForward and FinalNorm on tokens.
func layerwiseHidden(t *testing.T, m *Model, tokens []int) []float32 {
	t.Helper()
	T, C := len(tokens), m.Config.Hidden
	x := make([]float32, T*C)
	if err := m.Embed(x, tokens); err != nil {
		t.Fatal(err)
	}
	for l := 0; l < m.Config.Layers; l++ {
		if err := m.LayerForward(l, x, T); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.FinalNorm(x, x, T); err != nil {
		t.Fatal(err)
	}
	return x
}

func TestLayerwiseEqualsForward(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			m, err := Load(filepath.Join("..", "testdata", "models", name), LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			r := rand.New(rand.NewPCG(3, 4))
			for _, T := range []int{1, 7, 40} {
				tokens := randTokens(r, T, m.Config.Vocab)
				want := make([]float32, T*m.Config.Hidden)
				if err := m.Forward(m.NewCache(T), tokens, want); err != nil {
					t.Fatal(err)
				}
				got := layerwiseHidden(t, m, tokens)
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("T=%d: hidden[%d] = %v, Forward gives %v (want bit-identical)", T, i, got[i], want[i])
					}
				}
			}
		})
	}
}

// f32Weight copies a weight into an owned F32 one.
func f32Weight(t *testing.T, w kernels.Weight) kernels.Weight {
	t.Helper()
	dt := map[kernels.DType]safetensors.DType{kernels.F32: safetensors.F32, kernels.F16: safetensors.F16, kernels.BF16: safetensors.BF16}[w.DType]
	v := make([]float32, w.Rows*w.Cols)
	if err := safetensors.ToFloat32(v, w.Data, dt); err != nil {
		t.Fatal(err)
	}
	return kernels.Weight{DType: kernels.F32, Data: f32Bytes(v), Rows: w.Rows, Cols: w.Cols}
}

func TestSetLinearWeight(t *testing.T) {
	m, err := Load(filepath.Join("..", "testdata", "models", "llama3"), LoadOptions{}) // F16 weights
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tokens := randTokens(rand.New(rand.NewPCG(5, 6)), 9, m.Config.Vocab)
	want := layerwiseHidden(t, m, tokens)

	// The same values as owned F32 give the same hidden states.
	for l := 0; l < m.Config.Layers; l++ {
		for _, mod := range AdapterModules {
			w, err := m.LinearWeight(l, mod)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.SetLinearWeight(l, mod, f32Weight(t, w)); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := layerwiseHidden(t, m, tokens)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("after F32 copies: hidden[%d] = %v, want %v", i, got[i], want[i])
		}
	}

	// A zeroed down_proj changes them.
	w, _ := m.LinearWeight(1, "down_proj")
	zero := kernels.Weight{DType: kernels.F32, Data: make([]byte, 4*w.Rows*w.Cols), Rows: w.Rows, Cols: w.Cols}
	if err := m.SetLinearWeight(1, "down_proj", zero); err != nil {
		t.Fatal(err)
	}
	got = layerwiseHidden(t, m, tokens)
	same := true
	for i := range want {
		same = same && got[i] == want[i]
	}
	if same {
		t.Fatal("zeroing layer 1 down_proj did not change the hidden states")
	}

	for _, tc := range []struct {
		l    int
		mod  string
		w    kernels.Weight
		want string
	}{
		{0, "q_proj", kernels.Weight{DType: kernels.F32, Data: make([]byte, 8), Rows: 1, Cols: 2}, "shape [1 2], want"},
		{0, "lm_head", zero, "unknown module"},
		{2, "q_proj", zero, "layer 2 outside"},
		{0, "down_proj", kernels.Weight{DType: kernels.F32, Data: make([]byte, 3), Rows: w.Rows, Cols: w.Cols}, "bytes"},
	} {
		err := m.SetLinearWeight(tc.l, tc.mod, tc.w)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SetLinearWeight(%d, %q): err %v, want %q", tc.l, tc.mod, err, tc.want)
		}
	}
}

func TestLayerwiseBadInputs(t *testing.T) {
	c := smallConfig()
	m := newTestModel(t, c, safetensors.F32, 1)
	C := c.Hidden
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"embed empty", m.Embed(make([]float32, C), nil), "no tokens"},
		{"embed short", m.Embed(make([]float32, C), []int{1, 2}), "want"},
		{"embed vocab", m.Embed(make([]float32, C), []int{c.Vocab}), "outside the vocabulary"},
		{"layer range", m.LayerForward(c.Layers, make([]float32, C), 1), "outside"},
		{"layer T", m.LayerForward(0, make([]float32, C), 0), "T = 0"},
		{"layer short", m.LayerForward(0, make([]float32, C), 2), "want"},
		{"norm short", m.FinalNorm(make([]float32, C), make([]float32, C), 2), "want"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, tc.err, tc.want)
		}
	}
	if m.CurrentAdapter() != nil {
		t.Error("CurrentAdapter of a fresh model is not nil")
	}
}
