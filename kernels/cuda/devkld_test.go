package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tunellm/tune/eval"
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
)

// kldPair is a base model and a model under test, made the same way on any
// backend.
type kldPair struct {
	name string
	mk   func(t *testing.T, be kernels.Backend) (base, m *model.Model)
}

func kldPairs() []kldPair {
	return []kldPair{
		{"qwen3-untied-bf16 vs its NF4 base", func(t *testing.T, be kernels.Backend) (*model.Model, *model.Model) {
			base, m := loadOn(t, "qwen3-untied-bf16", be), loadOn(t, "qwen3-untied-bf16", be)
			if err := m.QuantizeBase(kernels.NF4, 1, nil); err != nil {
				t.Fatal(err)
			}
			return base, m
		}},
		{"qwen2 vs qwen2 with a LoRA adapter", func(t *testing.T, be kernels.Backend) (*model.Model, *model.Model) {
			base, m := loadOn(t, "qwen2", be), loadOn(t, "qwen2", be)
			m.SetAdapter(newAdapter(t, m.Config, 0))
			return base, m
		}},
		{"llama3 vs llama3 with a DoRA adapter", func(t *testing.T, be kernels.Backend) (*model.Model, *model.Model) {
			base, m := loadOn(t, "llama3", be), loadOn(t, "llama3", be)
			m.SetAdapter(newDoRA(t, m.Config, 0, false))
			return base, m
		}},
	}
}

// TestDeviceKLD: eval.KLDivergence with both models on the fake device
// (each through its device pass; kld_rows reduces the logits) equals the
// CPU's per-op KLDivergence (KLDAcc.Add on logits rows), in llama.cpp's
// second-half mode with BOS and in all-tokens mode with a ragged last
// window, for a quantized model, a LoRA and a DoRA adapter: every
// statistic within 1e-6 relative (the logits differ by fp32 summation
// order), the same-top fraction exactly; per window only the token ids and
// targets go up and 32 bytes per scored token come down. With
// TUNE_CUDA_PASS=host the per-op path runs and agrees too.
func TestDeviceKLD(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	for _, pr := range kldPairs() {
		for _, opts := range []eval.KLDOptions{{Ctx: 16, BOS: 1}, {Ctx: 16, AllTokens: true, BOS: -1}} {
			for _, devPass := range []bool{true, false} {
				t.Run(fmt.Sprintf("%s/all=%v/devPass=%v", pr.name, opts.AllTokens, devPass), func(t *testing.T) {
					bc, mc := pr.mk(t, cpu.New(1))
					fb, fake := newFake(t, false)
					fb.devPass = devPass
					bg, mg := pr.mk(t, fb)
					ids := make([]int, 3*opts.Ctx+5)
					for i := range ids {
						ids[i] = r.IntN(bc.Config.Vocab)
					}
					want, err := eval.KLDivergence(bc, mc, ids, opts, nil)
					if err != nil {
						t.Fatal(err)
					}
					h0, d0 := fake.htod, fake.dtoh
					got, err := eval.KLDivergence(bg, mg, ids, opts, nil)
					if err != nil {
						t.Fatal(err)
					}
					if on := fake.launches["kld_rows"] > 0; on != devPass {
						t.Fatalf("kld_rows ran: %v, want %v", on, devPass)
					}
					if got.Tokens != want.Tokens || got.Windows != want.Windows || got.SameTop != want.SameTop {
						t.Fatalf("tokens %d windows %d same-top %v; cpu %d %d %v", got.Tokens, got.Windows, got.SameTop, want.Tokens, want.Windows, want.SameTop)
					}
					// The logits differ from the CPU's by fp32 summation order
					// (~1e-6 nats at these magnitudes), which moves a token's
					// NLLs and KL by about that much: KL statistics and ln PPL
					// within 2e-5 nats, probabilities within 2e-6. A wrong row
					// or target moves them by 1e-2 and more.
					for _, c := range []struct {
						name      string
						got, want float64
						tol       float64
					}{{"kld mean", got.KLDMean, want.KLDMean, 2e-5}, {"kld max", got.KLD.Max, want.KLD.Max, 2e-5},
						{"kld median", got.KLD.Median, want.KLD.Median, 2e-5}, {"kld p99", got.KLD.P99, want.KLD.P99, 2e-5},
						{"ln ppl model", math.Log(got.PPLModel), math.Log(want.PPLModel), 2e-5}, {"ln ppl base", math.Log(got.PPLBase), math.Log(want.PPLBase), 2e-5},
						{"delta p mean", got.DeltaPMean, want.DeltaPMean, 2e-6}, {"delta p rms", got.DeltaPRMS, want.DeltaPRMS, 2e-6}} {
						if !(math.Abs(c.got-c.want) <= c.tol) {
							t.Errorf("%s %v, cpu %v (tolerance %.0e)", c.name, c.got, c.want, c.tol)
						}
					}
					if want.KLDMean <= 0 {
						t.Fatalf("KLD mean %v: the pair does not differ, the case tests nothing", want.KLDMean)
					}
					if devPass {
						wins, _ := eval.KLDWindows(ids, opts)
						// Per window: two passes' int32 inputs (5 arrays of maxT), the targets; 32 bytes a scored token.
						maxT := 0
						for _, w := range wins {
							maxT = max(maxT, len(w))
						}
						up, down := fake.htod-h0, fake.dtoh-d0
						scored := uint64(got.Tokens)
						var tg uint64
						first := opts.Ctx / 2
						if opts.AllTokens {
							first = 0
						}
						for _, w := range wins {
							tg += uint64(len(w)-1-first) * 4
						}
						if wantDown := 32 * scored; down != wantDown {
							t.Errorf("%d bytes down, want %d (32 per scored token)", down, wantDown)
						}
						if maxUp := uint64(len(wins))*2*20*uint64(maxT) + tg; up > maxUp+(1<<20) || up < tg {
							t.Errorf("%d bytes up over %d windows (targets %d)", up, len(wins), tg)
						}
						t.Logf("KLD %.6g (cpu %.6g), ppl %.5f/%.5f, same-top %.3f over %d tokens; window traffic: %d bytes up (weights included), %d down",
							got.KLDMean, want.KLDMean, got.PPLModel, got.PPLBase, got.SameTop, got.Tokens, up, down)
					}
				})
			}
		}
	}
}

