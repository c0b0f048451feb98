package eval

import (
	"fmt"
	"math"
	"slices"

	"github.com/tunellm/tune/model"
)

// KLDOptions choose which tokens KLDivergence scores.
//
// By default it follows llama.cpp's `llama-perplexity --kl-divergence`
// (tools/perplexity/perplexity.cpp, kl_divergence) so that numbers are
// comparable with what llama.cpp users quote: the stream is cut into
// len/ctx FULL windows of ctx tokens (a trailing partial window is dropped),
// the first token of each window is replaced by BOS when BOS >= 0 (llama.cpp
// does so when the vocabulary adds one), and only the second half of each
// window is scored: logits of rows first = ctx/2 .. ctx-2, predicting tokens
// first+1 .. ctx-1 (ctx-1-ctx/2 tokens a window).
//
// AllTokens scores as `tune eval ppl` does instead: every window of Windows
// (the last partial one too), every token but the first, no BOS replacement.
//
// One difference from llama.cpp stays: it stores the base log-probabilities
// as 16-bit values clipped at max-16 nats and skips terms with log p_base <
// -16 in the KL sum; we keep them exact (float64 sums over all V), which can
// only differ by those dropped tail terms.
type KLDOptions struct {
	Ctx       int
	AllTokens bool
	BOS       int // token put first in each window in llama.cpp mode; -1: none
}

// Quantiles holds the percentiles llama.cpp prints, in its order. llama.cpp
// interpolates linearly between sorted values at fraction*(n-1) and takes
// the median as the mean of the two middle values when n is even.
type Quantiles struct {
	Max    float64 `json:"max"`
	P999   float64 `json:"p99_9"`
	P99    float64 `json:"p99"`
	P95    float64 `json:"p95"`
	P90    float64 `json:"p90"`
	P75    float64 `json:"p75"`
	Median float64 `json:"median"`
	P25    float64 `json:"p25"`
	P10    float64 `json:"p10"`
	P5     float64 `json:"p5"`
	P1     float64 `json:"p1"`
	P01    float64 `json:"p0_1"`
	Min    float64 `json:"min"`
}

// KLDResult summarises KL(P_base || P_model) over the scored tokens, with the
// uncertainties llama.cpp prints (standard error of the mean: sqrt(var/(n-1)),
// zero when n <= 10). Probabilities are fractions, not percent.
type KLDResult struct {
	Ctx     int    `json:"ctx"`
	Windows int    `json:"windows"`
	Tokens  int    `json:"tokens"` // tokens scored
	Scored  string `json:"scored"` // "second-half" (llama.cpp) or "all"

	PPLModel      float64   `json:"ppl_model"`
	PPLModelUnc   float64   `json:"ppl_model_unc"`
	PPLBase       float64   `json:"ppl_base"`
	PPLBaseUnc    float64   `json:"ppl_base_unc"`
	CorLnPPL      float64   `json:"cor_ln_ppl"`
	LnPPLRatio    float64   `json:"ln_ppl_ratio"` // mean ln(PPL(model)/PPL(base))
	LnPPLRatioUnc float64   `json:"ln_ppl_ratio_unc"`
	PPLRatio      float64   `json:"ppl_ratio"`
	PPLRatioUnc   float64   `json:"ppl_ratio_unc"`
	PPLDiff       float64   `json:"ppl_diff"`
	PPLDiffUnc    float64   `json:"ppl_diff_unc"`
	KLDMean       float64   `json:"kld_mean"`
	KLDUnc        float64   `json:"kld_unc"`
	KLD           Quantiles `json:"kld"`
	DeltaPMean    float64   `json:"delta_p_mean"` // mean of p_model(token) - p_base(token)
	DeltaPUnc     float64   `json:"delta_p_unc"`
	DeltaP        Quantiles `json:"delta_p"`
	DeltaPRMS     float64   `json:"delta_p_rms"`
	DeltaPRMSUnc  float64   `json:"delta_p_rms_unc"`
	SameTop       float64   `json:"same_top"` // fraction of tokens whose argmax agrees
	SameTopUnc    float64   `json:"same_top_unc"`
}

