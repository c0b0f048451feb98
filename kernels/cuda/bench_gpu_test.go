package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

// TestBench prints throughput on the GPU (TUNE_CUDA_BENCH=1; gpu-check.sh
// sets it): cuBLAS GEMMs fp32 and bf16 on device-resident data, the
// attention kernels at Qwen3-8B's shape, and a LoRA-sized linear step through
// the host-slice Backend API (copies included: what training gets today).

// timeDevice runs f iters times after one warm-up and returns the mean
// milliseconds measured with CUDA events.
func timeDevice(b *Backend, iters int, f func()) float64 {
	f()
	var start, end uintptr
	b.must("cuEventCreate", b.d.cuEventCreate(&start, 0))
	b.must("cuEventCreate", b.d.cuEventCreate(&end, 0))
	defer b.d.cuEventDestroy(start)
	defer b.d.cuEventDestroy(end)
	b.must("cuEventRecord", b.d.cuEventRecord(start, 0))
	for i := 0; i < iters; i++ {
		f()
	}
	b.must("cuEventRecord", b.d.cuEventRecord(end, 0))
	b.must("cuEventSynchronize", b.d.cuEventSynchronize(end))
	var ms float32
	b.must("cuEventElapsedTime", b.d.cuEventElapsedTime(&ms, start, end))
	return float64(ms) / float64(iters)
}

func benchLine(format string, args ...any) {
	s := fmt.Sprintf("bench: "+format+"\n", args...)
	fmt.Print(s)
	if p := os.Getenv("TUNE_CUDA_BENCH_OUT"); p != "" {
		f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			f.WriteString(s)
			f.Close()
		}
	}
}

func TestBench(t *testing.T) {
	if os.Getenv("TUNE_CUDA_BENCH") != "1" {
		t.Skip("set TUNE_CUDA_BENCH=1 to time the GPU")
	}
	b := openOrSkip(t)
	benchLine("device %s, cc %s, %d SMs, %.0f GiB", b.dev.Name, b.dev.CC(), b.dev.SMs, float64(b.dev.TotalMem)/(1<<30))
	t.Run("gemm", func(t *testing.T) { benchGEMM(t, b) })
	t.Run("attention", func(t *testing.T) { benchAttention(t, b) })
	t.Run("attention_tc", func(t *testing.T) { benchAttentionTC(t, b) })
	t.Run("lora_step", func(t *testing.T) { benchLoRAStep(t, b) })
}

func benchGEMM(t *testing.T, b *Backend) {
	defer b.enter()()
	for _, sh := range []struct{ M, N, K int }{{4096, 4096, 4096}, {8192, 8192, 8192}, {2048, 12288, 4096}} {
		for _, dt := range []int32{dtR32F, dtR16BF} {
			es := uint64(4)
			if dt == dtR16BF {
				es = 2
			}
			A, err := b.alloc(uint64(sh.M*sh.K) * es)
			if err != nil {
				t.Fatal(err)
			}
			B, err := b.alloc(uint64(sh.N*sh.K) * es)
			if err != nil {
				t.Fatal(err)
			}
			C, err := b.alloc(uint64(sh.M*sh.N) * 4)
			if err != nil {
				t.Fatal(err)
			}
			b.must("cuMemsetD8", b.d.cuMemsetD8(A, 0x3c, uint64(sh.M*sh.K)*es))
			b.must("cuMemsetD8", b.d.cuMemsetD8(B, 0x3c, uint64(sh.N*sh.K)*es))
			ms := timeDevice(b, 10, func() { b.gemm("bench", opT, opN, sh.M, sh.N, sh.K, A, sh.K, B, sh.K, 0, C, sh.M, dt) })
			name := map[int32]string{dtR32F: "fp32", dtR16BF: "bf16"}[dt]
			benchLine("gemm %-4s M=%d N=%d K=%d: %.3f ms, %.1f TFLOP/s", name, sh.M, sh.N, sh.K, ms, 2*float64(sh.M*sh.N)*float64(sh.K)/ms/1e9)
			for _, p := range []uint64{A, B, C} {
				b.must("cuMemFree", b.d.cuMemFree(p))
			}
		}
	}
}

