package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/train"
)

// The device-resident LoRA pass (devpass.go) on the CPU-executing fake
// device (fakedev_test.go) against the CPU backend's model.Pass with the
// same adapter: loss and every LoRA gradient, every tiny model, with and
// without checkpointing and dropout; optimizer steps against the host
// AdamW; and the host<->device traffic of a step.

// passCase is one packed micro-batch: two documents in maxT-3 rows, some
// labels ignored.
func passCase(r *rand.Rand, V, T int) (ids, pos, seg, lab []int32) {
	cut := T / 2
	for t := range T {
		s, p := int32(0), int32(t)
		if t >= cut {
			s, p = 1, int32(t-cut)
		}
		id := int32(r.IntN(V))
		l := id
		if p == 0 || t%5 == 3 {
			l = model.IgnoreIndex
		}
		ids, pos, seg, lab = append(ids, id), append(pos, p), append(seg, s), append(lab, l)
	}
	return
}

// newAdapter is the adapter of newLoRARun (r 4, alpha 8, all linear
// layers, seed 7, random lora_B).
func newAdapter(t testing.TB, mc *model.Config, dropout float64) *lora.Adapter {
	ad, err := lora.New(lora.Config{R: 4, Alpha: 8, Dropout: dropout, TargetModules: []string{"all-linear"}}, mc, 7)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	for _, ten := range ad.Tensors() {
		if strings.HasSuffix(ten.Name, "lora_B.weight") {
			for i := range ten.Data {
				ten.Data[i] = float32(r.NormFloat64() * 0.02)
			}
		}
	}
	return ad
}

