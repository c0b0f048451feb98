package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// newDoRA is a DoRA adapter (r 4, alpha 8, every linear layer, seed 7) with
// random lora_B and, unless fresh, random magnitudes around 1 (so m/n is not
// 1 and the (m/n − 1)·base terms are exercised); fresh leaves the
// magnitudes zero for the pass (or BindBase) to set to ‖W + s·B·A‖.
func newDoRA(t testing.TB, mc *model.Config, dropout float64, fresh bool) *lora.Adapter {
	ad, err := lora.New(lora.Config{R: 4, Alpha: 8, Dropout: dropout, UseDoRA: true, TargetModules: []string{"all-linear"}}, mc, 7)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	for _, ten := range ad.Tensors() {
		switch {
		case strings.HasSuffix(ten.Name, "lora_B.weight"):
			for i := range ten.Data {
				ten.Data[i] = float32(r.NormFloat64() * 0.02)
			}
		case strings.HasSuffix(ten.Name, "lora_magnitude_vector") && !fresh:
			for i := range ten.Data {
				ten.Data[i] = float32(0.5 + r.Float64())
			}
		}
	}
	return ad
}

// TestDevicePassDoRA: DoRA adapters through the device pass against
// model.Pass on the CPU (lora/dora.go, itself checked against PEFT's
// DoraLinearLayer): loss and every grad (lora_A, lora_B and the
// magnitudes) of two accumulating micro-batches, every tiny model (qwen2's
// biases exercise the base − bias path), with and without checkpointing
// and dropout, and bf16 GEMMs. A quantized base is refused, as recipes
// and the CPU's DoRA refuse it.
func TestDevicePassDoRA(t *testing.T) {
	type doraCase struct {
		model string
		c     passCfg
	}
	var cases []doraCase
	for _, name := range tinyModels {
		for _, c := range []passCfg{{false, 0, false}, {true, 0.25, false}} {
			cases = append(cases, doraCase{name, c})
		}
	}
	cases = append(cases, doraCase{"qwen3-untied-bf16", passCfg{false, 0, true}}, doraCase{"qwen3-tied", passCfg{true, 0.25, true}})
	for _, dc := range cases {
		t.Run(fmt.Sprintf("%s/ckpt=%v/dropout=%v/bf16=%v", dc.model, dc.c.ckpt, dc.c.dropout, dc.c.bf16), func(t *testing.T) {
			fb, fake := newFake(t, dc.c.bf16)
			mc, mg := loadOn(t, dc.model, cpu.New(1)), loadOn(t, dc.model, fb)
			adc, adg := newDoRA(t, mc.Config, dc.c.dropout, false), newDoRA(t, mg.Config, dc.c.dropout, false)
			worst, at := comparePassAdapters(t, fb, mc, mg, adc, adg, dc.c)
			if fake.launches["dora_fwd"] == 0 || fake.launches["dora_dmag"] == 0 || fake.launches["dora_row_norm"] == 0 {
				t.Fatalf("the DoRA kernels did not run: %v", fake.launches)
			}
			for _, ten := range adc.Tensors() {
				if strings.HasSuffix(ten.Name, "lora_magnitude_vector") && allZero(ten.Grad) {
					t.Fatalf("%s: CPU grad is all zero", ten.Name)
				}
			}
			t.Logf("loss and grads (A, B, magnitudes) match: max rel err %.2e (%s)", worst, at)
		})
	}
}

