// Package eval measures models: perplexity over a corpus, KL divergence of a
// model's next-token distributions from a base model's (llama-perplexity's
// conventions), and benchmark tasks scored as lm-evaluation-harness scores them
// (mmlu, arc, hellaswag, gsm8k, mcq). The validation gates every artifact passes
// build on these. It runs no network and owns no model code: it drives model
// windows and adds up log-likelihoods.
package eval

import (
	"fmt"
	"math"

	"github.com/tunellm/tune/model"
)

// Windower scores one window of tokens from position 0: the sum of
// -log p(tokens[t] | tokens[:t]) over t >= 1 and the number of tokens scored
// (len(tokens)-1). *model.Model implements it.
type Windower interface {
	WindowNLL(tokens []int) (sum float64, n int, err error)
}

// PPLResult is a perplexity measurement.
type PPLResult struct {
	PPL    float64 `json:"ppl"`
	NLL    float64 `json:"nll"`    // mean negative log-likelihood per scored token, in nats
	Tokens int     `json:"tokens"` // tokens scored
	// Windows is how many windows of Ctx tokens the stream was cut into.
	Windows int `json:"windows"`
	Ctx     int `json:"ctx"`
}

// Windows cuts a token stream into non-overlapping windows of ctx tokens; the last
// one may be shorter. A window of one token scores nothing and is dropped.
func Windows(ids []int, ctx int) [][]int {
	var w [][]int
	for i := 0; i < len(ids); i += ctx {
		end := min(i+ctx, len(ids))
		if end-i >= 2 {
			w = append(w, ids[i:end])
		}
	}
	return w
}

// Perplexity scores a token stream the way `tune eval ppl` defines it: the stream is
// cut into non-overlapping windows of ctx tokens (the last partial window too), each
// window is run on its own from position 0, and every token but the first of each
// window is scored. ppl = exp(sum NLL / tokens scored). progress, if not nil, is
// called after each window with the tokens done so far and the total.
//
// A *model.Model whose backend scores windows on its device (kernels/cuda,
// unless TUNE_CUDA_PASS=host) is run through DeviceWindower: the same sums,
// with the weights uploaded once instead of every operand per op.
func Perplexity(m Windower, ids []int, ctx int, progress func(done, total int)) (PPLResult, error) {
	return PerplexityDist(m, ids, ctx, nil, progress)
}

// PerplexityDist is Perplexity as one rank of a group: rank r scores windows
// r, r+W, r+2W, ... and the ranks exchange the per-window NLL sums and token
// counts (see gatherWindows), which every rank adds in window order, so the
// result is bit for bit the one process's. A nil d is one process.
// progress gets the tokens of the windows up to the one this rank just did.
func PerplexityDist(m Windower, ids []int, ctx int, d Reducer, progress func(done, total int)) (PPLResult, error) {
	if ctx < 2 {
		return PPLResult{}, fmt.Errorf("eval: ppl: context %d is too short: want at least 2 tokens", ctx)
	}
	wins := Windows(ids, ctx)
	if len(wins) == 0 {
		return PPLResult{}, fmt.Errorf("eval: ppl: the corpus has %d tokens: nothing to score (want at least 2)", len(ids))
	}
	rank, size := rankOf(d)
	if mm, ok := m.(*model.Model); ok && rank < len(wins) {
		// On an accelerator the windows run on the device (the first
		// window is the longest); elsewhere w is mm.
		w, done, err := DeviceWindower(mm, len(wins[0]))
		if err != nil {
			return PPLResult{}, err
		}
		defer done()
		m = w
	}
	// sums[i], counts[i]: window i's NLL sum and tokens scored.
	sums := make([]float64, 2*len(wins))
	counts := sums[len(wins):]
	done := 0
	for i, w := range wins {
		done += len(w)
		if i%size != rank {
			continue
		}
		s, k, err := m.WindowNLL(w)
		if err != nil {
			return PPLResult{}, fmt.Errorf("eval: ppl: window %d: %w", i, err)
		}
		sums[i], counts[i] = s, float64(k)
		if progress != nil {
			progress(done, len(ids))
		}
	}
	if err := gatherWindows(d, sums); err != nil {
		return PPLResult{}, fmt.Errorf("eval: ppl: %w", err)
	}
	var sum float64
	n := 0
	for i := range wins {
		sum += sums[i]
		n += int(counts[i])
	}
	mean := sum / float64(n)
	return PPLResult{PPL: math.Exp(mean), NLL: mean, Tokens: n, Windows: len(wins), Ctx: ctx}, nil
}
