package cpu

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/tunellm/tune/kernels"
)

// BenchmarkGemmBF16: square forward (out = in·Wᵀ) and din (din += dout·W)
// matmuls on a bf16 weight, fp32 compute versus bf16 compute (the latter
// only where the CPU has AVX512_BF16). 2·N³ FLOPs per call.
func BenchmarkGemmBF16(b *testing.B) {
	be := New(0)
	for _, n := range []int{512, 1024, 2048} {
		r := rand.New(rand.NewPCG(1, uint64(n)))
		in := randVec(r, n*n, 1)
		wdata, _ := encode(randVec(r, n*n, 0.5), kernels.BF16)
		w := kernels.Weight{DType: kernels.BF16, Data: wdata, Rows: n, Cols: n}
		out := make([]float32, n*n)
		for _, mode := range []string{"f32", "bf16"} {
			if mode == "bf16" && !hasBF16 {
				continue
			}
			for _, op := range []string{"fwd", "din"} {
				b.Run(fmt.Sprintf("%s/%s/%d", mode, op, n), func(b *testing.B) {
					defer SetComputeBF16(SetComputeBF16(mode == "bf16"))
					for b.Loop() {
						if op == "fwd" {
							be.MatMulForward(out, in, w, nil, n)
						} else {
							be.MatMulBackward(out, nil, nil, in, nil, w, n)
						}
					}
					b.ReportMetric(2*float64(n)*float64(n)*float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				})
			}
		}
	}
}

// BenchmarkMicroBF16: the micro-kernels alone on L1/L2-resident data (one
// core): 8×32 outputs × kc k, fp32 FMA versus VDPBF16PS.
func BenchmarkMicroBF16(b *testing.B) {
	const kc = 256
	a := make([]float32, 8*kc)
	bb := make([]float32, kc*gemmNR)
	c := make([]float32, 8*gemmNR)
	flops := float64(2 * 8 * gemmNR * kc)
	if gemmISA == isaAVX512 {
		b.Run("f32", func(b *testing.B) {
			for b.Loop() {
				gemmMicro(a, kc, bb, c, gemmNR, kc, false)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
	if hasBF16 {
		b.Run("bf16", func(b *testing.B) {
			for b.Loop() {
				gemmBF16Micro(u32(a), kc/2, u32(bb), c, gemmNR, kc/2, false)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// BenchmarkGemvBF16: one row (a decoding step) times a 2048×2048 bf16
// weight: fp32's streaming gemv versus bf16 compute (packing the weight,
// then the one-row kernel).
func BenchmarkGemvBF16(b *testing.B) {
	const n = 2048
	be := New(0)
	r := rand.New(rand.NewPCG(1, 1))
	in := randVec(r, n, 1)
	wdata, _ := encode(randVec(r, n*n, 0.5), kernels.BF16)
	w := kernels.Weight{DType: kernels.BF16, Data: wdata, Rows: n, Cols: n}
	out := make([]float32, n)
	for _, mode := range []string{"f32", "bf16"} {
		if mode == "bf16" && !hasBF16 {
			continue
		}
		b.Run(mode, func(b *testing.B) {
			defer SetComputeBF16(SetComputeBF16(mode == "bf16"))
			for b.Loop() {
				be.MatMulForward(out, in, w, nil, 1)
			}
			b.ReportMetric(float64(n*n*2)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}