func loadOn(t testing.TB, name string, be kernels.Backend) *model.Model {
	m, err := model.Load(filepath.Join("..", "..", "testdata", "models", name), model.LoadOptions{Backend: be})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// maxRel is max|a-b| / max|b| (b the reference).
func maxRel(a, b []float32) float64 {
	var d, s float64
	for i := range b {
		d = max(d, math.Abs(float64(a[i])-float64(b[i])))
		s = max(s, math.Abs(float64(b[i])))
	}
	if math.IsNaN(d) {
		return math.Inf(1)
	}
	return d / max(s, 1e-30)
}

// passCfg is one comparison of TestDevicePass.
type passCfg struct {
	ckpt    bool
	dropout float64
	bf16    bool
}

var passCfgs = []passCfg{{false, 0, false}, {true, 0, false}, {false, 0.25, false}, {true, 0.25, false}, {false, 0, true}, {true, 0, true}}

func TestDevicePass(t *testing.T) {
	for _, name := range tinyModels {
		for _, c := range passCfgs {
			if c.bf16 && name != "qwen3-untied-bf16" && name != "qwen3-tied" {
				continue
			}
			t.Run(fmt.Sprintf("%s/ckpt=%v/dropout=%v/bf16=%v", name, c.ckpt, c.dropout, c.bf16), func(t *testing.T) {
				fb, fake := newFake(t, c.bf16)
				worst, at := comparePass(t, fb, name, c)
				t.Logf("loss and grads match: max rel err %.2e (%s); %d launches, %d GEMMs", worst, at, sum(fake.launches), fake.gemms)
			})
		}
	}
}

// comparePass runs two accumulating micro-batches (13 and 12 rows of a
// 16-row pass, loss chunks of 4 rows) through model.Pass on the CPU and
// the device pass on g, and compares the losses and every LoRA grad; it
// returns the largest grad error and where.
func comparePass(t *testing.T, g *Backend, name string, c passCfg) (float64, string) {
	return comparePassModels(t, g, loadOn(t, name, cpu.New(1)), loadOn(t, name, g), c)
}

// comparePassModels is comparePass on a model mc on the CPU backend and the
// same model mg loaded on g.
func comparePassModels(t *testing.T, g *Backend, mc, mg *model.Model, c passCfg) (float64, string) {
	return comparePassAdapters(t, g, mc, mg, newAdapter(t, mc.Config, c.dropout), newAdapter(t, mg.Config, c.dropout), c)
}

// comparePassAdapters is comparePassModels with the adapters given (equal
// ones: adc for the CPU, adg for g).
func comparePassAdapters(t *testing.T, g *Backend, mc, mg *model.Model, adc, adg *lora.Adapter, c passCfg) (float64, string) {
	const maxT, T, LC = 16, 13, 4
	pc, err := mc.NewPass(maxT, model.TrainOptions{Adapter: adc, Checkpointing: c.ckpt, LossChunk: LC})
	if err != nil {
		t.Fatal(err)
	}
	pg, err := g.NewLoRAPass(mg, adg, PassOptions{MaxT: maxT, Checkpointing: c.ckpt, LossChunk: LC})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	r := rand.New(rand.NewPCG(1, 2))
	for mb := range 2 { // two micro-batches accumulate
		ids, pos, seg, lab := passCase(r, mc.Config.Vocab, T-mb)
		adc.SetDropoutStep(uint64(mb))
		pg.SetDropoutStep(uint64(mb))
		lc, nc, err := pc.Forward(ids, pos, seg, lab)
		if err != nil {
			t.Fatal(err)
		}
		lg, ng, err := pg.Forward(ids, pos, seg, lab)
		if err != nil {
			t.Fatal(err)
		}
		tol := 1e-5
		if c.bf16 {
			tol = 2e-2
		}
		if nc != ng || math.Abs(lg-lc) > tol*math.Abs(lc) {
			t.Fatalf("micro-batch %d: loss %v over %d rows, cpu %v over %d", mb, lg, ng, lc, nc)
		}
		if err := pc.Backward(0.05); err != nil {
			t.Fatal(err)
		}
		if err := pg.Backward(0.05); err != nil {
			t.Fatal(err)
		}
	}
	tol := 2e-5
	if c.bf16 {
		tol = 5e-2
	}
	gt, ct := adg.Tensors(), adc.Tensors()
	worst, at := 0.0, ""
	for i := range ct {
		if e := maxRel(gt[i].Grad, ct[i].Grad); e > worst || math.IsNaN(e) {
			worst, at = e, ct[i].Name
		}
		if allZero(ct[i].Grad) {
			t.Fatalf("%s: CPU grad is all zero: the case does not exercise it", ct[i].Name)
		}
	}
	if worst > tol {
		t.Fatalf("LoRA grads: max relative error %.2e at %s (tolerance %.0e)", worst, at, tol)
	}
	return worst, at
}

func allZero(x []float32) bool {
	for _, v := range x {
		if v != 0 {
			return false
		}
	}
	return true
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// TestDevicePassStep: optimizer steps on the device (grad norm, clipping,
// AdamW) track train.GradNorm, train.ClipGrads and train.AdamW on the CPU
// pass's grads, and a step moves O(1) bytes between host and device: the
// int32 inputs up and the loss down per micro-batch, the grad norm down per
// step, nothing else.
func TestDevicePassStep(t *testing.T) {
	devicePassSteps(t, func(mc *model.Config) *lora.Adapter { return newAdapter(t, mc, 0.1) })
}

// TestDevicePassDoRAStep is TestDevicePassStep with a DoRA adapter: after
// each device step the norms and m/n follow the new A, B and m (a pass
// that kept the first step's norms fails the next step's loss).
func TestDevicePassDoRAStep(t *testing.T) {
	devicePassSteps(t, func(mc *model.Config) *lora.Adapter { return newDoRA(t, mc, 0.1, false) })
}

func devicePassSteps(t *testing.T, mk func(*model.Config) *lora.Adapter) {
	const maxT, T, name = 16, 14, "qwen3-tied"
	mc := loadOn(t, name, cpu.New(1))
	adc := mk(mc.Config)
	pc, err := mc.NewPass(maxT, model.TrainOptions{Adapter: adc, Checkpointing: true})
	if err != nil {
		t.Fatal(err)
	}
	fb, fake := newFake(t, false)
	mg := loadOn(t, name, fb)
	adg := mk(mg.Config)
	pg, err := fb.NewLoRAPass(mg, adg, PassOptions{MaxT: maxT, Checkpointing: true})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	pg.DeviceOptimizer()
	acfg := train.AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01}
	opt := train.NewAdamW(len(adc.Params()), acfg)
	r := rand.New(rand.NewPCG(3, 4))
	for step := range 3 {
		pg.ZeroGrads()
		adc.ZeroGrads()
		h0, d0 := fake.htod, fake.dtoh
		var lossC, lossG float64
		for mb := range 2 {
			ids, pos, seg, lab := passCase(r, mc.Config.Vocab, T-mb)
			adc.SetDropoutStep(uint64(step)<<24 | uint64(mb))
			pg.SetDropoutStep(uint64(step)<<24 | uint64(mb))
			lc, _, err := pc.Forward(ids, pos, seg, lab)
			if err != nil {
				t.Fatal(err)
			}
			lg, _, err := pg.Forward(ids, pos, seg, lab)
			if err != nil {
				t.Fatal(err)
			}
			lossC, lossG = lossC+lc, lossG+lg
			if err := pc.Backward(0.04); err != nil {
				t.Fatal(err)
			}
			if err := pg.Backward(0.04); err != nil {
				t.Fatal(err)
			}
		}
		nc := train.GradNorm(adc.Grads())
		train.ClipGrads(nc, 0.5, adc.Grads())
		opt.Update(1e-2, [][]float32{adc.Params()}, [][]float32{adc.Grads()})
		ng, err := pg.Step(1e-2, 0.5, 0.9, 0.999, 1e-8, 0.01)
		if err != nil {
			t.Fatal(err)
		}
		up, down := fake.htod-h0, fake.dtoh-d0
		if want := uint64(2 * 5 * maxT * 4); up != want || down != 3*8 {
			t.Fatalf("step %d moved %d bytes up and %d down, want %d (int32 inputs) and 24 (two losses, the grad norm)", step, up, down, want)
		}
		if math.Abs(lossG-lossC) > 1e-5*math.Abs(lossC) || math.Abs(ng-nc) > 1e-4*nc {
			t.Fatalf("step %d: loss %v grad norm %v, cpu %v and %v", step, lossG, ng, lossC, nc)
		}
		t.Logf("step %d: loss %.6f (cpu %.6f), grad norm %.6f (cpu %.6f), %d bytes up, %d down", step, lossG, lossC, ng, nc, up, down)
	}
	host := make([]float32, len(adg.Params()))
	copy(host, adg.Params())
	m, v := make([]float32, len(host)), make([]float32, len(host))
	steps, err := pg.SyncToHost(m, v)
	if err != nil {
		t.Fatal(err)
	}
	if steps != 3 {
		t.Fatalf("SyncToHost: %d steps, want 3", steps)
	}
	if allEqual(host, adg.Params()) {
		t.Fatal("the adapter's host slab did not change: SyncToHost copied nothing")
	}
	for _, c := range []struct {
		name      string
		got, want []float32
		tol       float64
	}{{"params", adg.Params(), adc.Params(), 1e-4}, {"adam m", m, opt.M, 1e-4}, {"adam v", v, opt.V, 1e-4}} {
		if e := maxRel(c.got, c.want); e > c.tol {
			t.Fatalf("%s after 3 steps: max relative error %.2e", c.name, e)
		}
	}
	// Resuming: LoadFromHost puts the state back.
	if err := pg.LoadFromHost(m, v, steps); err != nil {
		t.Fatal(err)
	}
}

func allEqual(a, b []float32) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestDevicePassRejects: bad inputs are one-line errors before the device,
// as model.Pass reports them.
func TestDevicePassRejects(t *testing.T) {
	fb, _ := newFake(t, false)
	mg := loadOn(t, "qwen3-tied", fb)
	ad := newAdapter(t, mg.Config, 0)
	p, err := fb.NewLoRAPass(mg, ad, PassOptions{MaxT: 4})
	if err != nil {
		t.Fatal(err)
	}
	ids := []int32{1, 2, 3}
	for _, c := range []struct {
		want                  string
		ids, pos, seg, labels []int32
	}{
		{"5 tokens exceed the pass's 4 rows", []int32{1, 2, 3, 4, 5}, make([]int32, 5), make([]int32, 5), make([]int32, 5)},
		{"positions[1] = 5", ids, []int32{0, 5, 6}, []int32{0, 0, 0}, ids},
		{"tokens[0] = -1", []int32{-1, 2, 3}, []int32{0, 1, 2}, []int32{0, 0, 0}, ids},
		{"labels[2] = 99999", ids, []int32{0, 1, 2}, []int32{0, 0, 0}, []int32{1, 2, 99999}},
	} {
		if _, _, err := p.Forward(c.ids, c.pos, c.seg, c.labels); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want %q", err, c.want)
		}
	}
	if err := p.Backward(1); err == nil {
		t.Error("Backward without Forward: no error")
	}
	if _, err := fb.NewLoRAPass(loadOn(t, "qwen3-tied", cpu.New(1)), ad, PassOptions{MaxT: 4}); err == nil {
		t.Error("a model on another backend: no error")
	}
}

