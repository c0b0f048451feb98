package lora

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model/safetensors"
)

func cpuBackend(t *testing.T) kernels.Backend {
	t.Helper()
	be, err := kernels.Get("cpu")
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// weightOf stores w [OC,C] as a kernels.Weight of dtype dt and returns the
// float32 values the backend will see (rounded to dt).
func weightOf(t *testing.T, w []float32, OC, C int, dt kernels.DType) (kernels.Weight, []float32) {
	t.Helper()
	st := stDType(dt)
	buf := make([]byte, len(w)*dt.Size())
	if err := safetensors.FromFloat32(buf, w, st); err != nil {
		t.Fatal(err)
	}
	back := make([]float32, len(w))
	if err := safetensors.ToFloat32(back, buf, st); err != nil {
		t.Fatal(err)
	}
	return kernels.Weight{DType: dt, Data: buf, Rows: OC, Cols: C}, back
}

// doraNaive is the DoRA forward of dora.go's comment in float64, no dropout:
// out = x·Wᵀ + b + (m/n − 1)·x·Wᵀ + (m/n)·s·x·Aᵀ·Bᵀ, n = ‖W + s·B·A‖ per row.
func doraNaive(x, w, bias, A, B, m []float32, s float64, T, C, OC, R int) (out, n []float64) {
	n = make([]float64, OC)
	for o := 0; o < OC; o++ {
		var sum float64
		for c := 0; c < C; c++ {
			v := float64(w[o*C+c])
			for k := 0; k < R; k++ {
				v += s * float64(B[o*R+k]) * float64(A[k*C+c])
			}
			sum += v * v
		}
		n[o] = math.Sqrt(sum)
	}
	out = make([]float64, T*OC)
	for t := 0; t < T; t++ {
		for o := 0; o < OC; o++ {
			var base, lora float64
			for c := 0; c < C; c++ {
				base += float64(x[t*C+c]) * float64(w[o*C+c])
			}
			for k := 0; k < R; k++ {
				var u float64
				for c := 0; c < C; c++ {
					u += float64(x[t*C+c]) * float64(A[k*C+c])
				}
				lora += u * float64(B[o*R+k])
			}
			mn := float64(m[o]) / n[o]
			b := 0.0
			if bias != nil {
				b = float64(bias[o])
			}
			out[t*OC+o] = base + b + (mn-1)*base + mn*s*lora
		}
	}
	return out, n
}

// newDoRA makes a DoRA adapter on o_proj and down_proj of layer 2 of
// tinyConfig, binds random base weights of dtype dt (with a bias on o_proj),
// and randomizes A, B and m.
func newDoRA(t *testing.T, dt kernels.DType, dropout float64) (*Adapter, map[string][]float32, map[string][]float32) {
	t.Helper()
	a, err := New(Config{R: 2, Alpha: 3, Dropout: dropout, UseDoRA: true, TargetModules: []string{"o_proj", "down_proj"}}, tinyConfig(), 5)
	if err != nil {
		t.Fatal(err)
	}
	be := cpuBackend(t)
	rng := rand.New(rand.NewPCG(11, 12))
	ws, bs := map[string][]float32{}, map[string][]float32{}
	for _, mod := range []string{"o_proj", "down_proj"} {
		for l := 0; l < 3; l++ {
			md := a.get(l, mod)
			w := make([]float32, md.out*md.in)
			randomize(w, rng, 0.5)
			kw, back := weightOf(t, w, md.out, md.in, dt)
			var bias []float32
			if mod == "o_proj" {
				bias = make([]float32, md.out)
				randomize(bias, rng, 1)
			}
			a.BindBase(l, mod, be, kw, bias)
			if l == 2 {
				ws[mod], bs[mod] = back, bias
			}
			// A new adapter starts at m = ‖W‖ (B = 0): PEFT's init.
			_, n := doraNaive(nil, back, nil, md.a, md.b, md.dora.mag, float64(a.scaling), 0, md.in, md.out, 2)
			for o, v := range md.dora.mag {
				if math.Abs(float64(v)-n[o]) > 1e-6*n[o] {
					t.Fatalf("%s: initial m[%d] = %v, want ‖W‖ = %v", mod, o, v, n[o])
				}
			}
		}
	}
	randomize(a.Params(), rng, 0.5)
	for _, tn := range a.Tensors() {
		if strings.HasSuffix(tn.Name, "magnitude_vector") {
			for i := range tn.Data {
				tn.Data[i] = 1 + float32(math.Abs(float64(tn.Data[i]))) // keep m away from 0
			}
		}
	}
	return a, ws, bs
}

func TestDoRAForwardNaive(t *testing.T) {
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		a, ws, bs := newDoRA(t, dt, 0)
		rng := rand.New(rand.NewPCG(3, 4))
		for _, mod := range []string{"o_proj", "down_proj"} {
			md := a.get(2, mod)
			T, C, OC := 5, md.in, md.out
			x := make([]float32, T*C)
			randomize(x, rng, 1)
			out := make([]float32, T*OC)
			// out holds the base output with bias, as the model leaves it.
			be := cpuBackend(t)
			be.MatMulForward(out, x, md.dora.w, bs[mod], T)
			a.Forward(2, mod, out, x, T, true)
			want, n := doraNaive(x, ws[mod], bs[mod], md.a, md.b, md.dora.mag, float64(a.scaling), T, C, OC, 2)
			checkTensor(t, dt.String()+" "+mod+" out", out, want, 2e-5)
			got, err := a.WeightNorm(2, mod)
			if err != nil {
				t.Fatal(err)
			}
			checkTensor(t, dt.String()+" "+mod+" weight norm", got, n, 1e-6)
			// The norm follows A and B (recomputed after an optimizer step).
			md.b[0] += 0.5
			got2, _ := a.WeightNorm(2, mod)
			_, n2 := doraNaive(nil, ws[mod], nil, md.a, md.b, md.dora.mag, float64(a.scaling), 0, C, OC, 2)
			checkTensor(t, dt.String()+" "+mod+" weight norm after a step", got2, n2, 1e-6)
			if got2[0] == got[0] {
				t.Errorf("%s: weight norm did not follow B", mod)
			}
		}
	}
}

