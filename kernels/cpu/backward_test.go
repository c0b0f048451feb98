package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tunellm/tune/kernels"
)

// Gradient checks (STYLE.md 13): every backward op against central finite
// differences of an independent float64 forward, through the scalar loss
// sum(out*r) with fixed random r. Analytic grads are checked for NaN first.

func f64(v []float32) []float64 {
	o := make([]float64, len(v))
	for i, x := range v {
		o[i] = float64(x)
	}
	return o
}

// numGrad returns d loss / d x[i] by central differences (4-point when
// four is set), perturbing x in place.
func numGrad(x []float64, eps float64, four bool, loss func() float64) []float64 {
	g := make([]float64, len(x))
	for i := range x {
		x0 := x[i]
		at := func(d float64) float64 { x[i] = x0 + d; return loss() }
		if four {
			g[i] = (8*(at(eps)-at(-eps)) - (at(2*eps) - at(-2*eps))) / (12 * eps)
		} else {
			g[i] = (at(eps) - at(-eps)) / (2 * eps)
		}
		x[i] = x0
	}
	return g
}

func dotR(out, r []float64) float64 {
	var s float64
	for i, v := range out {
		s += v * r[i]
	}
	return s
}

// checkGrad compares an analytic grad to a numeric one: |a-n| <= atol + rtol*|n|.
func checkGrad(t *testing.T, name string, got []float32, want []float64, atol, rtol float64) {
	t.Helper()
	for i, v := range got {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("%s[%d] = %v", name, i, v)
		}
	}
	checkClose(t, name, got, want, func(i int) float64 { return atol + rtol*math.Abs(want[i]) })
}

func TestMatMulBackward(t *testing.T) {
	for _, sh := range []struct{ T, C, OC int }{{1, 1, 1}, {3, 5, 7}, {5, 9, 4}, {6, 70, 9}, {9, 3, 600}, {4, 130, 513}} {
		for _, dt := range dtypes {
			t.Run(fmt.Sprintf("%v/T%d_C%d_OC%d", dt, sh.T, sh.C, sh.OC), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(sh.T*1000+sh.C), uint64(sh.OC)))
				in := randVec(r, sh.T*sh.C, 1)
				wv := randVec(r, sh.OC*sh.C, 1)
				wdata, wref := encode(wv, dt)
				w := kernels.Weight{DType: dt, Data: wdata, Rows: sh.OC, Cols: sh.C}
				rr := f64(randVec(r, sh.T*sh.OC, 1))
				x, bias := f64(in), make([]float64, sh.OC)
				loss := func() float64 {
					out := make([]float64, sh.T*sh.OC)
					for t := 0; t < sh.T; t++ {
						for o := 0; o < sh.OC; o++ {
							s := bias[o]
							for c := 0; c < sh.C; c++ {
								s += x[t*sh.C+c] * wref[o*sh.C+c]
							}
							out[t*sh.OC+o] = s
						}
					}
					return dotR(out, rr)
				}
				dout := make([]float32, len(rr))
				for i, v := range rr {
					dout[i] = float32(v)
				}
				be := New(3)
				din := randVec(r, sh.T*sh.C, 1) // accumulates onto existing values
				din0 := f64(din)
				var dw, db []float32
				if dt == kernels.F32 {
					dw, db = make([]float32, sh.OC*sh.C), make([]float32, sh.OC)
				}
				be.MatMulBackward(din, dw, db, dout, in, w, sh.T)
				want := numGrad(x, 1e-3, false, loss)
				for i := range want {
					want[i] += din0[i]
				}
				checkGrad(t, "din", din, want, 1e-4, 1e-4)
				if dw != nil && sh.OC*sh.C <= 6000 { // the loss is linear: a few sizes suffice for dw
					checkGrad(t, "dw", dw, numGrad(wref, 1e-3, false, loss), 1e-4, 1e-4)
					checkGrad(t, "dbias", db, numGrad(bias, 1e-3, false, loss), 1e-4, 1e-4)
				}
			})
		}
	}
}

func refRMSNorm(in, w []float64, eps float64, N, C int) []float64 {
	out := make([]float64, N*C)
	for n := 0; n < N; n++ {
		var ss float64
		for c := 0; c < C; c++ {
			ss += in[n*C+c] * in[n*C+c]
		}
		r := 1 / math.Sqrt(ss/float64(C)+eps)
		for c := 0; c < C; c++ {
			out[n*C+c] = in[n*C+c] * r * w[c]
		}
	}
	return out
}