// TestDevicePassTrainer: train.Trainer with train.NewLoRA on the fake
// device picks the device pass and the device optimizer, and tracks the CPU
// trainer: the loss of every step and the adapter after the last, with and
// without checkpointing, dropout on.
func TestDevicePassTrainer(t *testing.T) {
	const T, steps = 24, 4
	for _, name := range []string{"qwen3-untied-bf16", "qwen2"} {
		for _, ckpt := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/ckpt=%v", name, ckpt), func(t *testing.T) {
				opts := model.TrainOptions{Checkpointing: ckpt, LossChunk: 8}
				fb, fake := newFake(t, false)
				gpu := newLoRARun(t, name, fb, T, opts, 0.1)
				if !gpu.run.OnDevice() {
					t.Fatal("train.NewLoRA did not pick the device pass")
				}
				defer gpu.run.Close()
				ref := newLoRARun(t, name, cpu.New(1), T, opts, 0.1)
				ds := fixedData{batches: packedBatches(rand.New(rand.NewPCG(9, 9)), 3, 2, T, gpu.m.Config.Vocab)}
				launches := sum(fake.launches)
				h0, d0 := fake.htod, fake.dtoh
				mg := gpu.trainSteps(t, ds, steps, fb)
				// The trainer runs AdamW on the device (train.DeviceOptimizer):
				// the LoRA params and moments go up once at the start and
				// come back once at the end (3N each way); per micro-batch
				// (2 per step) the int32 inputs go up and the loss comes
				// down, per step the gradient norm; nothing else.
				N := uint64(len(gpu.ad.Params())) * 4
				wantUp, wantDown := uint64(steps*2*5*T*4)+3*N, uint64(steps)*(2*8+8)+3*N
				if up, down := fake.htod-h0, fake.dtoh-d0; up != wantUp || down != wantDown {
					t.Fatalf("training moved %d bytes up and %d down, want %d and %d", up, down, wantUp, wantDown)
				}
				mc := ref.trainSteps(t, ds, steps, cpu.New(1))
				for i := range mc {
					if d := math.Abs(mg[i].Loss - mc[i].Loss); d > 1e-5*mc[i].Loss || math.Abs(mg[i].GradNorm-mc[i].GradNorm) > 1e-4*mc[i].GradNorm {
						t.Fatalf("step %d: loss %v grad norm %v, cpu %v and %v", i+1, mg[i].Loss, mg[i].GradNorm, mc[i].Loss, mc[i].GradNorm)
					}
				}
				if e := maxRel(gpu.ad.Params(), ref.ad.Params()); e > 1e-4 {
					t.Fatalf("adapter after %d steps: max relative error %.2e", steps, e)
				}
				if sum(fake.launches) == launches {
					t.Fatal("no kernel ran on the fake device")
				}
				t.Logf("%d steps: loss %.5f -> %.5f (cpu %.5f -> %.5f)", steps, mg[0].Loss, mg[steps-1].Loss, mc[0].Loss, mc[steps-1].Loss)
			})
		}
	}
}

