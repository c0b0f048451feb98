package cuda

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/train"
)

// LoRA training through the cuda backend: the trainer (train.Trainer: the
// model's packed pass, the adapter's fp32 matmuls on the backend, AdamW on
// the host) as `tune lora --device cuda` runs it. TestDryLoRATrain runs in
// CI through the dry backend; the others need a GPU.

// fixedData is a dataset of fixed packed batches, the same every epoch.
type fixedData struct{ batches []data.Batch }

func (d fixedData) Sequences(split string) int {
	if split != data.SplitTrain {
		return 0
	}
	n := 0
	for _, b := range d.batches {
		n += b.B
	}
	return n
}
func (d fixedData) Err() error { return nil }
func (d fixedData) Batches(split string, epoch, bs int) func(func(data.Batch) bool) {
	return func(yield func(data.Batch) bool) {
		if split != data.SplitTrain {
			return
		}
		for _, b := range d.batches {
			if !yield(b) {
				return
			}
		}
	}
}

// packedBatches makes n batches of B rows of T tokens, each row two
// documents; token ids follow a few fixed random sequences (so a LoRA can
// learn them and the loss falls), labels = ids except each document's
// first token (-100).
func packedBatches(r *rand.Rand, n, B, T, V int) []data.Batch {
	patterns := make([][]int32, 4)
	for i := range patterns {
		patterns[i] = make([]int32, T)
		for j := range patterns[i] {
			patterns[i][j] = int32(r.IntN(V))
		}
	}
	var out []data.Batch
	for i := 0; i < n; i++ {
		b := data.Batch{B: B, T: T}
		for row := 0; row < B; row++ {
			cut := T/3 + r.IntN(T/3)
			p := patterns[r.IntN(len(patterns))]
			for t := 0; t < T; t++ {
				seg, pos := int32(0), int32(t)
				if t >= cut {
					seg, pos = 1, int32(t-cut)
				}
				lab := p[t]
				if pos == 0 {
					lab = data.IgnoreIndex
				}
				b.IDs, b.Labels = append(b.IDs, p[t]), append(b.Labels, lab)
				b.Positions, b.SegIDs = append(b.Positions, pos), append(b.SegIDs, seg)
			}
		}
		out = append(out, b)
	}
	return out
}

// loraRun is one LoRA training run's pieces on one backend.
type loraRun struct {
	m   *model.Model
	ad  *lora.Adapter
	run *train.LoRA
}

