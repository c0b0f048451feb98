package lora

import (
	"math"
	"math/rand/v2"
	"testing"
)

// naive computes the LoRA forward and backward in float64 straight from the
// formulas, with xd = dropout(x) given explicitly.
func naive(A, B, xd, dout []float32, mask []float64, s float64, T, R, C, OC int) (out, dA, dB, din []float64) {
	u := make([]float64, T*R)
	for t := 0; t < T; t++ {
		for k := 0; k < R; k++ {
			for c := 0; c < C; c++ {
				u[t*R+k] += float64(xd[t*C+c]) * float64(A[k*C+c])
			}
		}
	}
	out = make([]float64, T*OC)
	for t := 0; t < T; t++ {
		for o := 0; o < OC; o++ {
			for k := 0; k < R; k++ {
				out[t*OC+o] += s * u[t*R+k] * float64(B[o*R+k])
			}
		}
	}
	dB = make([]float64, OC*R)
	g := make([]float64, T*R)
	for t := 0; t < T; t++ {
		for o := 0; o < OC; o++ {
			for k := 0; k < R; k++ {
				dB[o*R+k] += s * float64(dout[t*OC+o]) * u[t*R+k]
				g[t*R+k] += float64(dout[t*OC+o]) * float64(B[o*R+k])
			}
		}
	}
	dA = make([]float64, R*C)
	din = make([]float64, T*C)
	for t := 0; t < T; t++ {
		for k := 0; k < R; k++ {
			for c := 0; c < C; c++ {
				dA[k*C+c] += s * g[t*R+k] * float64(xd[t*C+c])
				din[t*C+c] += s * g[t*R+k] * float64(A[k*C+c]) * mask[t*C+c]
			}
		}
	}
	return
}

func TestForwardBackwardNaive(t *testing.T) {
	mc := tinyConfig()
	for _, tc := range []struct {
		name    string
		dropout float64
		train   bool
		T       int
	}{
		{"no dropout", 0, true, 7},
		{"dropout in eval", 0.3, false, 5},
		{"dropout", 0.3, true, 9},
		{"one row", 0, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(Config{R: 3, Alpha: 6, Dropout: tc.dropout, TargetModules: []string{"all-linear"}}, mc, 1)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(2, 3))
			randomize(a.Params(), rng, 0.5) // B != 0 so every path is exercised
			a.SetDropoutStep(11)
			for _, mod := range Modules {
				md := a.get(1, mod)
				T, C, OC, R := tc.T, md.in, md.out, 3
				x := make([]float32, T*C)
				dout := make([]float32, T*OC)
				randomize(x, rng, 1)
				randomize(dout, rng, 1)
				base := make([]float32, T*OC)
				randomize(base, rng, 1)
				out := append([]float32(nil), base...)
				a.Forward(1, mod, out, x, T, tc.train)
				// The mask, read back through the (independently tested) dropout descriptor.
				xd := make([]float32, T*C)
				mask := make([]float64, T*C)
				d := a.dropoutFor(md, tc.train, a.maskKey(md))
				for i := range x {
					xd[i] = d.at(x[i], i/C, i%C, C)
					mask[i] = 1
					if d.on {
						mask[i] = float64(d.at(1, i/C, i%C, C))
					}
				}
				wOut, wdA, wdB, wdin := naive(md.a, md.b, xd, dout, mask, a.cfg.Scaling(), T, R, C, OC)
				for i := range wOut {
					wOut[i] += float64(base[i])
				}
				checkTensor(t, mod+" out", out, wOut, 1e-5)

				a.ZeroGrads()
				dinBase := make([]float32, T*C)
				randomize(dinBase, rng, 1)
				din := append([]float32(nil), dinBase...)
				a.SetDropoutStep(99) // Backward must use the Forward's mask, not this step's
				a.Backward(1, mod, din, dout, x, T)
				a.SetDropoutStep(11)
				for i := range wdin {
					wdin[i] += float64(dinBase[i])
				}
				checkTensor(t, mod+" dA", md.da, wdA, 1e-5)
				checkTensor(t, mod+" dB", md.db, wdB, 1e-5)
				checkTensor(t, mod+" din", din, wdin, 1e-5)
			}
		})
	}
}

