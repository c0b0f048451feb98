package eval

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// devBackend is the CPU backend with a device windower (as kernels/cuda
// has): its windows are the model's own WindowNLL, counted, so the hook's
// wiring is checked here and the device numerics in kernels/cuda
// (TestDeviceWindower*, on the fake device).
type devBackend struct {
	kernels.Backend
	mu      sync.Mutex
	fail    error
	made    []int           // maxT of each windower made
	adapter []*lora.Adapter // the adapter each was given
	windows int             // windows scored by them
	closed  int
}

type devWindower struct {
	b *devBackend
	m *model.Model
}

func (b *devBackend) NewDeviceWindower(m *model.Model, a *lora.Adapter, maxT int) (any, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return nil, b.fail
	}
	b.made, b.adapter = append(b.made, maxT), append(b.adapter, a)
	return &devWindower{b, m}, nil
}

func (w *devWindower) WindowNLL(tokens []int) (float64, int, error) {
	w.b.mu.Lock()
	w.b.windows++
	w.b.mu.Unlock()
	return w.m.WindowNLL(tokens)
}

func (w *devWindower) Close() {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	w.b.closed++
}

func loadDev(t *testing.T, b *devBackend) *model.Model {
	t.Helper()
	m, err := model.Load(modelDir, model.LoadOptions{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestPerplexityDeviceWindower: Perplexity of a *model.Model asks its
// backend for a device windower sized for the longest window, scores every
// window through it, closes it, and gets the CPU's numbers bit for bit
// (the stand-in computes with the model itself); the adapter SetAdapter
// installed is handed over; an error making it is the measure's error.
func TestPerplexityDeviceWindower(t *testing.T) {
	ids := make([]int, 23) // windows of 8, 8 and 7 tokens
	for i := range ids {
		ids[i] = (i*37 + 5) % 200
	}
	want, err := Perplexity(loadTest(t, ""), ids, 8, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := &devBackend{Backend: cpu.New(1)}
	m := loadDev(t, b)
	got, err := Perplexity(m, ids, 8, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !same(got, want) || len(b.made) != 1 || b.made[0] != 8 || b.windows != 3 || b.closed != 1 || b.adapter[0] != nil {
		t.Fatalf("got %+v want %+v; windowers made %v, windows %d, closed %d, adapters %v", got, want, b.made, b.windows, b.closed, b.adapter)
	}
	// A corpus shorter than ctx: the windower is sized for it.
	if _, err := Perplexity(m, ids[:5], 8, nil); err != nil || b.made[1] != 5 {
		t.Fatalf("short corpus: windower for %v tokens, error %v", b.made, err)
	}

	ad, err := lora.New(lora.Config{R: 2, Alpha: 4, TargetModules: []string{"q_proj"}}, m.Config, 3)
	if err != nil {
		t.Fatal(err)
	}
	m.SetAdapter(ad)
	if _, err := Perplexity(m, ids, 8, nil); err != nil || b.adapter[2] != ad {
		t.Fatalf("with an adapter: windower given %v, error %v", b.adapter, err)
	}

	b.fail = errors.New("out of memory")
	if _, err := Perplexity(m, ids, 8, nil); err == nil || !strings.Contains(err.Error(), "device windower on backend cpu: out of memory") {
		t.Fatalf("error %v", err)
	}
}

// TestPerplexityDistDeviceWindower: each rank makes its own windower, a
// rank with no window makes none, and the ranks agree bit for bit with one
// process.
func TestPerplexityDistDeviceWindower(t *testing.T) {
	ids := make([]int, 15) // windows of 8 and 7 tokens
	for i := range ids {
		ids[i] = (i*53 + 1) % 200
	}
	want, err := Perplexity(loadTest(t, ""), ids, 8, nil)
	if err != nil {
		t.Fatal(err)
	}
	const W = 3
	bs := make([]*devBackend, W)
	ms := make([]*model.Model, W)
	for r := range bs {
		bs[r] = &devBackend{Backend: cpu.New(1)}
		ms[r] = loadDev(t, bs[r])
	}
	for r, got := range ranks(t, W, func(d Reducer) (PPLResult, error) { return PerplexityDist(ms[d.Rank()], ids, 8, d, nil) }) {
		if !same(got, want) {
			t.Fatalf("rank %d: %+v, one process %+v", r, got, want)
		}
	}
	for r, b := range bs {
		if made := r < 2; (len(b.made) == 1) != made || b.windows != map[bool]int{true: 1}[made] || b.closed != len(b.made) {
			t.Fatalf("rank %d: windowers %v, windows %d, closed %d", r, b.made, b.windows, b.closed)
		}
	}
}
