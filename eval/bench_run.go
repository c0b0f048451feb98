package eval

import (
	"fmt"
	"strings"
	"unicode"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/tokenizer"
)

// LM is what bench scoring needs from a model; *model.Model implements it.
type LM interface {
	NewCache(maxT int) *model.Cache
	Forward(c *model.Cache, tokens []int, hidden []float32) error
	Logits(dst []float32, h []float32)
	Generate(prompt []int, maxNew int, stop []int, opts model.SampleOptions, emit func(id int) bool) error
}

// Scorer computes continuation log-likelihoods and greedy generations as
// lm-evaluation-harness's HFLM does, with no special tokens added to either
// (HFLM's add_special_tokens=False for causal models).
type Scorer struct {
	M      LM
	Cfg    *model.Config
	Tok    *tokenizer.Tokenizer
	MaxLen int // left-truncation length; HFLM's max_length (0: Cfg.MaxPositions, else 2048)
	MaxGen int // gsm8k max_gen_toks (0: 256)

	// On a backend with a device windower (kernels/cuda), continuations are
	// scored on the device: dev is sized for the longest input so far and
	// rebuilt larger when one does not fit; noDev after the backend said
	// it has none. BenchDist frees it.
	dev      rangeScorer
	devClose func()
	noDev    bool
}

// rangeScorer scores the rows first.. of a window on a device.
type rangeScorer interface {
	WindowNLLFrom(tokens []int, first int) (float64, int, error)
	MaxT() int
}

// device returns a device scorer for inputs of T tokens, or nil (the model
// computes on its backend op by op).
func (s *Scorer) device(T int) (rangeScorer, error) {
	m, ok := s.M.(*model.Model)
	if !ok || s.noDev {
		return nil, nil
	}
	if s.dev != nil && s.dev.MaxT() >= T {
		return s.dev, nil
	}
	maxT := T
	if s.dev != nil {
		maxT = max(T, 2*s.dev.MaxT())
	}
	maxT = max(maxT, 256)
	if mp := s.Cfg.MaxPositions; mp > 0 {
		maxT = min(maxT, mp)
	}
	if maxT < T {
		return nil, nil // beyond the position table: this input op by op, the scorer kept
	}
	s.release()
	w, done, err := DeviceWindower(m, maxT)
	if err != nil {
		return nil, err
	}
	rs, ok := w.(rangeScorer)
	if !ok {
		done()
		s.noDev = true
		return nil, nil
	}
	s.dev, s.devClose = rs, done
	return rs, nil
}

// release frees the device scorer.
func (s *Scorer) release() {
	if s.devClose != nil {
		s.devClose()
	}
	s.dev, s.devClose = nil, nil
}

func (s *Scorer) maxLen() int {
	if s.MaxLen > 0 {
		return s.MaxLen
	}
	if s.Cfg.MaxPositions > 0 {
		return s.Cfg.MaxPositions
	}
	return 2048
}

// EncodePair is harness's _encode_pair: trailing whitespace of the context
// moves to the start of the continuation; the continuation's tokens are
// those of enc(context+continuation) after the first len(enc(context)).
func EncodePair(tok *tokenizer.Tokenizer, context, continuation string) (ctx, cont []int) {
	trimmed := strings.TrimRightFunc(context, unicode.IsSpace)
	continuation = context[len(trimmed):] + continuation
	context = trimmed
	whole := tok.Encode(context+continuation, false)
	ctx = tok.Encode(context, false)
	return ctx, whole[min(len(ctx), len(whole)):]
}

// LogLikelihood is sum_i log p(cont_i | ctx, cont_<i), computed as harness
// does: the input is (ctx+cont)[-(maxLen+1):][:-1] and the last len(cont)
// logits rows score cont. An empty context is replaced by the EOS token
// (HFLM's prefix_token_id).
func (s *Scorer) LogLikelihood(context, continuation string) (float64, int, error) {
	var ctx, cont []int
	if context == "" {
		ctx, cont = nil, s.Tok.Encode(continuation, false)
		if eos, ok := s.Tok.EOS(); ok {
			ctx = []int{eos}
		}
	} else {
		ctx, cont = EncodePair(s.Tok, context, continuation)
	}
	if len(cont) == 0 {
		return 0, 0, fmt.Errorf("eval: bench: continuation %q encodes to no tokens", continuation)
	}
	all := append(append([]int{}, ctx...), cont...)
	if ml := s.maxLen(); len(all) > ml+1 {
		all = all[len(all)-(ml+1):]
	}
	inp := all[:len(all)-1]
	if len(inp) == 0 {
		return 0, 0, fmt.Errorf("eval: bench: nothing to condition on for %q", continuation)
	}
	n := min(len(cont), len(inp))
	dev, err := s.device(len(all))
	if err != nil {
		return 0, 0, err
	}
	if dev != nil {
		// The whole input and the last continuation token in one window:
		// rows len(inp)-n.. score all[len(inp)-n+1:].
		nll, got, err := dev.WindowNLLFrom(all, len(inp)-n)
		if err != nil {
			return 0, 0, err
		}
		if got != n {
			return 0, 0, fmt.Errorf("eval: bench: the device scored %d tokens of %d", got, n)
		}
		return -nll, n, nil
	}
	C, V := s.Cfg.Hidden, s.Cfg.Vocab
	hidden := make([]float32, len(inp)*C)
	c := s.M.NewCache(len(inp))
	if err := s.M.Forward(c, inp, hidden); err != nil {
		return 0, 0, err
	}
	logits := make([]float32, V)
	lp := make([]float64, V)
	var sum float64
	for k := range n {
		t := len(inp) - n + k
		s.M.Logits(logits, hidden[t*C:(t+1)*C])
		logSoftmax(lp, logits)
		sum += lp[all[t+1]]
	}
	return sum, n, nil
}

