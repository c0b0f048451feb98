package lora

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tunellm/tune/model"
)

// tinyConfig has every module shape distinct: q [16,12]... (NH*HD=16,
// KVH*HD=8, C=12, I=20).
func tinyConfig() *model.Config {
	return &model.Config{ModelType: "qwen3", Hidden: 12, Intermediate: 20, Layers: 3, Heads: 2, KVHeads: 1, HeadDim: 8}
}

func randomize(x []float32, rng *rand.Rand, scale float64) {
	for i := range x {
		x[i] = float32(rng.NormFloat64() * scale)
	}
}

// checkTensor reports the name, the max abs diff and the first mismatch.
func checkTensor(t *testing.T, name string, got []float32, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: len %d, want %d", name, len(got), len(want))
	}
	maxd, first := 0.0, -1
	for i := range got {
		d := math.Abs(float64(got[i]) - want[i])
		if math.IsNaN(float64(got[i])) {
			d = math.Inf(1)
		}
		if d > maxd {
			maxd = d
		}
		if d > tol*(1+math.Abs(want[i])) && first < 0 {
			first = i
		}
	}
	if first >= 0 {
		t.Errorf("%s: maxdiff %.3g > tol %.3g; first at [%d]: got %.8g want %.8g", name, maxd, tol, first, got[first], want[first])
	}
}
