package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tunellm/tune/model/safetensors"
)

func TestArgmaxTies(t *testing.T) {
	if got := argmax([]float32{1, 3, 3, 2}); got != 1 {
		t.Errorf("argmax = %d, want 1 (lowest of the tied ids)", got)
	}
}

// drawCounts samples n times from fixed logits and counts ids.
func drawCounts(logits []float32, opts SampleOptions, n int) map[int]int {
	s := newSampler(opts, len(logits))
	counts := map[int]int{}
	for i := 0; i < n; i++ {
		counts[s.pick(logits)]++
	}
	return counts
}

func logitsOf(probs ...float64) []float32 {
	l := make([]float32, len(probs))
	for i, p := range probs {
		l[i] = float32(math.Log(p))
	}
	return l
}

func TestSampler(t *testing.T) {
	const n = 20000
	probs := logitsOf(0.15, 0.5, 0.05, 0.3) // ranked: 1, 3, 0, 2
	tests := []struct {
		name   string
		logits []float32
		opts   SampleOptions
		want   map[int]float64 // expected frequencies; ids absent must never appear
	}{
		{"plain", probs, SampleOptions{Temperature: 1, Seed: 1}, map[int]float64{0: 0.15, 1: 0.5, 2: 0.05, 3: 0.3}},
		{"top-k 2", probs, SampleOptions{Temperature: 1, TopK: 2, Seed: 2}, map[int]float64{1: 0.625, 3: 0.375}},
		{"top-k 1", probs, SampleOptions{Temperature: 1, TopK: 1, Seed: 3}, map[int]float64{1: 1}},
		// top-p 0.7: 0.5 < 0.7 so the next (0.3) is needed; then 0.8 >= 0.7 stops.
		{"top-p 0.7", probs, SampleOptions{Temperature: 1, TopP: 0.7, Seed: 4}, map[int]float64{1: 0.625, 3: 0.375}},
		{"top-p 0.9", probs, SampleOptions{Temperature: 1, TopP: 0.9, Seed: 5}, map[int]float64{1: 0.5 / 0.95, 3: 0.3 / 0.95, 0: 0.15 / 0.95}},
		{"top-p tiny keeps one", probs, SampleOptions{Temperature: 1, TopP: 1e-9, Seed: 6}, map[int]float64{1: 1}},
		// temperature 2 flattens: p ∝ sqrt(p).
		{"temperature 2", probs, SampleOptions{Temperature: 2, Seed: 7}, func() map[int]float64 {
			z := math.Sqrt(0.15) + math.Sqrt(0.5) + math.Sqrt(0.05) + math.Sqrt(0.3)
			return map[int]float64{0: math.Sqrt(0.15) / z, 1: math.Sqrt(0.5) / z, 2: math.Sqrt(0.05) / z, 3: math.Sqrt(0.3) / z}
		}()},
		// ties with the k-th value survive top-k, as in transformers' TopKLogitsWarper.
		{"top-k ties", []float32{2, 1, 2, 2, 0}, SampleOptions{Temperature: 1, TopK: 2, Seed: 8}, map[int]float64{0: 1.0 / 3, 2: 1.0 / 3, 3: 1.0 / 3}},
		{"greedy", probs, SampleOptions{}, map[int]float64{1: 1}},
	}
	for _, tt := range tests {
		counts := drawCounts(tt.logits, tt.opts, n)
		for id, c := range counts {
			p, ok := tt.want[id]
			if !ok {
				t.Errorf("%s: drew id %d %d times, want never", tt.name, id, c)
				continue
			}
			// 5 standard deviations of a binomial frequency.
			if f, sd := float64(c)/n, math.Sqrt(p*(1-p)/n); math.Abs(f-p) > 5*sd+1e-12 {
				t.Errorf("%s: id %d frequency %.4f, want %.4f", tt.name, id, f, p)
			}
		}
	}
}

func TestSamplerSeeded(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	logits := make([]float32, 500)
	for i := range logits {
		logits[i] = float32(r.NormFloat64() * 2)
	}
	draw := func(seed uint64) []int {
		s := newSampler(SampleOptions{Temperature: 0.8, TopP: 0.95, TopK: 50, Seed: seed}, len(logits))
		ids := make([]int, 30)
		for i := range ids {
			ids[i] = s.pick(logits)
		}
		return ids
	}
	if a, b := draw(42), draw(42); !slices.Equal(a, b) {
		t.Errorf("same seed, different draws:\n%v\n%v", a, b)
	}
	if a, b := draw(42), draw(43); slices.Equal(a, b) {
		t.Errorf("seeds 42 and 43 gave the same 30 draws")
	}
}

// TestGenerateGreedyRecompute: greedy decoding through the KV cache equals
// argmax over a full recompute of the growing sequence, and stop/emit/maxNew
// behave as documented.
func TestGenerateGreedyRecompute(t *testing.T) {
	c := smallConfig()
	m := newTestModel(t, c, safetensors.BF16, 21)
	prompt := []int{3, 14, 15, 9, 26}
	var got []int
	if err := m.Generate(prompt, 8, nil, SampleOptions{}, func(id int) bool { got = append(got, id); return true }); err != nil {
		t.Fatal(err)
	}
	seq := slices.Clone(prompt)
	var want []int
	for range 8 {
		rows, err := m.ForwardLogits(m.NewCache(len(seq)), seq)
		if err != nil {
			t.Fatal(err)
		}
		id := argmax(rows[len(rows)-1])
		want = append(want, id)
		seq = append(seq, id)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("cached greedy %v, recompute %v", got, want)
	}

	// Stop on want[2]: emitted, then nothing more (unless it appeared earlier).
	stopAt := slices.Index(want, want[2])
	got = got[:0]
	m.Generate(prompt, 8, []int{want[2]}, SampleOptions{}, func(id int) bool { got = append(got, id); return true })
	if !slices.Equal(got, want[:stopAt+1]) {
		t.Errorf("with stop %d: %v, want %v", want[2], got, want[:stopAt+1])
	}
	got = got[:0]
	m.Generate(prompt, 8, nil, SampleOptions{}, func(id int) bool { got = append(got, id); return len(got) < 3 })
	if len(got) != 3 {
		t.Errorf("emit returning false after 3: got %d tokens", len(got))
	}
	got = got[:0]
	m.Generate(prompt, 1, nil, SampleOptions{}, func(id int) bool { got = append(got, id); return true })
	if len(got) != 1 {
		t.Errorf("maxNew 1: got %d tokens", len(got))
	}
}
