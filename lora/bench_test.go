package lora

import (
	"math/rand/v2"
	"testing"
)

func benchAdapter(tb testing.TB, C, R, T int, p float64) (*Adapter, []float32, []float32, []float32) {
	mc := tinyConfig()
	mc.Hidden, mc.Intermediate, mc.Heads, mc.KVHeads, mc.HeadDim, mc.Layers = C, C, C/128, C/128, 128, 1
	a, err := New(Config{R: R, Alpha: 2 * float64(R), Dropout: p, TargetModules: []string{"q_proj"}}, mc, 1)
	if err != nil {
		tb.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	randomize(a.Params(), rng, 0.1)
	a.Reserve(T)
	x := make([]float32, T*C)
	out := make([]float32, T*C)
	din := make([]float32, T*C)
	randomize(x, rng, 1)
	return a, x, out, din
}

// TestNoAllocs: once Reserve has sized the scratch, a training step's LoRA
// calls allocate nothing.
func TestNoAllocs(t *testing.T) {
	a, x, out, din := benchAdapter(t, 256, 8, 32, 0.1)
	a.Forward(0, "q_proj", out, x, 32, true) // warm the workers' scratch
	a.Backward(0, "q_proj", din, out, x, 32)
	n := testing.AllocsPerRun(10, func() {
		a.Forward(0, "q_proj", out, x, 32, true)
		a.Backward(0, "q_proj", din, out, x, 32)
	})
	if n != 0 {
		t.Errorf("%v allocations per Forward+Backward, want 0", n)
	}
}

// BenchmarkForwardBackward: C=OC=4096, r=16, T=512 (one 8B-class q_proj).
// FLOPs: forward 2·T·R·(C+OC), backward 2·T·R·(OC + OC + C + C).
func BenchmarkForwardBackward(b *testing.B) {
	for _, p := range []float64{0, 0.05} {
		name := "nodropout"
		if p > 0 {
			name = "dropout"
		}
		b.Run(name, func(b *testing.B) {
			const C, R, T = 4096, 16, 512
			a, x, out, din := benchAdapter(b, C, R, T, p)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				a.Forward(0, "q_proj", out, x, T, true)
				a.Backward(0, "q_proj", din, out, x, T)
			}
			flops := float64(2*T*R*(C+C) + 2*T*R*(4*C))
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
