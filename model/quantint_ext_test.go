package model_test

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/quantize/wq"
)

// TestIntBaseLogitsEqualWQFolder: a model whose base QuantizeBaseInt turned
// into INT4/INT8 blocks with wq's round-to-nearest gives, through the
// batched forward, the logits of the folder `tune quantize --format
// safetensors` writes with the same scheme, loaded by wq.LoadModelDense (its
// linears dequantized to fp32 as vLLM and transformers compute them): bit
// for bit. So QLoRA on an int4 base trains on the weights that will be
// served.
func TestIntBaseLogitsEqualWQFolder(t *testing.T) {
	src := filepath.Join("..", "testdata", "models", "qwen3-untied-bf16")
	for _, o := range []quantize.IntOptions{
		{Bits: 4, GroupSize: 32, Sym: true, Layout: wq.LayoutGPTQ},
		{Bits: 4, GroupSize: 64, Sym: false, Layout: wq.LayoutGPTQ}, // v1 zero points
		{Bits: 4, GroupSize: -1, Sym: false, Layout: wq.LayoutCompressed},
		{Bits: 8, GroupSize: -1, Sym: true, Layout: wq.LayoutCompressed},
	} {
		s := o.Scheme()
		t.Run(s.String()+"/"+o.Layout, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "q")
			if _, err := quantize.QuantizeSafetensors(src, out, o); err != nil {
				t.Fatal(err)
			}
			ref, err := wq.LoadModelDense(out, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			m, err := model.Load(src, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			err = m.QuantizeBaseInt(2, func(name string, f []float32, rows, cols int) (model.IntLinear, error) {
				q, err := wq.RTN(name, f, rows, cols, s)
				if err != nil {
					return model.IntLinear{}, err
				}
				return model.IntLinear{Name: name, Rows: rows, Cols: cols, Bits: s.Bits, GroupSize: s.GroupSize,
					Q: q.Q, Scales: q.Scales, Zeros: q.Zeros, GIdx: q.GIdx}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			tokens := []int{3, 17, 101, 5, 9, 200, 44, 8, 1, 77, 13}
			got, err := m.ForwardLogits(m.NewCache(len(tokens)), tokens)
			if err != nil {
				t.Fatal(err)
			}
			want, err := ref.ForwardLogits(ref.NewCache(len(tokens)), tokens)
			if err != nil {
				t.Fatal(err)
			}
			for i := range want {
				for j := range want[i] {
					if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
						t.Fatalf("position %d logit %d: %v on the int blocks, %v from the quantized folder", i, j, got[i][j], want[i][j])
					}
				}
			}
		})
	}
}