func benchAttention(t *testing.T, b *Backend) {
	r := rand.New(rand.NewPCG(31, 32))
	T, NH, KVH, HD := 2048, 32, 8, 128
	q, k, v := randn(r, T*NH*HD, 1), randn(r, T*KVH*HD, 1), randn(r, T*KVH*HD, 1)
	dout := randn(r, T*NH*HD, 1)
	seg := make([]int, T)
	defer b.enter()()
	qp, kp, vp, dop := b.put(0, q), b.put(1, k), b.put(2, v), b.put(3, dout)
	o := b.slot(4, uint64(T*NH*HD)*4)
	sp := b.putInts(6, seg)
	g := b.slot(5, uint64(T*NH*HD+2*T*KVH*HD+2*T*NH)*4)
	dqp, dkp := g, g+uint64(T*NH*HD)*4
	dvp := dkp + uint64(T*KVH*HD)*4
	lse := dvp + uint64(T*KVH*HD)*4
	dsum := lse + uint64(T*NH)*4
	scale := float32(1 / math.Sqrt(float64(HD)))
	flops := 4 * float64(T) * float64(T+1) / 2 * float64(NH*HD) // QKᵀ and PV, causal half
	ms := timeDevice(b, 5, func() {
		b.launch("attention_fwd", blocks(T*NH, attnWarps), attnWarps*32, o, qp, kp, vp, sp, 0, T, NH, KVH, HD, 0, scale)
	})
	benchLine("attention fwd T=%d NH=%d KVH=%d HD=%d causal: %.3f ms, %.2f TFLOP/s", T, NH, KVH, HD, ms, flops/ms/1e9)
	ms = timeDevice(b, 3, func() {
		b.launch("attention_bwd_q", blocks(T*NH, attnWarps), attnWarps*32, dqp, lse, dsum, dop, qp, kp, vp, sp, T, NH, KVH, HD, 0, scale)
		b.launch("attention_bwd_kv", blocks(T*KVH, attnWarps), attnWarps*32, dkp, dvp, lse, dsum, dop, qp, kp, vp, sp, T, NH, KVH, HD, 0, scale)
	})
	benchLine("attention bwd T=%d NH=%d KVH=%d HD=%d causal: %.3f ms, %.2f TFLOP/s (2.5x fwd flops)", T, NH, KVH, HD, ms, 2.5*flops/ms/1e9)
}

