package eval

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol*math.Max(1, math.Abs(b)) }

func TestKLDAccClosedForms(t *testing.T) {
	ln := func(x float64) float32 { return float32(math.Log(x)) }
	tests := []struct {
		name     string
		base, q  []float32
		target   int
		wantKL   float64
		wantSame bool
		wantDP   float64 // p_q(target) - p_base(target)
	}{
		{"identical", []float32{1, 2, 3, -1}, []float32{1, 2, 3, -1}, 2, 0, true, 0},
		{"shifted logits are the same distribution", []float32{1, 2, 3}, []float32{11, 12, 13}, 0, 0, true, 0},
		// p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
		{"two-point", []float32{0, 0}, []float32{ln(3), 0}, 1, 0.5 * math.Log(4.0/3), true, -0.25},
		// p = (0.7, 0.2, 0.1), q = (0.1, 0.2, 0.7)
		{"three-point swap", []float32{ln(0.7), ln(0.2), ln(0.1)}, []float32{ln(0.1), ln(0.2), ln(0.7)}, 0,
			0.7*math.Log(7) + 0.1*math.Log(1.0/7), false, -0.6},
	}
	for _, tt := range tests {
		var a KLDAcc
		kl := a.Add(tt.base, tt.q, tt.target)
		r := a.Result()
		if !near(kl, tt.wantKL, 1e-6) || !near(r.KLDMean, tt.wantKL, 1e-6) {
			t.Errorf("%s: KL %v (mean %v), want %v", tt.name, kl, r.KLDMean, tt.wantKL)
		}
		if got := r.SameTop == 1; got != tt.wantSame {
			t.Errorf("%s: same top %v, want %v", tt.name, r.SameTop, tt.wantSame)
		}
		if !near(r.DeltaPMean, tt.wantDP, 1e-6) || !near(r.DeltaPRMS, math.Abs(tt.wantDP), 1e-6) {
			t.Errorf("%s: Δp mean %v rms %v, want %v", tt.name, r.DeltaPMean, r.DeltaPRMS, tt.wantDP)
		}
	}
}

func TestQuantilesAndUncertainty(t *testing.T) {
	q := quantiles([]float64{5, 1, 4, 2, 3})
	// llama.cpp: value at fraction*(n-1), linearly interpolated
	if q.Max != 5 || q.Min != 1 || q.Median != 3 || !near(q.P90, 4.6, 1e-12) || !near(q.P10, 1.4, 1e-12) || !near(q.P999, 4.996, 1e-12) {
		t.Errorf("quantiles %+v", q)
	}
	if q := quantiles([]float64{4, 1, 3, 2}); q.Median != 2.5 {
		t.Errorf("even median %v, want 2.5", q.Median)
	}
	// n <= 10: llama.cpp reports no uncertainty
	if m, u := meanUnc(10, 30, 10); m != 1 || u != 0 {
		t.Errorf("meanUnc n=10: %v %v", m, u)
	}
	// 0,1 repeated 6 times each: mean 1/2, var 1/4, unc sqrt(1/4/11)
	if m, u := meanUnc(6, 6, 12); m != 0.5 || !near(u, math.Sqrt(0.25/11), 1e-12) {
		t.Errorf("meanUnc n=12: %v %v", m, u)
	}
}

func TestKLDWindows(t *testing.T) {
	ids := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	w, first := KLDWindows(ids, KLDOptions{Ctx: 4, BOS: 99})
	if len(w) != 2 || first != 2 || w[0][0] != 99 || w[1][0] != 99 || w[1][3] != 7 || ids[4] != 4 {
		t.Errorf("llama.cpp windows %v first %d (ids %v)", w, first, ids)
	}
	w, first = KLDWindows(ids, KLDOptions{Ctx: 4, AllTokens: true, BOS: 99})
	if len(w) != 3 || first != 0 || w[0][0] != 0 || len(w[2]) != 2 {
		t.Errorf("all-token windows %v first %d", w, first)
	}
}

const modelDir = "../testdata/models/qwen3-tied"

