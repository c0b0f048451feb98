package lora

import (
	"fmt"
	"unsafe"

	"github.com/tunellm/tune/kernels"
)

// Forward and Backward of one adapted linear layer, PEFT's lora.Linear.forward
// (layer.py): result = base(x) + lora_B(lora_A(dropout(x))) * scaling.
//
// Accumulation: Forward adds into out (which holds the base layer's output);
// Backward adds into din (which holds, or will hold, the base layer's input
// grad) and into dA, dB in the grads slab. Nothing is overwritten.

// SetDropoutStep picks the dropout masks of the following Forward calls. The
// mask of element (t,c) of a module's input is a pure function of (seed,
// step, layer, module, t, c), so a recomputed Forward (activation
// checkpointing) drops the same elements, and Backward needs no stored mask.
// The trainer calls it once per micro-batch with a counter that never
// repeats.
func (a *Adapter) SetDropoutStep(step uint64) { a.step = step }

// splitmix64 is a counter-based generator (Steele et al., SplittableRandom's
// mix): a bijective finaliser with good avalanche, used as a hash.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// dropout describes one Forward's mask: element i (= t*C+c) is kept iff
// splitmix64(key + i·γ) >= thresh, and kept elements are scaled by
// 1/(1-p) as torch.nn.Dropout does (inverted dropout).
type dropout struct {
	on     bool
	key    uint64
	thresh uint64
	scale  float32
}

func (a *Adapter) dropoutFor(md *module, train bool, key uint64) dropout {
	p := a.cfg.Dropout
	if !train || p == 0 {
		return dropout{}
	}
	// p·2^64 without overflow; p < 1 is validated.
	th := uint64(p * (1 << 63))
	return dropout{on: true, key: key, thresh: th << 1, scale: float32(1 / (1 - p))}
}

func (a *Adapter) maskKey(md *module) uint64 {
	return splitmix64(a.seed ^ splitmix64(a.step^splitmix64(uint64(md.layer)<<8|uint64(md.m))))
}

// apply writes dropout(x[t,:]) into dst; x is row t of an input of width len(dst).
func (d dropout) apply(dst, x []float32, t int) {
	C := len(dst)
	base := d.key + uint64(t*C)*0x9e3779b97f4a7c15
	for c, v := range x[:C] {
		if splitmix64(base+uint64(c)*0x9e3779b97f4a7c15) >= d.thresh {
			dst[c] = v * d.scale
		} else {
			dst[c] = 0
		}
	}
}

// at is dropout(x)[t,c] for one element.
func (d dropout) at(v float32, t, c, C int) float32 {
	if !d.on {
		return v
	}
	if splitmix64(d.key+uint64(t*C+c)*0x9e3779b97f4a7c15) >= d.thresh {
		return v * d.scale
	}
	return 0
}

func (a *Adapter) check(op string, md *module, layer int, name string, out, in []float32, T int) {
	if md == nil {
		return
	}
	if T < 0 || len(out) < T*md.out || len(in) < T*md.in {
		panic(fmt.Sprintf("lora: %s layer %d %s: T=%d needs out %d and in %d floats, have %d and %d",
			op, layer, name, T, T*md.out, T*md.in, len(out), len(in)))
	}
}

// dropBlock is the number of rows a dropout Forward or Backward materialises
// at once, bounding its scratch to dropBlock·C floats.
const dropBlock = 256

// f32Weight views an fp32 matrix [rows,cols] as a backend weight.
func f32Weight(v []float32, rows, cols int) kernels.Weight {
	var b []byte
	if len(v) > 0 {
		b = unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
	}
	return kernels.Weight{DType: kernels.F32, Data: b[:4*rows*cols], Rows: rows, Cols: cols}
}

// backend is what runs the adapter's matmuls: the model's backend once
// BindBase was called, else the CPU reference backend.
func (a *Adapter) backend() kernels.Backend {
	if a.be == nil {
		be, err := kernels.Get("cpu")
		if err != nil {
			panic(fmt.Sprintf("lora: %v", err))
		}
		a.be = be
	}
	return a.be
}

// Forward: out[t,o] += Σ_k (s·u[t,k])·B[o,k], u[t,k] = Σ_c dropout(x)[t,c]·A[k,c],
// both products on the backend's fp32 GEMM (u = xd·Aᵀ by MatMulForward, the
// accumulation into out by MatMulBackward's input-grad path through Bᵀ).
// u [T,R] is kept for Backward. A module that is not adapted is a no-op.
// train selects dropout (off at evaluation, as module.eval() does).
func (a *Adapter) Forward(layer int, name string, out /*[T,OC]*/, in /*[T,C]*/ []float32, T int, train bool) {
	md := a.get(layer, name)
	if md == nil || T == 0 {
		return
	}
	a.check("Forward", md, layer, name, out, in, T)
	a.mu.Lock()
	defer a.mu.Unlock()
	md.reserve(T)
	md.fwdT = T
	d := a.dropoutFor(md, train, a.maskKey(md))
	md.fwdDrop, md.fwdKey = d.on, d.key
	if md.dora != nil {
		a.doraForward(md, out, in, T, d)
		return
	}
	be, R, C := a.backend(), md.r, md.in
	A := f32Weight(md.a, R, C)
	u := md.u[:T*R]
	if !d.on {
		be.MatMulForward(u, in[:T*C], A, nil, T)
	} else {
		a.growX(min(T, dropBlock) * C)
		for t0 := 0; t0 < T; t0 += dropBlock {
			nt := min(dropBlock, T-t0)
			xd := a.xbuf[:nt*C]
			for t := 0; t < nt; t++ {
				d.apply(xd[t*C:(t+1)*C], in[(t0+t)*C:(t0+t+1)*C], t0+t)
			}
			be.MatMulForward(u[t0*R:(t0+nt)*R], xd, A, nil, nt)
		}
	}
	a.addLowRank(md, out, u, T)
}

