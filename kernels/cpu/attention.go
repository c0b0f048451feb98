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
	expAffine(sc, sc, 1, -mx)
	var sum float64
	for _, e := range sc {
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

type attentionBackTask struct {
	dq, dk, dv, dout, q, k, v []float32
	segStart                  []int
	lse, dsum                 []float32 // [T*NH]
	T, NH, KVH, HD, window    int
	scale                     float32
	phase                     int // 0: dq per query row, 1: dk, dv per key row
}

// PackedAttentionBackward differentiates PackedAttentionForward. With
// S[t,s] = q[t]·k[s]/sqrt(HD) over the keys s query t sees, P = softmax_s(S),
// out[t] = sum_s P[t,s] v[s] (per head h, kv head g = h/(NH/KVH)):
//
//	dP[t,s] = dout[t]·v[s];  D[t] = sum_s P[t,s] dP[t,s];  dS = P*(dP - D)
//	dq[t] = sum_s dS[t,s] k[s] / sqrt(HD)
//	dk[s] = sum_{h in g, t} dS[t,s] q[t] / sqrt(HD);  dv[s] = sum_{h in g, t} P[t,s] dout[t]
//
// Memory: only q, k, v are saved by the caller. Pass 0 (one chunk per query
// row and head) recomputes the scores, keeps each row's log-sum-exp and D
// ([T*NH] scratch) and writes dq; pass 1 (one chunk per key row and kv head)
// recomputes P[t,s] = exp(S[t,s] - lse[t]) for the queries that see s and
// writes dk, dv. Each grad row is owned by one chunk (no atomics, any worker
// count gives the same bits); scores are computed twice, as in
// flash-attention's backward. dq, dk, dv are overwritten.
func (b *Backend) PackedAttentionBackward(dq, dk, dv, dout, q, k, v []float32, segStart []int, T, NH, KVH, HD, window int) {
	if KVH <= 0 || NH%KVH != 0 {
		panic("cpu: attention_back: NH must be a multiple of KVH")
	}
	need("attention_back", "segStart", len(segStart), T)
	for t, s := range segStart[:T] {
		if s < 0 || s > t {
			panic(fmt.Sprintf("cpu: attention_back: segStart[%d] = %d outside [0,%d]", t, s, t))
		}
	}
	need("attention_back", "dq", len(dq), T*NH*HD)
	need("attention_back", "dout", len(dout), T*NH*HD)
	need("attention_back", "q", len(q), T*NH*HD)
	for _, x := range []struct {
		name string
		s    []float32
	}{{"dk", dk}, {"dv", dv}, {"k", k}, {"v", v}} {
		need("attention_back", x.name, len(x.s), T*KVH*HD)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	a := &b.attB
	*a = attentionBackTask{dq: dq, dk: dk, dv: dv, dout: dout, q: q, k: k, v: v, segStart: segStart[:T],
		lse: grow(&b.lse, T*NH), dsum: grow(&b.dsum, T*NH), T: T, NH: NH, KVH: KVH, HD: HD, window: window,
		scale: float32(1 / math.Sqrt(float64(HD)))}
	b.pool.do(a, T*NH)
	a.phase = 1
	b.pool.do(a, T*KVH)
	*a = attentionBackTask{}
}

func (a *attentionBackTask) run(wk *worker, chunk int) {
	if a.phase == 1 {
		a.runKV(wk, chunk)
		return
	}
	t, h := chunk/a.NH, chunk%a.NH
	HD, kvd := a.HD, a.KVH*a.HD
	g := h / (a.NH / a.KVH)
	lo := a.segStart[t]
	if a.window > 0 {
		lo = max(lo, t-a.window+1)
	}
	q := a.q[(t*a.NH+h)*HD : (t*a.NH+h+1)*HD]
	do := a.dout[(t*a.NH+h)*HD : (t*a.NH+h+1)*HD]
	n := t + 1 - lo
	sc := wk.scoreBuf(n)
	dp := grow(&wk.scores2, n)
	k, v := a.k, a.v
	i := 0
	for ; i+4 <= n; i += 4 {
		s := (lo+i)*kvd + g*HD
		sc[i], sc[i+1], sc[i+2], sc[i+3] = mmDot1x4(q, k[s:s+HD], k[s+kvd:s+kvd+HD], k[s+2*kvd:s+2*kvd+HD], k[s+3*kvd:s+3*kvd+HD])
		dp[i], dp[i+1], dp[i+2], dp[i+3] = mmDot1x4(do, v[s:s+HD], v[s+kvd:s+kvd+HD], v[s+2*kvd:s+2*kvd+HD], v[s+3*kvd:s+3*kvd+HD])
	}
	for ; i < n; i++ {
		s := (lo+i)*kvd + g*HD
		sc[i] = mmDot1(q, k[s:s+HD])
		dp[i] = mmDot1(do, v[s:s+HD])
	}
	mx := float32(math.Inf(-1))
	for i := range sc {
		sc[i] *= a.scale
		mx = max(mx, sc[i])
	}
	_, sum := maxExpSum(sc)
	lse := mx + float32(math.Log(sum))
	expAffine(sc, sc, 1, -lse)
	var dsum float64
	for i, p := range sc {
		dsum += float64(p) * float64(dp[i])
	}
	D := float32(dsum)
	a.lse[t*a.NH+h], a.dsum[t*a.NH+h] = lse, D
	dq := a.dq[(t*a.NH+h)*HD : (t*a.NH+h+1)*HD]
	clear(dq)
	for i, p := range sc {
		s := (lo+i)*kvd + g*HD
		axpy(dq, k[s:s+HD], p*(dp[i]-D)*a.scale)
	}
}

// runKV computes dk, dv of key row s for kv head g: the queries that see s
// are t = s, s+1, ... in the same segment and (with a window) t-s < window.
func (a *attentionBackTask) runKV(wk *worker, chunk int) {
	s, g := chunk/a.KVH, chunk%a.KVH
	HD, NH, kvd := a.HD, a.NH, a.KVH*a.HD
	grp := NH / a.KVH
	hi := s + 1
	for hi < a.T && a.segStart[hi] == a.segStart[s] && (a.window <= 0 || hi-s < a.window) {
		hi++
	}
	acc := grow(&wk.acc, 2*HD)
	dk, dv := acc[:HD], acc[HD:]
	clear(acc)
	ks := a.k[s*kvd+g*HD : s*kvd+(g+1)*HD]
	vs := a.v[s*kvd+g*HD : s*kvd+(g+1)*HD]
	q, do := a.q, a.dout
	row := func(t, h int) []float32 { return q[(t*NH+h)*HD : (t*NH+h+1)*HD] }
	drow := func(t, h int) []float32 { return do[(t*NH+h)*HD : (t*NH+h+1)*HD] }
	var sc, dp [4]float32
	var arg, p [8]float32 // exponentials four at a time through the 8-lane kernel
	for h := g * grp; h < (g+1)*grp; h++ {
		t := s
		for ; t < hi; t += 4 {
			m := min(4, hi-t)
			if m == 4 {
				sc[0], sc[1], sc[2], sc[3] = mmDot1x4(ks, row(t, h), row(t+1, h), row(t+2, h), row(t+3, h))
				dp[0], dp[1], dp[2], dp[3] = mmDot1x4(vs, drow(t, h), drow(t+1, h), drow(t+2, h), drow(t+3, h))
			} else {
				for j := 0; j < m; j++ {
					sc[j] = mmDot1(row(t+j, h), ks)
					dp[j] = mmDot1(drow(t+j, h), vs)
				}
			}
			for j := 0; j < m; j++ {
				arg[j] = sc[j]*a.scale - a.lse[(t+j)*NH+h]
			}
			expAffine(p[:], arg[:], 1, 0)
			for j := 0; j < m; j++ {
				r := (t+j)*NH + h
				axpy(dk, row(t+j, h), p[j]*(dp[j]-a.dsum[r])*a.scale)
				axpy(dv, drow(t+j, h), p[j])
			}
		}
	}
	copy(a.dk[s*kvd+g*HD:s*kvd+(g+1)*HD], dk)
	copy(a.dv[s*kvd+g*HD:s*kvd+(g+1)*HD], dv)
}
