package gptq

import (
	"math"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tunellm/tune/dist"
	"github.com/tunellm/tune/quantize/wq"
)

// runRanks runs Run on W in-process TCP ranks, each with its own copy of the
// model, and returns each rank's emitted tensors.
func runRanks(t *testing.T, W int, name string, calib [][]int, o Options) [][]*wq.QTensor {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	out := make([][]*wq.QTensor, W)
	errs := make([]error, W)
	reps := make([]*Report, W)
	var wg sync.WaitGroup
	for r := range W {
		m := loadModel(t, name)
		wg.Go(func() {
			c, err := dist.OpenTCP(r, W, "127.0.0.1", port, 30*time.Second)
			if err != nil {
				errs[r] = err
				return
			}
			defer c.Close()
			oo := o
			oo.Comm = c
			reps[r], errs[r] = Run(m, calib, oo, func(q *wq.QTensor) error { out[r] = append(out[r], q); return nil })
			if errs[r] != nil {
				c.Abort(1)
			}
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("%d ranks: rank %d: %v", W, r, err)
		}
		if reps[r].Sequences != len(calib) || reps[r].Tokens != len(calib)*len(calib[0]) {
			t.Errorf("%d ranks: rank %d reports %d sequences, %d tokens", W, r, reps[r].Sequences, reps[r].Tokens)
		}
	}
	return out
}

// diffCodes counts the codes, scales, zeros and g_idx entries that differ.
func diffCodes(a, b []*wq.QTensor) (codes, params, total int) {
	for i := range a {
		x, y := a[i], b[i]
		total += len(x.Q)
		for j := range x.Q {
			if x.Q[j] != y.Q[j] {
				codes++
			}
		}
		for j := range x.Scales {
			if math.Float32bits(x.Scales[j]) != math.Float32bits(y.Scales[j]) {
				params++
			}
		}
		if !slices.Equal(x.Zeros, y.Zeros) || !slices.Equal(x.GIdx, y.GIdx) {
			params++
		}
	}
	return
}

// TestRunDistMatchesOneProcess: GPTQ with calibration split over 2 and 3
// ranks gives every rank the same tensors, and the one process's. The
// Hessians are summed in another order (per-rank partial sums, then the
// all-reduce), but float64 sums of these fp32 chunk products come out exact,
// so no code differs (also measured with 6 sequences of 1,500 tokens, 3
// chunks each: 0 of 147,456 codes). The differences are counted, and must
// be zero.
func TestRunDistMatchesOneProcess(t *testing.T) {
	for _, tc := range []struct {
		model string
		o     Options
	}{
		{"qwen3-tied", Options{Scheme: wq.Scheme{Bits: 4, GroupSize: 32}}},
		{"qwen3-untied-bf16", Options{Scheme: wq.Scheme{Bits: 4, GroupSize: 32}, ActOrder: true, TrueSequential: true}},
	} {
		m := loadModel(t, tc.model)
		calib := randSeqs(11, 5, 33, m.Config.Vocab)
		var want []*wq.QTensor
		if _, err := Run(m, calib, tc.o, func(q *wq.QTensor) error { want = append(want, q); return nil }); err != nil {
			t.Fatal(err)
		}
		for _, W := range []int{2, 3} {
			got := runRanks(t, W, tc.model, calib, tc.o)
			for r := range got {
				if len(got[r]) != len(want) {
					t.Fatalf("%s, %d ranks: rank %d emitted %d tensors, want %d", tc.model, W, r, len(got[r]), len(want))
				}
				if c, p, _ := diffCodes(got[r], got[0]); c+p != 0 {
					t.Errorf("%s, %d ranks: rank %d differs from rank 0 in %d codes, %d parameters", tc.model, W, r, c, p)
				}
			}
			c, p, n := diffCodes(got[0], want)
			t.Logf("%s, %d ranks vs one process: %d of %d codes differ, %d scales/zeros/g_idx", tc.model, W, c, n, p)
			if c+p != 0 {
				t.Errorf("%s, %d ranks: %d of %d codes and %d parameters differ from one process", tc.model, W, c, n, p)
			}
		}
	}
}
