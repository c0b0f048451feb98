package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tunellm/tune/model/safetensors"
)

// packed is several samples laid back to back as ForwardPacked takes them.
type packed struct {
	tokens, positions, segIDs []int
	starts                    []int // row of each sample's first token
}

// pack concatenates samples; sample i gets segment id ids[i].
func pack(samples [][]int, ids []int) packed {
	var p packed
	for i, s := range samples {
		p.starts = append(p.starts, len(p.tokens))
		for j, id := range s {
			p.tokens = append(p.tokens, id)
			p.positions = append(p.positions, j)
			p.segIDs = append(p.segIDs, ids[i])
		}
	}
	return p
}

// aloneLogits runs one sample through Forward with a fresh cache and returns
// each position's logits through Logits.
func aloneLogits(t *testing.T, m *Model, sample []int) [][]float32 {
	t.Helper()
	C, V := m.Config.Hidden, m.Config.Vocab
	hidden := make([]float32, len(sample)*C)
	if err := m.Forward(m.NewCache(len(sample)), sample, hidden); err != nil {
		t.Fatal(err)
	}
	rows := make([][]float32, len(sample))
	for i := range rows {
		rows[i] = make([]float32, V)
		m.Logits(rows[i], hidden[i*C:(i+1)*C])
	}
	return rows
}

// goldenSamples returns samples of different lengths for a golden model: the
// reference's own token sequence in the middle (so its rows sit at a nonzero
// offset) and random ones around it, including length-1 samples and samples
// longer than mistral's window of 4.
func goldenSamples(g *golden, V int, seed uint64) [][]int {
	r := rand.New(rand.NewPCG(seed, 5))
	var samples [][]int
	for _, n := range []int{7, 1, -1, 12, 3, 1, 5} {
		if n < 0 {
			samples = append(samples, g.Tokens)
			continue
		}
		samples = append(samples, randTokens(r, n, V))
	}
	return samples
}

// TestPackedEqualsAlone: the logits of every sample of a packed sequence equal
// those of the sample run alone through Forward, for every golden model. The
// issue's bar is 1e-5 of the row's max |logit|; the CPU backend computes each
// output with the same per-output arithmetic whatever the row count or the
// attention start, so the rows are in fact bit-identical and the test demands
// that too. The golden sample's rows are also checked against the PyTorch
// reference logits.
func TestPackedEqualsAlone(t *testing.T) {
	for mi, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			g, m := loadGolden(t, name)
			C, V := m.Config.Hidden, m.Config.Vocab
			samples := goldenSamples(g, V, uint64(mi))
			p := pack(samples, []int{3, 4, 8, 9, 10, 20, 21})
			T := len(p.tokens)
			hidden := make([]float32, T*C)
			if err := m.ForwardPacked(p.tokens, p.positions, p.segIDs, hidden); err != nil {
				t.Fatal(err)
			}
			got := make([]float32, V)
			worst, identical, rows := 0.0, 0, 0
			for i, s := range samples {
				want := aloneLogits(t, m, s)
				for j := range s {
					row := p.starts[i] + j
					m.Logits(got, hidden[row*C:(row+1)*C])
					scale, diff := 0.0, 0.0
					for v := range got {
						scale = max(scale, math.Abs(float64(want[j][v])))
						diff = max(diff, math.Abs(float64(got[v]-want[j][v])))
					}
					rel := diff / max(scale, 1e-30)
					worst = max(worst, rel)
					if !(rel <= 1e-5) {
						t.Errorf("sample %d (len %d) position %d: |diff|/max|logit| = %.3g > 1e-5", i, len(s), j, rel)
					}
					if slices.Equal(got, want[j]) {
						identical++
					} else {
						t.Errorf("sample %d (len %d) position %d: logits not bit-identical to the sample alone (rel diff %.3g)", i, len(s), j, rel)
					}
					rows++
					if i == 2 && j < len(g.Logits) {
						checkTensor(t, name+".packed.logits["+strconv.Itoa(j)+"]", got, g.Logits[j], 1e-4)
					}
				}
			}
			t.Logf("%s: %d samples, T=%d, window %v: %d of %d rows bit-identical, worst rel diff %.3g", name, len(samples), T, m.Config.Windows, identical, rows, worst)
		})
	}
}

// naiveNLL is -log softmax(logits)[target] in float64, written out directly.
func naiveNLL(logits []float32, target int) float64 {
	mx := math.Inf(-1)
	for _, l := range logits {
		mx = max(mx, float64(l))
	}
	var z float64
	for _, l := range logits {
		z += math.Exp(float64(l) - mx)
	}
	return mx + math.Log(z) - float64(logits[target])
}