func loadTest(t *testing.T, adapter string) *model.Model {
	t.Helper()
	m, err := model.Load(modelDir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if adapter != "" {
		a, err := lora.Load(adapter, m.Config)
		if err != nil {
			t.Fatal(err)
		}
		m.SetAdapter(a)
	}
	return m
}

func pplStream(t *testing.T) []int {
	b, err := os.ReadFile("../testdata/golden/ppl.txt")
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]int, len(b)) // byte tokenizer: ids are the UTF-8 bytes
	for i, c := range b {
		ids[i] = int(c)
	}
	return ids
}

func TestKLDSelf(t *testing.T) {
	m := loadTest(t, "")
	r, err := KLDivergence(m, m, pplStream(t), KLDOptions{Ctx: 64, BOS: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Tokens != 4*31 || r.KLDMean != 0 || r.KLD.Max != 0 || r.SameTop != 1 || r.DeltaPRMS != 0 || r.PPLRatio != 1 {
		t.Errorf("model vs itself: %+v", r)
	}
}

// TestKLDGolden compares qwen3-tied vs qwen3-tied + qwen3-tied-r4 with
// testdata/gen/eval_reference.py (PyTorch, float64 statistics).
func TestKLDGolden(t *testing.T) {
	b, err := os.ReadFile("../testdata/golden/eval-kld-qwen3-tied-r4.json")
	if err != nil {
		t.Skip("golden missing: run /usr/bin/python3 testdata/gen/eval_reference.py")
	}
	var g struct {
		Modes []struct {
			Ctx     int
			Scored  string
			Windows int
			Tokens  int
			Summary map[string]json.RawMessage
		}
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	base, m := loadTest(t, ""), loadTest(t, "../testdata/adapters/qwen3-tied-r4")
	ids := pplStream(t)
	for _, mode := range g.Modes {
		r, err := KLDivergence(base, m, ids, KLDOptions{Ctx: mode.Ctx, AllTokens: mode.Scored == "all", BOS: -1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.Tokens != mode.Tokens || r.Windows != mode.Windows || r.Scored != mode.Scored {
			t.Fatalf("%s: %d tokens in %d windows, want %d in %d", mode.Scored, r.Tokens, r.Windows, mode.Tokens, mode.Windows)
		}
		got, _ := json.Marshal(r)
		var gm map[string]json.RawMessage
		json.Unmarshal(got, &gm)
		for k, want := range mode.Summary {
			var w, gv any
			json.Unmarshal(want, &w)
			json.Unmarshal(gm[k], &gv)
			cmp := func(name string, a, b float64) {
				tol := 2e-4
				if strings.HasSuffix(name, "unc") || strings.Contains(name, "cor") {
					tol = 2e-3
				}
				if !near(a, b, tol) {
					t.Errorf("%s: %s = %.8g, want %.8g", mode.Scored, name, a, b)
				}
			}
			switch w := w.(type) {
			case float64:
				cmp(k, gv.(float64), w)
			case map[string]any:
				for qk, qv := range w {
					cmp(k+"."+qk, gv.(map[string]any)[qk].(float64), qv.(float64))
				}
			}
		}
		t.Logf("%s: %d tokens, mean KLD %.6f ± %.6f, same top %.2f%%, ln(PPL ratio) %.6f", r.Scored, r.Tokens, r.KLDMean, r.KLDUnc, 100*r.SameTop, r.LnPPLRatio)
	}
}

func TestKLDErrors(t *testing.T) {
	m := loadTest(t, "")
	if _, err := KLDivergence(m, m, []int{1, 2, 3}, KLDOptions{Ctx: 64, BOS: -1}, nil); err == nil || !strings.Contains(err.Error(), "fewer than one window") {
		t.Errorf("short corpus: %v", err)
	}
	if err := SameTokenizer(modelDir, "../testdata/models/llama3"); err == nil || strings.Contains(err.Error(), "\n") {
		t.Errorf("different tokenizers: %v", err)
	} else {
		t.Log(err)
	}
	if err := SameTokenizer(modelDir, filepath.Join("..", "testdata", "models", "qwen3-tied")); err != nil {
		t.Errorf("same folder: %v", err)
	}
}