func newLoRARun(t *testing.T, name string, be kernels.Backend, maxT int, opts model.TrainOptions, dropout float64) *loraRun {
	t.Helper()
	m, err := model.Load(filepath.Join("..", "..", "testdata", "models", name), model.LoadOptions{Backend: be})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ad, err := lora.New(lora.Config{R: 4, Alpha: 8, Dropout: dropout, TargetModules: []string{"all-linear"}}, m.Config, 7)
	if err != nil {
		t.Fatal(err)
	}
	// lora_B starts at zero (PEFT's init): give it values so that every
	// gradient path carries numbers from the first step.
	r := rand.New(rand.NewPCG(5, 6))
	for _, ten := range ad.Tensors() {
		if strings.HasSuffix(ten.Name, "lora_B.weight") {
			for i := range ten.Data {
				ten.Data[i] = float32(r.NormFloat64() * 0.02)
			}
		}
	}
	run, err := train.NewLoRA(m, ad, maxT, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &loraRun{m: m, ad: ad, run: run}
}

// trainSteps runs steps optimizer steps of the trainer and returns each
// step's metrics.
func (lr *loraRun) trainSteps(t *testing.T, ds train.Data, steps int, be kernels.Backend) []train.StepMetrics {
	t.Helper()
	cfg := train.Config{MaxSteps: steps, BatchSize: 2, GradAccum: 1, LR: 1e-3, Schedule: "constant",
		AdamW:       train.AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01},
		MaxGradNorm: 1, KeepCheckpoints: 1, Dir: t.TempDir(), DType: "f32", Seed: 42}
	peak, _ := train.PeakFLOPS(be)
	var out []train.StepMetrics
	tr := &train.Trainer{Cfg: cfg, Model: lr.run, Params: lr.run, Data: ds,
		FLOPs: train.NewFLOPCount(lr.m.Config, lr.ad), PeakFLOPS: peak,
		Progress: func(e train.Event) {
			if e.Train != nil {
				out = append(out, *e.Train)
			}
		}}
	res, err := tr.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != steps || len(out) != steps {
		t.Fatalf("ran %d steps (%d metrics), want %d", res.Steps, len(out), steps)
	}
	b, err := os.ReadFile(filepath.Join(cfg.Dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if peak > 0 && !strings.Contains(string(b), `"mfu":`) {
		t.Fatalf("metrics.jsonl has no mfu field: %.200s", b)
	}
	return out
}

// TestDryLoRATrain: two optimizer steps of LoRA training (all linear
// layers, dropout on, with and without gradient checkpointing) of every
// tiny model through the dry backend: every op call the trainer makes, with
// its real shapes, passes the backend's checks and the PTX/cuBLAS argument
// checks, nothing panics, and metrics.jsonl gets an mfu.
func TestDryLoRATrain(t *testing.T) {
	for _, name := range tinyModels {
		for _, ckpt := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/checkpointing=%v", name, ckpt), func(t *testing.T) {
				b := newDry(t)
				b.dev = Device{Name: "NVIDIA H200", Major: 9}
				lr := newLoRARun(t, name, b, 32, model.TrainOptions{Checkpointing: ckpt, LossChunk: 8}, 0.1)
				r := rand.New(rand.NewPCG(1, 2))
				ds := fixedData{packedBatches(r, 2, 2, 32, lr.m.Config.Vocab)}
				launches, up, down := dryLaunchCount(), dryHtoD, dryDtoH
				steps := lr.trainSteps(t, ds, 2, b)
				if dryLaunchCount() == launches {
					t.Fatal("no kernel launches")
				}
				t.Logf("2 steps: %d launches, %d bytes to the device, %d back", dryLaunchCount()-launches, dryHtoD-up, dryDtoH-down)
				if steps[1].MFU <= 0 {
					t.Fatalf("step 2 mfu %v", steps[1].MFU)
				}
			})
		}
	}
}

func dryLaunchCount() int {
	n := 0
	for _, c := range dryLaunches {
		n += c
	}
	return n
}

// TestDryF32Cache: an F32 weight (a LoRA matrix) is uploaded once while
// its bytes stay the same, and again as soon as they change.
func TestDryF32Cache(t *testing.T) {
	for _, bf16 := range []bool{false, true} {
		b := newDry(t)
		b.bf16 = bf16
		r := rand.New(rand.NewPCG(3, 4))
		T, C, R := 5, 64, 4
		A := randn(r, R*C, 1)
		x, u := randn(r, T*C, 1), make([]float32, T*R)
		wA := f32Weight(A, R, C)
		b.MatMulForward(u, x, wA, nil, T)
		before := dryHtoD
		b.MatMulForward(u, x, wA, nil, T)
		if got, want := dryHtoD-before, uint64(T*C*4); got != want {
			t.Fatalf("bf16=%v: unchanged weight: %d bytes uploaded, want %d (the input only)", bf16, got, want)
		}
		wA.Data[len(wA.Data)-1] ^= 0x40 // the last float's top byte
		before = dryHtoD
		b.MatMulForward(u, x, wA, nil, T)
		if got, want := dryHtoD-before, uint64(T*C*4+R*C*4); got != want {
			t.Fatalf("bf16=%v: changed weight: %d bytes uploaded, want %d (input and weight)", bf16, got, want)
		}
		if b.f32Held != uint64(R*C*4) || b.live == 0 || b.peak < b.live {
			t.Fatalf("held %d live %d peak %d", b.f32Held, b.live, b.peak)
		}
		b.ForgetWeights()
		if b.f32Held != 0 {
			t.Fatalf("ForgetWeights left %d bytes held", b.f32Held)
		}
	}
}

