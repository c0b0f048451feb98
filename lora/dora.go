package lora

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
)

// DoRA (PEFT use_dora=True): tuners/lora/dora.py DoraLinearLayer and
// variants.py DoraLinearVariant.forward. Per adapted module, with the
// magnitude m [OC] (lora_magnitude_vector) trained next to A and B:
//
//	n    = ‖W + s·B·A‖₂ per output row, over C     [OC]  detached: no gradient
//	mn   = m / n                                    [OC]
//	xd   = dropout(x) in training with p > 0, else x
//	base = xd·Wᵀ (no bias)                          [T,OC]
//	out += (mn − 1)·base + mn·s·(xd·Aᵀ)·Bᵀ
//
// The bias is not rescaled. Without dropout PEFT takes base = result − bias
// (the base layer's output already in out); with dropout it passes the
// dropped-out x to the base term too (DoraLinearVariant.forward: x =
// dropout(x); base_result = None, so F.linear(x, W)), and so does this.
// n is "treated as a constant" (DoRA paper §4.3; dora.py weight_norm.detach()).
//
// Backward, g = dout, lora = s·(xd·Aᵀ)·Bᵀ:
//
//	dm[j]   += Σ_t g[t,j]·(base[t,j] + lora[t,j]) / n[j]
//	the low-rank branch gets dout' = mn·g (columnwise)
//	din     += mask ⊙ ((mn − 1)·g)·W      (besides the model's own g·W)
//
// Cost: n is recomputed when A or B changed since the last Forward (the
// optimizer stepped), O(OC·C·R); Backward recomputes base with the backend's
// matmul instead of keeping [T,OC] per module, and adds one input-grad
// matmul: about two extra base matmuls per module per step.

// doraState is the DoRA part of one adapted module.
type doraState struct {
	mag, dmag []float32 // [OC] views of the slabs

	be   kernels.Backend // bound by BindBase
	w    kernels.Weight  // [OC,C] frozen base weight
	bias []float32       // [OC] or nil

	norm         []float32 // [OC] n for the A and B in normA, normB
	normA, normB []float32 // copies of A, B when norm was computed (exact cache key)
	mn           []float32 // [OC] m/n of the last Forward
}

var _ model.BaseAware = (*Adapter)(nil)

// BindBase gives a DoRA module its base projection (model.NewPass and
// Model.SetAdapter call it); a plain LoRA adapter ignores it. A magnitude
// that is still all zero (a new adapter) is set to ‖W + s·B·A‖ per row, as
// PEFT initialises it; a loaded or trained one is kept.
func (a *Adapter) BindBase(layer int, module string, be kernels.Backend, w kernels.Weight, bias []float32) {
	md := a.get(layer, module)
	if md == nil {
		return
	}
	a.mu.Lock()
	a.be = be // the adapter's own matmuls run where the model's do
	a.mu.Unlock()
	if md.dora == nil {
		return
	}
	if w.Rows != md.out || w.Cols != md.in || (bias != nil && len(bias) != md.out) {
		panic(fmt.Sprintf("lora: BindBase layer %d %s: weight [%d %d] bias %d, want [%d %d] and %d", layer, module, w.Rows, w.Cols, len(bias), md.out, md.in, md.out))
	}
	ds := md.dora
	ds.be, ds.w, ds.bias = be, w, bias
	ds.normA, ds.normB = nil, nil
	if !slices.ContainsFunc(ds.mag, func(v float32) bool { return v != 0 }) {
		a.ensureNorm(md)
		copy(ds.mag, ds.norm)
	}
}

// DoRA reports whether the adapter is a DoRA adapter (use_dora).
func (a *Adapter) DoRA() bool { return a.cfg.UseDoRA }

// WeightNorm returns n = ‖W + s·B·A‖ per output row of a DoRA module as the
// next Forward uses it (the module must be bound).
func (a *Adapter) WeightNorm(layer int, module string) ([]float32, error) {
	md := a.get(layer, module)
	if md == nil || md.dora == nil {
		return nil, fmt.Errorf("lora: layer %d %s has no DoRA magnitude", layer, module)
	}
	if md.dora.w.Data == nil {
		return nil, fmt.Errorf("lora: layer %d %s: base weight not bound (model.NewPass or Model.SetAdapter bind it)", layer, module)
	}
	a.ensureNorm(md)
	return slices.Clone(md.dora.norm), nil
}

func stDType(d kernels.DType) safetensors.DType {
	switch d {
	case kernels.BF16:
		return safetensors.BF16
	case kernels.F16:
		return safetensors.F16
	}
	return safetensors.F32
}

// ensureNorm recomputes n when A or B differ from the copies it was computed
// for: n[o] = sqrt(Σ_c (W[o,c] + s·Σ_k B[o,k]·A[k,c])²), summed in float64.
func (a *Adapter) ensureNorm(md *module) {
	ds := md.dora
	if ds.w.Data == nil {
		panic(fmt.Sprintf("lora: DoRA layer %d %s: base weight not bound (model.NewPass and Model.SetAdapter bind it; an Adapter wrapping this one must forward model.BaseAware.BindBase)", md.layer, Modules[md.m]))
	}
	if ds.norm != nil && slices.Equal(ds.normA, md.a) && slices.Equal(ds.normB, md.b) {
		return
	}
	ds.norm = slices.Grow(ds.norm[:0], md.out)[:md.out]
	ds.mn = slices.Grow(ds.mn[:0], md.out)[:md.out]
	R, C := md.r, md.in
	s := md.s64
	dt := stDType(ds.w.DType)
	sz := ds.w.DType.Size()
	parallel(md.out, 4, func(lo, hi int) {
		row := make([]float32, C)
		for o := lo; o < hi; o++ {
			if err := safetensors.ToFloat32(row, ds.w.Data[o*C*sz:(o+1)*C*sz], dt); err != nil {
				panic(fmt.Sprintf("lora: DoRA layer %d %s: %v", md.layer, Modules[md.m], err))
			}
			brow := md.b[o*R : (o+1)*R]
			var sum float64
			for c, wv := range row {
				var acc float64
				for k, bk := range brow {
					acc += float64(bk) * float64(md.a[k*C+c])
				}
				v := float64(wv) + s*acc
				sum += v * v
			}
			ds.norm[o] = float32(math.Sqrt(sum))
		}
	})
	ds.normA = append(ds.normA[:0], md.a...)
	ds.normB = append(ds.normB[:0], md.b...)
}

