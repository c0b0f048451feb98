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

type rmsnormBackTask struct {
	din, dw, dout, in, w, rstd []float32
	eps                        float64
	N, C, rows                 int
	phase                      int // 0: din by rows, 1: dw by columns
}

// rmsnormBackCols is the dw columns per chunk (fixed: see matmul backward).
const rmsnormBackCols = 64

// RMSNormBackward differentiates out = x * r * w with r = rsqrt(mean(x²)+eps)
// (RMSNormForward; r is recomputed from in exactly as there):
//
//	din[n,i] += r*w[i]*dout[n,i] - x[n,i] * r³/C * sum_j w[j]*dout[n,j]*x[n,j]
//	dw[i]    += sum_n dout[n,i]*x[n,i]*r[n]   (skipped when dw is nil)
//
// din accumulates: it is the residual stream's grad (or a per-head q/k grad
// the caller cleared).
func (b *Backend) RMSNormBackward(din, dw, dout, in, w []float32, eps float64, N, C int) {
	need("rmsnorm_back", "din", len(din), N*C)
	need("rmsnorm_back", "dout", len(dout), N*C)
	need("rmsnorm_back", "in", len(in), N*C)
	need("rmsnorm_back", "w", len(w), C)
	if dw != nil {
		need("rmsnorm_back", "dw", len(dw), C)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r := &b.normB
	*r = rmsnormBackTask{din: din, dw: dw, dout: dout, in: in, w: w[:C], rstd: grow(&b.rstd, N), eps: eps, N: N, C: C, rows: max(1, 8192/max(C, 1))}
	b.pool.do(r, (N+r.rows-1)/r.rows)
	if dw != nil {
		r.phase = 1
		b.pool.do(r, (C+rmsnormBackCols-1)/rmsnormBackCols)
	}
	*r = rmsnormBackTask{}
}

func (r *rmsnormBackTask) run(_ *worker, chunk int) {
	C := r.C
	if r.phase == 1 {
		for c := chunk * rmsnormBackCols; c < min((chunk+1)*rmsnormBackCols, C); c++ {
			var s float32
			for n := 0; n < r.N; n++ {
				s += r.dout[n*C+c] * r.in[n*C+c] * r.rstd[n]
			}
			r.dw[c] += s
		}
		return
	}
	for n := chunk * r.rows; n < min((chunk+1)*r.rows, r.N); n++ {
		x := r.in[n*C : n*C+C]
		var ss float64
		for _, v := range x {
			ss += float64(v) * float64(v)
		}
		inv := float32(1 / math.Sqrt(float64(float32(ss/float64(C))+float32(r.eps))))
		r.rstd[n] = inv
		dy := r.dout[n*C : n*C+C]
		w := r.w[:len(x)]
		dy = dy[:len(x)]
		var dot float64
		for i, v := range x {
			dot += float64(w[i]) * float64(dy[i]) * float64(v)
		}
		k := float32(dot * float64(inv) * float64(inv) * float64(inv) / float64(C))
		dx := r.din[n*C : n*C+C]
		dx = dx[:len(x)]
		for i, v := range x {
			dx[i] += inv*w[i]*dy[i] - k*v
		}
	}
}