// lossTolerance is how far the CUDA loss curve may stray from the CPU's
// (relative to the CPU loss, at every step of TestFineTune50). fp32 GEMMs
// differ from the CPU's only in summation order: the CPU backend with every
// matmul output perturbed by ±3e-7 relative stays within 9e-8 of it over
// the 50 steps; bf16 GEMM inputs (emulated on the CPU by rounding every
// matmul operand to bf16) stay within 9e-4. The bounds leave 1000x and 10x.
func lossTolerance(b *Backend) float64 {
	if b.bf16 {
		return 1e-2
	}
	return 1e-4
}

// TestFineTune50: 50 optimizer steps of LoRA training (r 4, all linear
// layers, no dropout, AdamW lr 1e-3, clipping) of qwen3-untied-bf16 on
// fixed packed batches, on the CPU and on CUDA from the same initial
// adapter: the loss curves agree within lossTolerance at every step, and
// the loss falls. Prints the curves as a table.
func TestFineTune50(t *testing.T) {
	g := openOrSkip(t)
	fineTune50(t, g, "cuda", "GEMM "+gemmMode(g), lossTolerance(g))
}

// TestFineTune50Harness runs TestFineTune50's comparison with a second CPU
// backend (one worker) in place of CUDA, so the harness runs in CI.
func TestFineTune50Harness(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	fineTune50(t, cpu.New(1), "cpu1", "cpu backend, 1 worker", 1e-6)
}

func fineTune50(t *testing.T, other kernels.Backend, label, mode string, tol float64) {
	const steps, name = 50, "qwen3-untied-bf16"
	mk := func(be kernels.Backend) []train.StepMetrics {
		lr := newLoRARun(t, name, be, 64, model.TrainOptions{}, 0)
		r := rand.New(rand.NewPCG(11, 12))
		return lr.trainSteps(t, fixedData{packedBatches(r, 5, 2, 64, lr.m.Config.Vocab)}, steps, be)
	}
	cpuM, gpuM := mk(ref), mk(other)
	var sb strings.Builder
	fmt.Fprintf(&sb, "fine-tune %s, LoRA r=4 all-linear, %d steps, %s vs cpu (%s), tolerance %.0e relative\n", name, steps, label, mode, tol)
	fmt.Fprintf(&sb, "%5s %10s %10s %10s %10s %12s\n", "step", "cpu loss", label+" loss", "rel diff", "grad norm", label+" tok/s")
	worst := 0.0
	for i := range cpuM {
		c, d := cpuM[i], gpuM[i]
		rel := math.Abs(d.Loss-c.Loss) / math.Abs(c.Loss)
		if math.IsNaN(d.Loss) {
			rel = math.Inf(1)
		}
		worst = max(worst, rel)
		if i == 0 || (i+1)%5 == 0 {
			fmt.Fprintf(&sb, "%5d %10.5f %10.5f %10.2e %10.4f %12.0f\n", c.Step, c.Loss, d.Loss, rel, d.GradNorm, d.TokensPerS)
		}
	}
	ok := worst <= tol && gpuM[steps-1].Loss < 0.9*gpuM[0].Loss
	fmt.Fprintf(&sb, "max rel diff %.2e (tolerance %.0e); loss %.4f -> %.4f: %s\n", worst, tol, gpuM[0].Loss, gpuM[steps-1].Loss, map[bool]string{true: "ok", false: "FAIL"}[ok])
	if label == "cuda" {
		report(sb.String())
	} else {
		t.Log("\n" + sb.String())
	}
	if !ok {
		t.Fatalf("loss curves differ by %.3g relative (tolerance %.0e), or the loss did not fall by 10%%", worst, tol)
	}
}

