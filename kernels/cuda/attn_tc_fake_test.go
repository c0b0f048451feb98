package cuda

import (
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// fakeAttnTC runs the tensor-core attention kernels on the fake device
// (fakedev_test.go's launch calls it for names it does not know) and reports
// whether name was one of them; a are the launch's marshalled arguments. The
// numbers are the kernels' arithmetic in float64: q, k, v, dout rounded to
// bf16, the forward's P (unnormalised, against the row's max) and the
// backward's P and dS rounded to bf16 before their products, l and D
// unrounded.
func fakeAttnTC(f *fakeDev, name string, a []uint64) bool {
	p := func(i int) uint64 { return a[i] }
	n := func(i int) int { return int(int32(uint32(a[i]))) }
	var o int // index of segStart
	switch name {
	case "attention_fwd_tc":
		o = 5
	case "attention_bwd_tc_dq":
		o = 7
	case "attention_bwd_tc_dkv":
		o = 8
	case "attention_bwd_tc_pre":
		rows, HD := n(3), n(4)
		dsum, dout, out := f.f32(p(0), rows), f.f32(p(1), rows*HD), f.f32(p(2), rows*HD)
		for r := range rows {
			var s float64
			for d := range HD {
				s += float64(dout[r*HD+d]) * float64(out[r*HD+d])
			}
			dsum[r] = float32(s)
		}
		return true
	default:
		return false
	}
	T, NH, KVH, HD, win := n(o+1), n(o+2), n(o+3), n(o+4), n(o+5)
	scale := float64(math.Float32frombits(uint32(a[o+6])))
	qd, kd := T*NH*HD, T*KVH*HD
	var seg []int
	if p(o) != 0 {
		seg = f.ints(p(o), T)
	}
	bf := func(x float32) float64 { return float64(bf16ToF32(f32ToBF16(x))) }
	bfs := func(x []float32) []float64 {
		y := make([]float64, len(x))
		for i, v := range x {
			y[i] = bf(v)
		}
		return y
	}
	q, k, v := bfs(f.f32(p(o-3), qd)), bfs(f.f32(p(o-2), kd)), bfs(f.f32(p(o-1), kd))
	dot := func(x, y []float64) float64 {
		var s float64
		for d := range HD {
			s += x[d] * y[d]
		}
		return s
	}
	// each calls fn(t, h, g, lo) for every query row.
	each := func(fn func(t, h, g, lo int)) {
		for t := range T {
			lo := 0
			if seg != nil {
				lo = seg[t]
			}
			if win > 0 && t-win+1 > lo {
				lo = t - win + 1
			}
			for h := range NH {
				fn(t, h, h/(NH/KVH), lo)
			}
		}
	}
	row := func(x []float64, r int) []float64 { return x[r*HD : (r+1)*HD] }
	if name == "attention_fwd_tc" {
		out := f.f32(p(0), qd)
		var lse []float32
		if p(1) != 0 {
			lse = f.f32(p(1), T*NH)
		}
		sc := make([]float64, T)
		acc := make([]float64, HD)
		each(func(t, h, g, lo int) {
			m := math.Inf(-1)
			for s := lo; s <= t; s++ {
				sc[s] = float64(float32(dot(row(q, t*NH+h), row(k, s*KVH+g)))) * scale
				m = max(m, sc[s])
			}
			var l float64
			clear(acc)
			for s := lo; s <= t; s++ {
				e := math.Exp(sc[s] - m)
				l += e
				pb := bf(float32(e))
				for d, x := range row(v, s*KVH+g) {
					acc[d] += pb * x
				}
			}
			for d := range HD {
				out[(t*NH+h)*HD+d] = float32(acc[d] / l)
			}
			if lse != nil {
				lse[t*NH+h] = float32(m + math.Log(l))
			}
		})
		return true
	}
	// Backward: P = exp(s - lse), dS = P (dP - D).
	lse, dsum := f.f32(p(o-6), T*NH), f.f32(p(o-5), T*NH)
	dout := bfs(f.f32(p(o-4), qd))
	var dq, dk, dv []float64
	if name == "attention_bwd_tc_dq" {
		dq = make([]float64, qd)
	} else {
		dk, dv = make([]float64, kd), make([]float64, kd)
	}
	each(func(t, h, g, lo int) {
		r := t*NH + h
		for s := lo; s <= t; s++ {
			kr, vr := row(k, s*KVH+g), row(v, s*KVH+g)
			P := math.Exp(float64(float32(dot(row(q, r), kr)))*scale - float64(lse[r]))
			dS := bf(float32(P * (float64(float32(dot(row(dout, r), vr))) - float64(dsum[r]))))
			if dq != nil {
				for d := range HD {
					dq[r*HD+d] += dS * kr[d]
				}
				continue
			}
			pb := bf(float32(P))
			for d := range HD {
				dk[(s*KVH+g)*HD+d] += dS * q[r*HD+d]
				dv[(s*KVH+g)*HD+d] += pb * dout[r*HD+d]
			}
		}
	})
	if dq != nil {
		out := f.f32(p(0), qd)
		for i, x := range dq {
			out[i] = float32(x * scale)
		}
	} else {
		ok, ov := f.f32(p(0), kd), f.f32(p(1), kd)
		for i := range dk {
			ok[i], ov[i] = float32(dk[i]*scale), float32(dv[i])
		}
	}
	return true
}

// withFakeAttnTC routes the tensor-core kernels' launches on fake device f to
// fakeAttnTC (until fakedev_test.go's launch does so itself).
func withFakeAttnTC(b *Backend, f *fakeDev) {
	launch := b.d.cuLaunchKernel
	b.d.cuLaunchKernel = func(fn uintptr, gx, gy, gz, bx, by, bz, smem uint32, stream uintptr, params, extra unsafe.Pointer) int32 {
		name := kernelNames[fn-1]
		if fakeAttnTC(f, name, b.argv[:len(b.sig[name])]) {
			f.launches[name]++
			return 0
		}
		return launch(fn, gx, gy, gz, bx, by, bz, smem, stream, params, extra)
	}
}

// TestAttentionTCFake runs attnFwdTC and attnBwdTC (the launch wrappers and
// the argument marshalling) on the fake device and compares its numbers with
// attnRef, the float64 attention of attn_tc_emu_test.go, at the emulator's
// shapes and tolerances: so the fake the device-pass tests run on in bf16
// mode is the tensor-core kernels' arithmetic within their stated error.
func TestAttentionTCFake(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, c := range attnTCCases {
		b, f := newFake(t, true)
		withFakeAttnTC(b, f)
		q, k, v := roundBF16(randn(r, c.T*c.NH*c.HD, c.qScale)), roundBF16(randn(r, c.T*c.KVH*c.HD, 1)), roundBF16(randn(r, c.T*c.KVH*c.HD, 1))
		dout := roundBF16(randn(r, c.T*c.NH*c.HD, 1))
		seg := c.seg()
		qd, kd := c.T*c.NH*c.HD, c.T*c.KVH*c.HD
		alloc := func(n int) uint64 {
			p, err := b.alloc(uint64(n) * 4)
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		up := func(x []float32) uint64 {
			p := alloc(len(x))
			copy(f.f32(p, len(x)), x)
			return p
		}
		qp, kp, vp, dop := up(q), up(k), up(v), up(dout)
		var sp uint64
		if seg != nil {
			sp = alloc(c.T)
			s := unsafe.Slice((*int32)(unsafe.Pointer(&f.bytes(sp, uint64(c.T)*4)[0])), c.T)
			copy(s, seg)
		}
		out, lse, dsum, dq, dk, dv := alloc(qd), alloc(c.T*c.NH), alloc(c.T*c.NH), alloc(qd), alloc(kd), alloc(kd)
		b.attnFwdTC(out, lse, qp, kp, vp, sp, c.T, c.NH, c.KVH, c.HD, c.window)
		b.attnBwdTC(dq, dk, dv, lse, dsum, dop, out, qp, kp, vp, sp, c.T, c.NH, c.KVH, c.HD, c.window)
		wOut, wLse, wDq, wDk, wDv := attnRef(c, seg, q, k, v, dout)
		var lseErr float64
		for j, w := range wLse {
			lseErr = max(lseErr, math.Abs(float64(f.f32(lse, c.T*c.NH)[j])-w))
		}
		for _, e := range []struct {
			name   string
			e, tol float64
		}{{"out", relErr(f.f32(out, qd), wOut), attnTCTolOut}, {"lse", lseErr, 1e-4}, {"dq", relErr(f.f32(dq, qd), wDq), attnTCTolGrad},
			{"dk", relErr(f.f32(dk, kd), wDk), attnTCTolGrad}, {"dv", relErr(f.f32(dv, kd), wDv), attnTCTolGrad}} {
			if !(e.e <= e.tol) {
				t.Errorf("%s: fake %s rel err %.3e > %.1e", c, e.name, e.e, e.tol)
			}
			t.Logf("%s: fake %s rel err %.2e", c, e.name, e.e)
		}
		if f.launches["attention_bwd_tc_dkv"] != 1 {
			t.Fatalf("launches %v", f.launches)
		}
	}
}

// TestAttentionTCFakeGPUPath runs TestAttentionTC's code (buffers, both
// kernel sets' launches, the comparison) on the fake device at a small
// shape, so the GPU test itself is checked before a device runs it.
func TestAttentionTCFakeGPUPath(t *testing.T) {
	b, f := newFake(t, true)
	withFakeAttnTC(b, f)
	checkAttnTC(t, b, []attnCase{{T: 90, NH: 4, KVH: 2, HD: 16, window: 30, docs: []int{50}, qScale: 1}})
	if f.launches["attention_fwd_tc"] != 1 || f.launches["attention_bwd_kv"] != 1 {
		t.Fatalf("launches %v", f.launches)
	}
}

func TestTCAttentionChoice(t *testing.T) {
	for _, c := range []struct {
		env  string
		HD   int
		bf16 bool
		want bool
	}{
		{"", 128, true, true}, {"", 128, false, false}, {"", 64, true, true}, {"", 16, true, true},
		{"", 72, true, false}, {"", 256, true, false}, {"", 0, true, false},
		{"tc", 128, false, true}, {"tc", 100, false, false}, {"warp", 128, true, false}, {"other", 64, true, true},
	} {
		t.Setenv("TUNE_CUDA_ATTN", c.env)
		if got := tcAttention(c.HD, c.bf16); got != c.want {
			t.Errorf("TUNE_CUDA_ATTN=%q tcAttention(%d, %v) = %v, want %v", c.env, c.HD, c.bf16, got, c.want)
		}
	}
}
