package cpu

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tunellm/tune/kernels"
)

// The references below are naive float64 loops written from the op
// definitions, sharing no code with the kernels (not even dtype decoding).

func randVec(r *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32((r.Float64()*2 - 1) * scale)
	}
	return v
}

// encode stores v in dtype dt and returns the bytes plus the values the bytes
// really hold (decoded independently, in float64).
func encode(v []float32, dt kernels.DType) ([]byte, []float64) {
	out := make([]byte, len(v)*dt.Size())
	got := make([]float64, len(v))
	for i, x := range v {
		switch dt {
		case kernels.F32:
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
			got[i] = float64(x)
		case kernels.BF16:
			h := uint16(math.Float32bits(x) >> 16) // truncation is fine: we keep what we stored
			binary.LittleEndian.PutUint16(out[2*i:], h)
			got[i] = refBF16(h)
		case kernels.F16:
			h := refToF16(float64(x))
			binary.LittleEndian.PutUint16(out[2*i:], h)
			got[i] = refF16(h)
		}
	}
	return out, got
}

func refBF16(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e := int(h>>7) & 0xff
	m := float64(h & 0x7f)
	if e == 0 {
		return sign * math.Ldexp(m, -126-7)
	}
	return sign * math.Ldexp(1+m/128, e-127)
}

func refF16(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e := int(h>>10) & 0x1f
	m := float64(h & 0x3ff)
	switch e {
	case 0:
		return sign * math.Ldexp(m, -24)
	case 31:
		if m != 0 {
			return math.NaN()
		}
		return sign * math.Inf(1)
	}
	return sign * math.Ldexp(1+m/1024, e-15)
}

// refToF16 rounds toward zero to a representable half (values here are small).
func refToF16(x float64) uint16 {
	var s uint16
	if x < 0 {
		s, x = 0x8000, -x
	}
	if x < math.Ldexp(1, -14) {
		return s | uint16(x*math.Ldexp(1, 24))
	}
	fr, e := math.Frexp(x) // x = fr * 2^e, fr in [0.5,1)
	return s | uint16(e-1+15)<<10 | uint16((fr*2-1)*1024)
}

func TestF16Table(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		want := refF16(uint16(h))
		got := float64(f16Table[h])
		if math.IsNaN(want) {
			if !math.IsNaN(got) {
				t.Fatalf("f16 %#04x: got %v, want NaN", h, got)
			}
			continue
		}
		if got != want {
			t.Fatalf("f16 %#04x: got %v, want %v", h, got, want)
		}
	}
}

