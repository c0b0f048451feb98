// Package train runs the training loop of `tune lora`: micro-batches with
// gradient accumulation, global grad-norm clipping, AdamW, learning-rate
// schedules, validation, metrics, and checkpoints that resume bit for bit.
// It works over flat float32 slabs of parameters and gradients; computing the
// gradients is the model's job (model.Pass) and what the parameters mean is
// the adapter's (lora). It is not a recipe parser (package recipes) nor a CLI.
package train

import "math"

// AdamWConfig are torch.optim.AdamW's hyperparameters (lr comes per step
// from the schedule).
type AdamWConfig struct {
	Beta1, Beta2, Eps, WeightDecay float64
}

// AdamW is torch.optim.AdamW over one flat slab: the moments M and V are [N]
// like the parameters, and Step counts the updates done.
type AdamW struct {
	Cfg  AdamWConfig
	Step int64
	M, V []float32 // [N]
}

// NewAdamW returns an optimizer with zero moments for n parameters.
func NewAdamW(n int, cfg AdamWConfig) *AdamW {
	return &AdamW{Cfg: cfg, M: make([]float32, n), V: make([]float32, n)}
}

// Update applies one AdamW step with learning rate lr to the parameter
// slabs (M and V hold them back to back, in order). It follows
// _single_tensor_adamw of torch 1.13/2.x (the default on CPU), operation by
// operation in float32, with the Python float scalars rounded to float32 as
// torch's CPU kernels round them:
//
//	step += 1
//	p *= 1 - lr*wd                     (decoupled weight decay)
//	m = b1*m + (1-b1)*g                (the add fused, as torch's fmadd)
//	v = b2*v + (1-b2)*g*g              (the last multiply-add fused)
//	denom = sqrt(v) / sqrt(1-b2^step) + eps
//	p += -(lr / (1-b1^step)) * m / denom   (addcdiv_: left to right)
func (o *AdamW) Update(lr float64, params, grads [][]float32) {
	o.Step++
	c := o.Cfg
	decay := float32(1 - lr*c.WeightDecay)
	b1, b2 := float32(c.Beta1), float32(c.Beta2)
	a1, a2 := float32(1-c.Beta1), float32(1-c.Beta2)
	bc1 := 1 - math.Pow(c.Beta1, float64(o.Step))
	bc2sqrt := float32(math.Sqrt(1 - math.Pow(c.Beta2, float64(o.Step))))
	stepSize := float32(-lr / bc1)
	eps := float32(c.Eps)
	off := 0
	for k, ps := range params {
		g := grads[k][:len(ps)]
		m, v := o.M[off:off+len(ps)], o.V[off:off+len(ps)]
		off += len(ps)
		for i := range ps {
			// The float32() conversions forbid fused multiply-adds, so
			// every operation rounds as torch's do, except where torch
			// fuses: add_(g, alpha) is vec::fmadd(g, alpha, m) in its
			// vectorized CPU kernel, and addcmul_'s self + (value*t1)*t2 is
			// contracted to an FMA by the compiler in its AVX2 build (a
			// float32 product is exact in float64, so each is one rounding
			// of the sum, as an FMA; torch's result matches to 1 ulp).
			p := ps[i] * decay
			m[i] = float32(float64(g[i])*float64(a1) + float64(float32(m[i]*b1)))
			v[i] = float32(float64(float32(a2*g[i]))*float64(g[i]) + float64(float32(v[i]*b2)))
			denom := float32(float32(math.Sqrt(float64(v[i])))/bc2sqrt) + eps
			ps[i] = p + float32(float32(stepSize*m[i])/denom)
		}
	}
}

// GradNorm returns the global L2 norm of the gradient slabs, as
// torch.nn.utils.clip_grad_norm_ returns it (total_norm, before clipping).
// Torch sums in the gradients' dtype (float32, per tensor then across
// tensors); we accumulate the squares in float64, which is at least as
// accurate: the two differ by float32 rounding, ~1e-7 relative.
func GradNorm(grads ...[]float32) float64 {
	var s float64
	for _, g := range grads {
		for _, x := range g {
			s += float64(x) * float64(x)
		}
	}
	return math.Sqrt(s)
}

// ClipGrads scales the gradients by min(1, maxNorm/(norm+1e-6)) as
// clip_grad_norm_ does (its 1e-6 included), given their norm. maxNorm <= 0
// is off. It returns the factor applied.
func ClipGrads(norm, maxNorm float64, grads ...[]float32) float64 {
	if maxNorm <= 0 {
		return 1
	}
	coef := maxNorm / (norm + 1e-6)
	if coef >= 1 {
		return 1 // torch multiplies by the clamped 1.0: a no-op
	}
	c := float32(coef)
	for _, g := range grads {
		for i := range g {
			g[i] *= c
		}
	}
	return coef
}
