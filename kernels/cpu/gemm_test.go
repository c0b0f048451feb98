package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tunellm/tune/kernels"
)

var isaNames = map[int]string{isaGo: "go", isaAVX2: "avx2", isaAVX512: "avx512"}

// gemmRun computes the forward (out), din and dw of one shape with the
// current micro-kernels. din and dw accumulate onto fixed random values.
func gemmRun(be *Backend, in, dout, din0, dw0 []float32, w kernels.Weight, T int) (out, din, dw []float32) {
	out = make([]float32, T*w.Rows)
	be.MatMulForward(out, in, w, nil, T)
	din = slices.Clone(din0)
	if w.DType == kernels.F32 {
		dw = slices.Clone(dw0)
	}
	be.MatMulBackward(din, dw, nil, dout, in, w, T)
	return out, din, dw
}

// TestGemmKernels runs the matmuls on shapes that hit every edge of the
// packed GEMM (rows below and between micro-kernel heights, partial panels
// and tiles, k not a multiple of the block) with each micro-kernel set this
// CPU has. Assembly and pure Go must agree with a float64 reference and with
// each other to rounding; AVX2 and AVX-512 compute the same fma chains and
// must agree bit for bit.
func TestGemmKernels(t *testing.T) {
	shapes := []struct{ T, C, OC int }{
		{1, 1, 1}, {2, 9, 33}, {3, 70, 200}, {5, 257, 31}, {7, 300, 65}, {8, 256, 32}, {9, 33, 130}, {13, 513, 64}, {17, 40, 129}, {25, 600, 97},
	}
	be := New(3)
	for _, dt := range dtypes {
		for _, sh := range shapes {
			name := fmt.Sprintf("%v/T%d_C%d_OC%d", dt, sh.T, sh.C, sh.OC)
			r := rand.New(rand.NewPCG(uint64(sh.T), uint64(sh.C*1000+sh.OC)))
			in := randVec(r, sh.T*sh.C, 1)
			dout := randVec(r, sh.T*sh.OC, 1)
			din0 := randVec(r, sh.T*sh.C, 1)
			dw0 := randVec(r, sh.OC*sh.C, 1)
			wdata, wv := encode(randVec(r, sh.OC*sh.C, 0.5), dt)
			w := kernels.Weight{DType: dt, Data: wdata, Rows: sh.OC, Cols: sh.C}

			// float64 references and the magnitudes that bound their rounding.
			wantOut, magOut := make([]float64, sh.T*sh.OC), make([]float64, sh.T*sh.OC)
			wantDin, magDin := f64(din0), make([]float64, sh.T*sh.C)
			wantDw, magDw := f64(dw0), make([]float64, sh.OC*sh.C)
			for ti := 0; ti < sh.T; ti++ {
				for o := 0; o < sh.OC; o++ {
					g := float64(dout[ti*sh.OC+o])
					for c := 0; c < sh.C; c++ {
						x, wc := float64(in[ti*sh.C+c]), wv[o*sh.C+c]
						wantOut[ti*sh.OC+o] += x * wc
						magOut[ti*sh.OC+o] += math.Abs(x * wc)
						wantDin[ti*sh.C+c] += g * wc
						magDin[ti*sh.C+c] += math.Abs(g * wc)
						wantDw[o*sh.C+c] += g * x
						magDw[o*sh.C+c] += math.Abs(g * x)
					}
				}
			}
			var prev [3][]float32
			for _, isa := range gemmISAs() {
				undo := setGemmISA(isa)
				out, din, dw := gemmRun(be, in, dout, din0, dw0, w, sh.T)
				undo()
				n := name + "/" + isaNames[isa]
				tol := func(mag []float64, K int) func(int) float64 {
					return func(i int) float64 { return 2e-7*mag[i]*float64(K) + 1e-6 }
				}
				checkClose(t, n+"/out", out, wantOut, tol(magOut, sh.C))
				din1 := make([]float64, len(din))
				for i := range din1 {
					din1[i] = magDin[i] + math.Abs(float64(din0[i]))
				}
				checkClose(t, n+"/din", din, wantDin, tol(din1, sh.OC))
				if dw != nil {
					dw1 := make([]float64, len(dw))
					for i := range dw1 {
						dw1[i] = magDw[i] + math.Abs(float64(dw0[i]))
					}
					checkClose(t, n+"/dw", dw, wantDw, tol(dw1, sh.T))
				}
				if isa == isaAVX512 && prev[0] != nil {
					if !slices.Equal(out, prev[0]) || !slices.Equal(din, prev[1]) || !slices.Equal(dw, prev[2]) {
						t.Errorf("%s: AVX-512 and AVX2 results differ", name)
					}
				}
				prev = [3][]float32{out, din, dw}
			}
		}
	}
}

