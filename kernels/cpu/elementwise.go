package cpu

const (
	ewAdd = iota
	ewSwiGLU
)

// elementwiseChunk is fixed (not derived from the worker count).
const elementwiseChunk = 1 << 14

type elementwiseTask struct {
	kind       int
	out, a, bb []float32
}

// AddForward: out = a + b.
func (b *Backend) AddForward(out, a, bb []float32) {
	b.elementwise(ewAdd, out, a, bb)
}

// SwiGLUForward: out = silu(gate)*up, silu(x) = x/(1+exp(-x)) (torch F.silu).
func (b *Backend) SwiGLUForward(out, gate, up []float32) {
	b.elementwise(ewSwiGLU, out, gate, up)
}

func (b *Backend) elementwise(kind int, out, a, bb []float32) {
	n := len(out)
	need("elementwise", "a", len(a), n)
	need("elementwise", "b", len(bb), n)
	b.mu.Lock()
	defer b.mu.Unlock()
	e := &b.ew
	*e = elementwiseTask{kind: kind, out: out, a: a[:n], bb: bb[:n]}
	b.pool.do(e, (n+elementwiseChunk-1)/elementwiseChunk)
	*e = elementwiseTask{}
}

func (e *elementwiseTask) run(_ *worker, chunk int) {
	lo := chunk * elementwiseChunk
	hi := min(lo+elementwiseChunk, len(e.out))
	out := e.out[lo:hi]
	a, bb := e.a[lo:hi], e.bb[lo:hi]
	a, bb = a[:len(out)], bb[:len(out)]
	switch e.kind {
	case ewAdd:
		for i := range out {
			out[i] = a[i] + bb[i]
		}
	case ewSwiGLU:
		var ex [256]float32
		for lo := 0; lo < len(out); lo += len(ex) {
			n := min(len(ex), len(out)-lo)
			expAffine(ex[:n], a[lo:lo+n], -1, 0)
			for i, x := range a[lo : lo+n] {
				out[lo+i] = x / (1 + ex[i]) * bb[lo+i]
			}
		}
	}
}

type swigluBackTask struct {
	dgate, dup, dout, gate, up []float32
}

// SwiGLUBackward differentiates out = silu(g)*u with silu(g) = g*σ(g):
//
//	dgate = dout * u * σ(g)*(1 + g*(1-σ(g)))
//	dup   = dout * silu(g)
//
// Both overwrite; either may alias dout (each element is read before written).
func (b *Backend) SwiGLUBackward(dgate, dup, dout, gate, up []float32) {
	n := len(dout)
	need("swiglu_back", "dgate", len(dgate), n)
	need("swiglu_back", "dup", len(dup), n)
	need("swiglu_back", "gate", len(gate), n)
	need("swiglu_back", "up", len(up), n)
	b.mu.Lock()
	defer b.mu.Unlock()
	e := &b.swB
	*e = swigluBackTask{dgate: dgate[:n], dup: dup[:n], dout: dout, gate: gate[:n], up: up[:n]}
	b.pool.do(e, (n+elementwiseChunk-1)/elementwiseChunk)
	*e = swigluBackTask{}
}

func (e *swigluBackTask) run(_ *worker, chunk int) {
	lo := chunk * elementwiseChunk
	hi := min(lo+elementwiseChunk, len(e.dout))
	var ex [256]float32
	for c := lo; c < hi; c += len(ex) {
		n := min(len(ex), hi-c)
		expAffine(ex[:n], e.gate[c:c+n], -1, 0)
		for i := c; i < c+n; i++ {
			g, u, d := e.gate[i], e.up[i], e.dout[i]
			sg := 1 / (1 + ex[i-c])
			e.dgate[i] = d * u * sg * (1 + g*(1-sg))
			e.dup[i] = d * g * sg
		}
	}
}
