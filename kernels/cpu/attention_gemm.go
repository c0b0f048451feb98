package cpu

import (
	"math"
	"unsafe"

	"github.com/tunellm/tune/kernels"
)

// Attention through the packed gemm. A chunk takes a block of attnMB query
// rows (forward, backward pass 0) or key rows (backward pass 1) of one head
// and computes its whole score block S = Q·Kᵀ with one gemm, the softmax row
// by row, then P·V (or dS·K, Pᵀ·dO, dSᵀ·Q) with another, instead of one dot
// product per (query, key) pair: the per-pair horizontal sums and calls made
// attention a fifth of a LoRA step for 3% of its FLOPs.
//
// Exactness. A score is gemm's single fma chain over the head dimension,
// whatever the block, T or worker count (gemm.go), and Sᵀ = K·Qᵀ has the
// same products in the same order, so pass 1 recomputes pass 0's
// probabilities bit for bit. Keys a row may not see (another segment, the
// window, the future) are in its block's range with probability 0: a
// chain over [klo, p] with zeros before lo and after p equals the chain
// over [lo, p], so every row is the same whether it is computed alone
// (AttentionForward of one sequence), packed with others, or one query
// against a KV cache; this needs the masked keys' values finite, as
// activations are.

// attnMB is the rows of a chunk's block (queries, or keys in pass 1).
const attnMB = 64

// f32Weight views a float32 matrix whose rows are cols apart as a
// kernels.Weight, for gemm's bWeightT (B[k,n] = W[n,k]).
func f32Weight(f []float32, rows, cols int) kernels.Weight {
	if len(f) == 0 {
		return kernels.Weight{DType: kernels.F32, Rows: rows, Cols: cols}
	}
	return kernels.Weight{DType: kernels.F32, Rows: rows, Cols: cols, Data: unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))}
}

// rowRange is the keys [lo, p] query t (position p = pos0+t) attends to.
func (a *attentionTask) rowRange(t int) (lo, p int) {
	p = a.pos0 + t
	return firstKey(a.segStart, a.window, t, p), p
}

// firstKey is the first key the query of row t at position p sees: its
// segment's start (segStart nil: 0), later with a window.
func firstKey(segStart []int, window, t, p int) int {
	lo := 0
	if segStart != nil {
		lo = segStart[t]
	}
	if window > 0 {
		lo = max(lo, p-window+1)
	}
	return lo
}

func (a *attentionTask) run(wk *worker, chunk int) {
	qb, h := chunk/a.NH, chunk%a.NH
	HD, qd, kvd := a.HD, a.NH*a.HD, a.KVH*a.HD
	g := h / (a.NH / a.KVH)
	t0 := qb * attnMB
	t1 := min(t0+attnMB, a.T)
	mb := t1 - t0
	klo := a.pos0 + t1
	for t := t0; t < t1; t++ {
		lo, _ := a.rowRange(t)
		klo = min(klo, lo)
	}
	nk := a.pos0 + t1 - klo
	sc := wk.scoreBuf(mb * nk)
	kb := gemmB{kind: bWeightT, w: f32Weight(a.k[klo*kvd+g*HD:], nk, kvd)}
	gemm(wk, sc, nk, a.q[t0*qd+h*HD:], qd, mb, HD, &kb, 0, nk, false)
	for i := 0; i < mb; i++ {
		lo, p := a.rowRange(t0 + i)
		row := sc[i*nk : (i+1)*nk]
		r := row[lo-klo : p+1-klo]
		mx := float32(math.Inf(-1))
		for j := range r {
			r[j] *= a.scale
			mx = max(mx, r[j])
		}
		expAffine(r, r, 1, -mx)
		var sum float64
		for _, e := range r {
			sum += float64(e)
		}
		inv := float32(1 / sum)
		for j := range r {
			r[j] *= inv
		}
		clear(row[:lo-klo])
		clear(row[p+1-klo:])
	}
	vb := gemmB{kind: bF32, f: a.v[klo*kvd+g*HD:], ldb: kvd}
	gemm(wk, a.out[t0*qd+h*HD:], qd, sc, nk, mb, nk, &vb, 0, HD, false)
}