// TestDeviceKLDGPU is TestDeviceKLD on the GPU (device pass and kld_rows vs
// the CPU), in the backend's GEMM mode (bf16: a tolerance of 2e-2 nats on
// the statistics, which then only shows the path runs and is sane).
func TestDeviceKLDGPU(t *testing.T) {
	g := openOrSkip(t)
	r := rand.New(rand.NewPCG(7, 9))
	tol := 2e-5
	if g.bf16 {
		tol = 2e-2
	}
	for _, pr := range kldPairs() {
		t.Run(pr.name, func(t *testing.T) {
			opts := eval.KLDOptions{Ctx: 64, BOS: 1}
			bc, mc := pr.mk(t, cpu.New(1))
			bg, mg := pr.mk(t, g)
			ids := make([]int, 4*opts.Ctx)
			for i := range ids {
				ids[i] = r.IntN(bc.Config.Vocab)
			}
			want, err := eval.KLDivergence(bc, mc, ids, opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := eval.KLDivergence(bg, mg, ids, opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			d := max(math.Abs(got.KLDMean-want.KLDMean), math.Abs(math.Log(got.PPLModel/want.PPLModel)), math.Abs(math.Log(got.PPLBase/want.PPLBase)))
			report(fmt.Sprintf("device kld %-36s gemm %s: KLD %.6g (cpu %.6g), same-top %.3f (cpu %.3f), max diff %.2e nats\n",
				pr.name, gemmMode(g), got.KLDMean, want.KLDMean, got.SameTop, want.SameTop, d))
			if got.Tokens != want.Tokens || !(d <= tol) {
				t.Fatalf("device %+v\ncpu %+v", got, want)
			}
		})
	}
}