// addLowRank does out[T,OC] += (s·u)·Bᵀ.
func (a *Adapter) addLowRank(md *module, out, u []float32, T int) {
	R, OC := md.r, md.out
	su := a.scaledU(md, u, T)
	bt := a.transposeB(md)
	a.backend().MatMulBackward(out[:T*OC], nil, nil, su, nil, f32Weight(bt, R, OC), T)
}

// scaledU writes s·u into the shared [T,R] scratch.
func (a *Adapter) scaledU(md *module, u []float32, T int) []float32 {
	a.growG(T)
	su := a.su[:T*md.r]
	for i, v := range u[:T*md.r] {
		su[i] = md.s * v
	}
	return su
}

// transposeB writes Bᵀ [R,OC] into the shared scratch.
func (a *Adapter) transposeB(md *module) []float32 {
	R, OC := md.r, md.out
	if cap(a.bt) < R*OC {
		a.bt = make([]float32, R*OC)
	}
	bt := a.bt[:R*OC]
	for o := 0; o < OC; o++ {
		for k, v := range md.b[o*R : (o+1)*R] {
			bt[k*OC+o] = v
		}
	}
	return bt
}

// Backward of out += s·(dropout(x)·Aᵀ)·Bᵀ, given dout [T,OC] and the same
// x [T,C] the matching Forward saw (the u it saved must still be there):
//
//	dB[o,k]   += Σ_t dout[t,o]·(s·u[t,k])
//	g[t,k]     = s · Σ_o dout[t,o]·B[o,k]
//	dA[k,c]   += Σ_t g[t,k]·dropout(x)[t,c]
//	din[t,c]  += Σ_k g[t,k]·A[k,c] · mask[t,c]/(1-p)
//
// each product on the backend's MatMulBackward (fp32 weights). din may be
// nil when the input gradient is not needed.
func (a *Adapter) Backward(layer int, name string, din /*[T,C]*/, dout /*[T,OC]*/, in /*[T,C]*/ []float32, T int) {
	md := a.get(layer, name)
	if md == nil || T == 0 {
		return
	}
	a.check("Backward", md, layer, name, dout, in, T)
	if din != nil && len(din) < T*md.in {
		panic(fmt.Sprintf("lora: Backward layer %d %s: din has %d floats, want %d", layer, name, len(din), T*md.in))
	}
	if md.fwdT != T {
		panic(fmt.Sprintf("lora: Backward layer %d %s: T=%d, but the last Forward had T=%d", layer, name, T, md.fwdT))
	}
	d := dropout{}
	if md.fwdDrop {
		d = a.dropoutFor(md, true, md.fwdKey)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if md.dora != nil {
		a.doraBackward(md, din, dout, in, T, d)
		return
	}
	a.loraBackward(md, din, dout, in, T, d)
}

// loraBackward is Backward's body for the plain low-rank branch; d is the
// mask the matching Forward used. The caller holds a.mu.
func (a *Adapter) loraBackward(md *module, din, dout, in []float32, T int, d dropout) {
	be, R, C, OC := a.backend(), md.r, md.in, md.out
	su := a.scaledU(md, md.u, T)
	g := a.g[:T*R]
	clear(g)
	be.MatMulBackward(g, md.db, nil, dout[:T*OC], su, f32Weight(md.b, OC, R), T)
	for i := range g {
		g[i] *= md.s
	}
	A := f32Weight(md.a, R, C)
	if !d.on {
		var dx []float32
		if din != nil {
			dx = din[:T*C]
		}
		be.MatMulBackward(dx, md.da, nil, g, in[:T*C], A, T)
		return
	}
	a.growX(min(T, dropBlock) * C)
	for t0 := 0; t0 < T; t0 += dropBlock {
		nt := min(dropBlock, T-t0)
		xd := a.xbuf[:nt*C]
		for t := 0; t < nt; t++ {
			d.apply(xd[t*C:(t+1)*C], in[(t0+t)*C:(t0+t+1)*C], t0+t)
		}
		var dx []float32
		if din != nil {
			dx = a.dxbuf[:nt*C]
			clear(dx)
		}
		be.MatMulBackward(dx, md.da, nil, g[t0*R:(t0+nt)*R], xd, A, nt)
		if din != nil {
			for t := 0; t < nt; t++ {
				row := din[(t0+t)*C : (t0+t+1)*C]
				for c, v := range dx[t*C : (t+1)*C] {
					row[c] += d.at(v, t0+t, c, C)
				}
			}
		}
	}
}
