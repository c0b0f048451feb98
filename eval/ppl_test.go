package eval

import (
	"errors"
	"math"
	"reflect"
	"testing"
)

func TestWindows(t *testing.T) {
	ids := []int{0, 1, 2, 3, 4, 5, 6}
	tests := []struct {
		ctx  int
		want [][]int
	}{
		{3, [][]int{{0, 1, 2}, {3, 4, 5}}}, // the trailing one-token window scores nothing
		{4, [][]int{{0, 1, 2, 3}, {4, 5, 6}}},
		{7, [][]int{{0, 1, 2, 3, 4, 5, 6}}},
		{100, [][]int{{0, 1, 2, 3, 4, 5, 6}}},
	}
	for _, tt := range tests {
		if got := Windows(ids, tt.ctx); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ctx %d: %v, want %v", tt.ctx, got, tt.want)
		}
	}
}

// fakeLM gives token t probability 1/(t+2) regardless of context, so the expected
// NLL of a window is a sum we can write down.
type fakeLM struct{ fail int }

func (f *fakeLM) WindowNLL(tokens []int) (float64, int, error) {
	if f.fail > 0 && tokens[0] == f.fail {
		return 0, 0, errors.New("boom")
	}
	var s float64
	for _, t := range tokens[1:] {
		s += math.Log(float64(t + 2))
	}
	return s, len(tokens) - 1, nil
}

func TestPerplexity(t *testing.T) {
	ids := []int{5, 1, 2, 3, 7, 0, 4}
	var calls [][2]int
	res, err := Perplexity(&fakeLM{}, ids, 3, func(done, total int) { calls = append(calls, [2]int{done, total}) })
	if err != nil {
		t.Fatal(err)
	}
	// windows {5,1,2} {3,7,0} {4}: scored 1,2 then 7,0
	want := (math.Log(3) + math.Log(4) + math.Log(9) + math.Log(2)) / 4
	if res.Tokens != 4 || res.Windows != 2 || math.Abs(res.NLL-want) > 1e-12 || math.Abs(res.PPL-math.Exp(want)) > 1e-9 {
		t.Fatalf("got %+v, want nll %v over 4 tokens", res, want)
	}
	if !reflect.DeepEqual(calls, [][2]int{{3, 7}, {6, 7}}) {
		t.Errorf("progress calls %v", calls)
	}
	if _, err := Perplexity(&fakeLM{fail: 3}, ids, 3, nil); err == nil || err.Error() != "eval: ppl: window 1: boom" {
		t.Errorf("error %v", err)
	}
	if _, err := Perplexity(&fakeLM{}, []int{1}, 3, nil); err == nil {
		t.Error("one token: no error")
	}
	if _, err := Perplexity(&fakeLM{}, ids, 1, nil); err == nil {
		t.Error("ctx 1: no error")
	}
}
