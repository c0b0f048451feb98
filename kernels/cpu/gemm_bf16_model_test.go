package cpu_test

import (
	"encoding/json"
	"math"
	"os"
	"testing"

	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
)

// TestBF16ModelLoss runs the tiny bf16 Qwen3 forward in both compute modes
// against PyTorch (testdata/bf16_loss.py → bf16_loss.json): fp32 mode equals
// the float32 loss to fp32 noise; bf16 mode is torch's loss with every linear
// layer's input rounded to bf16 (the same arithmetic) within 3x the spread
// that fp32 summation noise gives that loss (|bf16in - bf16in_f64|: an
// activation near a bf16 rounding boundary may round either way), which is
// below the distance between the two modes. The sharp checks of the
// arithmetic are the kernel tests (gemm_bf16_test.go).
func TestBF16ModelLoss(t *testing.T) {
	raw, err := os.ReadFile("testdata/bf16_loss.json")
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Tokens                 []int32
		F64, F32, BF16in, BF16 float64
		BF16inF64              float64 `json:"bf16in_f64"`
	}
	if err := json.Unmarshal(raw, &g); err != nil {
		t.Fatalf("testdata/bf16_loss.json: %v", err)
	}
	m, err := model.Load("../../testdata/models/qwen3-untied-bf16", model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	T := len(g.Tokens)
	pos, seg, labels := make([]int32, T), make([]int32, T), make([]int32, T)
	for i := range pos {
		pos[i] = int32(i)
		labels[i] = g.Tokens[i]
	}
	labels[0] = -100
	p, err := m.NewPass(T, model.TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	loss := func(bf16 bool) float64 {
		defer cpu.SetComputeBF16(cpu.SetComputeBF16(bf16))
		s, n, err := p.Loss(g.Tokens, pos, seg, labels)
		if err != nil {
			t.Fatal(err)
		}
		return s / float64(n)
	}
	const tol = 2e-5
	f32 := loss(false)
	if math.Abs(f32-g.F32) > tol {
		t.Errorf("f32 mode: loss %.7f, PyTorch float32 %.7f", f32, g.F32)
	}
	if !cpu.HasBF16() {
		t.Skip("no AVX512_BF16: the bf16 mode is the f32 one")
	}
	b := loss(true)
	btol := 3 * math.Abs(g.BF16in-g.BF16inF64)
	if math.Abs(b-g.BF16in) > btol {
		t.Errorf("bf16 mode: loss %.7f, PyTorch with bf16-rounded linear inputs %.7f ± %.1e (f32 %.7f)", b, g.BF16in, btol, g.F32)
	}
	if math.Abs(g.BF16in-g.F32) < btol || math.Abs(b-f32) < btol {
		t.Errorf("bf16 mode %.7f, PyTorch bf16in %.7f: not told apart from f32 %.7f (tolerance %.1e)", b, g.BF16in, g.F32, btol)
	}
	t.Logf("loss f64 %.7f f32 %.7f (tune %.7f) bf16-inputs %.7f, in f64 %.7f (tune bf16 %.7f) torch bf16 %.7f", g.F64, g.F32, f32, g.BF16in, g.BF16inF64, b, g.BF16)
}