// TestPackedNLL: PackedNLL equals the sum over samples of the shifted,
// masked per-sample NLL computed from Forward + Logits rows with a naive
// float64 log-softmax, and counts exactly the unmasked in-sample targets.
// Labels at each sample's first token are valid ids on purpose: they sit right
// after the previous sample's last token and must not be scored.
func TestPackedNLL(t *testing.T) {
	for mi, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			g, m := loadGolden(t, name)
			V := m.Config.Vocab
			r := rand.New(rand.NewPCG(uint64(mi), 99))
			samples := goldenSamples(g, V, uint64(mi)+10)
			p := pack(samples, []int{0, 1, 2, 3, 4, 5, 6})
			var labels []int
			var wantSum float64
			wantN := 0
			for i, s := range samples {
				lab := randTokens(r, len(s), V)
				masked := len(s) / 3 // a prompt-like masked prefix
				for j := 1; j < masked; j++ {
					lab[j] = IgnoreIndex
				}
				if i == 3 { // a fully masked sample
					for j := range lab {
						lab[j] = IgnoreIndex
					}
				}
				if len(s) > 4 {
					lab[len(s)-2] = IgnoreIndex // a hole inside the scored part
				}
				labels = append(labels, lab...)
				rows := aloneLogits(t, m, s)
				for j := 0; j+1 < len(s); j++ {
					if lab[j+1] == IgnoreIndex {
						continue
					}
					wantSum += naiveNLL(rows[j], lab[j+1])
					wantN++
				}
			}
			sum, n, err := m.PackedNLL(p.tokens, p.positions, p.segIDs, labels)
			if err != nil {
				t.Fatal(err)
			}
			if n != wantN {
				t.Errorf("scored %d tokens, want %d", n, wantN)
			}
			if rel := math.Abs(sum-wantSum) / wantSum; !(rel <= 1e-9) {
				t.Errorf("nll sum %.12g, want %.12g (rel diff %.3g)", sum, wantSum, rel)
			}
			t.Logf("%s: nll sum %.12g over %d targets, naive %.12g", name, sum, n, wantSum)

			// All labels ignored: nothing scored.
			none := slices.Repeat([]int{IgnoreIndex}, len(labels))
			if sum, n, err := m.PackedNLL(p.tokens, p.positions, p.segIDs, none); err != nil || n != 0 || sum != 0 {
				t.Errorf("all labels ignored: sum %v, n %d, err %v; want 0, 0, nil", sum, n, err)
			}
		})
	}
}

// TestPackedBadInputs: malformed packed sequences are one-line errors naming
// the offending index, from both entry points.
func TestPackedBadInputs(t *testing.T) {
	m := newTestModel(t, smallConfig(), safetensors.F32, 1)
	V := m.Config.Vocab
	ok := []int{1, 2, 3, 4, 5}
	cases := []struct {
		name                              string
		tokens, positions, segIDs, labels []int
		want                              string
	}{
		{"empty", []int{}, []int{}, []int{}, []int{}, "no tokens"},
		{"short positions", ok, []int{0, 1, 2, 3}, []int{0, 0, 0, 0, 0}, ok, "5 tokens, 4 positions and 5 segIDs"},
		{"short segIDs", ok, []int{0, 1, 2, 3, 4}, []int{0, 0, 0}, ok, "5 tokens, 5 positions and 3 segIDs"},
		{"token below vocab", []int{1, -1, 3, 4, 5}, []int{0, 1, 2, 3, 4}, []int{0, 0, 0, 0, 0}, ok, "tokens[1] = -1"},
		{"token beyond vocab", []int{1, 2, 3, 4, V}, []int{0, 1, 2, 3, 4}, []int{0, 0, 0, 0, 0}, ok, "tokens[4] = 70"},
		{"first position not 0", ok, []int{1, 2, 3, 4, 5}, []int{0, 0, 0, 0, 0}, ok, "positions[0] = 1 at the start of segment 0, want 0"},
		{"new segment not at 0", ok, []int{0, 1, 2, 3, 4}, []int{0, 0, 1, 1, 1}, ok, "positions[2] = 2 at the start of segment 1, want 0"},
		{"position skips", ok, []int{0, 1, 3, 4, 5}, []int{0, 0, 0, 0, 0}, ok, "positions[2] = 3 after positions[1] = 1 in segment 0, want 2"},
		{"restart inside segment", ok, []int{0, 1, 0, 1, 2}, []int{7, 7, 7, 7, 7}, ok, "positions[2] = 0 after positions[1] = 1 in segment 7, want 2"},
		{"segIDs decrease", ok, []int{0, 1, 0, 1, 2}, []int{2, 2, 1, 1, 1}, ok, "segIDs[2] = 1 after segIDs[1] = 2, want non-decreasing"},
		{"short labels", ok, []int{0, 1, 2, 3, 4}, []int{0, 0, 0, 0, 0}, []int{1, 2}, "2 labels for 5 tokens"},
		{"label beyond vocab", ok, []int{0, 1, 2, 3, 4}, []int{0, 0, 0, 0, 0}, []int{1, 2, V, 4, 5}, "labels[2] = 70"},
		{"negative label", ok, []int{0, 1, 2, 3, 4}, []int{0, 0, 0, 0, 0}, []int{1, 2, 3, -1, 5}, "labels[3] = -1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := m.PackedNLL(c.tokens, c.positions, c.segIDs, c.labels)
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("PackedNLL: error %v, want one line containing %q", err, c.want)
			}
			if !strings.HasPrefix(c.name, "short labels") && !strings.Contains(c.name, "label") {
				hidden := make([]float32, len(c.tokens)*m.Config.Hidden)
				err := m.ForwardPacked(c.tokens, c.positions, c.segIDs, hidden)
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Errorf("ForwardPacked: error %v, want one containing %q", err, c.want)
				}
			}
		})
	}
	err := m.ForwardPacked(ok, []int{0, 1, 2, 0, 1}, []int{0, 0, 0, 1, 1}, make([]float32, 4*m.Config.Hidden))
	if err == nil || !strings.Contains(err.Error(), "hidden has 192 elements, want 240") {
		t.Errorf("short hidden: error %v", err)
	}
}

