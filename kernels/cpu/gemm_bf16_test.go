package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tunellm/tune/kernels"
)

// refRoundBF16 rounds a normal fp32 to the nearest bf16 value, ties to even,
// in float64 arithmetic (an implementation independent of roundBF16's
// integer trick); denormals go to zero as VCVTNEPS2BF16 does.
func refRoundBF16(x float32) float64 {
	v := float64(x)
	if v == 0 || math.Abs(v) < 0x1p-126 {
		return math.Copysign(0, v)
	}
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return v
	}
	_, e := math.Frexp(v) // |v| = f·2^e, f in [0.5, 1)
	ulp := math.Ldexp(1, e-8)
	r := math.RoundToEven(v/ulp) * ulp
	if math.Abs(r) > math.MaxFloat32 {
		return math.Inf(int(math.Copysign(1, v)))
	}
	return r
}

func bf16Specials() []float32 {
	return []float32{0, float32(math.Copysign(0, -1)), 1, -1, 1 + 0x1p-8, 1 + 3*0x1p-8, 1 + 0x1p-9, -(1 + 0x1p-8),
		float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), math.Float32frombits(0x7f800001),
		0x1p-127, -0x1p-130, 0x1p-126, math.MaxFloat32, -math.MaxFloat32, 0x1.fffp127, 3.4e38,
		math.Float32frombits(0x3f80ffff), math.Float32frombits(0x3f818000), math.Float32frombits(0x3f808000)}
}

// TestRoundBF16 checks roundBF16 against the float64 rounding and the
// assembly (VCVTNEPS2BF16) against roundBF16 bit for bit, specials included.
func TestRoundBF16(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	v := bf16Specials()
	for i := 0; i < 20000; i++ {
		switch i % 3 {
		case 0:
			v = append(v, math.Float32frombits(r.Uint32()))
		case 1:
			v = append(v, float32(r.NormFloat64()))
		default: // exact ties and neighbours
			v = append(v, math.Float32frombits(r.Uint32()&0xffff0000|0x8000+uint32(r.IntN(3))-1))
		}
	}
	for _, x := range v {
		h := roundBF16(x)
		got := float64(math.Float32frombits(uint32(h) << 16))
		want := refRoundBF16(x)
		if math.IsNaN(want) {
			if !math.IsNaN(got) || h&0x40 == 0 {
				t.Fatalf("roundBF16(%#08x) = %#04x, want a quiet NaN", math.Float32bits(x), h)
			}
			continue
		}
		if got != want || math.Signbit(got) != math.Signbit(want) {
			t.Fatalf("roundBF16(%g = %#08x) = %g (%#04x), want %g", x, math.Float32bits(x), got, h, want)
		}
	}
	if !bf16UseAsm {
		t.Skip("no AVX512_BF16: only the Go rounding is checked")
	}
	for _, off := range []int{0, 1, 3} { // unaligned source and destination
		src := v[off:]
		got := make([]uint16, len(src)+off)[off:]
		roundRowBF16(got, src)
		for i, x := range src {
			if want := roundBF16(x); got[i] != want {
				t.Fatalf("VCVTNEPS2BF16(%#08x) = %#04x, roundBF16 %#04x", math.Float32bits(x), got[i], want)
			}
		}
	}
}

// withBF16Go runs f with the pure-Go kernels.
func withBF16Go(f func()) {
	old := bf16UseAsm
	bf16UseAsm = false
	defer func() { bf16UseAsm = old }()
	f()
}

func sameBits(a, b []float32) (int, bool) {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) && !(math.IsNaN(float64(a[i])) && math.IsNaN(float64(b[i]))) {
			return i, false
		}
	}
	return 0, true
}

