package model

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/qblock"
	"github.com/tunellm/tune/model/safetensors"
)

func loadTiny(t *testing.T, name string) *Model {
	t.Helper()
	m, err := Load(filepath.Join("..", "testdata", "models", name), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestQuantizedBaseGradsEqualDequantized: a LoRA-mode training pass on a
// model whose base was quantized to NF4 gives the same loss and the same
// adapter gradients, bit for bit, as the same pass on a model whose linear
// weights are the fp32 dequantized copies (the matmuls dequantize inside the
// same gemm chains), with and without checkpointing; and the NF4 loss is not
// the unquantized one (the base did change).
func TestQuantizedBaseGradsEqualDequantized(t *testing.T) {
	for _, name := range []string{"qwen3-tied", "qwen3-untied-bf16"} {
		t.Run(name, func(t *testing.T) {
			mq, md, m0 := loadTiny(t, name), loadTiny(t, name), loadTiny(t, name)
			before := mq.BaseLinearBytes()
			if err := mq.QuantizeBase(kernels.NF4, 3, nil); err != nil {
				t.Fatal(err)
			}
			elems := before / int64(map[bool]int{true: 4, false: 2}[name == "qwen3-tied"])
			if got, want := mq.BaseLinearBytes(), elems/64*36; got != want {
				t.Fatalf("NF4 base: %d bytes, want %d", got, want)
			}
			for l := range mq.layers {
				for _, mod := range AdapterModules {
					w, err := mq.LinearWeight(l, mod)
					if err != nil || w.DType != kernels.NF4 {
						t.Fatalf("layer %d %s: %v %v", l, mod, w.DType, err)
					}
					f := make([]float32, w.Rows*w.Cols)
					qblock.DequantizeNF4(f, w.Data)
					b := make([]byte, 4*len(f))
					if err := safetensors.FromFloat32(b, f, safetensors.F32); err != nil {
						t.Fatal(err)
					}
					if err := md.SetLinearWeight(l, mod, kernels.Weight{DType: kernels.F32, Data: b, Rows: w.Rows, Cols: w.Cols}); err != nil {
						t.Fatal(err)
					}
				}
			}
			c := mq.Config
			b := makeBatch(rand.New(rand.NewPCG(7, 8)), []int{9, 1, 12}, c.Vocab)
			for _, ckpt := range []bool{false, true} {
				opts := TrainOptions{Checkpointing: ckpt, LossChunk: 5}
				lq, gq := passGrads(t, mq, c, b, opts)
				ld, gd := passGrads(t, md, c, b, opts)
				l0, _ := passGrads(t, m0, c, b, opts)
				if lq != ld {
					t.Fatalf("ckpt=%v: loss %.17g on NF4, %.17g on the dequantized copy", ckpt, lq, ld)
				}
				if lq == l0 {
					t.Fatalf("ckpt=%v: NF4 loss equals the unquantized loss %.17g", ckpt, l0)
				}
				if len(gq) != len(gd) || len(gq) == 0 {
					t.Fatalf("%d vs %d grads", len(gq), len(gd))
				}
				for i := range gq {
					for j := range gq[i] {
						if math.Float32bits(gq[i][j]) != math.Float32bits(gd[i][j]) {
							t.Fatalf("ckpt=%v: adapter grad %d[%d] = %v on NF4, %v dequantized", ckpt, i, j, gq[i][j], gd[i][j])
						}
					}
				}
			}
		})
	}
}

func TestQuantizeBaseErrors(t *testing.T) {
	m := loadTiny(t, "qwen3-tied")
	for _, tt := range []struct {
		dt   kernels.DType
		q    BaseQuantizer
		want string
	}{
		{kernels.BF16, nil, "not a block-quantized"},
		{kernels.Q8_0, nil, "needs a quantizer"},
		{kernels.Q4_K, func(kernels.DType, []byte, []float32, int, int) error { return nil }, "model.layers.0.self_attn.q_proj.weight: 64 columns is not a multiple of the Q4_K block size 256"},
	} {
		err := m.QuantizeBase(tt.dt, 2, tt.q)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v, want %q", tt.dt, err, tt.want)
		}
	}
	if err := m.QuantizeBase(kernels.NF4, 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.QuantizeBase(kernels.NF4, 1, nil); err == nil || !strings.Contains(err.Error(), "already NF4") {
		t.Errorf("requantizing: %v", err)
	}
}
