package model_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tunellm/tune/kernels"
	_ "github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
)

// randIntWeight is a random [rows, cols] integer-block weight of dt: random
// codes, zero points and fp16 scales (some subnormal), through
// model.IntWeight.
func randIntWeight(t *testing.T, r *rand.Rand, dt kernels.DType, rows, cols int) kernels.Weight {
	t.Helper()
	f := dt.Format()
	bits := 8
	if dt == kernels.INT4 || dt == kernels.INT4_32 {
		bits = 4
	}
	G := cols / f.BlockElems
	l := model.IntLinear{Name: dt.String(), Rows: rows, Cols: cols, Bits: bits, GroupSize: f.BlockElems,
		Q: make([]uint8, rows*cols), Scales: make([]float32, rows*G), Zeros: make([]uint8, rows*G)}
	for i := range l.Q {
		l.Q[i] = uint8(r.IntN(1 << bits))
	}
	for i := range l.Scales {
		l.Scales[i] = safetensors.F16ToFloat32(safetensors.Float32ToF16(float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(6)-5)))))
		l.Zeros[i] = uint8(r.IntN(1 << bits))
	}
	w, err := model.IntWeight(l)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestIntMatMulKernels: the backend's matmul forward (T > 1) and din through
// an integer-block weight equal, bit for bit, the same ops on the fp32
// dequantized copy, on shapes where gemm's column tiles start inside a
// 128-column block; T = 1 (the gemv path) is within 1e-5 of a float64 dot.
func TestIntMatMulKernels(t *testing.T) {
	be, err := kernels.Get("")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(51, 52))
	rv := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	for _, dt := range kernels.IntDTypes {
		e := dt.Format().BlockElems
		for _, sh := range []struct{ OC, C int }{{1, e}, {37, 2 * e}, {67, 5 * e}, {130, 1280 / e * e}} {
			w := randIntWeight(t, r, dt, sh.OC, sh.C)
			f := make([]float32, sh.OC*sh.C)
			rb := w.RowBytes()
			for o := 0; o < sh.OC; o++ {
				dt.Format().Dequantize(f[o*sh.C:(o+1)*sh.C], w.Data[o*rb:(o+1)*rb])
			}
			b := make([]byte, 4*len(f))
			if err := safetensors.FromFloat32(b, f, safetensors.F32); err != nil {
				t.Fatal(err)
			}
			wf := kernels.Weight{DType: kernels.F32, Data: b, Rows: sh.OC, Cols: sh.C}
			for _, T := range []int{1, 3, 17, 67} {
				name := fmt.Sprintf("%v/T%d_OC%d_C%d", dt, T, sh.OC, sh.C)
				in := rv(T * sh.C)
				got, want := make([]float32, T*sh.OC), make([]float32, T*sh.OC)
				be.MatMulForward(got, in, w, nil, T)
				be.MatMulForward(want, in, wf, nil, T)
				for i := range got {
					if T > 1 && math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("%s: out[%d] = %v, fp32 dequantized %v", name, i, got[i], want[i])
					}
					tt, o := i/sh.OC, i%sh.OC
					s, a := 0.0, 0.0
					for c := 0; c < sh.C; c++ {
						p := float64(in[tt*sh.C+c]) * float64(f[o*sh.C+c])
						s, a = s+p, a+math.Abs(p)
					}
					if d := math.Abs(float64(got[i]) - s); d > 1e-5*a+1e-6 {
						t.Fatalf("%s: out[%d] = %v, float64 %v", name, i, got[i], s)
					}
				}
				dout := rv(T * sh.OC)
				gd, wd := rv(T*sh.C), make([]float32, T*sh.C)
				copy(wd, gd)
				be.MatMulBackward(gd, nil, nil, dout, in, w, T)
				be.MatMulBackward(wd, nil, nil, dout, in, wf, T)
				for i := range gd {
					if math.Float32bits(gd[i]) != math.Float32bits(wd[i]) {
						t.Fatalf("%s: din[%d] = %v, fp32 dequantized %v", name, i, gd[i], wd[i])
					}
				}
			}
		}
	}
}