// TestDoRAGradFiniteDiff checks dm, dA, dB and din by central differences
// of sum(out·r), with the weight norm held fixed (it is detached), with and
// without dropout, on f32 and bf16 base weights.
func TestDoRAGradFiniteDiff(t *testing.T) {
	for _, tc := range []struct {
		dt      kernels.DType
		dropout float64
	}{{kernels.F32, 0}, {kernels.F32, 0.25}, {kernels.BF16, 0.25}} {
		a, _, bs := newDoRA(t, tc.dt, tc.dropout)
		a.SetDropoutStep(3)
		rng := rand.New(rand.NewPCG(7, 8))
		be := cpuBackend(t)
		for _, mod := range []string{"o_proj", "down_proj"} {
			md, ds := a.get(2, mod), a.get(2, mod).dora
			T, C, OC := 4, md.in, md.out
			x := make([]float32, T*C)
			r := make([]float32, T*OC)
			randomize(x, rng, 1)
			randomize(r, rng, 1)
			a.ensureNorm(md)
			frozen := slices.Clone(ds.norm)
			loss := func() float64 {
				// hold n: mark the current A, B as the ones it was computed for
				ds.norm = append(ds.norm[:0], frozen...)
				ds.normA = append(ds.normA[:0], md.a...)
				ds.normB = append(ds.normB[:0], md.b...)
				out := make([]float32, T*OC)
				be.MatMulForward(out, x, ds.w, bs[mod], T)
				a.Forward(2, mod, out, x, T, true)
				var s float64
				for i := range out {
					s += float64(out[i]) * float64(r[i])
				}
				return s
			}
			loss()
			a.ZeroGrads()
			din := make([]float32, T*C)
			be.MatMulBackward(din, nil, nil, r, x, ds.w, T) // the model's own g·W
			a.Backward(2, mod, din, r, x, T)
			for _, g := range a.Grads() {
				if math.IsNaN(float64(g)) {
					t.Fatal("NaN gradient")
				}
			}
			const h = 1e-2 // linear in each parameter with n held
			name := tc.dt.String() + " dropout " + map[bool]string{true: "on", false: "off"}[tc.dropout > 0] + " " + mod
			check := func(what string, p []float32, grad []float32, i int) {
				old := p[i]
				p[i] = old + h
				lp := loss()
				p[i] = old - h
				lm := loss()
				p[i] = old
				num := (lp - lm) / (2 * h)
				if d := math.Abs(num - float64(grad[i])); d > 2e-3*(1+math.Abs(num)) {
					t.Errorf("%s %s[%d]: analytic %.6g, numeric %.6g", name, what, i, grad[i], num)
				}
				if grad[i] == 0 {
					t.Errorf("%s %s[%d]: zero gradient", name, what, i)
				}
			}
			for _, i := range []int{0, 3, len(md.a) - 1} {
				check("dA", md.a, md.da, i)
			}
			for _, i := range []int{0, 5, len(md.b) - 1} {
				check("dB", md.b, md.db, i)
			}
			for _, i := range []int{0, 4, OC - 1} {
				check("dm", ds.mag, ds.dmag, i)
			}
			for _, i := range []int{1, 7, len(x) - 1} {
				check("din", x, din, i)
			}
		}
	}
}

