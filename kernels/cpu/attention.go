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
	b.pool.do(a, (T+attnMB-1)/attnMB*NH)
	*a = attentionTask{}
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
// Memory: only q, k, v are saved by the caller. Pass 0 (one chunk per block
// of attnMB query rows and head) recomputes the scores, keeps each row's
// log-sum-exp and D ([T*NH] scratch) and writes dq; pass 1 (one chunk per
// block of attnMB key rows and kv head) recomputes P[t,s] = exp(S[t,s] -
// lse[t]) for the queries that see s and writes dk, dv (attention_gemm.go). Each grad row is owned by one chunk (no atomics, any worker
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
	b.pool.do(a, (T+attnMB-1)/attnMB*NH)
	a.phase = 1
	b.pool.do(a, (T+attnMB-1)/attnMB*KVH)
	*a = attentionBackTask{}
}