// GenerateUntil is greedy generation of up to MaxGen tokens from the
// left-truncated context, stopping at EOS or when the text contains one of
// stops, and cut at the first stop string (harness's generate_until).
func (s *Scorer) GenerateUntil(context string, stops []string) (string, error) {
	maxGen := s.MaxGen
	if maxGen <= 0 {
		maxGen = 256
	}
	ids := s.Tok.Encode(context, false)
	if keep := s.maxLen() - maxGen; keep > 0 && len(ids) > keep {
		ids = ids[len(ids)-keep:]
	}
	if len(ids) == 0 {
		return "", fmt.Errorf("eval: bench: empty generation prompt")
	}
	var stopIDs []int
	if eos, ok := s.Tok.EOS(); ok {
		stopIDs = append(stopIDs, eos)
	}
	stopIDs = append(stopIDs, s.Cfg.EOS...)
	var out []int
	err := s.M.Generate(ids, maxGen, stopIDs, model.SampleOptions{}, func(id int) bool {
		out = append(out, id)
		text := s.Tok.Decode(out, true)
		for _, st := range stops {
			if strings.Contains(text, st) {
				return false
			}
		}
		return true
	})
	if err != nil {
		return "", err
	}
	return CutAtStops(s.Tok.Decode(out, true), stops), nil
}

// BenchOptions configure Bench.
type BenchOptions struct {
	Task     string
	Shots    int
	Limit    int // score the first Limit items (0: all)
	Seed     uint64
	FewShot  []Item // a separate few-shot split; nil: the items themselves minus the one scored
	Progress func(done, total int)
}

// BenchResult holds a task's metrics: acc and acc_norm for multiple choice,
// exact_match for the two gsm8k filters ("strict-match", "flexible-extract").
type BenchResult struct {
	Task    string            `json:"task"`
	Items   int               `json:"items"`
	Shots   int               `json:"shots"`
	Metrics map[string]Metric `json:"metrics"`
}

// Bench scores items as the harness task opts.Task does.
func Bench(s *Scorer, items []Item, opts BenchOptions) (BenchResult, error) {
	return BenchDist(s, items, opts, nil)
}

// benchMetrics are the per-item scores a task produces, in a fixed order.
func benchMetrics(task string) []string {
	switch task {
	case "gsm8k":
		return []string{"exact_match,strict-match", "exact_match,flexible-extract"}
	case "mmlu":
		return []string{"acc"}
	}
	return []string{"acc", "acc_norm"}
}

// BenchDist is Bench as one rank of a group: rank r scores items r, r+W,
// ..., the ranks exchange the per-item scores, and every rank averages them
// in item order, so the metrics are those of one process. A nil d is one
// process. Progress gets the index of the item this rank just scored.
func BenchDist(s *Scorer, items []Item, opts BenchOptions, d Reducer) (BenchResult, error) {
	defer s.release()
	if _, ok := taskColumns[opts.Task]; !ok {
		return BenchResult{}, unknownTask(opts.Task)
	}
	n := len(items)
	if opts.Limit > 0 && opts.Limit < n {
		n = opts.Limit
	}
	if n == 0 {
		return BenchResult{}, fmt.Errorf("eval: bench: no items")
	}
	pool, sameFile := items, true
	if opts.FewShot != nil {
		pool, sameFile = opts.FewShot, false
	}
	firstN := !sameFile && (opts.Task == "mmlu" || opts.Task == "gsm8k")
	rank, size := rankOf(d)
	names := benchMetrics(opts.Task)
	// vals[j*n+i]: item i's score for names[j].
	vals := make([]float64, len(names)*n)
	for i := range n {
		if i%size != rank {
			continue
		}
		it := items[i]
		shots := FewShot(opts.Task, items, i, pool, sameFile, firstN, opts.Shots, opts.Seed)
		ctx := Context(opts.Task, it, shots)
		if opts.Task == "gsm8k" {
			resp, err := s.GenerateUntil(ctx, GSM8KStops)
			if err != nil {
				return BenchResult{}, fmt.Errorf("%s: %w", it.Ref, err)
			}
			for j, f := range []func(string) string{GSM8KStrict, GSM8KFlexible} {
				if GSM8KExactMatch(f(resp), it.Answer) {
					vals[j*n+i] = 1
				}
			}
		} else {
			lls := make([]float64, len(it.Choices))
			for c, ch := range it.Choices {
				ll, _, err := s.LogLikelihood(ctx, " "+ch)
				if err != nil {
					return BenchResult{}, fmt.Errorf("%s: choice %d: %w", it.Ref, c, err)
				}
				lls[c] = ll
			}
			acc, accNorm := ChoiceScores(lls, it.Choices, it.Gold)
			vals[i] = acc
			if len(names) > 1 {
				vals[n+i] = accNorm
			}
		}
		if opts.Progress != nil {
			opts.Progress(i+1, n)
		}
	}
	if err := gatherWindows(d, vals); err != nil {
		return BenchResult{}, fmt.Errorf("eval: bench: %w", err)
	}
	r := BenchResult{Task: opts.Task, Items: n, Shots: opts.Shots, Metrics: map[string]Metric{}}
	for j, k := range names {
		r.Metrics[k] = MeanStderr(vals[j*n : (j+1)*n])
	}
	return r, nil
}
