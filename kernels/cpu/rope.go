package cpu

type ropeTask struct {
	x, cos, sin []float32
	T, NH, HD   int
	back        bool // rotate by -angle (RoPEBackward)
}

// RoPEForward rotates every head of x in place, rotate-half layout (HF
// rotate_half): with h = HD/2, a = x[i], b = x[i+h]:
// x[i] = a*cos[t,i] - b*sin[t,i]; x[i+h] = b*cos[t,i] + a*sin[t,i].
// (HF's cos/sin tables repeat the h angles twice; we store them once.)
func (b *Backend) RoPEForward(x, cos, sin []float32, T, NH, HD int) {
	need("rope", "x", len(x), T*NH*HD)
	need("rope", "cos", len(cos), T*HD/2)
	need("rope", "sin", len(sin), T*HD/2)
	if HD%2 != 0 {
		panic("cpu: rope: odd head dim")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r := &b.rope
	*r = ropeTask{x: x, cos: cos, sin: sin, T: T, NH: NH, HD: HD}
	b.pool.do(r, T)
	*r = ropeTask{}
}

// RoPEBackward differentiates RoPEForward's rotation, which is orthogonal, so
// the grad rotates back by the same angle (the transpose), in place:
//
//	forward: x[i] = a*cos - b*sin;  x[i+h] = b*cos + a*sin
//	backward (a=dx[i], b=dx[i+h]): dx[i] = a*cos + b*sin;  dx[i+h] = b*cos - a*sin
func (b *Backend) RoPEBackward(dx, cos, sin []float32, T, NH, HD int) {
	need("rope_back", "dx", len(dx), T*NH*HD)
	need("rope_back", "cos", len(cos), T*HD/2)
	need("rope_back", "sin", len(sin), T*HD/2)
	if HD%2 != 0 {
		panic("cpu: rope_back: odd head dim")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r := &b.rope
	*r = ropeTask{x: dx, cos: cos, sin: sin, T: T, NH: NH, HD: HD, back: true}
	b.pool.do(r, T)
	*r = ropeTask{}
}

func (r *ropeTask) run(_ *worker, t int) {
	h := r.HD / 2
	cos := r.cos[t*h : t*h+h]
	sin := r.sin[t*h : t*h+h]
	if r.back {
		for hd := 0; hd < r.NH; hd++ {
			x := r.x[(t*r.NH+hd)*r.HD : (t*r.NH+hd+1)*r.HD]
			lo, hi := x[:h], x[h:2*h]
			sin := sin[:len(lo)]
			cos := cos[:len(lo)]
			hi = hi[:len(lo)]
			for i, a := range lo {
				bb := hi[i]
				lo[i] = a*cos[i] + bb*sin[i]
				hi[i] = bb*cos[i] - a*sin[i]
			}
		}
		return
	}
	for hd := 0; hd < r.NH; hd++ {
		x := r.x[(t*r.NH+hd)*r.HD : (t*r.NH+hd+1)*r.HD]
		lo, hi := x[:h], x[h:2*h]
		sin := sin[:len(lo)]
		cos := cos[:len(lo)]
		hi = hi[:len(lo)]
		for i, a := range lo {
			bb := hi[i]
			lo[i] = a*cos[i] - bb*sin[i]
			hi[i] = bb*cos[i] + a*sin[i]
		}
	}
}
