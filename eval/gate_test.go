package eval

import (
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
)

func TestGates(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name   string
		max    bool
		v, lim float64
		want   int // gates made
		pass   bool
		str    string
	}{
		{"max pass", true, 0.05, 0.1, 1, true, "max_mean_kld: mean KLD 0.05 <= 0.1"},
		{"max equal passes", true, 0.1, 0.1, 1, true, "max_mean_kld: mean KLD 0.1 <= 0.1"},
		{"max fail", true, 0.25, 0.1, 1, false, "max_mean_kld: mean KLD 0.25 > 0.1"},
		{"min pass", false, 0.99, 0.9, 1, true, "min_top1_agreement: top-1 0.99 >= 0.9"},
		{"min fail", false, 0.5, 0.9, 1, false, "min_top1_agreement: top-1 0.5 < 0.9"},
		{"off", true, 5, nan, 0, true, ""},
		{"NaN value fails a max", true, nan, 1, 1, false, "max_mean_kld: mean KLD NaN > 1"},
		{"NaN value fails a min", false, nan, 0.9, 1, false, "min_top1_agreement: top-1 NaN < 0.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g []Gate
			if tt.max {
				g = Max(nil, "max_mean_kld", "mean KLD", tt.v, tt.lim)
			} else {
				g = Min(nil, "min_top1_agreement", "top-1", tt.v, tt.lim)
			}
			if len(g) != tt.want {
				t.Fatalf("%d gates, want %d", len(g), tt.want)
			}
			if Passed(g) != tt.pass {
				t.Errorf("Passed %v, want %v", Passed(g), tt.pass)
			}
			if len(g) == 1 && g[0].String() != tt.str {
				t.Errorf("String %q, want %q", g[0].String(), tt.str)
			}
		})
	}
	g := Max(nil, "a", "x", 2, 1)
	g = Min(g, "b", "y", 5, 1)
	g = Min(g, "c", "z", 0, 1)
	if f := Failures(g); f != "a: x 2 > 1; c: z 0 < 1" {
		t.Errorf("Failures %q", f)
	}
	// Gates are JSON (validation.json).
	b, err := json.Marshal(g[0])
	if err != nil || string(b) != `{"name":"a","metric":"x","value":2,"op":"\u003c=","limit":1,"pass":false}` {
		t.Errorf("json %s %v", b, err)
	}
	if p := PctChange(110, 100); math.Abs(p-10) > 1e-12 {
		t.Errorf("PctChange %g", p)
	}
}

// TestCompareLogitsGolden: qwen3-tied vs qwen3-tied + qwen3-tied-r4 on the
// golden tokens; the largest logit difference equals the one PyTorch
// measured (testdata/gen/lora_reference.py, merge.max_abs_diff_vs_base).
func TestCompareLogitsGolden(t *testing.T) {
	b, err := os.ReadFile("../testdata/golden/lora-qwen3-tied.json")
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Merge struct {
			MaxAbsDiffVsBase float64 `json:"max_abs_diff_vs_base"`
			Tokens           []int   `json:"tokens"`
		} `json:"merge"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	base, ad := loadTest(t, ""), loadTest(t, "../testdata/adapters/qwen3-tied-r4")
	ids := g.Merge.Tokens
	d, err := CompareLogits(base, ad, ids, len(ids))
	if err != nil {
		t.Fatal(err)
	}
	if d.Rows != len(ids) || d.Windows != 1 || math.Abs(d.MaxAbs-g.Merge.MaxAbsDiffVsBase) > 1e-3 || d.MeanAbs <= 0 || d.MeanAbs > d.MaxAbs {
		t.Errorf("base vs adapter: %+v, want max_abs %.6f", d, g.Merge.MaxAbsDiffVsBase)
	}
	// A model against itself: zero, every argmax the same; windows of 10.
	d, err = CompareLogits(ad, ad, ids, 10)
	if err != nil {
		t.Fatal(err)
	}
	if d.MaxAbs != 0 || d.SameTop != 1 || d.Windows != 3 || d.Rows != len(ids) {
		t.Errorf("self: %+v", d)
	}
	if _, err := CompareLogits(base, ad, ids[:1], 10); err == nil || !strings.Contains(err.Error(), "nothing to compare") {
		t.Errorf("one token: %v", err)
	}
	if _, err := CompareLogits(base, ad, ids, 1); err == nil || !strings.Contains(err.Error(), "too short") {
		t.Errorf("ctx 1: %v", err)
	}
}
