package cuda

import (
	"fmt"
	"github.com/tunellm/tune/tokenizer"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/eval"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// The device windower (deveval.go) on the CPU-executing fake device
// (fakedev_test.go) against model.Model.WindowNLL on the CPU backend: the
// NLL sum and count of windows of several lengths, with and without an
// adapter, the bytes a window moves, eval.Perplexity through it, and the
// cases that keep the per-op path.

// windowNLLTol is the relative tolerance of a window's NLL sum against the
// CPU's. fp32 GEMMs: the same ops in another summation order (packed
// attention instead of the KV-cache kernel, the bias added after the GEMM,
// float64 partial sums of the losses): 6.4e-7 worst measured, so 1e-5.
// bf16 GEMMs: every base GEMM's operands are rounded to bf16 (2^-9
// relative per element) while the CPU computes in fp32, so each logit
// moves by ~1e-2 absolute and a token's NLL (about log V = 5.6 nats here)
// by ~2e-3 relative; a 2-token window scores one token, so nothing
// averages out. Measured worst 3.1e-3 (qwen3-tied) and 7.5e-4
// (qwen3-untied-bf16): 1e-2, half TestDevicePass's loss bound, and 26x
// below a target shifted by one row (2.6e-1).
func windowNLLTol(bf16 bool) float64 {
	if bf16 {
		return 1e-2
	}
	return 1e-5
}

// evalWindows are the window lengths each model is scored on: one token
// (nothing scored), two, ragged ones, and the windower's maximum.
var evalWindows = []int{1, 2, 5, 9, 12}

const evalMaxT = 12

func TestDeviceWindower(t *testing.T) {
	for _, name := range tinyModels {
		for _, c := range []struct {
			bf16, adapter bool
		}{{false, false}, {false, true}, {true, false}} {
			if c.bf16 && name != "qwen3-untied-bf16" && name != "qwen3-tied" {
				continue
			}
			t.Run(fmt.Sprintf("%s/bf16=%v/adapter=%v", name, c.bf16, c.adapter), func(t *testing.T) {
				fb, fake := newFake(t, c.bf16)
				worst := compareWindows(t, fb, fake, name, c.adapter)
				if fake.launches["gather_rows"] == 0 {
					t.Fatal("no device-pass kernel ran")
				}
				t.Logf("windows %v: max rel err %.2e", evalWindows, worst)
			})
		}
	}
}

// compareWindows scores windows of each length in evalWindows with the
// device windower on g (fake: the fake device behind g, whose traffic per
// window it checks; nil on a GPU) and with model.Model.WindowNLL on the
// CPU backend, with or without the same adapter (dropout configured, off
// in eval); it returns the largest relative error of the NLL sums.
func compareWindows(t *testing.T, g *Backend, fake *fakeDev, name string, adapter bool) float64 {
	mc := loadOn(t, name, cpu.New(1))
	mg := loadOn(t, name, g)
	var ad *lora.Adapter
	if adapter {
		mc.SetAdapter(newAdapter(t, mc.Config, 0.25))
		ad = newAdapter(t, mg.Config, 0.25)
	}
	w, err := g.newDeviceWindower(mg, ad, evalMaxT)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r := rand.New(rand.NewPCG(11, 12))
	worst := 0.0
	for _, T := range evalWindows {
		ids := make([]int, T)
		for i := range ids {
			ids[i] = r.IntN(mc.Config.Vocab)
		}
		want, wn, err := mc.WindowNLL(ids)
		if err != nil {
			t.Fatal(err)
		}
		var h0, d0 uint64
		if fake != nil {
			h0, d0 = fake.htod, fake.dtoh
		}
		got, gn, err := w.WindowNLL(ids)
		if err != nil {
			t.Fatal(err)
		}
		if fake != nil {
			// Per window: the pass's int32 inputs (5 rows of maxT) up and
			// the NLL sum down; nothing for a 1-token window.
			wantUp, wantDown := uint64(5*evalMaxT*4), uint64(8)
			if T < 2 {
				wantUp, wantDown = 0, 0
			}
			if up, down := fake.htod-h0, fake.dtoh-d0; up != wantUp || down != wantDown {
				t.Fatalf("T=%d: the window moved %d bytes up and %d down, want %d and %d", T, up, down, wantUp, wantDown)
			}
		}
		e := math.Abs(got-want) / max(math.Abs(want), 1e-30)
		if gn != wn || gn != max(T-1, 0) || !(e <= windowNLLTol(g.bf16)) {
			t.Fatalf("T=%d: device NLL %v over %d tokens, cpu %v over %d (rel err %.2e, tolerance %.0e)", T, got, gn, want, wn, e, windowNLLTol(g.bf16))
		}
		worst = max(worst, e)
	}
	return worst
}

// TestDeviceWindowerPerplexity: eval.Perplexity of a model on the fake
// device (which picks the device windower through eval.DeviceWindower)
// equals eval.Perplexity of the model on the CPU, with and without an
// adapter installed by SetAdapter; with TUNE_CUDA_PASS=host the per-op
// path computes it, and equally.
func TestDeviceWindowerPerplexity(t *testing.T) {
	const name, ctx = "qwen2", 16
	r := rand.New(rand.NewPCG(3, 5))
	for _, adapter := range []bool{false, true} {
		for _, devPass := range []bool{true, false} {
			t.Run(fmt.Sprintf("adapter=%v/devPass=%v", adapter, devPass), func(t *testing.T) {
				mc := loadOn(t, name, cpu.New(1))
				fb, fake := newFake(t, false)
				fb.devPass = devPass
				mg := loadOn(t, name, fb)
				if adapter {
					mc.SetAdapter(newAdapter(t, mc.Config, 0))
					mg.SetAdapter(newAdapter(t, mg.Config, 0))
				}
				ids := make([]int, 2*ctx+7) // windows of 16, 16 and 7 tokens
				for i := range ids {
					ids[i] = r.IntN(mc.Config.Vocab)
				}
				want, err := eval.Perplexity(mc, ids, ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				got, err := eval.Perplexity(mg, ids, ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				if got.Tokens != want.Tokens || got.Windows != 3 || math.Abs(got.NLL-want.NLL) > 1e-5*want.NLL {
					t.Fatalf("device: %+v, cpu: %+v", got, want)
				}
				if on := fake.launches["gather_rows"] > 0; on != devPass {
					t.Fatalf("the device pass ran: %v, want %v", on, devPass)
				}
				t.Logf("ppl %.6f (cpu %.6f) over %d tokens", got.PPL, want.PPL, got.Tokens)
			})
		}
	}
}

// TestDeviceWindowerFallback: where the device pass does not take the
// model NewDeviceWindower returns nil and eval.DeviceWindower the model
// itself (its per-op WindowNLL).
func TestDeviceWindowerFallback(t *testing.T) {
	fb, _ := newFake(t, false)
	mg := loadOn(t, "qwen3-tied", fb)
	dora, err := lora.New(lora.Config{R: 4, Alpha: 8, UseDoRA: true, TargetModules: []string{"q_proj"}}, mg.Config, 1)
	if err != nil {
		t.Fatal(err)
	}
	plain := newAdapter(t, mg.Config, 0)
	for _, c := range []struct {
		name    string
		ad      *lora.Adapter
		maxT    int
		devPass bool
		want    bool
	}{
		{"base", nil, 8, true, true},
		{"lora", plain, 8, true, true},
		{"dora", dora, 8, true, true},
		{"TUNE_CUDA_PASS=host", nil, 8, false, false},
		{"beyond max_position_embeddings", nil, mg.Config.MaxPositions + 1, true, false},
	} {
		fb.devPass = c.devPass
		w, err := fb.NewDeviceWindower(mg, c.ad, c.maxT)
		if err != nil || (w != nil) != c.want {
			t.Errorf("%s: windower %T, error %v; want one: %v", c.name, w, err, c.want)
		}
		if w != nil {
			w.(*DeviceWindower).Close()
		}
		mg.SetAdapter(nil)
		if c.ad != nil {
			mg.SetAdapter(c.ad)
		}
		ew, done, err := eval.DeviceWindower(mg, c.maxT)
		if err != nil {
			t.Fatal(err)
		}
		if _, isModel := ew.(*model.Model); isModel == c.want {
			t.Errorf("%s: eval.DeviceWindower gave %T", c.name, ew)
		}
		done()
	}
	// The CPU backend has no device windower.
	mc := loadOn(t, "qwen3-tied", cpu.New(1))
	if ew, done, err := eval.DeviceWindower(mc, 8); err != nil || ew != eval.Windower(mc) {
		t.Errorf("cpu: %T, %v; want the model itself", ew, err)
	} else {
		done()
	}
}

// TestDeviceWindowerRejects: bad windows are one-line errors.
func TestDeviceWindowerRejects(t *testing.T) {
	fb, _ := newFake(t, false)
	mg := loadOn(t, "qwen3-tied", fb)
	w, err := fb.newDeviceWindower(mg, nil, 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		want string
		ids  []int
	}{
		{"window of 5 tokens exceeds the 4", []int{1, 2, 3, 4, 5}},
		{"tokens[1] = 261 outside the vocabulary [0,261)", []int{1, 261}},
		{"tokens[0] = -1", []int{-1, 2}},
	} {
		if _, _, err := w.WindowNLL(c.ids); err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("error %v, want one line with %q", err, c.want)
		}
	}
	w.Close()
	if _, _, err := w.WindowNLL([]int{1, 2}); err == nil {
		t.Error("WindowNLL after Close: no error")
	}
	if _, err := fb.newDeviceWindower(mg, nil, 1); err == nil {
		t.Error("maxT 1: no error")
	}
}

// TestDryDeviceWindower: the windower's launches and GEMMs through the dry
// backend (arguments against kernels.ptx's signatures, leading dimensions
// by cuBLAS's rules), every tiny model, base and adapter, fp32 and bf16
// GEMMs, a ragged and a full window.
func TestDryDeviceWindower(t *testing.T) {
	for _, name := range tinyModels {
		for _, bf16 := range []bool{false, true} {
			for _, adapter := range []bool{false, true} {
				b := newDry(t)
				b.bf16 = bf16
				m := loadOn(t, name, b)
				var ad *lora.Adapter
				if adapter {
					ad = newAdapter(t, m.Config, 0)
				}
				w, err := b.newDeviceWindower(m, ad, evalMaxT)
				if err != nil {
					t.Fatalf("%s bf16=%v adapter=%v: %v", name, bf16, adapter, err)
				}
				for _, T := range []int{5, evalMaxT} {
					if _, n, err := w.WindowNLL(make([]int, T)); err != nil || n != T-1 {
						t.Fatalf("%s bf16=%v adapter=%v T=%d: %d scored, %v", name, bf16, adapter, T, n, err)
					}
				}
				w.Close()
			}
		}
	}
	if dryLaunches["gather_rows"] == 0 || dryLaunches["nll_fwd"] == 0 {
		t.Fatalf("the pass's kernels did not run: %v", dryLaunches)
	}
}

// TestDeviceBenchScorer: eval.Scorer's continuation log-likelihoods (the
// bench tasks' choices) scored on the fake device through the windower's
// WindowNLLFrom equal the CPU's (Forward, then log-softmax of the last
// rows), for short and long contexts (401 tokens after the left
// truncation: the windower, first sized 256, grows), an empty
// context (EOS first) and a one-token continuation; the device path ran.
func TestDeviceBenchScorer(t *testing.T) {
	for _, name := range []string{"qwen3-tied", "llama3"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join("..", "..", "testdata", "models", name)
			tok, err := tokenizer.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			mc := loadOn(t, name, cpu.New(1))
			fb, fake := newFake(t, false)
			mg := loadOn(t, name, fb)
			sc := &eval.Scorer{M: mc, Cfg: mc.Config, Tok: tok, MaxLen: 400}
			sg := &eval.Scorer{M: mg, Cfg: mg.Config, Tok: tok, MaxLen: 400}
			long := strings.Repeat("The court held that the contract was void. ", 40)
			for _, c := range []struct{ ctx, cont string }{
				{"Question: what is two plus two?\nAnswer:", " four"},
				{"The capital of France is", " Paris, a city on the Seine"},
				{"", "Hello world"},
				{long, " yes"},
				{"a", "b"},
			} {
				want, wn, err := sc.LogLikelihood(c.ctx, c.cont)
				if err != nil {
					t.Fatal(err)
				}
				before := fake.launches["nll_fwd"]
				got, gn, err := sg.LogLikelihood(c.ctx, c.cont)
				if err != nil {
					t.Fatal(err)
				}
				if fake.launches["nll_fwd"] == before {
					t.Fatalf("%.20q + %q: not scored on the device", c.ctx, c.cont)
				}
				if gn != wn || math.Abs(got-want) > 1e-5*math.Abs(want)+1e-6 {
					t.Fatalf("%.20q + %q: device %v over %d tokens, cpu %v over %d", c.ctx, c.cont, got, gn, want, wn)
				}
			}
		})
	}
}
