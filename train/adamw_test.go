package train

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// adamwRef is torch.optim.AdamW's documented algorithm in float64, written
// from the formula in the torch docs (not from Update):
//
//	θ ← θ − γλθ;  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²
//	m̂ = m/(1−β1^t);  v̂ = v/(1−β2^t);  θ ← θ − γ m̂/(√v̂ + ε)
type adamwRef struct {
	m, v []float64
	t    int
}

func (o *adamwRef) step(p, g []float64, lr, b1, b2, eps, wd float64) {
	o.t++
	for i := range p {
		p[i] -= lr * wd * p[i]
		o.m[i] = b1*o.m[i] + (1-b1)*g[i]
		o.v[i] = b2*o.v[i] + (1-b2)*g[i]*g[i]
		mh := o.m[i] / (1 - math.Pow(b1, float64(o.t)))
		vh := o.v[i] / (1 - math.Pow(b2, float64(o.t)))
		p[i] -= lr * mh / (math.Sqrt(vh) + eps)
	}
}

func TestAdamWMatchesFloat64Formula(t *testing.T) {
	cases := []struct {
		name                string
		lr, b1, b2, eps, wd float64
	}{
		{"torch defaults", 1e-3, 0.9, 0.999, 1e-8, 0.01},
		{"no decay", 2e-4, 0.9, 0.999, 1e-8, 0},
		{"big decay", 1e-2, 0.8, 0.99, 1e-6, 0.1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			const n = 300
			// Two slabs, as a full fine-tune has several.
			p32 := [][]float32{make([]float32, 100), make([]float32, 200)}
			g32 := [][]float32{make([]float32, 100), make([]float32, 200)}
			p64 := make([]float64, n)
			for i := range p64 {
				x := float32(rng.NormFloat64())
				p64[i] = float64(x)
				if i < 100 {
					p32[0][i] = x
				} else {
					p32[1][i-100] = x
				}
			}
			opt := NewAdamW(n, AdamWConfig{Beta1: c.b1, Beta2: c.b2, Eps: c.eps, WeightDecay: c.wd})
			ref := &adamwRef{m: make([]float64, n), v: make([]float64, n)}
			g64 := make([]float64, n)
			for step := 0; step < 20; step++ {
				for i := range g64 {
					x := float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(5)-3)))
					g64[i] = float64(x)
					if i < 100 {
						g32[0][i] = x
					} else {
						g32[1][i-100] = x
					}
				}
				opt.Update(c.lr, p32, g32)
				ref.step(p64, g64, c.lr, c.b1, c.b2, c.eps, c.wd)
			}
			worst := 0.0
			for i := range p64 {
				got := float64(p32[0][min(i, 99)])
				if i >= 100 {
					got = float64(p32[1][i-100])
				}
				worst = max(worst, math.Abs(got-p64[i])/max(math.Abs(p64[i]), 1e-3))
			}
			// float32 arithmetic over 20 steps vs exact: a few ulps per step.
			if worst > 1e-5 {
				t.Errorf("max relative diff %.3g after 20 steps", worst)
			}
			t.Logf("max relative diff vs float64 %.3g", worst)
		})
	}
}

func TestClipGrads(t *testing.T) {
	g := [][]float32{{3, 0}, {4}}
	norm := GradNorm(g...)
	if norm != 5 {
		t.Fatalf("norm %v, want 5", norm)
	}
	// torch: coef = max_norm / (total_norm + 1e-6), applied when < 1.
	coef := ClipGrads(norm, 1, g...)
	want := 1 / (5 + 1e-6)
	if coef != want || g[0][0] != float32(3*want) || g[1][0] != float32(4*want) {
		t.Errorf("clipped %v coef %v, want coef %v", g, coef, want)
	}
	h := []float32{0.3, 0.4}
	if c := ClipGrads(GradNorm(h), 1, h); c != 1 || h[0] != 0.3 {
		t.Errorf("no clip expected: coef %v grads %v", c, h)
	}
	if c := ClipGrads(100, 0, h); c != 1 {
		t.Errorf("max_norm 0 is off, coef %v", c)
	}
}

// TestAdamWMatchesTorch: 5 steps of clip_grad_norm_ + torch.optim.AdamW
// (float32, CPU, single-tensor) on two tensors, from testdata/adamw_torch.json
// (testdata/gen_adamw.py). Update reproduces torch's float32 operation order,
// so parameters and moments agree bit for bit (1 ulp allowed).
func TestAdamWMatchesTorch(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "adamw_torch.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Config struct {
			LR          float64 `json:"lr"`
			Beta1       float64 `json:"beta1"`
			Beta2       float64 `json:"beta2"`
			Eps         float64 `json:"eps"`
			WeightDecay float64 `json:"weight_decay"`
			MaxNorm     float64 `json:"max_norm"`
		} `json:"config"`
		P0    [][]float32 `json:"p0"`
		Steps []struct {
			Grads   [][]float32 `json:"grads"`
			Norm    float64     `json:"norm"`
			Clipped [][]float32 `json:"clipped"`
		} `json:"steps"`
		Final    [][]float32 `json:"final"`
		ExpAvg   [][]float32 `json:"exp_avg"`
		ExpAvgSq [][]float32 `json:"exp_avg_sq"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	c := g.Config
	params := g.P0
	n := len(params[0]) + len(params[1])
	opt := NewAdamW(n, AdamWConfig{Beta1: c.Beta1, Beta2: c.Beta2, Eps: c.Eps, WeightDecay: c.WeightDecay})
	ulps := func(a, b float32) int64 {
		d := int64(math.Float32bits(a)) - int64(math.Float32bits(b))
		if d < 0 {
			d = -d
		}
		return d
	}
	for i, s := range g.Steps {
		grads := s.Grads
		norm := GradNorm(grads...)
		if math.Abs(norm-s.Norm)/s.Norm > 1e-6 {
			t.Errorf("step %d: grad norm %v, torch %v", i+1, norm, s.Norm)
		}
		ClipGrads(norm, c.MaxNorm, grads...)
		for k := range grads {
			for j := range grads[k] {
				// Torch's norm is a float32 reduction in its own order: the
				// clip factor agrees to ~1e-7, not bit for bit.
				if math.Abs(float64(grads[k][j]-s.Clipped[k][j])) > 1e-6*math.Abs(float64(s.Clipped[k][j])) {
					t.Fatalf("step %d: clipped grad [%d][%d] = %v, torch %v", i+1, k, j, grads[k][j], s.Clipped[k][j])
				}
			}
		}
		// Continue from torch's clipped grads, so the optimizer is checked alone.
		opt.Update(c.LR, params, s.Clipped)
	}
	var worst int64
	off := 0
	for k := range params {
		for j := range params[k] {
			worst = max(worst, ulps(params[k][j], g.Final[k][j]), ulps(opt.M[off+j], g.ExpAvg[k][j]), ulps(opt.V[off+j], g.ExpAvgSq[k][j]))
		}
		off += len(params[k])
	}
	t.Logf("max difference from torch over params, exp_avg, exp_avg_sq: %d ulp", worst)
	// 0 on the AVX2 machine that wrote the golden; torch's other CPU
	// builds (no FMA) may round differently by an ulp.
	if worst > 1 {
		t.Errorf("max difference from torch %d ulp, want <= 1", worst)
	}
}
