package lora

import (
	"math/rand/v2"
	"os"
	"testing"

	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
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

// BenchmarkTrainStep512: one LoRA training step (forward + backward of a
// 512-token packed batch, two samples, every label scored) with a rank-16
// adapter of this package on all 7 linear modules of bench-qwen3-small, as
// bench/run.go's LoRA row. The model folder comes from
// `go run bench/gen_model.go DIR` and is named by TUNE_BENCH_MODEL.
func BenchmarkTrainStep512(b *testing.B) {
	dir := os.Getenv("TUNE_BENCH_MODEL")
	if dir == "" {
		b.Skip("set TUNE_BENCH_MODEL to a bench-qwen3-small folder (go run bench/gen_model.go DIR)")
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	const T = 512
	a, err := New(Config{R: 16, Alpha: 32, TargetModules: []string{AllLinear}}, m.Config, 1)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tn := range a.Tensors() { // B nonzero, so every grad path carries numbers
		randomize(tn.Data, rng, 0.02)
	}
	a.Reserve(T)
	tokens, pos, seg, labels := make([]int32, T), make([]int32, T), make([]int32, T), make([]int32, T)
	for t := range tokens {
		tokens[t] = int32(rng.IntN(m.Config.Vocab))
		s, p := 0, t
		if t >= 300 {
			s, p = 1, t-300
		}
		seg[t], pos[t] = int32(s), int32(p)
	}
	for t := range labels {
		labels[t] = tokens[t]
		if pos[t] == 0 {
			labels[t] = -100
		}
	}
	for _, c := range []struct {
		name       string
		ckpt, bf16 bool
	}{{"keep", false, false}, {"checkpointing", true, false}, {"keep-bf16", false, true}} {
		ckpt := c.ckpt
		b.Run(c.name, func(b *testing.B) {
			// keep-bf16: the frozen base's matmuls in bf16 compute
			// (cpu.SetComputeBF16; fp32 where the CPU lacks AVX512_BF16).
			defer cpu.SetComputeBF16(cpu.SetComputeBF16(c.bf16))
			p, err := m.NewPass(T, model.TrainOptions{Adapter: a, Checkpointing: ckpt})
			if err != nil {
				b.Fatal(err)
			}
			var loss float64
			for b.Loop() {
				a.ZeroGrads()
				sum, n, err := p.Forward(tokens, pos, seg, labels)
				if err != nil {
					b.Fatal(err)
				}
				loss = sum / float64(max(n, 1))
				if err := p.Backward(1.0 / T); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "tokens/s")
			b.ReportMetric(loss, "loss")
			b.ReportMetric(float64(p.ActivationBytes())/(1<<20), "act-MB")
			b.Logf("%s: loss %.7f", c.name, loss)
		})
	}
}
