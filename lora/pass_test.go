package lora

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/tunellm/tune/model"
)

type lossGolden struct {
	AdapterDir string `json:"adapter_dir"`
	Batch      struct {
		Tokens    []int32 `json:"tokens"`
		Positions []int32 `json:"positions"`
		SegIDs    []int32 `json:"seg_ids"`
		Labels    []int32 `json:"labels"`
	} `json:"batch"`
	Loss struct {
		LossSum float64 `json:"loss_sum"`
	} `json:"loss"`
}

func readGolden(t *testing.T, path string) (*lossGolden, map[string][]float64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skipf("%v (regenerate with testdata/gen/lora_reference.py)", err)
	}
	var raw struct {
		lossGolden
		Grads map[string]json.RawMessage `json:"grads"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	grads := map[string][]float64{}
	for name, m := range raw.Grads {
		var v struct {
			Shape []int     `json:"shape"`
			Data  []float64 `json:"data"`
		}
		if err := json.Unmarshal(m, &v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		grads[name] = v.Data
	}
	return &raw.lossGolden, grads
}

// TestPassGolden runs the reference adapter through model.Pass (the model
// calls Forward/Backward through its Adapter hook) and compares the loss and
// every LoRA gradient with PyTorch autograd, and the merged model's loss with
// the unmerged one.
func TestPassGolden(t *testing.T) {
	for _, tc := range []struct{ golden, base string }{
		{"../testdata/golden/lora-qwen3-tied.json", qwenDir},
		{"../testdata/golden/lora-llama3.json", llamaDir},
		{"../testdata/golden/lora-dora-qwen3-tied.json", qwenDir},
		{"../testdata/golden/lora-patterns-qwen3-tied.json", qwenDir},
		{"../testdata/golden/lora-patterns-dora-qwen3-tied.json", qwenDir},
	} {
		t.Run(filepath.Base(tc.golden), func(t *testing.T) {
			g, grads := readGolden(t, tc.golden)
			m, err := model.Load(tc.base, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			a, err := Load(filepath.Join("..", g.AdapterDir), m.Config)
			if err != nil {
				t.Fatal(err)
			}
			b := g.Batch
			T := len(b.Tokens)
			for _, ckpt := range []bool{false, true} {
				p, err := m.NewPass(T, model.TrainOptions{Adapter: a, Checkpointing: ckpt})
				if err != nil {
					t.Fatal(err)
				}
				a.ZeroGrads()
				loss, _, err := p.Forward(b.Tokens, b.Positions, b.SegIDs, b.Labels)
				if err != nil {
					t.Fatal(err)
				}
				if d := math.Abs(loss - g.Loss.LossSum); d > 1e-4*math.Abs(g.Loss.LossSum) {
					t.Errorf("checkpointing=%v: loss_sum %.6f, reference %.6f", ckpt, loss, g.Loss.LossSum)
				}
				if err := p.Backward(1); err != nil {
					t.Fatal(err)
				}
				worst := 0.0
				for _, tn := range a.Tensors() {
					want, ok := grads[tn.Name]
					if !ok {
						t.Fatalf("%s: no reference grad", tn.Name)
					}
					maxw := 0.0
					for _, w := range want {
						maxw = math.Max(maxw, math.Abs(w))
					}
					for i, w := range want {
						worst = math.Max(worst, math.Abs(float64(tn.Grad[i])-w)/maxw)
					}
				}
				t.Logf("checkpointing=%v: loss_sum %.6f (ref %.6f), max grad diff / max|grad| %.3g", ckpt, loss, g.Loss.LossSum, worst)
				if worst > 1e-4 {
					t.Errorf("checkpointing=%v: LoRA grads differ from autograd: %.3g of max|grad|", ckpt, worst)
				}
			}

			// The merged F32 model without adapter gives the same loss.
			out := filepath.Join(t.TempDir(), "merged")
			if err := Merge(tc.base, out, a, "f32"); err != nil {
				t.Fatal(err)
			}
			mm, err := model.Load(out, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer mm.Close()
			p, err := mm.NewPass(T, model.TrainOptions{})
			if err != nil {
				t.Fatal(err)
			}
			merged, _, err := p.Forward(b.Tokens, b.Positions, b.SegIDs, b.Labels)
			if err != nil {
				t.Fatal(err)
			}
			if d := math.Abs(merged - g.Loss.LossSum); d > 1e-4*math.Abs(g.Loss.LossSum) {
				t.Errorf("merged model loss_sum %.6f, reference base+adapter %.6f", merged, g.Loss.LossSum)
			}

			// With dropout, a checkpointed pass replays each Forward with the
			// same masks, so its grads equal the plain pass's.
			cfg := a.Config()
			cfg.Dropout = 0.3
			d, err := New(cfg, m.Config, 5)
			if err != nil {
				t.Fatal(err)
			}
			copy(d.Params(), a.Params())
			var got [2][]float32
			var losses [2]float64
			for i, ckpt := range []bool{false, true} {
				p, err := m.NewPass(T, model.TrainOptions{Adapter: d, Checkpointing: ckpt})
				if err != nil {
					t.Fatal(err)
				}
				d.ZeroGrads()
				d.SetDropoutStep(77)
				if losses[i], _, err = p.Forward(b.Tokens, b.Positions, b.SegIDs, b.Labels); err != nil {
					t.Fatal(err)
				}
				if err := p.Backward(1); err != nil {
					t.Fatal(err)
				}
				got[i] = append([]float32(nil), d.Grads()...)
			}
			if losses[0] == g.Loss.LossSum || losses[0] != losses[1] {
				t.Errorf("dropout losses %v (no dropout: %v)", losses, g.Loss.LossSum)
			}
			for i := range got[0] {
				if got[0][i] != got[1][i] {
					t.Fatalf("dropout grads with and without checkpointing differ at %d: %v vs %v", i, got[0][i], got[1][i])
				}
			}
		})
	}
}
