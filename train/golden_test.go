package train

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

	_ "github.com/tunellm/tune/kernels/cpu" // the CPU backend registers itself
)

// loraGolden is the part of testdata/golden/lora-qwen3-tied.json (written by
// testdata/gen/lora_reference.py with torch: torch.optim.AdamW and
// clip_grad_norm_) that the trainer is checked against.
type loraGolden struct {
	Batch struct {
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
	} `json:"train"`
	FinalWeights map[string]struct {
		Shape []int     `json:"shape"`
		Data  []float32 `json:"data"`
	} `json:"final_weights"`
}

// oneBatch is a dataset of one packed sequence, the same every epoch.
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

// TestTrainMatchesPyTorch: three AdamW steps (lr 1e-3, wd 0.01, clip 1.0,
// constant lr) on the reference's packed batch, from the reference's
// adapter: losses, grad norms and final adapter tensors equal torch's.
func TestTrainMatchesPyTorch(t *testing.T) {
	g, _, a, run := goldenLoRARun(t)
	T := len(g.Batch.Tokens)
	ds := oneBatch{data.Batch{B: 1, T: T, IDs: g.Batch.Tokens, Labels: g.Batch.Labels, Positions: g.Batch.Positions, SegIDs: g.Batch.SegIDs}}
	o := g.Train.Optimizer
	cfg := Config{MaxSteps: len(g.Train.Steps), BatchSize: 1, GradAccum: 1, LR: o.LR, Schedule: "constant",
		AdamW:       AdamWConfig{Beta1: o.Betas[0], Beta2: o.Betas[1], Eps: o.Eps, WeightDecay: o.WeightDecay},
		MaxGradNorm: g.Train.MaxGradNorm, KeepCheckpoints: 1, Dir: t.TempDir(), DType: "f32"}
	var steps []StepMetrics
	tr := &Trainer{Cfg: cfg, Model: run, Params: run, Data: ds, Progress: func(e Event) {
		if e.Train != nil {
			steps = append(steps, *e.Train)
		}
	}}
	if _, err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	rel := func(got, want float64) float64 { return math.Abs(got-want) / max(math.Abs(want), 1e-30) }
	for i, w := range g.Train.Steps {
		s := steps[i]
		t.Logf("step %d: loss %.7f (torch %.7f), grad norm %.6f (torch %.6f)", s.Step, s.Loss, w.Loss, s.GradNorm, w.GradNorm)
		if rel(s.Loss, w.Loss) > 1e-5 || rel(s.GradNorm, w.GradNorm) > 1e-5 {
			t.Errorf("step %d: loss %v grad norm %v, torch %v and %v", w.Step, s.Loss, s.GradNorm, w.Loss, w.GradNorm)
		}
	}
	// Final tensors: relative to each tensor's largest value (lora_B starts
	// near zero in places, so elementwise relative error is meaningless).
	worst := 0.0
	for _, ten := range a.Tensors() {
		w, ok := g.FinalWeights[ten.Name]
		if !ok || len(w.Data) != len(ten.Data) {
			t.Fatalf("%s: missing or %d values in the golden, have %d", ten.Name, len(w.Data), len(ten.Data))
		}
		var maxAbs, maxDiff float64
		for i, x := range w.Data {
			maxAbs = max(maxAbs, math.Abs(float64(x)))
			maxDiff = max(maxDiff, math.Abs(float64(ten.Data[i])-float64(x)))
		}
		r := maxDiff / maxAbs
		worst = max(worst, r)
		if r > 1e-5 {
			t.Errorf("%s: max |diff| %.3g, %.3g relative to its largest value", ten.Name, maxDiff, r)
		}
	}
	t.Logf("final adapter: max diff relative to each tensor's scale %.3g over %d tensors", worst, len(a.Tensors()))
}

// goldenLoRARun loads testdata/gen/lora_reference.py's golden (its batch
// and PyTorch's numbers), the tiny Qwen3 and the reference's initial
// adapter, and a LoRA run sized for the batch; it skips without the golden
// (fails under CI=true).
func goldenLoRARun(t *testing.T) (*loraGolden, *model.Model, *lora.Adapter, *LoRA) {
	t.Helper()
	root := filepath.Join("..", "testdata")
	b, err := os.ReadFile(filepath.Join(root, "golden", "lora-qwen3-tied.json"))
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skipf("no golden (regenerate with testdata/gen/lora_reference.py): %v", err)
	}
	var g loraGolden
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(filepath.Join(root, "models", "qwen3-tied"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	a, err := lora.Load(filepath.Join(root, "adapters", "qwen3-tied-r4"), m.Config)
	if err != nil {
		t.Fatal(err)
	}
	run, err := NewLoRA(m, a, len(g.Batch.Tokens), model.TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &g, m, a, run
}