// TestGradFiniteDiff checks Backward against central differences of the
// scalar loss sum(out·r) with a fixed random r.
func TestGradFiniteDiff(t *testing.T) {
	mc := tinyConfig()
	a, err := New(Config{R: 2, Alpha: 3, Dropout: 0.25, TargetModules: []string{"o_proj", "down_proj"}}, mc, 5)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	randomize(a.Params(), rng, 0.5)
	a.SetDropoutStep(3)
	for _, mod := range []string{"o_proj", "down_proj"} {
		md := a.get(2, mod)
		T, C, OC := 4, md.in, md.out
		x := make([]float32, T*C)
		r := make([]float32, T*OC)
		randomize(x, rng, 1)
		randomize(r, rng, 1)
		loss := func() float64 {
			out := make([]float32, T*OC)
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
		a.Backward(2, mod, din, r, x, T)
		for _, g := range a.Grads() {
			if math.IsNaN(float64(g)) {
				t.Fatal("NaN gradient")
			}
		}
		const h = 1e-2 // the loss is linear in each parameter: only rounding limits h
		check := func(what string, p []float32, grad []float32, i int) {
			old := p[i]
			p[i] = old + h
			lp := loss()
			p[i] = old - h
			lm := loss()
			p[i] = old
			num := (lp - lm) / (2 * h)
			if d := math.Abs(num - float64(grad[i])); d > 2e-3*(1+math.Abs(num)) {
				t.Errorf("%s %s[%d]: analytic %.6g, numeric %.6g", mod, what, i, grad[i], num)
			}
		}
		for _, i := range []int{0, 3, len(md.a) - 1} {
			check("dA", md.a, md.da, i)
		}
		for _, i := range []int{0, 5, len(md.b) - 1} {
			check("dB", md.b, md.db, i)
		}
		for _, i := range []int{0, 7, len(x) - 1} {
			check("din", x, din, i)
		}
	}
}

func TestDropoutMask(t *testing.T) {
	mc := tinyConfig()
	mc.Hidden = 64
	const p = 0.3
	a, err := New(Config{R: 1, Alpha: 1, Dropout: p, TargetModules: []string{"q_proj"}}, mc, 9)
	if err != nil {
		t.Fatal(err)
	}
	md := a.get(0, "q_proj")
	C := md.in
	T := 200
	x := make([]float32, T*C)
	for i := range x {
		x[i] = 1
	}
	row := make([]float32, C)
	count := func(step uint64) (kept int, rows [][]float32) {
		a.SetDropoutStep(step)
		d := a.dropoutFor(md, true, a.maskKey(md))
		for tt := 0; tt < T; tt++ {
			d.apply(row, x[tt*C:], tt)
			for c, v := range row {
				switch v {
				case 0:
				case float32(1 / (1 - p)):
					kept++
				default:
					t.Fatalf("dropout value %v, want 0 or 1/(1-p)", v)
				}
				if got := d.at(1, tt, c, C); got != v {
					t.Fatalf("at(%d,%d) = %v, apply gave %v", tt, c, got, v)
				}
			}
			rows = append(rows, append([]float32(nil), row...))
		}
		return
	}
	k1, r1 := count(1)
	n := float64(T * C)
	frac := float64(k1) / n
	if sd := math.Sqrt(p * (1 - p) / n); math.Abs(frac-(1-p)) > 5*sd {
		t.Errorf("kept fraction %.4f, want %.2f ± %.4f", frac, 1-p, 5*sd)
	}
	_, r1b := count(1)
	_, r2 := count(2)
	same, diff := true, false
	for i := range r1 {
		for c := range r1[i] {
			same = same && r1[i][c] == r1b[i][c]
			diff = diff || r1[i][c] != r2[i][c]
		}
	}
	if !same {
		t.Error("same step gave a different mask")
	}
	if !diff {
		t.Error("a new step gave the same mask")
	}
	// p = 0 is an exact no-op whatever train says.
	a0, _ := New(Config{R: 2, Alpha: 4, TargetModules: []string{"q_proj"}}, mc, 9)
	randomize(a0.Params(), rand.New(rand.NewPCG(1, 1)), 1)
	o1 := make([]float32, T*md.out)
	o2 := make([]float32, T*md.out)
	a0.Forward(0, "q_proj", o1, x, T, true)
	a0.Forward(0, "q_proj", o2, x, T, false)
	for i := range o1 {
		if o1[i] != o2[i] {
			t.Fatalf("p=0: train and eval outputs differ at %d", i)
		}
	}
}
