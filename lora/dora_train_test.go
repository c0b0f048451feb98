package lora_test

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/train"
)

// doraGolden is the part of testdata/golden/lora-dora-qwen3-tied.json
// (testdata/gen/lora_reference.py: torch.optim.AdamW and clip_grad_norm_
// over A, B and the magnitudes) that the trainer is checked against.
type doraGolden struct {
	AdapterDir string `json:"adapter_dir"`
	Batch      struct {
		Tokens    []int32 `json:"tokens"`
		Positions []int32 `json:"positions"`
		SegIDs    []int32 `json:"seg_ids"`
		Labels    []int32 `json:"labels"`
	} `json:"batch"`
	Train struct {
		Optimizer struct {
			LR          float64    `json:"lr"`
			Betas       [2]float64 `json:"betas"`
			Eps         float64    `json:"eps"`
			WeightDecay float64    `json:"weight_decay"`
		} `json:"optimizer"`
		MaxGradNorm float64 `json:"max_grad_norm"`
		Steps       []struct {
			Step     int     `json:"step"`
			Loss     float64 `json:"loss"`
			GradNorm float64 `json:"grad_norm"`
		} `json:"steps"`
		// How far PyTorch's own float32 run ends from its float64 run
		// (largest |diff| over the final weights): the reference's rounding noise.
		FinalDiffVsFloat64 float64 `json:"final_max_abs_diff_vs_float64"`
	} `json:"train"`
	FinalWeights map[string]struct {
		Data []float32 `json:"data"`
	} `json:"final_weights"`
}

// passModel is a training pass as the trainer's Model.
type passModel struct{ p *model.Pass }

func (m passModel) Forward(tokens, positions, segIDs, labels []int32) (float64, int, error) {
	return m.p.Forward(tokens, positions, segIDs, labels)
}
func (m passModel) Backward(scale float32) error { return m.p.Backward(scale) }
func (m passModel) Eval(tokens, positions, segIDs, labels []int32) (float64, int, error) {
	return m.p.Forward(tokens, positions, segIDs, labels) // dropout is 0 here
}

type oneBatch struct{ b data.Batch }

func (o oneBatch) Sequences(split string) int {
	if split == data.SplitTrain {
		return 1
	}
	return 0
}
func (o oneBatch) Err() error { return nil }
func (o oneBatch) Batches(split string, epoch, bs int) func(func(data.Batch) bool) {
	return func(yield func(data.Batch) bool) {
		if split == data.SplitTrain {
			yield(o.b)
		}
	}
}

// TestDoRATrainMatchesPyTorch: three AdamW steps (clip 1.0, wd on every
// adapter tensor, magnitudes included, as transformers' Trainer decays them)
// from the reference's DoRA adapter: losses, grad norms and final A, B, m
// equal torch's. The weight norm is recomputed after every step.
func TestDoRATrainMatchesPyTorch(t *testing.T) {
	trainMatchesPyTorch(t, "lora-dora-qwen3-tied.json", true)
}

// TestPatternsTrainMatchesPyTorch: the same three steps from the reference's
// adapter with rank_pattern, alpha_pattern and rsLoRA (per-module ranks 2..8
// and scalings).
func TestPatternsTrainMatchesPyTorch(t *testing.T) {
	trainMatchesPyTorch(t, "lora-patterns-qwen3-tied.json", false)
}

// TestPatternsDoRATrainMatchesPyTorch: DoRA with per-module ranks and alphas.
func TestPatternsDoRATrainMatchesPyTorch(t *testing.T) {
	trainMatchesPyTorch(t, "lora-patterns-dora-qwen3-tied.json", true)
}