func TestRMSNormBackward(t *testing.T) {
	for _, sh := range []struct{ N, C int }{{1, 1}, {3, 5}, {7, 12}, {2, 65}, {40, 130}} {
		t.Run(fmt.Sprintf("N%d_C%d", sh.N, sh.C), func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(sh.N), uint64(sh.C)))
			in := randVec(r, sh.N*sh.C, 1)
			w := randVec(r, sh.C, 1)
			for i := range w {
				w[i] += 1.5
			}
			rr := f64(randVec(r, sh.N*sh.C, 1))
			x, wf := f64(in), f64(w)
			const eps = 1e-6
			loss := func() float64 { return dotR(refRMSNorm(x, wf, eps, sh.N, sh.C), rr) }
			dout := make([]float32, len(rr))
			for i, v := range rr {
				dout[i] = float32(v)
			}
			din, dw := make([]float32, len(in)), make([]float32, sh.C)
			New(3).RMSNormBackward(din, dw, dout, in, w, eps, sh.N, sh.C)
			checkGrad(t, "din", din, numGrad(x, 1e-4, true, loss), 1e-5, 1e-4)
			checkGrad(t, "dw", dw, numGrad(wf, 1e-4, true, loss), 1e-5, 1e-4)
		})
	}
}

func TestRoPEBackward(t *testing.T) {
	for _, sh := range []struct{ T, NH, HD int }{{1, 1, 2}, {5, 3, 8}, {3, 2, 14}} {
		t.Run(fmt.Sprintf("T%d_NH%d_HD%d", sh.T, sh.NH, sh.HD), func(t *testing.T) {
			T, NH, HD, h := sh.T, sh.NH, sh.HD, sh.HD/2
			r := rand.New(rand.NewPCG(uint64(T), uint64(HD)))
			x := randVec(r, T*NH*HD, 1)
			cos, sin := make([]float32, T*h), make([]float32, T*h)
			for i := range cos {
				a := r.Float64() * 6
				cos[i], sin[i] = float32(math.Cos(a)), float32(math.Sin(a))
			}
			rr := f64(randVec(r, T*NH*HD, 1))
			xf := f64(x)
			loss := func() float64 {
				out := make([]float64, len(xf))
				for t := 0; t < T; t++ {
					for hd := 0; hd < NH; hd++ {
						o := (t*NH + hd) * HD
						for i := 0; i < h; i++ {
							a, b := xf[o+i], xf[o+i+h]
							c, s := float64(cos[t*h+i]), float64(sin[t*h+i])
							out[o+i], out[o+i+h] = a*c-b*s, b*c+a*s
						}
					}
				}
				return dotR(out, rr)
			}
			dx := make([]float32, len(rr))
			for i, v := range rr {
				dx[i] = float32(v)
			}
			New(2).RoPEBackward(dx, cos, sin, T, NH, HD)
			checkGrad(t, "dx", dx, numGrad(xf, 1e-4, false, loss), 1e-5, 1e-4)
		})
	}
}

// refPackedAttention64 is refPackedAttention over float64 inputs.
func refPackedAttention64(q, k, v []float64, segStart []int, T, NH, KVH, HD, window int) []float64 {
	out := make([]float64, T*NH*HD)
	kvd := KVH * HD
	for t := 0; t < T; t++ {
		lo := segStart[t]
		if window > 0 {
			lo = max(lo, t-window+1)
		}
		for h := 0; h < NH; h++ {
			g := h / (NH / KVH)
			sc := make([]float64, t+1-lo)
			mx := math.Inf(-1)
			for s := lo; s <= t; s++ {
				var d float64
				for i := 0; i < HD; i++ {
					d += q[(t*NH+h)*HD+i] * k[s*kvd+g*HD+i]
				}
				sc[s-lo] = d / math.Sqrt(float64(HD))
				mx = max(mx, sc[s-lo])
			}
			var sum float64
			for i := range sc {
				sc[i] = math.Exp(sc[i] - mx)
				sum += sc[i]
			}
			for s := lo; s <= t; s++ {
				for i := 0; i < HD; i++ {
					out[(t*NH+h)*HD+i] += sc[s-lo] / sum * v[s*kvd+g*HD+i]
				}
			}
		}
	}
	return out
}

