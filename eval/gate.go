package eval

import (
	"fmt"
	"math"
	"strings"

	"github.com/tunellm/tune/model"
)

// Gate is one threshold check of a validation: Metric compared with Limit
// by Op ("<=" or ">="). A gate whose Limit is NaN (switched off) is never
// made: see Max and Min.
type Gate struct {
	Name   string  `json:"name"`   // the recipe key: max_mean_kld, ...
	Metric string  `json:"metric"` // what was measured: kld_mean, ...
	Value  float64 `json:"value"`
	Op     string  `json:"op"`
	Limit  float64 `json:"limit"`
	Pass   bool    `json:"pass"`
}

// String is the gate in one line: "max_mean_kld: kld_mean 0.2312 > 0.1".
func (g Gate) String() string {
	op := g.Op
	if !g.Pass {
		op = map[string]string{"<=": ">", ">=": "<"}[g.Op]
	}
	return fmt.Sprintf("%s: %s %.6g %s %g", g.Name, g.Metric, g.Value, op, g.Limit)
}

// Max appends the gate value <= limit to gates, unless limit is NaN (off).
// A NaN value fails.
func Max(gates []Gate, name, metric string, value, limit float64) []Gate {
	if math.IsNaN(limit) {
		return gates
	}
	return append(gates, Gate{Name: name, Metric: metric, Value: value, Op: "<=", Limit: limit, Pass: value <= limit})
}

// Min appends the gate value >= limit to gates, unless limit is NaN (off).
// A NaN value fails.
func Min(gates []Gate, name, metric string, value, limit float64) []Gate {
	if math.IsNaN(limit) {
		return gates
	}
	return append(gates, Gate{Name: name, Metric: metric, Value: value, Op: ">=", Limit: limit, Pass: value >= limit})
}

// Passed reports whether every gate passed (true for none).
func Passed(gates []Gate) bool {
	for _, g := range gates {
		if !g.Pass {
			return false
		}
	}
	return true
}

// Failures lists the failed gates on one line, "; "-separated.
func Failures(gates []Gate) string {
	var s []string
	for _, g := range gates {
		if !g.Pass {
			s = append(s, g.String())
		}
	}
	return strings.Join(s, "; ")
}

// PctChange is 100·(x-ref)/ref, the change of x relative to ref in percent.
func PctChange(x, ref float64) float64 { return 100 * (x - ref) / ref }

// LogitDiff compares two models' logits on the same windows: what a merged
// model must equal (base+adapter) up to rounding.
type LogitDiff struct {
	Ctx     int     `json:"ctx"`
	Windows int     `json:"windows"`
	Rows    int     `json:"rows"`     // logits rows compared (positions)
	MaxAbs  float64 `json:"max_abs"`  // max over rows and vocabulary of |a-b|
	MeanAbs float64 `json:"mean_abs"` // mean over rows and vocabulary of |a-b|
	// SameTop is the fraction of rows whose argmax agrees.
	SameTop float64 `json:"same_top"`
	// MaxRow and MaxToken locate MaxAbs: window-major row index, vocabulary id.
	MaxRow   int `json:"max_row"`
	MaxToken int `json:"max_token"`
}

// CompareLogits runs a and b over Windows(ids, ctx) and compares every
// logits row of every window, one row [V] at a time.
func CompareLogits(a, b *model.Model, ids []int, ctx int) (LogitDiff, error) {
	if ctx < 2 {
		return LogitDiff{}, fmt.Errorf("eval: logits: context %d is too short: want at least 2 tokens", ctx)
	}
	if a.Config.Vocab != b.Config.Vocab {
		return LogitDiff{}, fmt.Errorf("eval: logits: vocabularies differ: %d and %d tokens", a.Config.Vocab, b.Config.Vocab)
	}
	wins := Windows(ids, ctx)
	if len(wins) == 0 {
		return LogitDiff{}, fmt.Errorf("eval: logits: the corpus has %d tokens: nothing to compare (want at least 2)", len(ids))
	}
	V := a.Config.Vocab
	ca, cb := a.NewCache(ctx), b.NewCache(ctx)
	ha, hb := make([]float32, ctx*a.Config.Hidden), make([]float32, ctx*b.Config.Hidden)
	la, lb := make([]float32, V), make([]float32, V)
	d := LogitDiff{Ctx: ctx, Windows: len(wins)}
	var sum float64
	same := 0
	for i, w := range wins {
		ca.Reset()
		cb.Reset()
		if err := a.Forward(ca, w, ha); err != nil {
			return LogitDiff{}, fmt.Errorf("eval: logits: window %d: %w", i, err)
		}
		if err := b.Forward(cb, w, hb); err != nil {
			return LogitDiff{}, fmt.Errorf("eval: logits: window %d: %w", i, err)
		}
		for t := range w {
			a.Logits(la, ha[t*a.Config.Hidden:])
			b.Logits(lb, hb[t*b.Config.Hidden:])
			ta, tb := 0, 0
			for v := range V {
				x := math.Abs(float64(la[v]) - float64(lb[v]))
				if math.IsNaN(x) {
					x = math.Inf(1)
				}
				sum += x
				if x > d.MaxAbs {
					d.MaxAbs, d.MaxRow, d.MaxToken = x, d.Rows, v
				}
				if la[v] > la[ta] {
					ta = v
				}
				if lb[v] > lb[tb] {
					tb = v
				}
			}
			if ta == tb {
				same++
			}
			d.Rows++
		}
	}
	d.MeanAbs = sum / float64(d.Rows*V)
	d.SameTop = float64(same) / float64(d.Rows)
	return d, nil
}
