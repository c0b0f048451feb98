package cpu

import (
	"math/rand/v2"
	"testing"

	"github.com/tunellm/tune/kernels"
)

// BenchmarkQLoRALinear: one training linear's forward and din (T=256,
// 1024x1024) on a bf16 weight and on NF4 / Q4_K / Q8_0 copies of it.
func BenchmarkQLoRALinear(b *testing.B) {
	const T, OC, C = 256, 1024, 1024
	r := rand.New(rand.NewPCG(1, 2))
	be := New(0)
	in := randVec(r, T*C, 1)
	dout := randVec(r, T*OC, 1)
	out := make([]float32, T*OC)
	din := make([]float32, T*C)
	for _, dt := range []kernels.DType{kernels.BF16, kernels.NF4, kernels.Q4_K, kernels.Q8_0} {
		var w kernels.Weight
		if dt == kernels.BF16 {
			data, _ := encode(randVec(r, OC*C, 1), kernels.BF16)
			w = kernels.Weight{DType: dt, Data: data, Rows: OC, Cols: C}
		} else {
			w = quantWeight(b, r, dt, OC, C)
		}
		b.Run(dt.String(), func(b *testing.B) {
			for b.Loop() {
				be.MatMulForward(out, in, w, nil, T)
				be.MatMulBackward(din, nil, nil, dout, nil, w, T)
			}
			b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "tok/s")
		})
	}
}