func trainMatchesPyTorch(t *testing.T, golden string, dora bool) {
	root := filepath.Join("..", "testdata")
	b, err := os.ReadFile(filepath.Join(root, "golden", golden))
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skipf("no golden (regenerate with testdata/gen/lora_reference.py): %v", err)
	}
	var g doraGolden
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(filepath.Join(root, "models", "qwen3-tied"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	a, err := lora.Load(filepath.Join("..", g.AdapterDir), m.Config)
	if err != nil {
		t.Fatal(err)
	}
	if a.DoRA() != dora {
		t.Fatalf("the golden's adapter has use_dora %v", a.DoRA())
	}
	T := len(g.Batch.Tokens)
	// The pass gets the adapter itself (model.NewPass binds the base weights
	// DoRA needs); the adapter is the trainer's Params.
	p, err := m.NewPass(T, model.TrainOptions{Adapter: a, Checkpointing: true})
	if err != nil {
		t.Fatal(err)
	}
	run := passModel{p}
	ds := oneBatch{data.Batch{B: 1, T: T, IDs: g.Batch.Tokens, Labels: g.Batch.Labels, Positions: g.Batch.Positions, SegIDs: g.Batch.SegIDs}}
	o := g.Train.Optimizer
	cfg := train.Config{MaxSteps: len(g.Train.Steps), BatchSize: 1, GradAccum: 1, LR: o.LR, Schedule: "constant",
		AdamW:       train.AdamWConfig{Beta1: o.Betas[0], Beta2: o.Betas[1], Eps: o.Eps, WeightDecay: o.WeightDecay},
		MaxGradNorm: g.Train.MaxGradNorm, KeepCheckpoints: 1, Dir: t.TempDir(), DType: "f32"}
	var steps []train.StepMetrics
	tr := &train.Trainer{Cfg: cfg, Model: run, Params: a, Data: ds, Progress: func(e train.Event) {
		if e.Train != nil {
			steps = append(steps, *e.Train)
		}
	}}
	if _, err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(steps) != len(g.Train.Steps) {
		t.Fatalf("%d steps, want %d", len(steps), len(g.Train.Steps))
	}
	rel := func(got, want float64) float64 { return math.Abs(got-want) / max(math.Abs(want), 1e-30) }
	for i, w := range g.Train.Steps {
		s := steps[i]
		t.Logf("step %d: loss %.7f (torch %.7f), grad norm %.6f (torch %.6f)", s.Step, s.Loss, w.Loss, s.GradNorm, w.GradNorm)
		if rel(s.Loss, w.Loss) > 1e-5 || rel(s.GradNorm, w.GradNorm) > 1e-5 {
			t.Errorf("step %d: loss %v grad norm %v, torch %v and %v", w.Step, s.Loss, s.GradNorm, w.Loss, w.GradNorm)
		}
	}
	worst, mags := 0.0, 0
	for _, ten := range a.Tensors() {
		w, ok := g.FinalWeights[ten.Name]
		if !ok || len(w.Data) != len(ten.Data) {
			t.Fatalf("%s: missing or %d values in the golden, have %d", ten.Name, len(w.Data), len(ten.Data))
		}
		if len(ten.Shape) == 1 {
			mags++
		}
		var maxAbs, maxDiff float64
		for i, x := range w.Data {
			maxAbs = max(maxAbs, math.Abs(float64(x)))
			maxDiff = max(maxDiff, math.Abs(float64(ten.Data[i])-float64(x)))
		}
		r := maxDiff / maxAbs
		worst = max(worst, r)
		// AdamW turns rounding noise in small gradients into whole-lr steps,
		// so after a few steps two float32 runs differ by as much as
		// PyTorch's float32 run differs from its float64 run: allow that
		// (twice it), or 1e-5 of the tensor's scale, whichever is larger.
		if tol := max(1e-5*maxAbs, 2*g.Train.FinalDiffVsFloat64); maxDiff > tol {
			t.Errorf("%s: max |diff| %.3g (%.3g relative to its largest value), tolerance %.3g", ten.Name, maxDiff, r, tol)
		}
	}
	if dora && mags == 0 {
		t.Error("no magnitude tensors checked")
	}
	t.Logf("final adapter: max diff relative to each tensor's scale %.3g over %d tensors (%d magnitudes)", worst, len(a.Tensors()), mags)
}