// KLDAcc accumulates per-token statistics; Add one row at a time, then Result.
type KLDAcc struct {
	sumNLL, sumNLL2, sumNLLBase, sumNLLBase2, sumNLLNLLBase float64
	sumKLD, sumKLD2, sumDP, sumDP2, sumDP4                  float64
	sameTop, n                                              int
	klds, dps                                               []float64
	lpb, lpq                                                []float64 // [V] scratch
	// The last Add's token: NLLs and top-1 agreement.
	lastNLL, lastNLLBase float64
	lastSame             bool
}

// logSoftmax writes log p into dst (float64) and returns the argmax (lowest
// id on ties).
func logSoftmax(dst []float64, logits []float32) int {
	imax := 0
	for i, v := range logits {
		if v > logits[imax] {
			imax = i
		}
	}
	mx := float64(logits[imax])
	var s float64
	for _, v := range logits {
		s += math.Exp(float64(v) - mx)
	}
	lse := mx + math.Log(s)
	for i, v := range logits {
		dst[i] = float64(v) - lse
	}
	return imax
}

// Add scores one position: base and q are the two models' logits [V] for
// the same context, target the token that follows. It returns KL(P_base||P_q)
// = sum_v p_base(v) (log p_base(v) - log p_q(v)).
func (a *KLDAcc) Add(base, q []float32, target int) float64 {
	V := len(base)
	if cap(a.lpb) < V {
		a.lpb, a.lpq = make([]float64, V), make([]float64, V)
	}
	lpb, lpq := a.lpb[:V], a.lpq[:V]
	ib := logSoftmax(lpb, base)
	iq := logSoftmax(lpq, q[:V])
	var kl float64
	for v := range lpb {
		if lpb[v] > math.Inf(-1) {
			kl += math.Exp(lpb[v]) * (lpb[v] - lpq[v])
		}
	}
	a.lastNLL, a.lastNLLBase, a.lastSame = -lpq[target], -lpb[target], ib == iq
	a.addStats(a.lastNLL, a.lastNLLBase, kl, a.lastSame)
	return kl
}

// addStats accumulates one scored token from its two NLLs, its KL and
// whether the argmaxes agree (Add's numbers, or a rank's gathered ones).
func (a *KLDAcc) addStats(nll, nllBase, kl float64, sameTop bool) {
	a.sumNLL += nll
	a.sumNLL2 += nll * nll
	a.sumNLLBase += nllBase
	a.sumNLLBase2 += nllBase * nllBase
	a.sumNLLNLLBase += nll * nllBase
	a.sumKLD += kl
	a.sumKLD2 += kl * kl
	dp := math.Exp(-nll) - math.Exp(-nllBase)
	a.sumDP += dp
	a.sumDP2 += dp * dp
	a.sumDP4 += dp * dp * dp * dp
	if sameTop {
		a.sameTop++
	}
	a.n++
	a.klds = append(a.klds, kl)
	a.dps = append(a.dps, dp)
}

// meanUnc is llama.cpp's mean_and_uncertainty.
func meanUnc(sum, sum2 float64, n int) (float64, float64) {
	f := sum / float64(n)
	df := sum2/float64(n) - f*f
	if df > 0 && n > 10 {
		return f, math.Sqrt(df / float64(n-1))
	}
	return f, 0
}

// covariance is llama.cpp's covariance of the two mean NLLs.
func covariance(sa, sb, sab float64, n int) float64 {
	if n < 10 {
		return 0
	}
	c := float64(n)
	return (sab/c - (sa/c)*(sb/c)) / (c - 1)
}

func quantiles(v []float64) Quantiles {
	s := slices.Clone(v)
	slices.Sort(s)
	pct := func(f float64) float64 {
		p := f * float64(len(s)-1)
		i := int(p)
		p -= float64(i)
		return (1-p)*s[i] + p*s[min(i+1, len(s)-1)]
	}
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = 0.5 * (s[len(s)/2] + s[len(s)/2-1])
	}
	return Quantiles{Max: s[len(s)-1], P999: pct(0.999), P99: pct(0.99), P95: pct(0.95), P90: pct(0.90),
		P75: pct(0.75), Median: med, P25: pct(0.25), P10: pct(0.10), P5: pct(0.05), P1: pct(0.01),
		P01: pct(0.001), Min: s[0]}
}

