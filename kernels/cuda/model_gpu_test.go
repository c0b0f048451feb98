package cuda

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model"
)

// End to end on the tiny models of testdata/models: logits, packed NLL, and
// a full-parameter training pass (loss and every weight's gradient) through
// the cuda backend against the cpu backend.

var tinyModels = []string{"qwen3-tied", "qwen3-untied-bf16", "llama3", "qwen2", "mistral"}

func loadBoth(t *testing.T, name string, gpu kernels.Backend) (mc, mg *model.Model) {
	t.Helper()
	dir := filepath.Join("..", "..", "testdata", "models", name)
	mc, err := model.Load(dir, model.LoadOptions{Backend: ref})
	if err != nil {
		t.Fatal(err)
	}
	mg, err = model.Load(dir, model.LoadOptions{Backend: gpu})
	if err != nil {
		mc.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { mc.Close(); mg.Close() })
	return mc, mg
}

func TestModelForward(t *testing.T) {
	b := openOrSkip(t)
	for _, name := range tinyModels {
		t.Run(name, func(t *testing.T) {
			mc, mg := loadBoth(t, name, b)
			V := mc.Config.Vocab
			r := rand.New(rand.NewPCG(21, uint64(len(name))))
			toks := make([]int, 23)
			for i := range toks {
				toks[i] = r.IntN(V)
			}
			lc, err := mc.ForwardLogits(mc.NewCache(len(toks)), toks)
			if err != nil {
				t.Fatal(err)
			}
			lg, err := mg.ForwardLogits(mg.NewCache(len(toks)), toks)
			if err != nil {
				t.Fatal(err)
			}
			var fc, fg []float32
			for i := range lc {
				fc, fg = append(fc, lc[i]...), append(fg, lg[i]...)
			}
			compare(t, "model logits "+name, fmt.Sprintf("T=%d V=%d", len(toks), V), fg, fc, 10*gemmTol(b))

			sc, nc, err := mc.WindowNLL(toks)
			if err != nil {
				t.Fatal(err)
			}
			sg, ng, err := mg.WindowNLL(toks)
			if err != nil || ng != nc {
				t.Fatalf("WindowNLL: %v, n %d vs %d", err, ng, nc)
			}
			compare(t, "model window nll "+name, fmt.Sprintf("T=%d", len(toks)), []float64{sg}, []float64{sc}, 10*gemmTol(b))
		})
	}
}

func TestModelTrainPass(t *testing.T) {
	b := openOrSkip(t)
	for _, name := range tinyModels {
		t.Run(name, func(t *testing.T) {
			mc, mg := loadBoth(t, name, b)
			V := mc.Config.Vocab
			r := rand.New(rand.NewPCG(22, uint64(len(name))))
			// Two packed sequences of 13 and 18 rows.
			var toks, pos, seg, labels []int32
			for s, n := range []int{13, 18} {
				for i := 0; i < n; i++ {
					id := int32(r.IntN(V))
					toks, pos, seg, labels = append(toks, id), append(pos, int32(i)), append(seg, int32(s)), append(labels, id)
				}
			}
			T := len(toks)
			run := func(m *model.Model) (float64, []string, [][]float32) {
				p, err := m.NewPass(T, model.TrainOptions{Full: true})
				if err != nil {
					t.Fatal(err)
				}
				p.ZeroGrads()
				loss, n, err := p.Forward(toks, pos, seg, labels)
				if err != nil {
					t.Fatal(err)
				}
				if err := p.Backward(1 / float32(n)); err != nil {
					t.Fatal(err)
				}
				names, _, grads := p.Params()
				return loss / float64(n), names, grads
			}
			lc, names, gc := run(mc)
			lg, _, gg := run(mg)
			compare(t, "train loss "+name, fmt.Sprintf("T=%d", T), []float64{lg}, []float64{lc}, 10*gemmTol(b))
			var all, allc []float32
			for i := range gc {
				all, allc = append(all, gg[i]...), append(allc, gc[i]...)
			}
			compare(t, "train grads (all) "+name, fmt.Sprintf("%d tensors", len(names)), all, allc, 100*gemmTol(b))
			for i, n := range names {
				if len(gc[i]) > 0 {
					t.Run(n, func(t *testing.T) { compareQuiet(t, n, gg[i], gc[i], 100*gemmTol(b)) })
				}
			}
		})
	}
}

// compareQuiet is compare without a table row (per-tensor detail).
func compareQuiet(t *testing.T, name string, got, want []float32, tol float64) {
	var maxAbs, scale float64
	for i := range got {
		d := float64(got[i]) - float64(want[i])
		if d != d {
			t.Fatalf("%s: NaN at %d", name, i)
		}
		maxAbs = max(maxAbs, abs(d))
		scale = max(scale, abs(float64(want[i])))
	}
	if scale > 0 && maxAbs/scale > tol {
		t.Errorf("%s: max rel err %.3g > %.1g", name, maxAbs/scale, tol)
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