// TestBF16MicroSpecials: the assembly micro-kernel equals bf16Dot lane for
// lane on random pairs, on products that cancel, denormals (inputs and the
// starting value), overflow, infinities and NaN (NaN compared as NaN).
func TestBF16MicroSpecials(t *testing.T) {
	if !bf16UseAsm {
		t.Skip("no AVX512_BF16")
	}
	r := rand.New(rand.NewPCG(3, 9))
	sp := bf16Specials()
	pick := func(mode int) uint32 {
		half := func() uint32 {
			switch mode {
			case 0:
				return uint32(roundBF16(float32(r.NormFloat64())))
			case 1:
				return r.Uint32() & 0xffff // anything, NaNs and denormals included
			case 2: // tiny and huge magnitudes: products under/overflow
				e := uint32(r.IntN(8))
				if r.IntN(2) == 0 {
					e += 0xf7
				}
				return uint32(r.IntN(2))<<15 | e<<7 | uint32(r.IntN(128))
			default:
				return uint32(roundBF16(sp[r.IntN(len(sp))]))
			}
		}
		return half() | half()<<16
	}
	for mode := 0; mode < 4; mode++ {
		for _, kp := range []int{1, 2, 3, 7, 64} {
			a := make([]uint32, 8*kp)
			b := make([]uint32, kp*gemmNR)
			for i := range a {
				a[i] = pick(mode)
			}
			for i := range b {
				b[i] = pick(mode)
			}
			c0 := make([]float32, 8*gemmNR)
			for i := range c0 {
				switch r.IntN(4) {
				case 0:
					c0[i] = math.Float32frombits(r.Uint32() & 0x807fffff) // denormal
				case 1:
					c0[i] = sp[r.IntN(len(sp))]
				default:
					c0[i] = float32(r.NormFloat64())
				}
			}
			for _, load := range []bool{false, true} {
				got, want := slices.Clone(c0), slices.Clone(c0)
				gemmBF16Micro(a, kp, b, got, gemmNR, kp, load)
				withBF16Go(func() { gemmBF16Micro(a, kp, b, want, gemmNR, kp, load) })
				if i, ok := sameBits(got, want); !ok {
					row, col := i/gemmNR, i%gemmNR
					t.Fatalf("mode %d kp %d load %v [%d,%d]: asm %g (%#08x), Go %g (%#08x); start %#08x", mode, kp, load, row, col,
						got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]), math.Float32bits(c0[i]))
				}
				// The row kernel: row 0 of a against panels b and b2.
				b2 := append(slices.Clone(b), b[:len(b)/2]...)
				b2 = append(b2, b[len(b)/2:]...)
				slices.Reverse(b2[len(b):])
				gotR, wantR := slices.Clone(c0[:2*gemmNR]), slices.Clone(c0[:2*gemmNR])
				gemmBF16Row(a[:kp], b2, len(b), gotR, kp, load)
				withBF16Go(func() { gemmBF16Row(a[:kp], b2, len(b), wantR, kp, load) })
				if i, ok := sameBits(gotR, wantR); !ok {
					t.Fatalf("row kernel: mode %d kp %d load %v [%d]: asm %g (%#08x), Go %g (%#08x)", mode, kp, load, i,
						gotR[i], math.Float32bits(gotR[i]), wantR[i], math.Float32bits(wantR[i]))
				}
			}
		}
	}
}

// bf16Shapes hit every edge: rows below and between 8, partial panels and
// tiles, odd K, K past a packed block (gemmBF16KC), primes.
var bf16Shapes = []struct{ T, C, OC int }{
	{1, 1, 1}, {2, 9, 33}, {3, 70, 200}, {5, 257, 31}, {7, 300, 65}, {8, 256, 32}, {9, 33, 130}, {13, 513, 64},
	{17, 40, 129}, {25, 600, 97}, {31, 1031, 67}, {67, 61, 53}, {16, 1024, 160}, {40, 47, 41}, {3, 0, 5}, {11, 2, 3}, {9, 40, 1031}, {10, 64, 600},
}