// parallel runs f over [0,n) in one block per core (blocks of at least
// minSize rows); each output row is computed by one goroutine, so the result
// does not depend on the number of cores.
func parallel(n, minSize int, f func(lo, hi int)) {
	per := max(minSize, (n+runtime.GOMAXPROCS(0)-1)/runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += per {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			f(lo, hi)
		}(lo, min(n, lo+per))
	}
	wg.Wait()
}

// growDoRA sizes the shared DoRA scratch for T rows of a [OC,C] module.
func (a *Adapter) growDoRA(T, C, OC int) {
	if cap(a.xbuf) < T*C {
		a.xbuf = make([]float32, T*C)
	}
	if cap(a.ybuf) < T*OC {
		a.ybuf = make([]float32, T*OC)
		a.gbuf = make([]float32, T*OC)
	}
}

// doraForward is Forward for a DoRA module; d is the dropout of this call.
// The caller holds a.mu.
func (a *Adapter) doraForward(md *module, out, in []float32, T int, d dropout) {
	ds := md.dora
	a.ensureNorm(md)
	for j := range ds.mn {
		ds.mn[j] = ds.mag[j] / ds.norm[j]
	}
	R, C, OC := md.r, md.in, md.out
	a.growDoRA(T, C, OC)
	x, base := in[:T*C], a.ybuf[:T*OC]
	if d.on {
		xd := a.xbuf[:T*C]
		for t := 0; t < T; t++ {
			d.apply(xd[t*C:(t+1)*C], x[t*C:(t+1)*C], t)
		}
		x = xd
		ds.be.MatMulForward(base, x, ds.w, nil, T)
	} else {
		// PEFT: base_result = result - bias. (In a checkpointed recompute of
		// down_proj out is zero; that output is discarded and nothing here
		// that Backward reads depends on it.)
		copy(base, out[:T*OC])
		if ds.bias != nil {
			for t := 0; t < T; t++ {
				row := base[t*OC : (t+1)*OC]
				for j, b := range ds.bias {
					row[j] -= b
				}
			}
		}
	}
	be, u, y := a.backend(), md.u[:T*R], a.gbuf[:T*OC]
	be.MatMulForward(u, x, f32Weight(md.a, R, C), nil, T)
	be.MatMulForward(y, u, f32Weight(md.b, OC, R), nil, T)
	s := md.s
	for t := 0; t < T; t++ {
		o, br, yr := out[t*OC:(t+1)*OC], base[t*OC:(t+1)*OC], y[t*OC:(t+1)*OC]
		for j, mn := range ds.mn {
			o[j] += (mn-1)*br[j] + mn*yr[j]*s
		}
	}
}

// doraBackward is Backward for a DoRA module (formulas above); d is the mask
// the matching Forward used. The caller holds a.mu.
func (a *Adapter) doraBackward(md *module, din, dout, in []float32, T int, d dropout) {
	ds := md.dora
	R, C, OC := md.r, md.in, md.out
	a.growDoRA(T, C, OC)
	x := in[:T*C]
	if d.on {
		xd := a.xbuf[:T*C]
		for t := 0; t < T; t++ {
			d.apply(xd[t*C:(t+1)*C], x[t*C:(t+1)*C], t)
		}
		x = xd
	}
	base, g, y := a.ybuf[:T*OC], dout[:T*OC], a.gbuf[:T*OC]
	ds.be.MatMulForward(base, x, ds.w, nil, T)
	a.backend().MatMulForward(y, md.u[:T*R], f32Weight(md.b, OC, R), nil, T)
	s := md.s
	parallel(OC, 16, func(lo, hi int) {
		for j := lo; j < hi; j++ {
			var acc float32
			for t := 0; t < T; t++ {
				acc += g[t*OC+j] * (base[t*OC+j] + y[t*OC+j]*s)
			}
			ds.dmag[j] += acc / ds.norm[j]
		}
	})
	gm := y // y is no longer needed
	for t := 0; t < T; t++ {
		for j, mn := range ds.mn {
			gm[t*OC+j] = mn * g[t*OC+j]
		}
	}
	a.loraBackward(md, din, gm, in, T, d)
	if din == nil {
		return
	}
	gs := base // base is no longer needed
	for t := 0; t < T; t++ {
		for j, mn := range ds.mn {
			gs[t*OC+j] = (mn - 1) * g[t*OC+j]
		}
	}
	if !d.on {
		ds.be.MatMulBackward(din[:T*C], nil, nil, gs, nil, ds.w, T)
		return
	}
	dx := a.xbuf[:T*C]
	clear(dx)
	ds.be.MatMulBackward(dx, nil, nil, gs, nil, ds.w, T)
	for t := 0; t < T; t++ {
		for c := 0; c < C; c++ {
			din[t*C+c] += d.at(dx[t*C+c], t, c, C)
		}
	}
}