// TestDoRAMergedWeight: W' = (m/‖W + s·B·A‖)·(W + s·B·A) row by row, the
// unmerged output of W' equals the DoRA forward (bias aside), and a new
// adapter merges to W.
func TestDoRAMergedWeight(t *testing.T) {
	a, ws, _ := newDoRA(t, kernels.F32, 0)
	md := a.get(2, "down_proj")
	got, err := a.MergedWeight(2, "down_proj", ws["down_proj"])
	if err != nil {
		t.Fatal(err)
	}
	C, R := md.in, 2
	s := float64(a.scaling)
	want := make([]float64, len(got))
	_, n := doraNaive(nil, ws["down_proj"], nil, md.a, md.b, md.dora.mag, s, 0, C, md.out, R)
	for o := 0; o < md.out; o++ {
		for c := 0; c < C; c++ {
			v := float64(ws["down_proj"][o*C+c])
			for k := 0; k < R; k++ {
				v += s * float64(md.b[o*R+k]) * float64(md.a[k*C+c])
			}
			want[o*C+c] = float64(md.dora.mag[o]) / n[o] * v
		}
	}
	checkTensor(t, "merged DoRA down_proj", got, want, 1e-6)

	fresh, err := New(Config{R: 2, Alpha: 3, UseDoRA: true, TargetModules: []string{"down_proj"}}, tinyConfig(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.Save(t.TempDir(), ""); err == nil || !strings.Contains(err.Error(), "DoRA magnitude is all zero") {
		t.Errorf("saving an unbound new DoRA adapter: err = %v", err)
	}
	kw, back := weightOf(t, ws["down_proj"], md.out, C, kernels.F32)
	fresh.BindBase(2, "down_proj", cpuBackend(t), kw, nil)
	id, _ := fresh.MergedWeight(2, "down_proj", back)
	w64 := make([]float64, len(back))
	for i, v := range back {
		w64[i] = float64(v)
	}
	checkTensor(t, "merged new DoRA adapter", id, w64, 1e-6)
}

// TestDoRASaveLoad: PEFT names (lora_magnitude_vector, no ".weight"),
// use_dora in the config, values round-trip.
func TestDoRASaveLoad(t *testing.T) {
	a, _, _ := newDoRA(t, kernels.F32, 0)
	dir := filepath.Join(t.TempDir(), "ad")
	if err := a.Save(dir, ""); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.UseDoRA {
		t.Error("use_dora not saved")
	}
	r, err := safetensors.Open(filepath.Join(dir, WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	const name = "base_model.model.model.layers.2.mlp.down_proj.lora_magnitude_vector"
	st, err := r.Tensor(name)
	if err != nil {
		t.Fatal(err)
	}
	if !equalShape(st.Shape, []int{12}) {
		t.Errorf("%s: shape %v, want [12]", name, st.Shape)
	}
	r.Close()
	b, err := Load(dir, tinyConfig())
	if err != nil {
		t.Fatal(err)
	}
	if !b.DoRA() || !slices.Equal(a.Params(), b.Params()) {
		t.Error("DoRA adapter does not round-trip")
	}
	// Binding a loaded adapter keeps its trained magnitude.
	md := a.get(2, "down_proj")
	before := slices.Clone(b.get(2, "down_proj").dora.mag)
	b.BindBase(2, "down_proj", cpuBackend(t), md.dora.w, nil)
	if !slices.Equal(before, b.get(2, "down_proj").dora.mag) {
		t.Error("BindBase overwrote a loaded magnitude")
	}
}
