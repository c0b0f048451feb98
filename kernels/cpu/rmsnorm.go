package cpu

import "math"

type rmsnormTask struct {
	out, in, w []float32
	eps        float64
	N, C, rows int
}

// RMSNormForward: out[n,:] = in[n,:] * rsqrt(mean(in[n,:]²) + eps) * w, as
// transformers' LlamaRMSNorm/Qwen3RMSNorm in fp32 (the mean is accumulated in
// float64, which is at least as accurate as torch's fp32 reduction).
func (b *Backend) RMSNormForward(out, in, w []float32, eps float64, N, C int) {
	need("rmsnorm", "out", len(out), N*C)
	need("rmsnorm", "in", len(in), N*C)
	need("rmsnorm", "w", len(w), C)
	b.mu.Lock()
	defer b.mu.Unlock()
	r := &b.norm
	*r = rmsnormTask{out: out, in: in, w: w[:C], eps: eps, N: N, C: C, rows: max(1, 8192/max(C, 1))}
	b.pool.do(r, (N+r.rows-1)/r.rows)
	*r = rmsnormTask{}
}

func (r *rmsnormTask) run(_ *worker, chunk int) {
	C := r.C
	for n := chunk * r.rows; n < min((chunk+1)*r.rows, r.N); n++ {
		x := r.in[n*C : n*C+C]
		var ss float64
		for _, v := range x {
			ss += float64(v) * float64(v)
		}
		// torch: variance (fp32) + eps, rsqrt in fp32, then x * inv.
		inv := float32(1 / math.Sqrt(float64(float32(ss/float64(C))+float32(r.eps))))
		o := r.out[n*C : n*C+C]
		w := r.w[:len(o)]
		for i, v := range x[:len(o)] {
			o[i] = w[i] * (v * inv)
		}
	}
}