func gemmMode(b *Backend) string {
	if b.bf16 {
		return "bf16"
	}
	return "fp32"
}

// report prints s and appends it to $TUNE_CUDA_TRAIN_OUT (gpu-check.sh's
// summary reads it).
func report(s string) {
	fmt.Print(s)
	if p := os.Getenv("TUNE_CUDA_TRAIN_OUT"); p != "" {
		if f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			f.WriteString(s)
			f.Close()
		}
	}
}

// TestLoRAGolden: the LoRA loss and every lora_A/lora_B gradient of
// testdata/golden/lora-qwen3-tied.json (written by
// testdata/gen/lora_reference.py: PyTorch, PEFT's LoRA formulas, float32
// autograd) through the cuda backend; the CPU backend runs the same check,
// so the harness is exercised without a GPU.
func TestLoRAGolden(t *testing.T) {
	t.Run("cpu", func(t *testing.T) { loraGolden(t, ref, "cpu", 2e-5) })
	t.Run("cuda", func(t *testing.T) {
		g := openOrSkip(t)
		loraGolden(t, g, "cuda", 100*gemmTol(g))
	})
}

func loraGolden(t *testing.T, be kernels.Backend, label string, tol float64) {
	root := filepath.Join("..", "..", "testdata")
	gold := readLoRAGolden(t)
	bt := gold.Batch
	m, err := model.Load(filepath.Join(root, "models", "qwen3-tied"), model.LoadOptions{Backend: be})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ad, err := lora.Load(filepath.Join(root, "adapters", "qwen3-tied-r4"), m.Config)
	if err != nil {
		t.Fatal(err)
	}
	run, err := train.NewLoRA(m, ad, len(bt.Tokens), model.TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ad.ZeroGrads()
	ls, n, err := run.Forward(bt.Tokens, bt.Positions, bt.SegIDs, bt.Labels)
	if err != nil {
		t.Fatal(err)
	}
	if err := run.Backward(1); err != nil {
		t.Fatal(err)
	}
	if n != gold.Loss.N {
		t.Fatalf("scored %d tokens, the golden %d", n, gold.Loss.N)
	}
	compare(t, "lora loss "+label+" vs torch", fmt.Sprintf("T=%d", len(bt.Tokens)), []float64{ls}, []float64{gold.Loss.LossSum}, tol)
	var got, want []float32
	for _, ten := range ad.Tensors() {
		w, ok := gold.Grads[ten.Name]
		if !ok || len(w.Data) != len(ten.Grad) {
			t.Fatalf("%s: not in the golden grads, or %d values for %d", ten.Name, len(w.Data), len(ten.Grad))
		}
		got, want = append(got, ten.Grad...), append(want, w.Data...)
		compareQuiet(t, ten.Name, ten.Grad, w.Data, tol)
	}
	compare(t, "lora grads "+label+" vs torch", fmt.Sprintf("%d tensors", len(ad.Tensors())), got, want, tol)
}

// loraGoldenFile is the part of testdata/golden/lora-qwen3-tied.json
// (testdata/gen/lora_reference.py: PEFT's LoRA in PyTorch) the CUDA checks
// compare with: the packed batch, the loss and every LoRA gradient.
type loraGoldenFile struct {
	Batch struct {
		Tokens    []int32 `json:"tokens"`
		Positions []int32 `json:"positions"`
		SegIDs    []int32 `json:"seg_ids"`
		Labels    []int32 `json:"labels"`
	} `json:"batch"`
	Loss struct {
		LossSum float64 `json:"loss_sum"`
		N       int     `json:"n"`
	} `json:"loss"`
	Grads map[string]struct {
		Data []float32 `json:"data"`
	} `json:"grads"`
}

func readLoRAGolden(t *testing.T) *loraGoldenFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "golden", "lora-qwen3-tied.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g loraGoldenFile
	if err := json.Unmarshal(raw, &g); err != nil {
		t.Fatal(err)
	}
	return &g
}