func TestPackedAttentionBackward(t *testing.T) {
	cases := []struct {
		lens                []int
		NH, KVH, HD, window int
	}{
		{[]int{1}, 1, 1, 2, 0},
		{[]int{6}, 2, 1, 4, 0},
		{[]int{3, 5, 1}, 4, 2, 6, 0},
		{[]int{9, 4}, 2, 2, 8, 3},
		{[]int{11}, 3, 1, 10, 4},
		{[]int{2, 1, 7, 3}, 4, 4, 16, 2},
		{[]int{30, 45}, 2, 1, 2, 0}, // two blocks of attnMB rows, a segment across them
		{[]int{50, 30}, 1, 1, 2, 20},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%v_NH%d_KVH%d_HD%d_w%d", tc.lens, tc.NH, tc.KVH, tc.HD, tc.window), func(t *testing.T) {
			seg := segStarts(tc.lens)
			T := len(seg)
			r := rand.New(rand.NewPCG(uint64(T), uint64(tc.HD)))
			q := randVec(r, T*tc.NH*tc.HD, 1)
			k := randVec(r, T*tc.KVH*tc.HD, 1)
			v := randVec(r, T*tc.KVH*tc.HD, 1)
			rr := f64(randVec(r, T*tc.NH*tc.HD, 1))
			qf, kf, vf := f64(q), f64(k), f64(v)
			loss := func() float64 {
				return dotR(refPackedAttention64(qf, kf, vf, seg, T, tc.NH, tc.KVH, tc.HD, tc.window), rr)
			}
			dout := make([]float32, len(rr))
			for i, x := range rr {
				dout[i] = float32(x)
			}
			dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
			for i := range dk { // overwritten, not accumulated
				dk[i], dv[i] = 7, 7
			}
			New(3).PackedAttentionBackward(dq, dk, dv, dout, q, k, v, seg, T, tc.NH, tc.KVH, tc.HD, tc.window)
			checkGrad(t, "dq", dq, numGrad(qf, 1e-4, true, loss), 1e-5, 1e-4)
			checkGrad(t, "dk", dk, numGrad(kf, 1e-4, true, loss), 1e-5, 1e-4)
			checkGrad(t, "dv", dv, numGrad(vf, 1e-4, true, loss), 1e-5, 1e-4)
		})
	}
}

func TestSwiGLUBackward(t *testing.T) {
	const n = 37
	r := rand.New(rand.NewPCG(5, 5))
	gate, up := randVec(r, n, 4), randVec(r, n, 2)
	rr := f64(randVec(r, n, 1))
	gf, uf := f64(gate), f64(up)
	loss := func() float64 {
		var s float64
		for i := range gf {
			s += gf[i] / (1 + math.Exp(-gf[i])) * uf[i] * rr[i]
		}
		return s
	}
	dout := make([]float32, n)
	for i, v := range rr {
		dout[i] = float32(v)
	}
	dgate, dup := make([]float32, n), make([]float32, n)
	New(2).SwiGLUBackward(dgate, dup, dout, gate, up)
	checkGrad(t, "dgate", dgate, numGrad(gf, 1e-4, false, loss), 1e-5, 1e-4)
	checkGrad(t, "dup", dup, numGrad(uf, 1e-4, false, loss), 1e-5, 1e-4)
	// dgate aliasing dout gives the same result.
	New(2).SwiGLUBackward(dout, dup, dout, gate, up)
	for i := range dout {
		if dout[i] != dgate[i] {
			t.Fatalf("aliased dgate[%d] = %v, want %v", i, dout[i], dgate[i])
		}
	}
}

func TestEmbeddingBackward(t *testing.T) {
	const V, C = 6, 300
	tokens := []int{2, 0, 2, 5, 2}
	r := rand.New(rand.NewPCG(6, 6))
	dout := randVec(r, len(tokens)*C, 1)
	dtab := randVec(r, V*C, 1)
	want := f64(dtab)
	for t, id := range tokens {
		for c := 0; c < C; c++ {
			want[id*C+c] += float64(dout[t*C+c])
		}
	}
	New(3).EmbeddingBackward(dtab, dout, tokens, C)
	checkGrad(t, "dtable", dtab, want, 1e-6, 1e-6)
}

func TestLogSoftmaxNLLBackward(t *testing.T) {
	const N, V = 4, 33
	r := rand.New(rand.NewPCG(7, 7))
	logits := randVec(r, N*V, 5)
	targets := []int{0, 32, 7, 7}
	x := f64(logits)
	const dloss = 0.37
	loss := func() float64 {
		var s float64
		for n := 0; n < N; n++ {
			mx := math.Inf(-1)
			for _, v := range x[n*V : (n+1)*V] {
				mx = max(mx, v)
			}
			var sum float64
			for _, v := range x[n*V : (n+1)*V] {
				sum += math.Exp(v - mx)
			}
			s += mx + math.Log(sum) - x[n*V+targets[n]]
		}
		return dloss * s
	}
	want := numGrad(x, 1e-4, true, loss)
	New(2).LogSoftmaxNLLBackward(logits, logits, targets, dloss, N, V) // in place
	checkGrad(t, "dlogits", logits, want, 1e-6, 1e-4)
}

