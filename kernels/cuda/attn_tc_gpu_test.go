package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// attnDev holds one attention problem's device buffers.
type attnDev struct {
	b                                *Backend
	q, k, v, dout, seg               uint64
	out, lse, dsum, dq, dk, dv       uint64
	outT, lseT, dsumT, dqT, dkT, dvT uint64 // the tensor-core kernels' results
	sizes                            map[uint64]uint64
	T, NH, KVH, HD, window           int
}

func newAttnDev(t *testing.T, b *Backend, c attnCase, q, k, v, dout []float32) *attnDev {
	a := &attnDev{b: b, sizes: map[uint64]uint64{}, T: c.T, NH: c.NH, KVH: c.KVH, HD: c.HD, window: c.window}
	alloc := func(n int) uint64 {
		p, err := b.alloc(uint64(n) * 4)
		if err != nil {
			t.Fatal(err)
		}
		a.sizes[p] = uint64(n) * 4
		return p
	}
	up := func(x []float32) uint64 {
		p := alloc(len(x))
		b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p, unsafe.Pointer(&x[0]), uint64(len(x))*4))
		return p
	}
	a.q, a.k, a.v, a.dout = up(q), up(k), up(v), up(dout)
	seg := make([]float32, c.T) // int32 bits: the warp backward needs segStart even for one document
	for t, s := range c.seg() {
		seg[t] = math.Float32frombits(uint32(s))
	}
	a.seg = up(seg)
	qd, kd, rows := c.T*c.NH*c.HD, c.T*c.KVH*c.HD, c.T*c.NH
	a.out, a.lse, a.dsum, a.dq, a.dk, a.dv = alloc(qd), alloc(rows), alloc(rows), alloc(qd), alloc(kd), alloc(kd)
	a.outT, a.lseT, a.dsumT, a.dqT, a.dkT, a.dvT = alloc(qd), alloc(rows), alloc(rows), alloc(qd), alloc(kd), alloc(kd)
	return a
}

func (a *attnDev) free() {
	for p, n := range a.sizes {
		a.b.free(p, n)
	}
}

// warp runs the warp kernels (the fp32 reference on the device).
func (a *attnDev) warp() {
	b, scale := a.b, float32(1/math.Sqrt(float64(a.HD)))
	b.launch("attention_fwd", blocks(a.T*a.NH, attnWarps), attnWarps*32, a.out, a.q, a.k, a.v, a.seg, 0, a.T, a.NH, a.KVH, a.HD, a.window, scale)
	b.launch("attention_bwd_q", blocks(a.T*a.NH, attnWarps), attnWarps*32, a.dq, a.lse, a.dsum, a.dout, a.q, a.k, a.v, a.seg, a.T, a.NH, a.KVH,
		a.HD, a.window, scale)
	b.launch("attention_bwd_kv", blocks(a.T*a.KVH, attnWarps), attnWarps*32, a.dk, a.dv, a.lse, a.dsum, a.dout, a.q, a.k, a.v, a.seg, a.T,
		a.NH, a.KVH, a.HD, a.window, scale)
}

func (a *attnDev) tc() {
	a.b.attnFwdTC(a.outT, a.lseT, a.q, a.k, a.v, a.seg, a.T, a.NH, a.KVH, a.HD, a.window)
	a.b.attnBwdTC(a.dqT, a.dkT, a.dvT, a.lseT, a.dsumT, a.dout, a.outT, a.q, a.k, a.v, a.seg, a.T, a.NH, a.KVH, a.HD, a.window)
}

func (a *attnDev) get(p uint64, n int) []float32 {
	x := make([]float32, n)
	a.b.get(x, p)
	return x
}

// TestAttentionTC compares the tensor-core attention with the warp kernels
// (fp32, which TestOps* checks against the CPU backend) on the GPU, on
// bf16-rounded inputs, at the tiny model's and Qwen3-8B's head shapes with
// packed documents and windows; tolerances as TestAttentionTCEmulated's.
//
//	go test ./kernels/cuda -run 'TestAttentionTC$' -v
func TestAttentionTC(t *testing.T) {
	b := openOrSkip(t)
	checkAttnTC(t, b, []attnCase{
		{T: 1000, NH: 4, KVH: 2, HD: 64, docs: []int{400}, qScale: 1},
		{T: 1000, NH: 8, KVH: 2, HD: 32, window: 128, docs: []int{}, qScale: 3},
		{T: 1000, NH: 4, KVH: 1, HD: 16, docs: []int{10, 600}, qScale: 1},
		{T: 2048, NH: 32, KVH: 8, HD: 128, docs: []int{700, 1500}, qScale: 1},
		{T: 2048, NH: 32, KVH: 8, HD: 128, window: 512, docs: []int{}, qScale: 2},
	})
}

// checkAttnTC runs the cases with both kernel sets on b and compares them
// (TestAttentionTCFakeGPUPath runs it on the fake device in CI).
func checkAttnTC(t *testing.T, b *Backend, cases []attnCase) {
	defer b.enter()()
	r := rand.New(rand.NewPCG(41, 42))
	for _, c := range cases {
		q, k, v := roundBF16(randn(r, c.T*c.NH*c.HD, c.qScale)), roundBF16(randn(r, c.T*c.KVH*c.HD, 1)), roundBF16(randn(r, c.T*c.KVH*c.HD, 1))
		dout := roundBF16(randn(r, c.T*c.NH*c.HD, 1))
		a := newAttnDev(t, b, c, q, k, v, dout)
		a.warp()
		a.tc()
		qd, kd, rows := c.T*c.NH*c.HD, c.T*c.KVH*c.HD, c.T*c.NH
		shape := fmt.Sprint(c)
		compare(t, "attention tc out vs warp", shape, a.get(a.outT, qd), a.get(a.out, qd), attnTCTolOut)
		// lse is a log: its error is absolute; compared as 1 + (tc - warp) vs 1.
		// (The fake device's attention_bwd_q leaves lse unset.)
		if b.dev.Name != "fake" {
			lw, lt := a.get(a.lse, rows), a.get(a.lseT, rows)
			one := make([]float32, rows)
			for i := range lw {
				lt[i], one[i] = 1+(lt[i]-lw[i]), 1
			}
			compare(t, "attention tc lse vs warp", shape, lt, one, 1e-4)
		}
		compare(t, "attention tc dq vs warp", shape, a.get(a.dqT, qd), a.get(a.dq, qd), attnTCTolGrad)
		compare(t, "attention tc dk vs warp", shape, a.get(a.dkT, kd), a.get(a.dk, kd), attnTCTolGrad)
		compare(t, "attention tc dv vs warp", shape, a.get(a.dvT, kd), a.get(a.dv, kd), attnTCTolGrad)
		a.free()
	}
}
