package eval

import (
	"fmt"
	"math"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tunellm/tune/dist"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/tokenizer"
)

// ranks opens a TCP group of size ranks in this process and runs f on each
// concurrently, returning what each returned.
func ranks[T any](t *testing.T, size int, f func(d Reducer) (T, error)) []T {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	out := make([]T, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for r := range size {
		wg.Go(func() {
			c, err := dist.OpenTCP(r, size, "127.0.0.1", port, 20*time.Second)
			if err != nil {
				errs[r] = err
				return
			}
			defer c.Close()
			out[r], errs[r] = f(c)
			if errs[r] != nil {
				c.Abort(1)
			}
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("%d ranks: rank %d: %v", size, r, err)
		}
	}
	return out
}

// same compares results bit for bit (%#v of floats is exact; NaN prints as NaN).
func same(a, b any) bool { return fmt.Sprintf("%#v", a) == fmt.Sprintf("%#v", b) }

// irrational gives every window an NLL with all 53 bits in use, so that any
// change of summation order would show.
type irrational struct{}

func (irrational) WindowNLL(tokens []int) (float64, int, error) {
	var s float64
	for _, t := range tokens[1:] {
		s += math.Sqrt(float64(t+2)) * math.Pi
	}
	return s, len(tokens) - 1, nil
}

func TestPerplexityDistBitIdentical(t *testing.T) {
	ids := make([]int, 1000)
	for i := range ids {
		ids[i] = (i * 7919) % 251
	}
	want, err := Perplexity(irrational{}, ids, 7, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, W := range []int{2, 3, 5} {
		for r, got := range ranks(t, W, func(d Reducer) (PPLResult, error) { return PerplexityDist(irrational{}, ids, 7, d, nil) }) {
			if !same(got, want) {
				t.Errorf("%d ranks: rank %d: %+v, one process %+v", W, r, got, want)
			}
		}
	}
	// A rank's window error names the window; the others see it gone.
	ln := ranks(t, 2, func(d Reducer) (error, error) {
		_, err := PerplexityDist(&fakeLM{fail: ids[7]}, ids, 7, d, nil)
		return err, nil
	})
	if ln[1] == nil || ln[1].Error() != "eval: ppl: window 1: boom" {
		t.Errorf("rank 1's error %v", ln[1])
	}
	if ln[0] == nil {
		t.Error("rank 0: no error after rank 1 failed")
	}
}

// TestEvalDistMatchesOneProcess: ppl, kld (both modes) and bench on the
// tiny qwen3 model with 2 ranks equal one process's numbers bit for bit.
func TestEvalDistMatchesOneProcess(t *testing.T) {
	ids := pplStream(t)
	base, m := loadTest(t, ""), loadTest(t, "../testdata/adapters/qwen3-tied-r4")
	wantPPL, err := Perplexity(m, ids, 48, nil)
	if err != nil {
		t.Fatal(err)
	}
	kopts := []KLDOptions{{Ctx: 64, BOS: -1}, {Ctx: 48, AllTokens: true, BOS: -1}}
	var wantKLD []KLDResult
	for _, o := range kopts {
		r, err := KLDivergence(base, m, ids, o, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantKLD = append(wantKLD, r)
	}
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	items, err := LoadItems("arc", "testdata/arc_sample.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	bopts := BenchOptions{Task: "arc"}
	wantBench, err := Bench(&Scorer{M: m, Cfg: m.Config, Tok: tok}, items, bopts)
	if err != nil {
		t.Fatal(err)
	}

	type res struct {
		ppl   PPLResult
		kld   []KLDResult
		bench BenchResult
	}
	// Each rank has its own copies of the models, as separate processes do.
	models := [][2]*model.Model{{base, m}, {loadTest(t, ""), loadTest(t, "../testdata/adapters/qwen3-tied-r4")}}
	got := ranks(t, 2, func(d Reducer) (res, error) {
		var x res
		b, mm := models[d.Rank()][0], models[d.Rank()][1]
		var err error
		if x.ppl, err = PerplexityDist(mm, ids, 48, d, nil); err != nil {
			return x, err
		}
		for _, o := range kopts {
			r, err := KLDivergenceDist(b, mm, ids, o, d, nil)
			if err != nil {
				return x, err
			}
			x.kld = append(x.kld, r)
		}
		x.bench, err = BenchDist(&Scorer{M: mm, Cfg: mm.Config, Tok: tok}, items, bopts, d)
		return x, err
	})
	for r, x := range got {
		if !same(x.ppl, wantPPL) {
			t.Errorf("rank %d: ppl %+v, one process %+v", r, x.ppl, wantPPL)
		}
		for i := range kopts {
			if !same(x.kld[i], wantKLD[i]) {
				t.Errorf("rank %d: kld (%s) %+v\none process %+v", r, wantKLD[i].Scored, x.kld[i], wantKLD[i])
			}
		}
		if !same(x.bench, wantBench) {
			t.Errorf("rank %d: bench %+v, one process %+v", r, x.bench, wantBench)
		}
	}
	t.Logf("2 ranks = 1 process bit for bit: ppl %.10g over %d tokens; kld mean %.10g (%d tokens), %.10g (%d tokens); arc acc %v over %d items",
		wantPPL.PPL, wantPPL.Tokens, wantKLD[0].KLDMean, wantKLD[0].Tokens, wantKLD[1].KLDMean, wantKLD[1].Tokens, wantBench.Metrics["acc"].Value, wantBench.Items)
}