// TestDevicePassDoRAInit: a new DoRA adapter's magnitudes (all zero) are
// set by the pass to ‖W + s·B·A‖ per row, on the device and in the host
// slab, as lora.Adapter.BindBase sets them on the CPU (model.NewPass), for
// fp32 and bf16 checkpoints and an NF4 base; a loaded (non-zero) magnitude
// is kept.
func TestDevicePassDoRAInit(t *testing.T) {
	for _, c := range []struct {
		model string
		nf4   bool
	}{{"qwen3-tied", false}, {"qwen3-untied-bf16", false}, {"qwen2", false}} {
		t.Run(fmt.Sprintf("%s/nf4=%v", c.model, c.nf4), func(t *testing.T) {
			fb, _ := newFake(t, false)
			mc, mg := loadOn(t, c.model, cpu.New(1)), loadOn(t, c.model, fb)
			if c.nf4 {
				for _, m := range []*model.Model{mc, mg} {
					if err := m.QuantizeBase(kernels.NF4, 1, nil); err != nil {
						t.Fatal(err)
					}
				}
			}
			adc, adg := newDoRA(t, mc.Config, 0, true), newDoRA(t, mg.Config, 0, true)
			if _, err := mc.NewPass(8, model.TrainOptions{Adapter: adc}); err != nil { // BindBase sets adc's magnitudes
				t.Fatal(err)
			}
			pg, err := fb.NewLoRAPass(mg, adg, PassOptions{MaxT: 8})
			if err != nil {
				t.Fatal(err)
			}
			defer pg.Close()
			ct, gt := adc.Tensors(), adg.Tensors()
			n := 0
			for i := range ct {
				if !strings.HasSuffix(ct[i].Name, "lora_magnitude_vector") {
					continue
				}
				n++
				if allZero(ct[i].Data) {
					t.Fatalf("%s: BindBase left it zero", ct[i].Name)
				}
				if e := maxRel(gt[i].Data, ct[i].Data); e > 1e-6 {
					t.Fatalf("%s: device pass's magnitude differs from BindBase's by %.2e", ct[i].Name, e)
				}
			}
			if n == 0 {
				t.Fatal("no magnitude")
			}
			// The device holds them too: a forward with them equals the CPU's.
			r := rand.New(rand.NewPCG(1, 2))
			ids, pos, seg, lab := passCase(r, mc.Config.Vocab, 8)
			pc, _ := mc.NewPass(8, model.TrainOptions{Adapter: adc})
			lc, _, err := pc.Loss(ids, pos, seg, lab)
			if err != nil {
				t.Fatal(err)
			}
			lg, _, err := pg.Eval(ids, pos, seg, lab)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(lg-lc) > 1e-5*math.Abs(lc) {
				t.Fatalf("eval loss %v, CPU %v", lg, lc)
			}
			// A loaded magnitude is kept.
			adk := newDoRA(t, mg.Config, 0, false)
			want := append([]float32(nil), adk.Params()...)
			pk, err := fb.NewLoRAPass(mg, adk, PassOptions{MaxT: 8})
			if err != nil {
				t.Fatal(err)
			}
			pk.Close()
			if maxRel(adk.Params(), want) != 0 {
				t.Fatal("the pass changed a loaded adapter's magnitudes")
			}
			t.Logf("%d magnitudes equal BindBase's (max rel err <= 1e-6); eval loss %v vs %v", n, lg, lc)
		})
	}
}

// TestDevicePassDoRAQuantizedBase: DoRA on a quantized base is a one-line
// error naming the module and the dtype, as recipes refuse lora.use_dora
// with lora.base_quant (the CPU's DoRA reads dense rows).
func TestDevicePassDoRAQuantizedBase(t *testing.T) {
	fb, _ := newFake(t, false)
	mg := loadOn(t, "qwen3-tied", fb)
	if err := mg.QuantizeBase(kernels.NF4, 1, nil); err != nil {
		t.Fatal(err)
	}
	_, err := fb.NewLoRAPass(mg, newDoRA(t, mg.Config, 0, true), PassOptions{MaxT: 8})
	if err == nil || !strings.Contains(err.Error(), "layer 0 q_proj: DoRA on a NF4 base") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error %v: want one line naming layer 0 q_proj and NF4", err)
	}
}

// TestDevicePassDoRAGPU is TestDevicePassDoRA on the GPU, in the backend's
// GEMM mode (bf16: the qwen3 models only, as there).
func TestDevicePassDoRAGPU(t *testing.T) {
	g := openOrSkip(t)
	for _, name := range tinyModels {
		if g.bf16 && !strings.HasPrefix(name, "qwen3") {
			continue
		}
		for _, c := range []passCfg{{false, 0, g.bf16}, {true, 0.25, g.bf16}} {
			t.Run(fmt.Sprintf("%s/ckpt=%v/dropout=%v", name, c.ckpt, c.dropout), func(t *testing.T) {
				mc, mg := loadOn(t, name, cpu.New(1)), loadOn(t, name, g)
				worst, at := comparePassAdapters(t, g, mc, mg, newDoRA(t, mc.Config, c.dropout, false), newDoRA(t, mg.Config, c.dropout, false), c)
				report(fmt.Sprintf("devpass dora %-18s ckpt=%-5v dropout=%-4v gemm %s: loss ok, grads max rel err %.2e (%s)\n",
					name, c.ckpt, c.dropout, gemmMode(g), worst, at))
			})
		}
	}
}