// TestBF16Gemm runs the bf16-compute forward and din through the Backend on
// bf16 weights: the assembly equals the pure-Go kernels bit for bit (also with
// 1 worker, on unaligned slices), and both are within the fp32 summation
// bound of a float64 GEMM of the bf16-rounded activations and the weight.
func TestBF16Gemm(t *testing.T) {
	if !hasBF16 {
		t.Skip("no AVX512_BF16: the bf16 mode falls back to fp32 (TestBF16GemmGo covers the Go kernels)")
	}
	defer SetComputeBF16(SetComputeBF16(true))
	be, be1 := New(3), New(1)
	for _, sh := range bf16Shapes {
		t.Run(fmt.Sprintf("T%d_C%d_OC%d", sh.T, sh.C, sh.OC), func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(sh.T), uint64(sh.C*1000+sh.OC)))
			const off = 1 // unaligned starts
			in := randVec(r, sh.T*sh.C+off, 1)[off:]
			dout := randVec(r, sh.T*sh.OC+off, 1)[off:]
			din0 := randVec(r, sh.T*sh.C, 1)
			wdata, wv := encode(randVec(r, sh.OC*sh.C, 0.5), kernels.BF16)
			wdata = append([]byte{0}, wdata...)[1:]
			w := kernels.Weight{DType: kernels.BF16, Data: wdata, Rows: sh.OC, Cols: sh.C}
			bias := randVec(r, sh.OC, 1)

			run := func(be *Backend) (out, din []float32) {
				out = make([]float32, sh.T*sh.OC)
				be.MatMulForward(out, in, w, bias, sh.T)
				din = slices.Clone(din0)
				be.MatMulBackward(din, nil, nil, dout, in, w, sh.T)
				return out, din
			}
			out, din := run(be)
			out1, din1 := run(be1)
			var outGo, dinGo []float32
			withBF16Go(func() { outGo, dinGo = run(be) })
			for _, c := range []struct {
				name      string
				got, want []float32
			}{{"out 1 worker", out1, out}, {"din 1 worker", din1, din}, {"out go", outGo, out}, {"din go", dinGo, din}} {
				if i, ok := sameBits(c.got, c.want); !ok {
					t.Fatalf("%s [%d]: %g, want %g (bit for bit)", c.name, i, c.got[i], c.want[i])
				}
			}
			checkBF16Ref(t, sh.T, sh.C, sh.OC, in, dout, din0, wv, bias, out, din)

			// Per row: a one-row call equals the row of the full call.
			for _, ti := range []int{0, sh.T - 1} {
				o := make([]float32, sh.OC)
				be.MatMulForward(o, in[ti*sh.C:(ti+1)*sh.C], w, bias, 1)
				if i, ok := sameBits(o, out[ti*sh.OC:(ti+1)*sh.OC]); !ok {
					t.Fatalf("row %d alone [%d]: %g, want %g", ti, i, o[i], out[ti*sh.OC+i])
				}
			}
		})
	}
}

// checkBF16Ref compares out and din with float64 GEMMs of the bf16-rounded
// activations (refRoundBF16) and the weight: each output is a chain of K
// products exact in fp32 and K roundings, so |err| <= (K+1)·2⁻²⁴·Σ|terms|.
func checkBF16Ref(t *testing.T, T, C, OC int, in, dout, din0 []float32, wv []float64, bias, out, din []float32) {
	t.Helper()
	const u = 0x1p-24
	for ti := 0; ti < T; ti++ {
		for o := 0; o < OC; o++ {
			var s, m float64
			for c := 0; c < C; c++ {
				p := refRoundBF16(in[ti*C+c]) * wv[o*C+c]
				s += p
				m += math.Abs(p)
			}
			s += float64(bias[o])
			m += math.Abs(float64(bias[o]))
			if got := float64(out[ti*OC+o]); math.Abs(got-s) > float64(C+2)*u*m {
				t.Fatalf("out[%d,%d] = %g, float64 %g (bound %g)", ti, o, got, s, float64(C+2)*u*m)
			}
		}
		for c := 0; c < C; c++ {
			s, m := float64(din0[ti*C+c]), math.Abs(float64(din0[ti*C+c]))
			for o := 0; o < OC; o++ {
				p := refRoundBF16(dout[ti*OC+o]) * wv[o*C+c]
				s += p
				m += math.Abs(p)
			}
			if got := float64(din[ti*C+c]); math.Abs(got-s) > float64(OC+1)*u*m {
				t.Fatalf("din[%d,%d] = %g, float64 %g (bound %g)", ti, c, got, s, float64(OC+1)*u*m)
			}
		}
	}
}

