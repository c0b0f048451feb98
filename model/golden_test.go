package model

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	_ "github.com/tunellm/tune/kernels/cpu"
)

// The golden files come from testdata/gen/reference.py: an independent PyTorch
// (float32) implementation of the HF modeling code, cross-checked there against
// a float64 loop-by-loop version. Regenerate with
// /usr/bin/python3 testdata/gen/reference.py.

type golden struct {
	Model        string      `json:"model"`
	WeightsDType string      `json:"weights_dtype"`
	Tokens       []int       `json:"tokens"`
	Logits       [][]float64 `json:"logits"`
	Greedy       struct {
		Prompt    []int   `json:"prompt"`
		NewTokens []int   `json:"new_tokens"`
		Margin    float64 `json:"min_top2_margin"`
	} `json:"greedy"`
	PPL []struct {
		TextFile     string  `json:"text_file"`
		Ctx          int     `json:"ctx"`
		BOS          bool    `json:"bos"`
		TokensTotal  int     `json:"tokens_total"`
		NLLSum       float64 `json:"nll_sum"`
		TokensScored int     `json:"tokens_scored"`
		PPL          float64 `json:"ppl"`
	} `json:"ppl"`
}

var goldenModels = []string{"qwen3-tied", "qwen3-untied-bf16", "llama3", "mistral", "qwen2"}

func loadGolden(t *testing.T, name string) (*golden, *Model) {
	t.Helper()
	path := filepath.Join("..", "testdata", "golden", name+".json")
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing; generate with /usr/bin/python3 testdata/gen/reference.py", path)
		}
		t.Skipf("%s missing; generate with /usr/bin/python3 testdata/gen/reference.py", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	m, err := Load(filepath.Join("..", "testdata", "models", name), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &g, m
}

// checkTensor compares a row against the reference with a tolerance relative
// to the row's largest magnitude, and reports the worst and first mismatches.
func checkTensor(t *testing.T, name string, got []float32, want []float64, relTol float64) (relDiff float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", name, len(got), len(want))
		return math.Inf(1)
	}
	scale := 0.0
	for _, w := range want {
		scale = max(scale, math.Abs(w))
	}
	tol := relTol * max(scale, 1e-30)
	maxDiff, bad := 0.0, 0
	for i := range got {
		d := math.Abs(float64(got[i]) - want[i])
		if !(d <= tol) {
			if bad < 3 {
				t.Errorf("%s[%d] = %v, want %v (diff %.3g > %.3g = %g × max|want| %.3g)", name, i, got[i], want[i], d, tol, relTol, scale)
			}
			bad++
		}
		if d > maxDiff || math.IsNaN(d) {
			maxDiff = d
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d mismatches, maxdiff %.3g", name, bad, len(got), maxDiff)
	}
	return maxDiff / max(scale, 1e-30)
}

// TestGoldenLogits: every position's logits within 1e-4 of the row's max |logit|.
func TestGoldenLogits(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			g, m := loadGolden(t, name)
			if len(g.Logits) != len(g.Tokens) {
				t.Fatalf("golden has %d logit rows for %d tokens", len(g.Logits), len(g.Tokens))
			}
			c := m.NewCache(len(g.Tokens))
			rows, err := m.ForwardLogits(c, g.Tokens)
			if err != nil {
				t.Fatal(err)
			}
			worst := 0.0
			for i := range rows {
				worst = max(worst, checkTensor(t, name+".logits["+strconv.Itoa(i)+"]", rows[i], g.Logits[i], 1e-4))
			}
			t.Logf("%s (%s weights): %d positions, worst |diff|/max|logit| = %.3g", name, g.WeightsDType, len(rows), worst)
		})
	}
}

// TestGoldenGreedy: greedy continuation through the KV cache equals the
// reference's full-recompute greedy tokens exactly.
func TestGoldenGreedy(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			g, m := loadGolden(t, name)
			var got []int
			err := m.Generate(g.Greedy.Prompt, len(g.Greedy.NewTokens), nil, SampleOptions{}, func(id int) bool {
				got = append(got, id)
				return true
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, g.Greedy.NewTokens) {
				t.Errorf("greedy tokens\n got %v\nwant %v (reference min top-2 margin %.3g)", got, g.Greedy.NewTokens, g.Greedy.Margin)
			}
		})
	}
}

// TestGoldenPPL: non-overlapping windows of ctx tokens over the bytes of the
// text (ids = bytes, optional BOS 256), summed WindowNLL, 1e-5 relative.
func TestGoldenPPL(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			g, m := loadGolden(t, name)
			if len(g.PPL) == 0 {
				t.Fatal("golden has no ppl entries")
			}
			for _, p := range g.PPL {
				text, err := os.ReadFile(filepath.Join("..", p.TextFile))
				if err != nil {
					t.Fatal(err)
				}
				var stream []int
				if p.BOS {
					stream = append(stream, 256)
				}
				for _, b := range text {
					stream = append(stream, int(b))
				}
				if len(stream) != p.TokensTotal {
					t.Fatalf("stream has %d tokens, golden says %d", len(stream), p.TokensTotal)
				}
				var sum float64
				var n int
				for s := 0; s < len(stream); s += p.Ctx {
					w := stream[s:min(s+p.Ctx, len(stream))]
					ws, wn, err := m.WindowNLL(w)
					if err != nil {
						t.Fatal(err)
					}
					sum += ws
					n += wn
				}
				if n != p.TokensScored {
					t.Errorf("ctx %d: scored %d tokens, want %d", p.Ctx, n, p.TokensScored)
				}
				if rel := math.Abs(sum-p.NLLSum) / math.Abs(p.NLLSum); rel > 1e-5 {
					t.Errorf("ctx %d: nll sum %.9g, want %.9g (rel diff %.3g)", p.Ctx, sum, p.NLLSum, rel)
				}
				t.Logf("ctx %d: nll sum %.10g, reference %.10g", p.Ctx, sum, p.NLLSum)
				ppl := math.Exp(sum / float64(n))
				if rel := math.Abs(ppl-p.PPL) / p.PPL; rel > 1e-5 {
					t.Errorf("ctx %d: ppl %.9g, want %.9g (rel diff %.3g)", p.Ctx, ppl, p.PPL, rel)
				}
			}
		})
	}
}
