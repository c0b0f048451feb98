package cpu

import (
	"fmt"
	"math"
)

type attentionTask struct {
	out, q, k, v                 []float32
	segStart                     []int // [T] or nil: the lowest key each query may see
	pos0, T, NH, KVH, HD, window int
	scale                        float32
}

// AttentionForward: for each new query row t (position p = pos0+t) and head h,
// with g = h/(NH/KVH) and keys s in [lo, p] (lo = max(0, p-window+1) when
// window > 0, else 0):
//
//	a[s] = softmax_s( q[t,h,:]·k[s,g,:] / sqrt(HD) )
//	out[t,h,:] = sum_s a[s] * v[s,g,:]
//
// The causal limit s <= p is what makes a KV-cache step equal a full pass.
func (b *Backend) AttentionForward(out, q, k, v []float32, pos0, T, NH, KVH, HD, window int) {
	b.attention(out, q, k, v, nil, pos0, T, NH, KVH, HD, window)
}

// PackedAttentionForward is AttentionForward over T rows that hold several
// sequences back to back (pos0 = 0, keys are the T rows themselves): query t
// sees keys s in [max(segStart[t], t-window+1), t]. The score loop starts at
// that lower bound exactly as AttentionForward starts at 0 for a sequence run
// alone, so each packed row equals its stand-alone row bit for bit.
func (b *Backend) PackedAttentionForward(out, q, k, v []float32, segStart []int, T, NH, KVH, HD, window int) {
	need("attention", "segStart", len(segStart), T)
	for t, s := range segStart[:T] {
		if s < 0 || s > t {
			panic(fmt.Sprintf("cpu: attention: segStart[%d] = %d outside [0,%d]", t, s, t))
		}
	}
	b.attention(out, q, k, v, segStart[:T], 0, T, NH, KVH, HD, window)
}

func (b *Backend) attention(out, q, k, v []float32, segStart []int, pos0, T, NH, KVH, HD, window int) {
	if KVH <= 0 || NH%KVH != 0 {
		panic("cpu: attention: NH must be a multiple of KVH")
	}
	S := pos0 + T
	need("attention", "out", len(out), T*NH*HD)
	need("attention", "q", len(q), T*NH*HD)
	need("attention", "k", len(k), S*KVH*HD)
	need("attention", "v", len(v), S*KVH*HD)
	b.mu.Lock()
	defer b.mu.Unlock()
	a := &b.att
	*a = attentionTask{out: out, q: q, k: k, v: v, segStart: segStart, pos0: pos0, T: T, NH: NH, KVH: KVH, HD: HD, window: window,
		scale: float32(1 / math.Sqrt(float64(HD)))}
	b.pool.do(a, T*NH)
	*a = attentionTask{}
}

func (a *attentionTask) run(wk *worker, chunk int) {
	t, h := chunk/a.NH, chunk%a.NH
	HD, kvd := a.HD, a.KVH*a.HD
	g := h / (a.NH / a.KVH)
	p := a.pos0 + t
	lo := 0
	if a.segStart != nil {
		lo = a.segStart[t]
	}
	if a.window > 0 {
		lo = max(lo, p-a.window+1)
	}
	q := a.q[(t*a.NH+h)*HD : (t*a.NH+h+1)*HD]
	sc := wk.scoreBuf(p + 1 - lo)
	k := a.k
	i := 0
	// Scores four keys at a time; every score is the same per-output sum
	// whichever kernel computes it, so a cached step equals a full pass.
	for ; i+4 <= len(sc); i += 4 {
		s := (lo+i)*kvd + g*HD
		sc[i], sc[i+1], sc[i+2], sc[i+3] = mmDot1x4(q, k[s:s+HD], k[s+kvd:s+kvd+HD], k[s+2*kvd:s+2*kvd+HD], k[s+3*kvd:s+3*kvd+HD])
	}
	for ; i < len(sc); i++ {
		s := (lo+i)*kvd + g*HD
		sc[i] = mmDot1(q, k[s:s+HD])
	}
	mx := float32(math.Inf(-1))
	for i := range sc {
		sc[i] *= a.scale
		mx = max(mx, sc[i])
	}
	var sum float64
	for i, d := range sc {
		e := float32(math.Exp(float64(d - mx)))
		sc[i] = e
		sum += float64(e)
	}
	inv := float32(1 / sum)
	o := a.out[(t*a.NH+h)*HD : (t*a.NH+h+1)*HD]
	clear(o)
	for i, e := range sc {
		s := (lo+i)*kvd + g*HD
		axpy(o, a.v[s:s+HD], e*inv)
	}
}