// TestBackwardWorkerCountInvariance: grads do not depend on the worker count.
func TestBackwardWorkerCountInvariance(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	const T, C, OC, NH, KVH, HD = 37, 130, 600, 4, 2, 16
	in := randVec(r, T*C, 1)
	wdata, _ := encode(randVec(r, OC*C, 1), kernels.BF16)
	w := kernels.Weight{DType: kernels.BF16, Data: wdata, Rows: OC, Cols: C}
	wf, _ := encode(randVec(r, OC*C, 1), kernels.F32)
	w32 := kernels.Weight{DType: kernels.F32, Data: wf, Rows: OC, Cols: C}
	dout := randVec(r, T*OC, 1)
	nw := randVec(r, C, 1)
	seg := segStarts([]int{10, 20, 7})
	q, k, v := randVec(r, T*NH*HD, 1), randVec(r, T*KVH*HD, 1), randVec(r, T*KVH*HD, 1)
	da := randVec(r, T*NH*HD, 1)
	run := func(be *Backend) [][]float32 {
		din, din2, dw, db := make([]float32, T*C), make([]float32, T*C), make([]float32, OC*C), make([]float32, OC)
		be.MatMulBackward(din, nil, nil, dout, in, w, T)
		be.MatMulBackward(din2, dw, db, dout, in, w32, T)
		dx, dnw := make([]float32, T*C), make([]float32, C)
		be.RMSNormBackward(dx, dnw, in, in, nw, 1e-6, T, C)
		dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
		be.PackedAttentionBackward(dq, dk, dv, da, q, k, v, seg, T, NH, KVH, HD, 5)
		return [][]float32{din, din2, dw, db, dx, dnw, dq, dk, dv}
	}
	a, b := run(New(1)), run(New(4))
	for i := range a {
		for j := range a[i] {
			if math.Float32bits(a[i][j]) != math.Float32bits(b[i][j]) {
				t.Fatalf("output %d[%d]: 1 worker %v, 4 workers %v", i, j, a[i][j], b[i][j])
			}
		}
	}
}

func TestBackwardNoAllocs(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	const T, C, OC = 16, 64, 96
	be := New(2)
	in, dout := randVec(r, T*C, 1), randVec(r, T*OC, 1)
	wdata, _ := encode(randVec(r, OC*C, 1), kernels.BF16)
	w := kernels.Weight{DType: kernels.BF16, Data: wdata, Rows: OC, Cols: C}
	din := make([]float32, T*C)
	seg := segStarts([]int{T})
	q := randVec(r, T*4*16, 1)
	kv := randVec(r, T*2*16, 1)
	dq, dk, dv := make([]float32, len(q)), make([]float32, len(kv)), make([]float32, len(kv))
	f := func() {
		be.MatMulBackward(din, nil, nil, dout, in, w, T)
		be.RMSNormBackward(din, nil, in, in, in[:C], 1e-6, T, C)
		be.PackedAttentionBackward(dq, dk, dv, q, q, kv, kv, seg, T, 4, 2, 16, 0)
	}
	f()
	if n := testing.AllocsPerRun(10, f); n != 0 {
		t.Errorf("backward ops allocate %v times per call", n)
	}
}

func BenchmarkMatMulBackward(b *testing.B) {
	for _, sh := range []struct{ T, C, OC int }{{512, 1024, 3072}, {512, 3072, 1024}, {256, 1024, 32000}} {
		b.Run(fmt.Sprintf("bf16/din/T%d_C%d_OC%d", sh.T, sh.C, sh.OC), func(b *testing.B) {
			be := New(0)
			r := rand.New(rand.NewPCG(1, 1))
			dout := randVec(r, sh.T*sh.OC, 1)
			wdata, _ := encode(randVec(r, sh.OC*sh.C, 1), kernels.BF16)
			w := kernels.Weight{DType: kernels.BF16, Data: wdata, Rows: sh.OC, Cols: sh.C}
			din := make([]float32, sh.T*sh.C)
			b.ResetTimer()
			for b.Loop() {
				be.MatMulBackward(din, nil, nil, dout, nil, w, sh.T)
			}
			flops := 2 * float64(sh.T) * float64(sh.C) * float64(sh.OC) * float64(b.N)
			b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