// TestGemmWorkerSplit uses enough rows that several workers split the rows
// into blocks (one worker does not) and demands bit-identical results.
func TestGemmWorkerSplit(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	T, C, OC := 2*gemmMB+37, 70, 100
	in := randVec(r, T*C, 1)
	dout := randVec(r, T*OC, 1)
	din0 := randVec(r, T*C, 1)
	dw0 := randVec(r, OC*C, 1)
	for _, dt := range dtypes {
		wdata, _ := encode(randVec(r, OC*C, 1), dt)
		w := kernels.Weight{DType: dt, Data: wdata, Rows: OC, Cols: C}
		if mb, _ := gemmSplit(T, OC, 5); mb >= T {
			t.Fatalf("gemmSplit(%d, %d, 5) does not split the rows", T, OC)
		}
		o1, d1, w1 := gemmRun(New(1), in, dout, din0, dw0, w, T)
		o5, d5, w5 := gemmRun(New(5), in, dout, din0, dw0, w, T)
		if !slices.Equal(o1, o5) || !slices.Equal(d1, d5) || !slices.Equal(w1, w5) {
			t.Errorf("%v: 1 worker and 5 workers differ", dt)
		}
	}
}

// TestGemvRowAlone covers the one-row bf16 path (gemvBF16 on AVX-512): with
// row counts and C where it applies (C a multiple of 16, 32-row groups plus
// leftover rows for gemm), each row computed alone must equal the batched
// (packed GEMM) row bit for bit, under every micro-kernel set, and be close
// to a float64 reference.
func TestGemvRowAlone(t *testing.T) {
	shapes := []struct{ T, C, OC int }{{3, 16, 32}, {5, 64, 96}, {2, 1024, 200}, {4, 48, 300}, {9, 272, 131}}
	r := rand.New(rand.NewPCG(7, 8))
	for _, isa := range gemmISAs() {
		restore := setGemmISA(isa)
		for _, workers := range []int{1, 3} {
			be := New(workers)
			for _, sh := range shapes {
				name := fmt.Sprintf("%s/w%d/T%d_C%d_OC%d", isaNames[isa], workers, sh.T, sh.C, sh.OC)
				in := randVec(r, sh.T*sh.C, 1)
				wdata, wv := encode(randVec(r, sh.OC*sh.C, 0.5), kernels.BF16)
				w := kernels.Weight{DType: kernels.BF16, Data: wdata, Rows: sh.OC, Cols: sh.C}
				got := make([]float32, sh.T*sh.OC)
				be.MatMulForward(got, in, w, nil, sh.T)
				one := make([]float32, sh.OC)
				for ti := 0; ti < sh.T; ti++ {
					be.MatMulForward(one, in[ti*sh.C:(ti+1)*sh.C], w, nil, 1)
					if !slices.Equal(one, got[ti*sh.OC:(ti+1)*sh.OC]) {
						t.Errorf("%s: row %d alone differs from the batched result", name, ti)
					}
					for o := 0; o < sh.OC; o++ {
						var s, m float64
						for c := 0; c < sh.C; c++ {
							p := float64(in[ti*sh.C+c]) * wv[o*sh.C+c]
							s, m = s+p, m+math.Abs(p)
						}
						if d := math.Abs(float64(one[o]) - s); d > 1e-6*m*math.Sqrt(float64(sh.C))+1e-7 {
							t.Errorf("%s: row %d out %d = %v, want %v", name, ti, o, one[o], s)
						}
					}
				}
			}
		}
		restore()
	}
}
