package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/qblock"
)

// nf4Weight quantizes a random [rows, cols] matrix to NF4 (bitsandbytes'
// definition with double quantization, kernels/qblock).
func nf4Weight(r *rand.Rand, rows, cols int) kernels.Weight {
	s := qblock.QuantizeNF4(randVec(r, rows*cols, 1), true)
	return kernels.Weight{DType: kernels.NF4, Data: s.AppendBlocks(nil), Rows: rows, Cols: cols}
}

// TestQuantMatMulBackward: din = dout·W through a quantized weight equals,
// bit for bit, din through the F32 dequantized copy of it (the same gemm
// chain), accumulating onto an existing din, for every quantized type,
// shapes that make a column tile start inside a 256-element block, T from 1
// to 67, 1 and 3 workers; and din is within 1e-5 of a float64 reference.
// dbias through a quantized weight works too (it does not read W).
func TestQuantMatMulBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	for _, workers := range []int{1, 3} {
		b := New(workers)
		for _, dt := range kernels.DTypes {
			if !dt.Quantized() {
				continue
			}
			e, _, _ := dt.Block()
			for _, sh := range []struct{ OC, C int }{{1, e}, {37, 2 * e}, {67, 5 * e}, {130, 1280 / e * e}} {
				w := quantWeight(t, r, dt, sh.OC, sh.C)
				wf, f := dequantF32(t, w)
				for _, T := range []int{1, 3, 9, 67} {
					name := fmt.Sprintf("%v/w%d/T%d_OC%d_C%d", dt, workers, T, sh.OC, sh.C)
					dout := randVec(r, T*sh.OC, 1)
					init := randVec(r, T*sh.C, 1)
					got := append([]float32(nil), init...)
					want := append([]float32(nil), init...)
					gb := make([]float32, sh.OC)
					wb := make([]float32, sh.OC)
					b.MatMulBackward(got, nil, gb, dout, nil, w, T)
					b.MatMulBackward(want, nil, wb, dout, nil, wf, T)
					for i := range got {
						if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
							t.Fatalf("%s: din[%d] = %v, F32 dequantized gives %v", name, i, got[i], want[i])
						}
					}
					for i := range gb {
						if gb[i] != wb[i] {
							t.Fatalf("%s: dbias[%d] = %v, want %v", name, i, gb[i], wb[i])
						}
					}
					for tt := 0; tt < T; tt++ {
						for c := 0; c < sh.C; c++ {
							s, a := float64(init[tt*sh.C+c]), math.Abs(float64(init[tt*sh.C+c]))
							for o := 0; o < sh.OC; o++ {
								p := float64(dout[tt*sh.OC+o]) * float64(f[o*sh.C+c])
								s += p
								a += math.Abs(p)
							}
							if d := math.Abs(float64(got[tt*sh.C+c]) - s); d > 1e-5*a+1e-30 {
								t.Fatalf("%s: din[%d,%d] = %v, float64 %v", name, tt, c, got[tt*sh.C+c], s)
							}
						}
					}
				}
			}
		}
	}
}

// TestNF4MatMulFiniteDiff: the gradient din of L = sum(g ⊙ (x·Wᵀ)) through
// an NF4 weight matches central finite differences of the forward (the
// forward and backward see the same dequantized matrix).
func TestNF4MatMulFiniteDiff(t *testing.T) {
	r := rand.New(rand.NewPCG(43, 44))
	b := New(2)
	const T, OC, C = 3, 9, 128
	w := nf4Weight(r, OC, C)
	x := randVec(r, T*C, 1)
	g := randVec(r, T*OC, 1)
	loss := func(x []float32) float64 {
		out := make([]float32, T*OC)
		b.MatMulForward(out, x, w, nil, T)
		var s float64
		for i, v := range out {
			s += float64(v) * float64(g[i])
		}
		return s
	}
	din := make([]float32, T*C)
	b.MatMulBackward(din, nil, nil, g, nil, w, T)
	for _, i := range []int{0, 5, 127, 128, 200, 383} {
		const h = 1e-2
		xp := append([]float32(nil), x...)
		xm := append([]float32(nil), x...)
		xp[i] += h
		xm[i] -= h
		fd := (loss(xp) - loss(xm)) / (2 * h)
		if math.Abs(fd-float64(din[i])) > 1e-3*(1+math.Abs(fd)) {
			t.Fatalf("din[%d] = %v, finite difference %v", i, din[i], fd)
		}
	}
}