// Result computes the summary; it needs at least one Add.
func (a *KLDAcc) Result() KLDResult {
	var r KLDResult
	n := a.n
	r.Tokens = n
	if n == 0 {
		return r
	}
	lq, lqu := meanUnc(a.sumNLL, a.sumNLL2, n)
	lb, lbu := meanUnc(a.sumNLLBase, a.sumNLLBase2, n)
	r.PPLModel, r.PPLModelUnc = math.Exp(lq), math.Exp(lq)*lqu
	r.PPLBase, r.PPLBaseUnc = math.Exp(lb), math.Exp(lb)*lbu
	cov := covariance(a.sumNLL, a.sumNLLBase, a.sumNLLNLLBase, n)
	if lqu > 0 && lbu > 0 {
		r.CorLnPPL = cov / (lqu * lbu)
	}
	r.LnPPLRatio = lq - lb
	r.LnPPLRatioUnc = math.Sqrt(max(0, lqu*lqu+lbu*lbu-2*cov))
	r.PPLRatio = math.Exp(r.LnPPLRatio)
	r.PPLRatioUnc = r.PPLRatio * r.LnPPLRatioUnc
	r.PPLDiff = r.PPLModel - r.PPLBase
	pplCov := r.PPLModel * r.PPLBase * cov
	r.PPLDiffUnc = math.Sqrt(max(0, r.PPLModelUnc*r.PPLModelUnc+r.PPLBaseUnc*r.PPLBaseUnc-2*pplCov))
	r.KLDMean, r.KLDUnc = meanUnc(a.sumKLD, a.sumKLD2, n)
	r.KLD = quantiles(a.klds)
	r.DeltaPMean, r.DeltaPUnc = meanUnc(a.sumDP, a.sumDP2, n)
	r.DeltaP = quantiles(a.dps)
	mse, mseUnc := meanUnc(a.sumDP2, a.sumDP4, n)
	r.DeltaPRMS = math.Sqrt(mse)
	if r.DeltaPRMS > 0 {
		r.DeltaPRMSUnc = 0.5 / r.DeltaPRMS * mseUnc
	}
	r.SameTop = float64(a.sameTop) / float64(n)
	if n > 1 {
		r.SameTopUnc = math.Sqrt(r.SameTop * (1 - r.SameTop) / float64(n-1))
	}
	return r
}

// KLDWindows returns the windows and, for each, the first logits row scored
// (rows first..len-2 predict tokens first+1..len-1), as opts defines them.
// In llama.cpp mode the windows are copies with BOS first when opts.BOS >= 0.
func KLDWindows(ids []int, opts KLDOptions) (wins [][]int, first int) {
	if opts.AllTokens {
		return Windows(ids, opts.Ctx), 0
	}
	for i := 0; i+opts.Ctx <= len(ids); i += opts.Ctx {
		w := slices.Clone(ids[i : i+opts.Ctx])
		if opts.BOS >= 0 {
			w[0] = opts.BOS
		}
		wins = append(wins, w)
	}
	return wins, opts.Ctx / 2
}

// KLDivergence runs base and m over the same windows of ids and accumulates,
// per scored token, KL(P_base || P_m) of the next-token distributions. Each
// window keeps only the two models' hidden states [T,C]; logits are made one
// row [V] at a time, so the T×V matrix never exists. progress, if not nil, is
// called after each window with windows done and the total.
func KLDivergence(base, m *model.Model, ids []int, opts KLDOptions, progress func(done, total int)) (KLDResult, error) {
	return KLDivergenceDist(base, m, ids, opts, nil, progress)
}