// TestDevicePassFallback: where the device pass does not apply (full
// fine-tuning, TUNE_CUDA_PASS=host) NewLoRADevicePass returns nil and
// train.NewLoRA trains through the per-op path; LoRA and DoRA adapters
// take the pass.
func TestDevicePassFallback(t *testing.T) {
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
		opts    model.TrainOptions
		devPass bool
		want    bool
	}{
		{"lora", plain, model.TrainOptions{}, true, true},
		{"dora", dora, model.TrainOptions{}, true, true},
		{"full", plain, model.TrainOptions{Full: true}, true, false},
		{"TUNE_CUDA_PASS=host", plain, model.TrainOptions{}, false, false},
	} {
		fb.devPass = c.devPass
		p, err := fb.NewLoRADevicePass(mg, c.ad, 8, c.opts)
		if err != nil || (p != nil) != c.want {
			t.Errorf("%s: pass %T, error %v; want a pass: %v", c.name, p, err, c.want)
		}
		if p != nil {
			p.(*LoRAPass).Close()
		}
		// train.NewLoRA (never Full) runs on the device but for DoRA and host.
		run, err := train.NewLoRA(mg, c.ad, 8, model.TrainOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := c.devPass; run.OnDevice() != want {
			t.Errorf("%s: train.NewLoRA on the device: %v", c.name, run.OnDevice())
		}
		run.Close()
	}
}