// checkClose fails when |got-want| > tol[i] for any element, naming the first few.
func checkClose(t *testing.T, name string, got []float32, want []float64, tol func(i int) float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: len %d, want %d", name, len(got), len(want))
	}
	bad, worst := 0, 0.0
	for i := range got {
		d := math.Abs(float64(got[i]) - want[i])
		worst = max(worst, d)
		if !(d <= tol(i)) {
			if bad < 3 {
				t.Errorf("%s[%d] = %v, want %v (diff %g, tol %g)", name, i, got[i], want[i], d, tol(i))
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d mismatches, max diff %g", name, bad, len(got), worst)
	}
}

var dtypes = []kernels.DType{kernels.F32, kernels.F16, kernels.BF16}

func TestMatMul(t *testing.T) {
	shapes := []struct{ T, C, OC int }{
		{1, 1, 1}, {1, 7, 3}, {3, 5, 9}, {4, 64, 8}, {5, 33, 17}, {9, 100, 67}, {17, 130, 131}, {8, 1024, 6},
	}
	b := New(3)
	r := rand.New(rand.NewPCG(1, 2))
	for _, dt := range dtypes {
		for _, sh := range shapes {
			for _, withBias := range []bool{false, true} {
				name := fmt.Sprintf("%v/T%d_C%d_OC%d/bias=%v", dt, sh.T, sh.C, sh.OC, withBias)
				in := randVec(r, sh.T*sh.C, 1)
				wdata, wv := encode(randVec(r, sh.OC*sh.C, 0.5), dt)
				var bias []float32
				if withBias {
					bias = randVec(r, sh.OC, 1)
				}
				want := make([]float64, sh.T*sh.OC)
				mag := make([]float64, sh.T*sh.OC)
				for ti := 0; ti < sh.T; ti++ {
					for o := 0; o < sh.OC; o++ {
						var s, m float64
						for c := 0; c < sh.C; c++ {
							p := float64(in[ti*sh.C+c]) * wv[o*sh.C+c]
							s += p
							m += math.Abs(p)
						}
						if bias != nil {
							s += float64(bias[o])
							m += math.Abs(float64(bias[o]))
						}
						want[ti*sh.OC+o], mag[ti*sh.OC+o] = s, m
					}
				}
				got := make([]float32, sh.T*sh.OC)
				w := kernels.Weight{DType: dt, Data: wdata, Rows: sh.OC, Cols: sh.C}
				b.MatMulForward(got, in, w, bias, sh.T)
				checkClose(t, name, got, want, func(i int) float64 { return 1e-6*mag[i]*math.Sqrt(float64(sh.C)) + 1e-7 })

				// Row by row must give bit-identical results: one sequential sum per output.
				one := make([]float32, sh.OC)
				for ti := 0; ti < sh.T; ti++ {
					b.MatMulForward(one, in[ti*sh.C:], w, bias, 1)
					if !slices.Equal(one, got[ti*sh.OC:(ti+1)*sh.OC]) {
						t.Errorf("%s: row %d alone differs from the batched result", name, ti)
					}
				}
			}
		}
	}
}

func TestEmbedding(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	b := New(2)
	for _, dt := range dtypes {
		V, C := 11, 13
		data, vals := encode(randVec(r, V*C, 2), dt)
		tokens := []int{0, 10, 3, 3, 7}
		got := make([]float32, len(tokens)*C)
		b.EmbeddingForward(got, tokens, kernels.Weight{DType: dt, Data: data, Rows: V, Cols: C})
		want := make([]float64, len(got))
		for i, id := range tokens {
			copy(want[i*C:], vals[id*C:(id+1)*C])
		}
		checkClose(t, "embedding/"+dt.String(), got, want, func(int) float64 { return 0 })
	}
}

func TestRMSNorm(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	b := New(2)
	for _, sh := range []struct{ N, C int }{{1, 1}, {3, 7}, {5, 64}, {40, 1000}} {
		in := randVec(r, sh.N*sh.C, 3)
		w := randVec(r, sh.C, 1.5)
		eps := 1e-6
		want := make([]float64, len(in))
		for n := 0; n < sh.N; n++ {
			var ss float64
			for c := 0; c < sh.C; c++ {
				ss += float64(in[n*sh.C+c]) * float64(in[n*sh.C+c])
			}
			inv := 1 / math.Sqrt(ss/float64(sh.C)+eps)
			for c := 0; c < sh.C; c++ {
				want[n*sh.C+c] = float64(in[n*sh.C+c]) * inv * float64(w[c])
			}
		}
		got := make([]float32, len(in))
		b.RMSNormForward(got, in, w, eps, sh.N, sh.C)
		checkClose(t, fmt.Sprintf("rmsnorm/%dx%d", sh.N, sh.C), got, want, func(i int) float64 { return 1e-6 * (math.Abs(want[i]) + 1e-3) })
		// in place
		b.RMSNormForward(in, in, w, eps, sh.N, sh.C)
		if !slices.Equal(in, got) {
			t.Errorf("rmsnorm/%dx%d: in-place result differs", sh.N, sh.C)
		}
	}
}

func TestRoPE(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	b := New(2)
	T, NH, HD := 5, 3, 8
	x := randVec(r, T*NH*HD, 1)
	cos := make([]float32, T*HD/2)
	sin := make([]float32, T*HD/2)
	for i := range cos {
		a := r.Float64() * 6
		cos[i], sin[i] = float32(math.Cos(a)), float32(math.Sin(a))
	}
	want := make([]float64, len(x))
	for ti := 0; ti < T; ti++ {
		for h := 0; h < NH; h++ {
			base := (ti*NH + h) * HD
			// HF: q*cos + rotate_half(q)*sin, cos/sin repeated over both halves,
			// rotate_half(q) = cat(-q[h:], q[:h]).
			for i := 0; i < HD; i++ {
				c := float64(cos[ti*HD/2+i%(HD/2)])
				s := float64(sin[ti*HD/2+i%(HD/2)])
				var rot float64
				if i < HD/2 {
					rot = -float64(x[base+i+HD/2])
				} else {
					rot = float64(x[base+i-HD/2])
				}
				want[base+i] = float64(x[base+i])*c + rot*s
			}
		}
	}
	b.RoPEForward(x, cos, sin, T, NH, HD)
	checkClose(t, "rope", x, want, func(int) float64 { return 1e-6 })
}

// refAttention is masked softmax attention written with an explicit mask
// matrix over all S positions, as the eager HF implementation does.
func refAttention(q, k, v []float32, pos0, T, NH, KVH, HD, window int) []float64 {
	S := pos0 + T
	out := make([]float64, T*NH*HD)
	for ti := 0; ti < T; ti++ {
		p := pos0 + ti
		for h := 0; h < NH; h++ {
			g := h * KVH / NH
			sc := make([]float64, S)
			mx := math.Inf(-1)
			for s := 0; s < S; s++ {
				allowed := s <= p && (window <= 0 || p-s < window)
				if !allowed {
					sc[s] = math.Inf(-1)
					continue
				}
				var d float64
				for i := 0; i < HD; i++ {
					d += float64(q[(ti*NH+h)*HD+i]) * float64(k[(s*KVH+g)*HD+i])
				}
				sc[s] = d / math.Sqrt(float64(HD))
				mx = max(mx, sc[s])
			}
			var sum float64
			for s := range sc {
				sc[s] = math.Exp(sc[s] - mx)
				sum += sc[s]
			}
			for s := range sc {
				for i := 0; i < HD; i++ {
					out[(ti*NH+h)*HD+i] += sc[s] / sum * float64(v[(s*KVH+g)*HD+i])
				}
			}
		}
	}
	return out
}

func TestAttention(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	b := New(3)
	cases := []struct{ pos0, T, NH, KVH, HD, window int }{
		{0, 1, 1, 1, 4, 0}, {0, 7, 4, 2, 8, 0}, {5, 3, 6, 3, 6, 0}, {0, 9, 4, 4, 4, 3}, {10, 4, 2, 1, 8, 5}, {3, 1, 8, 2, 16, 2},
		{0, 150, 2, 1, 8, 0}, {100, 70, 2, 2, 8, 40}, {200, 1, 4, 2, 8, 0},
	}
	for _, c := range cases {
		name := fmt.Sprintf("pos0=%d,T=%d,NH=%d,KVH=%d,HD=%d,win=%d", c.pos0, c.T, c.NH, c.KVH, c.HD, c.window)
		S := c.pos0 + c.T
		q := randVec(r, c.T*c.NH*c.HD, 2)
		k := randVec(r, S*c.KVH*c.HD, 2)
		v := randVec(r, S*c.KVH*c.HD, 1)
		want := refAttention(q, k, v, c.pos0, c.T, c.NH, c.KVH, c.HD, c.window)
		got := make([]float32, len(want))
		b.AttentionForward(got, q, k, v, c.pos0, c.T, c.NH, c.KVH, c.HD, c.window)
		checkClose(t, name, got, want, func(int) float64 { return 2e-6 })
	}
}

func TestElementwise(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	b := New(2)
	for _, n := range []int{1, 5, 1<<14 + 3, 40000} {
		a, c := randVec(r, n, 8), randVec(r, n, 3)
		sw, ad := make([]float64, n), make([]float64, n)
		for i := range a {
			x := float64(a[i])
			sw[i] = x / (1 + math.Exp(-x)) * float64(c[i])
			ad[i] = float64(a[i]) + float64(c[i])
		}
		got := make([]float32, n)
		b.SwiGLUForward(got, a, c)
		checkClose(t, fmt.Sprintf("swiglu/%d", n), got, sw, func(i int) float64 { return 1e-6 * (math.Abs(sw[i]) + 1e-3) })
		b.AddForward(got, a, c)
		checkClose(t, fmt.Sprintf("add/%d", n), got, ad, func(i int) float64 { return 1e-6 * (math.Abs(ad[i]) + 1e-3) })
	}
}

func TestSoftmaxNLL(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	b := New(2)
	for _, sh := range []struct{ N, V int }{{1, 1}, {2, 5}, {7, 1000}} {
		logits := randVec(r, sh.N*sh.V, 30)
		targets := make([]int, sh.N)
		for i := range targets {
			targets[i] = r.IntN(sh.V)
		}
		wantP := make([]float64, sh.N*sh.V)
		wantNLL := make([]float64, sh.N)
		for n := 0; n < sh.N; n++ {
			var z float64
			for v := 0; v < sh.V; v++ {
				z += math.Exp(float64(logits[n*sh.V+v]))
			}
			for v := 0; v < sh.V; v++ {
				wantP[n*sh.V+v] = math.Exp(float64(logits[n*sh.V+v])) / z
			}
			wantNLL[n] = math.Log(z) - float64(logits[n*sh.V+targets[n]])
		}
		got := make([]float32, len(logits))
		b.SoftmaxForward(got, logits, sh.N, sh.V)
		checkClose(t, "softmax", got, wantP, func(i int) float64 { return 1e-6*wantP[i] + 1e-9 })
		nll := make([]float64, sh.N)
		b.LogSoftmaxNLLForward(nll, logits, targets, sh.N, sh.V)
		for n := range nll {
			if d := math.Abs(nll[n] - wantNLL[n]); d > 1e-9*(1+math.Abs(wantNLL[n])) {
				t.Errorf("nll[%d] = %v, want %v", n, nll[n], wantNLL[n])
			}
		}
	}
	// Far-from-zero logits must not overflow.
	nll := make([]float64, 1)
	b.LogSoftmaxNLLForward(nll, []float32{1000, 1000}, []int{0}, 1, 2)
	if math.Abs(nll[0]-math.Ln2) > 1e-12 {
		t.Errorf("nll of [1000 1000] = %v, want ln 2", nll[0])
	}
}

// TestWorkerCountInvariance runs every op with 1 and 5 workers and demands
// bit-identical outputs.
func TestWorkerCountInvariance(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	b1, b5 := New(1), New(5)
	T, C, OC := 13, 96, 200
	in := randVec(r, T*C, 1)
	wdata, _ := encode(randVec(r, OC*C, 1), kernels.BF16)
	w := kernels.Weight{DType: kernels.BF16, Data: wdata, Rows: OC, Cols: C}
	bias := randVec(r, OC, 1)
	NH, KVH, HD := 4, 2, 24
	q := randVec(r, T*NH*HD, 1)
	k := randVec(r, T*KVH*HD, 1)
	v := randVec(r, T*KVH*HD, 1)
	cs, sn := randVec(r, T*HD/2, 1), randVec(r, T*HD/2, 1)
	run := func(b *Backend) [][]float32 {
		mm := make([]float32, T*OC)
		b.MatMulForward(mm, in, w, bias, T)
		norm := make([]float32, T*C)
		b.RMSNormForward(norm, in, in[:C], 1e-5, T, C)
		att := make([]float32, T*NH*HD)
		b.AttentionForward(att, q, k, v, 0, T, NH, KVH, HD, 0)
		rq := slices.Clone(q)
		b.RoPEForward(rq, cs, sn, T, NH, HD)
		sm := make([]float32, T*OC)
		b.SoftmaxForward(sm, mm, T, OC)
		sw := make([]float32, T*C)
		b.SwiGLUForward(sw, in, norm)
		return [][]float32{mm, norm, att, rq, sm, sw}
	}
	r1, r5 := run(b1), run(b5)
	for i := range r1 {
		if !slices.Equal(r1[i], r5[i]) {
			t.Errorf("op %d: 1 worker and 5 workers differ", i)
		}
	}
}

func TestNoAllocs(t *testing.T) {
	b := New(2)
	T, C, OC := 8, 64, 64
	in := make([]float32, T*C)
	out := make([]float32, T*OC)
	w := kernels.Weight{DType: kernels.BF16, Data: make([]byte, OC*C*2), Rows: OC, Cols: C}
	b.MatMulForward(out, in, w, nil, T) // warm the scratch
	if n := testing.AllocsPerRun(20, func() { b.MatMulForward(out, in, w, nil, T) }); n != 0 {
		t.Errorf("MatMulForward allocates %v times per call", n)
	}
	q := make([]float32, T*4*16)
	kv := make([]float32, T*2*16)
	b.AttentionForward(q, q, kv, kv, 0, T, 4, 2, 16, 0)
	if n := testing.AllocsPerRun(20, func() { b.AttentionForward(out, q, kv, kv, 0, T, 4, 2, 16, 0) }); n != 0 {
		t.Errorf("AttentionForward allocates %v times per call", n)
	}
}

func TestRegistered(t *testing.T) {
	be, err := kernels.Get("cpu")
	if err != nil {
		t.Fatal(err)
	}
	sup := be.Supports()
	for _, op := range []kernels.Op{kernels.OpMatMul, kernels.OpAttention, kernels.OpRMSNorm, kernels.OpMatMulBack, kernels.OpAttentionBack} {
		if !sup[op] {
			t.Errorf("cpu does not declare %v", op)
		}
	}
	if sup[kernels.OpSoftmaxBack] {
		t.Errorf("cpu declares %v, which it does not implement", kernels.OpSoftmaxBack)
	}
}

func BenchmarkMatMul(b *testing.B) {
	for _, sh := range []struct{ T, C, OC int }{{1, 1024, 3072}, {512, 1024, 3072}, {1, 4096, 4096}, {512, 4096, 4096}, {512, 4096, 12288}} {
		b.Run(fmt.Sprintf("bf16/T%d_C%d_OC%d", sh.T, sh.C, sh.OC), func(b *testing.B) {
			be := New(0)
			r := rand.New(rand.NewPCG(1, 1))
			in := randVec(r, sh.T*sh.C, 1)
			wdata, _ := encode(randVec(r, sh.OC*sh.C, 1), kernels.BF16)
			w := kernels.Weight{DType: kernels.BF16, Data: wdata, Rows: sh.OC, Cols: sh.C}
			out := make([]float32, sh.T*sh.OC)
			b.ResetTimer()
			for b.Loop() {
				be.MatMulForward(out, in, w, nil, sh.T)
			}
			flops := 2 * float64(sh.T) * float64(sh.C) * float64(sh.OC) * float64(b.N)
			b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// BenchmarkGEMMF32 is the square fp32 GEMM out[N,N] = in[N,N]·W[N,N]ᵀ that
// make bench compares with numpy on OpenBLAS (bench/gemm_numpy.py).
func BenchmarkGEMMF32(b *testing.B) {
	for _, n := range []int{512, 1024, 2048, 4096} {
		b.Run(fmt.Sprintf("N%d", n), func(b *testing.B) {
			be := New(0)
			r := rand.New(rand.NewPCG(1, 1))
			in := randVec(r, n*n, 1)
			wdata, _ := encode(randVec(r, n*n, 1), kernels.F32)
			w := kernels.Weight{DType: kernels.F32, Data: wdata, Rows: n, Cols: n}
			out := make([]float32, n*n)
			b.ResetTimer()
			for b.Loop() {
				be.MatMulForward(out, in, w, nil, n)
			}
			b.ReportMetric(2*float64(n)*float64(n)*float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// TestConvertRowExhaustive decodes every 16-bit pattern through convertRow
// (the AVX2 path on amd64, pure Go with -tags noasm) against the float64
// references.
func TestConvertRowExhaustive(t *testing.T) {
	src := make([]byte, 2<<16)
	for i := 0; i < 1<<16; i++ {
		binary.LittleEndian.PutUint16(src[2*i:], uint16(i))
	}
	dst := make([]float32, 1<<16)
	for _, dt := range []kernels.DType{kernels.BF16, kernels.F16} {
		convertRow(dst, src, dt)
		for i, got := range dst {
			want := refF16(uint16(i))
			if dt == kernels.BF16 {
				want = refBF16(uint16(i))
				if e := i >> 7 & 0xff; e == 0xff { // inf/nan: refBF16 does not model them
					want = float64(math.Float32frombits(uint32(i) << 16))
				}
			}
			if math.IsNaN(want) != math.IsNaN(float64(got)) || (!math.IsNaN(want) && float64(got) != want) {
				t.Fatalf("%v %#04x: got %v, want %v", dt, i, got, want)
			}
		}
	}
}

// refPackedAttention is packed (varlen) attention with an explicit T×T mask:
// key s is visible to query t when s <= t, s is in t's segment and t-s < window.
func refPackedAttention(q, k, v []float32, segStart []int, T, NH, KVH, HD, window int) []float64 {
	out := make([]float64, T*NH*HD)
	for t := 0; t < T; t++ {
		for h := 0; h < NH; h++ {
			g := h * KVH / NH
			sc := make([]float64, T)
			mx := math.Inf(-1)
			for s := 0; s < T; s++ {
				allowed := s <= t && s >= segStart[t] && (window <= 0 || t-s < window)
				if !allowed {
					sc[s] = math.Inf(-1)
					continue
				}
				var d float64
				for i := 0; i < HD; i++ {
					d += float64(q[(t*NH+h)*HD+i]) * float64(k[(s*KVH+g)*HD+i])
				}
				sc[s] = d / math.Sqrt(float64(HD))
				mx = max(mx, sc[s])
			}
			var sum float64
			for s := range sc {
				sc[s] = math.Exp(sc[s] - mx)
				sum += sc[s]
			}
			for s := range sc {
				for i := 0; i < HD; i++ {
					out[(t*NH+h)*HD+i] += sc[s] / sum * float64(v[(s*KVH+g)*HD+i])
				}
			}
		}
	}
	return out
}

// segStarts expands sample lengths into each row's segment start.
func segStarts(lens []int) []int {
	var ss []int
	for _, n := range lens {
		s := len(ss)
		for range n {
			ss = append(ss, s)
		}
	}
	return ss
}

// TestPackedAttention checks the varlen kernel against the explicit mask, and
// that each segment's rows equal AttentionForward over that segment alone bit
// for bit (the property ForwardPacked relies on), with 1 and 4 workers.
func TestPackedAttention(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	cases := []struct {
		lens                []int
		NH, KVH, HD, window int
	}{
		{[]int{1}, 1, 1, 4, 0},
		{[]int{7}, 4, 2, 8, 0},
		{[]int{3, 1, 5}, 4, 2, 8, 0},
		{[]int{1, 1, 1}, 2, 1, 6, 0},
		{[]int{9, 2, 6}, 6, 3, 6, 3},
		{[]int{4, 11, 1, 5}, 8, 2, 16, 4},
		{[]int{13, 7}, 4, 4, 4, 1},
		{[]int{70, 3, 90}, 4, 2, 8, 0}, // blocks of attnMB rows that straddle segments
		{[]int{130, 45}, 2, 1, 16, 50},
	}
	b1, b4 := New(1), New(4)
	for _, c := range cases {
		name := fmt.Sprintf("lens=%v,NH=%d,KVH=%d,HD=%d,win=%d", c.lens, c.NH, c.KVH, c.HD, c.window)
		ss := segStarts(c.lens)
		T, qd, kvd := len(ss), c.NH*c.HD, c.KVH*c.HD
		q := randVec(r, T*qd, 2)
		k := randVec(r, T*kvd, 2)
		v := randVec(r, T*kvd, 1)
		want := refPackedAttention(q, k, v, ss, T, c.NH, c.KVH, c.HD, c.window)
		got := make([]float32, len(want))
		b4.PackedAttentionForward(got, q, k, v, ss, T, c.NH, c.KVH, c.HD, c.window)
		checkClose(t, name, got, want, func(int) float64 { return 2e-6 })

		got1 := make([]float32, len(want))
		b1.PackedAttentionForward(got1, q, k, v, ss, T, c.NH, c.KVH, c.HD, c.window)
		if !slices.Equal(got, got1) {
			t.Errorf("%s: 1 worker and 4 workers differ", name)
		}
		for s0, i := 0, 0; i < len(c.lens); s0, i = s0+c.lens[i], i+1 {
			n := c.lens[i]
			alone := make([]float32, n*qd)
			b4.AttentionForward(alone, q[s0*qd:(s0+n)*qd], k[s0*kvd:(s0+n)*kvd], v[s0*kvd:(s0+n)*kvd], 0, n, c.NH, c.KVH, c.HD, c.window)
			if !slices.Equal(alone, got[s0*qd:(s0+n)*qd]) {
				t.Errorf("%s: segment %d differs from AttentionForward over the segment alone", name, i)
			}
		}
	}
}

func TestPackedAttentionBadSegStart(t *testing.T) {
	b := New(1)
	q := make([]float32, 3*4)
	for _, ss := range [][]int{{0, 2, 0}, {-1, 0, 0}, {0, 0}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("segStart %v: no panic", ss)
				}
			}()
			b.PackedAttentionForward(q, q, q, q, ss, 3, 1, 1, 4, 0)
		}()
	}
}

func TestPackedAttentionNoAllocs(t *testing.T) {
	b := New(2)
	T := 8
	q := make([]float32, T*4*16)
	kv := make([]float32, T*2*16)
	out := make([]float32, T*4*16)
	ss := segStarts([]int{3, 5})
	b.PackedAttentionForward(out, q, kv, kv, ss, T, 4, 2, 16, 0)
	if n := testing.AllocsPerRun(20, func() { b.PackedAttentionForward(out, q, kv, kv, ss, T, 4, 2, 16, 2) }); n != 0 {
		t.Errorf("PackedAttentionForward allocates %v times per call", n)
	}
}

// TestAttentionChunksExact: a sequence attended in one call equals the same
// sequence attended in chunks against a growing KV cache (prefill, single
// steps, a long chunk) bit for bit, across attnMB block boundaries and with
// a window: the property generation with a KV cache relies on.
func TestAttentionChunksExact(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	const T, NH, KVH, HD = 150, 4, 2, 8
	q := randVec(r, T*NH*HD, 2)
	k := randVec(r, T*KVH*HD, 2)
	v := randVec(r, T*KVH*HD, 1)
	for _, window := range []int{0, 37} {
		b := New(3)
		full := make([]float32, T*NH*HD)
		b.AttentionForward(full, q, k, v, 0, T, NH, KVH, HD, window)
		got := make([]float32, T*NH*HD)
		qd := NH * HD
		for _, c := range [][2]int{{0, 70}, {70, 1}, {71, 1}, {72, 66}, {138, 12}} {
			p0, n := c[0], c[1]
			S := p0 + n
			b.AttentionForward(got[p0*qd:S*qd], q[p0*qd:S*qd], k[:S*KVH*HD], v[:S*KVH*HD], p0, n, NH, KVH, HD, window)
		}
		if !slices.Equal(full, got) {
			t.Errorf("window %d: chunked attention differs from one pass", window)
		}
	}
}