// KLDivergenceDist is KLDivergence as one rank of a group: rank r runs
// windows r, r+W, ..., the ranks exchange every scored token's two NLLs, KL
// and top-1 agreement, and every rank accumulates them in token order, so
// the result is bit for bit the one process's. A nil d is one process.
func KLDivergenceDist(base, m *model.Model, ids []int, opts KLDOptions, d Reducer, progress func(done, total int)) (KLDResult, error) {
	if opts.Ctx < 2 {
		return KLDResult{}, fmt.Errorf("eval: kld: context %d is too short: want at least 2 tokens", opts.Ctx)
	}
	if base.Config.Hidden <= 0 || base.Config.Vocab != m.Config.Vocab {
		return KLDResult{}, fmt.Errorf("eval: kld: base vocabulary has %d tokens, model %d: the distributions are not comparable", base.Config.Vocab, m.Config.Vocab)
	}
	wins, first := KLDWindows(ids, opts)
	if len(wins) == 0 {
		if opts.AllTokens {
			return KLDResult{}, fmt.Errorf("eval: kld: the corpus has %d tokens: nothing to score (want at least 2)", len(ids))
		}
		return KLDResult{}, fmt.Errorf("eval: kld: the corpus has %d tokens, fewer than one window of --ctx %d", len(ids), opts.Ctx)
	}
	if !opts.AllTokens && opts.Ctx < 3 {
		return KLDResult{}, fmt.Errorf("eval: kld: context %d scores nothing in llama.cpp mode: want at least 3 tokens", opts.Ctx)
	}
	rank, size := rankOf(d)
	// offs[i]: window i's first scored token in the stream of scored tokens.
	offs := make([]int, len(wins)+1)
	for i, w := range wins {
		offs[i+1] = offs[i] + max(0, len(w)-1-first)
	}
	// stats[4k..4k+3]: scored token k's NLL (model), NLL (base), KL, same
	// top (0/1), exchanged between ranks.
	var stats []float64
	if size > 1 {
		stats = make([]float64, 4*offs[len(wins)])
	}
	V := base.Config.Vocab
	type side struct {
		m      *model.Model
		cache  *model.Cache
		hidden []float32 // [T,C]
		logits []float32 // [V]
	}
	mk := func(mm *model.Model) *side {
		return &side{m: mm, cache: mm.NewCache(opts.Ctx), hidden: make([]float32, opts.Ctx*mm.Config.Hidden), logits: make([]float32, V)}
	}
	// On a backend with a device KLD scorer (kernels/cuda) both models run
	// on the device and only the four numbers per scored token come back.
	maxT := 0
	for i, w := range wins {
		if i%size == rank {
			maxT = max(maxT, len(w))
		}
	}
	var dk deviceKLDer
	if maxT > 0 {
		var done func()
		var err error
		if dk, done, err = deviceKLD(base, m, maxT); err != nil {
			return KLDResult{}, err
		}
		defer done()
	}
	var sb, sq *side
	if dk == nil {
		sb, sq = mk(base), mk(m)
	}
	var acc KLDAcc
	var row []float64 // a window's device stats
	for i, w := range wins {
		if i%size != rank {
			continue
		}
		if dk != nil {
			nr := max(0, len(w)-1-first)
			row = slices.Grow(row[:0], 4*nr)[:4*nr]
			if err := dk.Window(w, first, row); err != nil {
				return KLDResult{}, fmt.Errorf("eval: kld: window %d: %w", i, err)
			}
			for j := 0; j < nr; j++ {
				st := row[4*j : 4*j+4]
				acc.addStats(st[0], st[1], st[2], st[3] != 0)
				if stats != nil {
					copy(stats[4*(offs[i]+j):], st)
				}
			}
			if progress != nil {
				progress(i+1, len(wins))
			}
			continue
		}
		for _, s := range []*side{sb, sq} {
			s.cache.Reset()
			if err := s.m.Forward(s.cache, w, s.hidden); err != nil {
				return KLDResult{}, fmt.Errorf("eval: kld: window %d: %w", i, err)
			}
		}
		for t := first; t < len(w)-1; t++ {
			sb.m.Logits(sb.logits, sb.hidden[t*base.Config.Hidden:])
			sq.m.Logits(sq.logits, sq.hidden[t*m.Config.Hidden:])
			kl := acc.Add(sb.logits, sq.logits, w[t+1])
			if stats == nil {
				continue
			}
			k := 4 * (offs[i] + t - first)
			stats[k], stats[k+1], stats[k+2] = acc.lastNLL, acc.lastNLLBase, kl
			if acc.lastSame {
				stats[k+3] = 1
			}
		}
		if progress != nil {
			progress(i+1, len(wins))
		}
	}
	if size > 1 {
		if err := gatherWindows(d, stats); err != nil {
			return KLDResult{}, fmt.Errorf("eval: kld: %w", err)
		}
		acc = KLDAcc{}
		for k := 0; k < len(stats); k += 4 {
			acc.addStats(stats[k], stats[k+1], stats[k+2], stats[k+3] != 0)
		}
	}
	if acc.n == 0 {
		return KLDResult{}, fmt.Errorf("eval: kld: no token scored")
	}
	r := acc.Result()
	r.Ctx, r.Windows = opts.Ctx, len(wins)
	r.Scored = "second-half"
	if opts.AllTokens {
		r.Scored = "all"
	}
	return r, nil
}
