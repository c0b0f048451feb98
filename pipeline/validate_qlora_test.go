package pipeline

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/recipes"
)

// TestQuantBaseGap: with lora.base_quant set, the adapter's validation
// compares the adapter on the full-precision base with the adapter on the
// quantized base it was trained on (perplexities, KLD, logits), records it in
// validation.json and gates the mean KLD with lora.base_quant_max_kld; nf4
// moves the tiny model's logits (a non-zero gap) and int8 less than nf4.
func TestQuantBaseGap(t *testing.T) {
	models, _ := filepath.Abs(testModels)
	gaps := map[string]float64{}
	for _, tc := range []struct {
		mode, extra string
		maxKLD      string
		pass        bool
	}{
		{"nf4", "", "2", true},
		{"int8", "\n  base_quant_group: 32", "2", true},
		{"nf4", "", "1e-9", false},
	} {
		dir := t.TempDir()
		held := filepath.Join(dir, "held.txt")
		os.WriteFile(held, []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 12)), 0o644)
		y := "model:\n  path: " + filepath.Join(models, "qwen3-tied") + "\ndataset:\n  path: d.jsonl\nlora:\n  base_quant: " + tc.mode + tc.extra +
			"\n  base_quant_max_kld: " + tc.maxKLD + "\noutput:\n  dir: " + filepath.Join(dir, "run") + "\nvalidate:\n  data: " + held + "\n  ctx: 64\n"
		r, err := recipes.Parse(filepath.Join(dir, "r.yaml"), []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
		_, err = Run(context.Background(), r, Options{Train: func(context.Context, bool) error {
			copyDir(t, "../testdata/adapters/qwen3-tied-r4", filepath.Join(dir, "run", "adapter"))
			return nil
		}})
		if (err == nil) != tc.pass {
			t.Fatalf("%s, max KLD %s: %v", tc.mode, tc.maxKLD, err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "run", "adapter", "validation.json"))
		if err != nil {
			t.Fatal(err)
		}
		var v Validation
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		q := v.QuantBase
		if q == nil || !strings.HasPrefix(q.Base, tc.mode) || q.KLD.Tokens == 0 || q.Logits.Rows == 0 {
			t.Fatalf("%s: quantized_base %+v", tc.mode, q)
		}
		if q.FullPPL != v.PPL || q.PPL == q.FullPPL || !(q.KLD.Mean > 0) || !(q.Logits.MaxAbs > 0) || math.IsNaN(q.PPL) {
			t.Fatalf("%s: ppl %v (adapter %v), gap %+v", tc.mode, q.FullPPL, v.PPL, q)
		}
		found := false
		for _, g := range v.Gates {
			if g.Name == "base_quant_max_kld" {
				found = g.Pass == tc.pass && g.Value == q.KLD.Mean
			}
		}
		if !found {
			t.Fatalf("%s: gates %+v", tc.mode, v.Gates)
		}
		if tc.pass {
			gaps[tc.mode] = q.KLD.Mean
		}
		t.Logf("%s: ppl %.4f full-precision vs %.4f on the %s base, mean KLD %.4g, max |Δlogit| %.3g, top-1 %.3f",
			tc.mode, q.FullPPL, q.PPL, q.Base, q.KLD.Mean, q.Logits.MaxAbs, q.KLD.SameTop)
	}
	if !(gaps["int8"] < gaps["nf4"]) {
		t.Errorf("mean KLD int8 %g, nf4 %g: want int8 smaller", gaps["int8"], gaps["nf4"])
	}
}