// benchAttentionTC times the tensor-core attention (attn_tc.go) against the
// warp kernels at Qwen3-8B's heads, one causal document: forward, and
// backward (D, dq, dk/dv), in TFLOP/s of the causal pairs (forward 4·pairs·HD
// per head, backward 2.5x).
//
//	TUNE_CUDA_BENCH=1 go test ./kernels/cuda -run 'TestBench/attention_tc' -v
func benchAttentionTC(t *testing.T, b *Backend) {
	r := rand.New(rand.NewPCG(35, 36))
	for _, T := range []int{2048, 8192} {
		c := attnCase{T: T, NH: 32, KVH: 8, HD: 128, docs: []int{}}
		q, k, v, dout := randn(r, T*c.NH*c.HD, 1), randn(r, T*c.KVH*c.HD, 1), randn(r, T*c.KVH*c.HD, 1), randn(r, T*c.NH*c.HD, 1)
		func() {
			defer b.enter()()
			a := newAttnDev(t, b, c, q, k, v, dout)
			defer a.free()
			scale := float32(1 / math.Sqrt(float64(c.HD)))
			flops := 4 * float64(T) * float64(T+1) / 2 * float64(c.NH*c.HD)
			iters := 5
			if T > 4096 {
				iters = 1 // the warp kernels may take a second here
			}
			wf := timeDevice(b, iters, func() {
				b.launch("attention_fwd", blocks(T*c.NH, attnWarps), attnWarps*32, a.out, a.q, a.k, a.v, a.seg, 0, T, c.NH, c.KVH, c.HD, 0, scale)
			})
			wb := timeDevice(b, iters, func() {
				b.launch("attention_bwd_q", blocks(T*c.NH, attnWarps), attnWarps*32, a.dq, a.lse, a.dsum, a.dout, a.q, a.k, a.v, a.seg, T, c.NH,
					c.KVH, c.HD, 0, scale)
				b.launch("attention_bwd_kv", blocks(T*c.KVH, attnWarps), attnWarps*32, a.dk, a.dv, a.lse, a.dsum, a.dout, a.q, a.k, a.v, a.seg, T,
					c.NH, c.KVH, c.HD, 0, scale)
			})
			tf := timeDevice(b, 5, func() { b.attnFwdTC(a.outT, a.lseT, a.q, a.k, a.v, a.seg, T, c.NH, c.KVH, c.HD, 0) })
			tb := timeDevice(b, 5, func() {
				b.attnBwdTC(a.dqT, a.dkT, a.dvT, a.lseT, a.dsumT, a.dout, a.outT, a.q, a.k, a.v, a.seg, T, c.NH, c.KVH, c.HD, 0)
			})
			benchLine("attention T=%d NH=%d KVH=%d HD=%d causal fwd: tc %.3f ms %.1f TFLOP/s, warp %.3f ms %.1f TFLOP/s", T, c.NH, c.KVH, c.HD,
				tf, flops/tf/1e9, wf, flops/wf/1e9)
			benchLine("attention T=%d NH=%d KVH=%d HD=%d causal bwd: tc %.3f ms %.1f TFLOP/s, warp %.3f ms %.1f TFLOP/s", T, c.NH, c.KVH, c.HD,
				tb, 2.5*flops/tb/1e9, wb, 2.5*flops/wb/1e9)
		}()
	}
}

// benchLoRAStep: one q_proj-sized linear with a rank-16 adapter, forward and
// backward (base din, LoRA A/B grads), T=2048, C=OC=4096, bf16 base weight.
func benchLoRAStep(t *testing.T, b *Backend) {
	r := rand.New(rand.NewPCG(33, 34))
	T, C, OC, R := 2048, 4096, 4096, 16
	w := bf16Weight(randn(r, OC*C, 0.02), OC, C)
	A, B := randn(r, R*C, 0.02), randn(r, OC*R, 0.02)
	x := randn(r, T*C, 1)
	out, h, dout := make([]float32, T*OC), make([]float32, T*R), randn(r, T*OC, 1)
	lo := make([]float32, T*OC)
	din, dA, dB, dh := make([]float32, T*C), make([]float32, R*C), make([]float32, OC*R), make([]float32, T*R)
	wA, wB := f32Weight(A, R, C), f32Weight(B, OC, R)
	step := func() {
		b.MatMulForward(out, x, w, nil, T)
		b.MatMulForward(h, x, wA, nil, T)
		b.MatMulForward(lo, h, wB, nil, T)
		b.AddForward(out, out, lo)
		clear(dh)
		b.MatMulBackward(dh, dB, nil, dout, h, wB, T)
		b.MatMulBackward(din, dA, nil, dh, x, wA, T)
		b.MatMulBackward(din, nil, nil, dout, x, w, T)
	}
	step()
	const iters = 5
	t0 := time.Now()
	for i := 0; i < iters; i++ {
		step()
	}
	sec := time.Since(t0).Seconds() / iters
	flops := 2 * float64(T) * float64(C*OC) * 2 // base fwd + din
	flops += 2 * float64(T) * float64(R*(C+OC)) * 3
	benchLine("lora step (host API, copies included) T=%d C=%d OC=%d r=%d: %.1f ms, %.0f tokens/s, %.2f TFLOP/s", T, C, OC, R, sec*1e3, float64(T)/sec, flops/sec/1e12)
}
