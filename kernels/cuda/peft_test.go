package cuda

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/train"
)

// peftRef is scripts/gpu/peft_ref.py's ref.json: token rows, the summed
// cross-entropy over their scored labels and its gradient for every LoRA
// weight, from transformers + PEFT in float64.
type peftRef struct {
	Generator    string `json:"generator"`
	Torch        string `json:"torch"`
	Transformers string `json:"transformers"`
	PEFT         string `json:"peft"`
	Rows         []struct {
		Tokens    []int32 `json:"tokens"`
		Labels    []int32 `json:"labels"`
		Positions []int32 `json:"positions"` // absent: 0..T-1, one document
		SegIDs    []int32 `json:"seg_ids"`
	} `json:"rows"`
	LossSum float64              `json:"loss_sum"`
	N       int                  `json:"n"`
	Grads   map[string][]float32 `json:"grads"`
}

// TestPEFTGrads compares tune's LoRA loss and gradients, on the CPU and the
// cuda backends, with transformers + PEFT's (TUNE_PEFT_REF: the folder
// scripts/gpu/peft_ref.py wrote; gpu-check.sh runs it on the GPU machine).
func TestPEFTGrads(t *testing.T) {
	dir := os.Getenv("TUNE_PEFT_REF")
	if dir == "" {
		t.Skip("set TUNE_PEFT_REF to the folder scripts/gpu/peft_ref.py wrote")
	}
	ref := readPEFTRef(t, filepath.Join(dir, "ref.json"))
	t.Logf("reference: %s (torch %s, transformers %s, peft %s)", ref.Generator, ref.Torch, ref.Transformers, ref.PEFT)
	md, ad := filepath.Join(dir, "model"), filepath.Join(dir, "adapter")
	t.Run("cpu", func(t *testing.T) { peftCompare(t, refBackend(), "cpu", md, ad, ref, 1e-4) })
	t.Run("cuda", func(t *testing.T) {
		g := openOrSkip(t)
		peftCompare(t, g, "cuda", md, ad, ref, max(1e-4, 10*gemmTol(g)))
	})
}

// TestPEFTHarness runs TestPEFTGrads's comparison on a ref.json made from
// testdata/golden/lora-qwen3-tied.json (PyTorch, no PEFT needed), on the
// CPU: the harness works without a GPU or the GPU machine's Python.
func TestPEFTHarness(t *testing.T) {
	root := filepath.Join("..", "..", "testdata")
	gold := readLoRAGolden(t)
	ref := map[string]any{"generator": "testdata/gen/lora_reference.py", "loss_sum": gold.Loss.LossSum, "n": gold.Loss.N,
		"rows": []map[string]any{{"tokens": gold.Batch.Tokens, "labels": gold.Batch.Labels, "positions": gold.Batch.Positions, "seg_ids": gold.Batch.SegIDs}}}
	grads := map[string][]float32{}
	for k, v := range gold.Grads {
		grads[k] = v.Data
	}
	ref["grads"] = grads
	p := filepath.Join(t.TempDir(), "ref.json")
	b, _ := json.Marshal(ref)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r := readPEFTRef(t, p)
	peftCompare(t, refBackend(), "cpu (harness)", filepath.Join(root, "models", "qwen3-tied"), filepath.Join(root, "adapters", "qwen3-tied-r4"), r, 2e-5)
}

func refBackend() kernels.Backend { return ref }

func readPEFTRef(t *testing.T, path string) *peftRef {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r peftRef
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(r.Rows) == 0 || len(r.Grads) == 0 {
		t.Fatalf("%s: %d rows, %d grads", path, len(r.Rows), len(r.Grads))
	}
	return &r
}

// peftCompare runs the LoRA training pass of the adapter in adapterDir on
// the model in modelDir over ref's rows (grads summed over rows, as the
// reference's summed loss) and compares loss and gradients, relative to
// the largest reference value of each.
func peftCompare(t *testing.T, be kernels.Backend, label, modelDir, adapterDir string, ref *peftRef, tol float64) {
	m, err := model.Load(modelDir, model.LoadOptions{Backend: be})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ad, err := lora.Load(adapterDir, m.Config)
	if err != nil {
		t.Fatal(err)
	}
	maxT := 0
	for _, r := range ref.Rows {
		maxT = max(maxT, len(r.Tokens))
	}
	run, err := train.NewLoRA(m, ad, maxT, model.TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ad.ZeroGrads()
	var lossSum float64
	var n int
	for i, r := range ref.Rows {
		pos, seg := r.Positions, r.SegIDs
		if pos == nil {
			pos, seg = make([]int32, len(r.Tokens)), make([]int32, len(r.Tokens))
			for j := range pos {
				pos[j] = int32(j)
			}
		}
		ls, k, err := run.Forward(r.Tokens, pos, seg, r.Labels)
		if err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		if err := run.Backward(1); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		lossSum, n = lossSum+ls, n+k
	}
	if n != ref.N {
		t.Fatalf("scored %d tokens, the reference %d", n, ref.N)
	}
	compare(t, "peft loss "+label, fmt.Sprintf("%d rows", len(ref.Rows)), []float64{lossSum}, []float64{ref.LossSum}, tol)
	var got, want []float32
	for _, ten := range ad.Tensors() {
		w, ok := ref.Grads[ten.Name]
		if !ok || len(w) != len(ten.Grad) {
			t.Fatalf("%s: not in the reference, or %d values for %d", ten.Name, len(w), len(ten.Grad))
		}
		got, want = append(got, ten.Grad...), append(want, w...)
		compareQuiet(t, label+" "+ten.Name, ten.Grad, w, tol)
	}
	if len(ref.Grads) != len(ad.Tensors()) {
		t.Errorf("the reference has %d LoRA grads, the adapter %d tensors", len(ref.Grads), len(ad.Tensors()))
	}
	compare(t, "peft grads "+label, fmt.Sprintf("%d tensors", len(ad.Tensors())), got, want, tol)
}
