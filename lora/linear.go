package lora

import "fmt"

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

// Forward: out[t,o] += s · Σ_k u[t,k]·B[o,k], u[t,k] = Σ_c dropout(x)[t,c]·A[k,c].
// u [T,R] is kept for Backward. A module that is not adapted is a no-op.
// train selects dropout (off at evaluation, as module.eval() does).
func (a *Adapter) Forward(layer int, name string, out /*[T,OC]*/, in /*[T,C]*/ []float32, T int, train bool) {
	md := a.get(layer, name)
	if md == nil || T == 0 {
		return
	}
	a.check("Forward", md, layer, name, out, in, T)
	R := a.cfg.R
	md.reserve(T, R)
	md.fwdT = T
	d := a.dropoutFor(md, train, a.maskKey(md))
	md.fwdDrop, md.fwdKey = d.on, d.key
	if md.dora != nil {
		a.doraForward(md, out, in, T, d)
		return
	}
	p := sharedPool()
	p.mu.Lock()
	defer p.mu.Unlock()
	size, n := p.chunks(T, 1)
	ft := &a.fwd
	*ft = forwardTask{md: md, out: out, in: in, s: a.scaling, R: R, d: d, rows: size, T: T}
	p.do(ft, n)
	*ft = forwardTask{}
}

type forwardTask struct {
	md      *module
	out, in []float32
	s       float32
	R       int
	d       dropout
	rows, T int
}

func (f *forwardTask) run(w *worker, chunk int) {
	md, R, C, OC := f.md, f.R, f.md.in, f.md.out
	t1 := min(f.T, (chunk+1)*f.rows)
	for t := chunk * f.rows; t < t1; t++ {
		x := f.in[t*C : (t+1)*C]
		if f.d.on {
			xd := w.rowBuf(C)
			f.d.apply(xd, x, t)
			x = xd
		}
		u := md.u[t*R : (t+1)*R]
		for k := range u {
			u[k] = dot(x, md.a[k*C:(k+1)*C])
		}
		o := f.out[t*OC : (t+1)*OC]
		for j := range o {
			b := md.b[j*R : (j+1)*R]
			var sum float32
			for k, uk := range u {
				sum += uk * b[k]
			}
			o[j] += f.s * sum
		}
	}
}

func dot(x, y []float32) float32 {
	y = y[:len(x)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(x); i += 4 {
		s0 += x[i] * y[i]
		s1 += x[i+1] * y[i+1]
		s2 += x[i+2] * y[i+2]
		s3 += x[i+3] * y[i+3]
	}
	for ; i < len(x); i++ {
		s0 += x[i] * y[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// Backward of out += s·(dropout(x)·Aᵀ)·Bᵀ, given dout [T,OC] and the same
// x [T,C] the matching Forward saw (the u it saved must still be there):
//
//	dB[o,k]   += s · Σ_t dout[t,o]·u[t,k]
//	g[t,k]     =     Σ_o dout[t,o]·B[o,k]
//	dA[k,c]   += s · Σ_t g[t,k]·dropout(x)[t,c]
//	din[t,c]  += s · Σ_k g[t,k]·A[k,c] · mask[t,c]/(1-p)
//
// din may be nil when the input gradient is not needed.
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
	if md.dora != nil {
		a.doraBackward(md, din, dout, in, T, d)
		return
	}
	a.loraBackward(md, din, dout, in, T, d)
}

// loraBackward is Backward's body for the plain low-rank branch; d is the
// mask the matching Forward used.
func (a *Adapter) loraBackward(md *module, din, dout, in []float32, T int, d dropout) {
	p := sharedPool()
	p.mu.Lock()
	defer p.mu.Unlock()
	a.growG(T)
	bt := &a.bwd
	*bt = backwardTask{md: md, din: din, dout: dout, in: in, g: a.g, s: a.scaling, R: a.cfg.R, d: d, T: T}
	defer func() { *bt = backwardTask{} }() // drop references to the caller's slices

	// dB, over blocks of output rows o; then g, over rows t.
	var n int
	bt.phase = phaseDB
	bt.width, n = p.chunks(md.out, 16)
	p.do(bt, n)
	bt.phase = phaseG
	bt.width, n = p.chunks(T, 1)
	p.do(bt, n)
	// dA, over blocks of columns c; then din, over rows t.
	bt.phase = phaseDA
	bt.width, n = p.chunks(md.in, 16)
	p.do(bt, n)
	if din != nil {
		bt.phase = phaseDIn
		bt.width, n = p.chunks(T, 1)
		p.do(bt, n)
	}
}

const (
	phaseDB = iota
	phaseG
	phaseDA
	phaseDIn
)

type backwardTask struct {
	md            *module
	din, dout, in []float32
	g             []float32 // [T,R] dout·B
	s             float32
	R             int
	d             dropout
	T             int
	phase, width  int
}

func (b *backwardTask) run(w *worker, chunk int) {
	md, R, C, OC, T := b.md, b.R, b.md.in, b.md.out, b.T
	lo := chunk * b.width
	switch b.phase {
	case phaseDB:
		hi := min(OC, lo+b.width)
		acc := w.accBuf((hi - lo) * R)
		clear(acc)
		for t := 0; t < T; t++ {
			u := md.u[t*R : (t+1)*R]
			drow := b.dout[t*OC+lo : t*OC+hi]
			for j, g := range drow {
				if g == 0 {
					continue
				}
				ac := acc[j*R : (j+1)*R]
				for k, uk := range u {
					ac[k] += g * uk
				}
			}
		}
		db := md.db[lo*R : hi*R]
		for i, v := range acc {
			db[i] += b.s * v
		}
	case phaseG:
		hi := min(T, lo+b.width)
		for t := lo; t < hi; t++ {
			g := b.g[t*R : (t+1)*R]
			clear(g)
			drow := b.dout[t*OC : (t+1)*OC]
			for o, dv := range drow {
				if dv == 0 {
					continue
				}
				brow := md.b[o*R : (o+1)*R]
				for k := range g {
					g[k] += dv * brow[k]
				}
			}
		}
	case phaseDA:
		hi := min(C, lo+b.width)
		W := hi - lo
		acc := w.accBuf(R * W)
		clear(acc)
		for t := 0; t < T; t++ {
			x := b.in[t*C+lo : t*C+hi]
			if b.d.on {
				xd := w.rowBuf(W)
				for i, v := range x {
					xd[i] = b.d.at(v, t, lo+i, C)
				}
				x = xd
			}
			g := b.g[t*R : (t+1)*R]
			for k, gk := range g {
				if gk == 0 {
					continue
				}
				ac := acc[k*W : (k+1)*W]
				for i, v := range x {
					ac[i] += gk * v
				}
			}
		}
		for k := 0; k < R; k++ {
			da := md.da[k*C+lo : k*C+hi]
			ac := acc[k*W : (k+1)*W]
			for i, v := range ac {
				da[i] += b.s * v
			}
		}
	case phaseDIn:
		hi := min(T, lo+b.width)
		for t := lo; t < hi; t++ {
			g := b.g[t*R : (t+1)*R]
			row := w.rowBuf(C)
			clear(row)
			for k, gk := range g {
				if gk == 0 {
					continue
				}
				ak := md.a[k*C : (k+1)*C]
				for c, v := range ak {
					row[c] += gk * v
				}
			}
			dx := b.din[t*C : (t+1)*C]
			for c, v := range row {
				dx[c] += b.s * b.d.at(v, t, c, C)
			}
		}
	}
}