// TestDevicePassResume: with the optimizer on the device, a run stopped
// after step 2 (Ctrl-C: the trainer checkpoints, syncing the device's
// parameters and AdamW moments to the host first) and resumed in a fresh
// process-like setup (new model, adapter and device pass, which load the
// checkpoint back onto the device) ends with the same adapter as a run
// straight through, bit for bit, and the adapter saved at the end holds
// the device's final parameters.
func TestDevicePassResume(t *testing.T) {
	const T, steps = 24, 4
	opts := model.TrainOptions{LossChunk: 8}
	ds := func(V int) fixedData {
		return fixedData{batches: packedBatches(rand.New(rand.NewPCG(9, 9)), 3, 2, T, V)}
	}
	cfg := func(dir string, resume bool) train.Config {
		return train.Config{MaxSteps: steps, BatchSize: 2, GradAccum: 1, LR: 1e-3, Schedule: "cosine", WarmupSteps: 1,
			AdamW:       train.AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01},
			MaxGradNorm: 1, KeepCheckpoints: 2, SaveEvery: 0, Dir: dir, DType: "f32", Seed: 42, Resume: resume}
	}
	run := func(dir string, resume bool, stopAfter int) (*loraRun, error) {
		fb, _ := newFake(t, false)
		r := newLoRARun(t, "qwen3-untied-bf16", fb, T, opts, 0.1)
		if !r.run.OnDevice() {
			t.Fatal("train.NewLoRA did not pick the device pass")
		}
		t.Cleanup(r.run.Close)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		tr := &train.Trainer{Cfg: cfg(dir, resume), Model: r.run, Params: r.run, Data: ds(r.m.Config.Vocab),
			Progress: func(e train.Event) {
				if e.Train != nil && e.Train.Step == stopAfter {
					cancel()
				}
			}}
		_, err := tr.Run(ctx)
		return r, err
	}
	straight, err := run(t.TempDir(), false, -1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, err = run(dir, false, 2)
	var ie *train.InterruptedError
	if !errors.As(err, &ie) || ie.Step != 2 {
		t.Fatalf("stop after step 2: %v", err)
	}
	resumed, err := run(dir, true, -1)
	if err != nil {
		t.Fatal(err)
	}
	a, b := straight.ad.Params(), resumed.ad.Params()
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("parameter %d: %v resumed, %v straight through", i, b[i], a[i])
		}
	}
	saved, err := lora.Load(filepath.Join(dir, "adapter"), resumed.m.Config)
	if err != nil {
		t.Fatal(err)
	}
	for i, x := range saved.Params() {
		if math.Float32bits(x) != math.Float32bits(a[i]) {
			t.Fatalf("saved adapter parameter %d: %v, the device ended with %v", i, x, a[i])
		}
	}
}

// TestEmbeddingBF16Table: a BF16 embedding table is gathered on the device
// as stored (embedding_fwd_bf16): the rows equal the CPU backend's widened
// values bit for bit, and the table takes 2 bytes a weight on the device,
// not the 4 of an fp32 copy.
func TestEmbeddingBF16Table(t *testing.T) {
	const V, C = 50, 24
	r := rand.New(rand.NewPCG(3, 3))
	raw := make([]byte, 2*V*C)
	for i := 0; i < V*C; i++ {
		h := uint16(math.Float32bits(float32(r.NormFloat64())) >> 16)
		raw[2*i], raw[2*i+1] = byte(h), byte(h>>8)
	}
	table := kernels.Weight{DType: kernels.BF16, Rows: V, Cols: C, Data: raw}
	tokens := []int{3, 49, 0, 3, 17}
	fb, fake := newFake(t, false)
	live0 := fb.Memory().Live
	got := make([]float32, len(tokens)*C)
	fb.EmbeddingForward(got, tokens, table)
	want := make([]float32, len(tokens)*C)
	cpu.New(1).EmbeddingForward(want, tokens, table)
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("element %d: %v on the device, %v on the CPU", i, got[i], want[i])
		}
	}
	if fake.launches["embedding_fwd_bf16"] != 1 || fake.launches["embedding_fwd"] != 0 {
		t.Fatalf("launches %v, want one embedding_fwd_bf16", fake.launches)
	}
	// The bf16 table, the output rows and the token ids: 2400 + 480 + 20
	// bytes (an fp32 table alone would be 4800).
	if grew, want := fb.Memory().Live-live0, uint64(2*V*C+len(tokens)*C*4+len(tokens)*4); grew != want {
		t.Errorf("device memory grew by %d bytes, want %d (the bf16 table, the output, the ids)", grew, want)
	}
}