// TestBF16GemmGo checks the pure-Go kernels (every build, with or without
// AVX512_BF16) against the float64 reference through gemmBF16 itself.
func TestBF16GemmGo(t *testing.T) {
	for _, sh := range bf16Shapes[:10] {
		r := rand.New(rand.NewPCG(uint64(sh.OC), uint64(sh.C)))
		in := randVec(r, sh.T*sh.C, 1)
		dout := randVec(r, sh.T*sh.OC, 1)
		din := randVec(r, sh.T*sh.C, 1)
		din0 := slices.Clone(din)
		wdata, wv := encode(randVec(r, sh.OC*sh.C, 0.5), kernels.BF16)
		w := kernels.Weight{DType: kernels.BF16, Data: wdata, Rows: sh.OC, Cols: sh.C}
		round := func(x []float32, M, K int) ([]uint32, int) {
			lda := (K + 1) / 2
			a := make([]uint32, ((M+7)&^7)*lda)
			h := make([]uint16, 2*lda)
			for i := 0; i < M; i++ {
				clear(h)
				for k := 0; k < K; k++ {
					h[k] = roundBF16(x[i*K+k])
				}
				for q := 0; q < lda; q++ {
					a[i*lda+q] = uint32(h[2*q]) | uint32(h[2*q+1])<<16
				}
			}
			return a, lda
		}
		out := make([]float32, sh.T*sh.OC)
		bias := make([]float32, sh.OC)
		withBF16Go(func() {
			wk := &worker{}
			a, lda := round(in, sh.T, sh.C)
			gemmBF16(wk, out, sh.OC, a, lda, sh.T, sh.C, bWeightT, w, 0, sh.OC, false)
			a, lda = round(dout, sh.T, sh.OC)
			gemmBF16(wk, din, sh.C, a, lda, sh.T, sh.OC, bWeight, w, 0, sh.C, true)
		})
		checkBF16Ref(t, sh.T, sh.C, sh.OC, in, dout, din0, wv, bias, out, din)
	}
}

// TestBF16Fallback: F32 weights, and the mode off, take the fp32 path
// unchanged (bit for bit).
func TestBF16Fallback(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const T, C, OC = 9, 70, 40
	in := randVec(r, T*C, 1)
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		wdata, _ := encode(randVec(r, OC*C, 0.5), dt)
		w := kernels.Weight{DType: dt, Data: wdata, Rows: OC, Cols: C}
		be := New(2)
		want := make([]float32, T*OC)
		prev := SetComputeBF16(false)
		be.MatMulForward(want, in, w, nil, T)
		got := make([]float32, T*OC)
		SetComputeBF16(true)
		be.MatMulForward(got, in, w, nil, T)
		SetComputeBF16(prev)
		_, same := sameBits(got, want)
		if dt == kernels.F32 && !same {
			t.Errorf("F32 weight: the bf16 mode changed the result")
		}
		if dt == kernels.BF16 && same && hasBF16 {
			t.Errorf("BF16 weight: the bf16 mode did not change anything")
		}
	}
	if on, err := ParseComputeDType("bf16"); !on || err != nil {
		t.Errorf("ParseComputeDType(bf16) = %v, %v", on, err)
	}
	if _, err := ParseComputeDType("fp8"); err == nil {
		t.Errorf("ParseComputeDType(fp8): no error")
	}
}