// TestPackedSteadyState: after a first call (and after a longer one, so the
// scratch is larger than needed) ForwardPacked and PackedNLL do not allocate,
// and repeated calls give identical results.
func TestPackedSteadyState(t *testing.T) {
	c := smallConfig()
	c.Windows = []int{3, 0}
	m := newTestModel(t, c, safetensors.BF16, 2)
	r := rand.New(rand.NewPCG(4, 4))
	long := pack([][]int{randTokens(r, 30, c.Vocab)}, []int{0})
	p := pack([][]int{randTokens(r, 9, c.Vocab), randTokens(r, 1, c.Vocab), randTokens(r, 6, c.Vocab)}, []int{0, 1, 2})
	labels := slices.Clone(p.tokens)
	labels[3] = IgnoreIndex
	T := len(p.tokens)
	hidden := make([]float32, 30*c.Hidden)
	if err := m.ForwardPacked(long.tokens, long.positions, long.segIDs, hidden); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.PackedNLL(long.tokens, long.positions, long.segIDs, long.tokens); err != nil {
		t.Fatal(err)
	}
	first := make([]float32, T*c.Hidden)
	if err := m.ForwardPacked(p.tokens, p.positions, p.segIDs, first); err != nil {
		t.Fatal(err)
	}
	sum0, _, _ := m.PackedNLL(p.tokens, p.positions, p.segIDs, labels)
	if n := testing.AllocsPerRun(5, func() {
		if err := m.ForwardPacked(p.tokens, p.positions, p.segIDs, hidden[:T*c.Hidden]); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("ForwardPacked allocates %v times per call", n)
	}
	if !slices.Equal(first, hidden[:T*c.Hidden]) {
		t.Error("ForwardPacked: repeated calls differ")
	}
	var sum float64
	if n := testing.AllocsPerRun(5, func() {
		var err error
		if sum, _, err = m.PackedNLL(p.tokens, p.positions, p.segIDs, labels); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("PackedNLL allocates %v times per call", n)
	}
	if sum != sum0 {
		t.Errorf("PackedNLL: repeated calls differ: %v then %v", sum0, sum)
	}
}

// BenchmarkForwardPacked512: 512 tokens holding four samples (200+150+100+62)
// through ForwardPacked, on the bench-qwen3-small model of BenchmarkPrefill512.
func BenchmarkForwardPacked512(b *testing.B) {
	m := getBenchModel(b)
	r := rand.New(rand.NewPCG(5, 6))
	var samples [][]int
	for _, n := range []int{200, 150, 100, 62} {
		samples = append(samples, randTokens(r, n, m.Config.Vocab))
	}
	p := pack(samples, []int{0, 1, 2, 3})
	T := len(p.tokens)
	hidden := make([]float32, T*m.Config.Hidden)
	b.ResetTimer()
	for b.Loop() {
		if err := m.ForwardPacked(p.tokens, p.positions, p.segIDs, hidden); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "tokens/s")
}