func (a *attentionBackTask) run(wk *worker, chunk int) {
	if a.phase == 1 {
		a.runKV(wk, chunk)
		return
	}
	qb, h := chunk/a.NH, chunk%a.NH
	HD, qd, kvd := a.HD, a.NH*a.HD, a.KVH*a.HD
	g := h / (a.NH / a.KVH)
	t0 := qb * attnMB
	t1 := min(t0+attnMB, a.T)
	mb := t1 - t0
	klo := t1
	for t := t0; t < t1; t++ {
		klo = min(klo, a.lo(t))
	}
	nk := t1 - klo
	sc := wk.scoreBuf(mb * nk)
	dp := grow(&wk.scores2, mb*nk)
	kw := gemmB{kind: bWeightT, w: f32Weight(a.k[klo*kvd+g*HD:], nk, kvd)}
	gemm(wk, sc, nk, a.q[t0*qd+h*HD:], qd, mb, HD, &kw, 0, nk, false)
	vw := gemmB{kind: bWeightT, w: f32Weight(a.v[klo*kvd+g*HD:], nk, kvd)}
	gemm(wk, dp, nk, a.dout[t0*qd+h*HD:], qd, mb, HD, &vw, 0, nk, false)
	for i := 0; i < mb; i++ {
		t := t0 + i
		lo := a.lo(t)
		row, drow := sc[i*nk:(i+1)*nk], dp[i*nk:(i+1)*nk]
		r, d := row[lo-klo:t+1-klo], drow[lo-klo:t+1-klo]
		mx := float32(math.Inf(-1))
		for j := range r {
			r[j] *= a.scale
			mx = max(mx, r[j])
		}
		sum := expSum(r, mx)
		lse := mx + float32(math.Log(sum))
		expAffine(r, r, 1, -lse)
		var dsum float64
		for j, p := range r {
			dsum += float64(p) * float64(d[j])
		}
		D := float32(dsum)
		a.lse[t*a.NH+h], a.dsum[t*a.NH+h] = lse, D
		for j, p := range r {
			r[j] = p * (d[j] - D) * a.scale // dS
		}
		clear(row[:lo-klo])
		clear(row[t+1-klo:])
	}
	kb := gemmB{kind: bF32, f: a.k[klo*kvd+g*HD:], ldb: kvd}
	gemm(wk, a.dq[t0*qd+h*HD:], qd, sc, nk, mb, nk, &kb, 0, HD, false)
}

// lo is the first key query t sees.
func (a *attentionBackTask) lo(t int) int { return firstKey(a.segStart, a.window, t, t) }

// runKV computes dk, dv of the key rows [s0, s1) for kv head g: the queries
// that see key s are t in [s, hi(s)), hi(s) the end of s's segment or
// s+window.
func (a *attentionBackTask) runKV(wk *worker, chunk int) {
	kb, g := chunk/a.KVH, chunk%a.KVH
	HD, NH, qd, kvd := a.HD, a.NH, a.NH*a.HD, a.KVH*a.HD
	grp := NH / a.KVH
	s0 := kb * attnMB
	s1 := min(s0+attnMB, a.T)
	nb := s1 - s0
	var hi [attnMB]int // segment ends first, then capped by the window
	end := s1
	for end < a.T && a.segStart[end] == a.segStart[s1-1] {
		end++
	}
	for s := s1 - 1; s >= s0; s-- {
		if s+1 < s1 && a.segStart[s+1] != a.segStart[s] {
			end = s + 1
		}
		hi[s-s0] = end
		if a.window > 0 {
			hi[s-s0] = min(end, s+a.window)
		}
	}
	tmax := 0
	for i := 0; i < nb; i++ {
		tmax = max(tmax, hi[i])
	}
	nq := tmax - s0
	pt := wk.scoreBuf(nb * nq)
	dst := grow(&wk.scores2, nb*nq)
	for h := g * grp; h < (g+1)*grp; h++ {
		qw := gemmB{kind: bWeightT, w: f32Weight(a.q[s0*qd+h*HD:], nq, qd)}
		gemm(wk, pt, nq, a.k[s0*kvd+g*HD:], kvd, nb, HD, &qw, 0, nq, false)
		dw := gemmB{kind: bWeightT, w: f32Weight(a.dout[s0*qd+h*HD:], nq, qd)}
		gemm(wk, dst, nq, a.v[s0*kvd+g*HD:], kvd, nb, HD, &dw, 0, nq, false)
		for i := 0; i < nb; i++ {
			s := s0 + i
			row, drow := pt[i*nq:(i+1)*nq], dst[i*nq:(i+1)*nq]
			r, d := row[s-s0:hi[i]-s0], drow[s-s0:hi[i]-s0]
			for j := range r {
				r[j] = float32(r[j]*a.scale) - a.lse[(s+j)*NH+h]
			}
			expAffine(r, r, 1, 0) // P
			for j, p := range r {
				d[j] = p * (d[j] - a.dsum[(s+j)*NH+h]) * a.scale // dS
			}
			clear(row[:s-s0])
			clear(row[hi[i]-s0:])
			clear(drow[:s-s0])
			clear(drow[hi[i]-s0:])
		}
		acc := h > g*grp
		ob := gemmB{kind: bF32, f: a.dout[s0*qd+h*HD:], ldb: qd}
		gemm(wk, a.dv[s0*kvd+g*HD:], kvd, pt, nq, nb, nq, &ob, 0, HD, acc)
		qb := gemmB{kind: bF32, f: a.q[s0*qd+h*HD:], ldb: qd}
		gemm(wk, a.dk[s0*kvd+g*HD:], kvd, dst, nq, nb, nq, &qb, 0, HD, acc)
	}
}
