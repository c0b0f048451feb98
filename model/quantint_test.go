package model

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model/safetensors"
)

// simpleIntQuantizer is a stand-in for wq.RTN (which this package's tests
// cannot import): symmetric codes per group with fp16 scales. What it picks
// does not matter here; the test compares the blocks with their own
// dequantized copy (quantint_ext_test.go compares with wq).
func simpleIntQuantizer(bits, gs int) IntQuantizer {
	return func(name string, src []float32, rows, cols int) (IntLinear, error) {
		g := gs
		if g == -1 {
			g = cols
		}
		G := cols / g
		t := IntLinear{Rows: rows, Cols: cols, Bits: bits, GroupSize: gs, Q: make([]uint8, rows*cols),
			Scales: make([]float32, rows*G), Zeros: make([]uint8, rows*G)}
		half := float64(int(1) << (bits - 1))
		for r := 0; r < rows; r++ {
			for k := 0; k < G; k++ {
				x := src[r*cols+k*g : r*cols+(k+1)*g]
				var am float32
				for _, v := range x {
					am = max(am, float32(math.Abs(float64(v))))
				}
				s := safetensors.F16ToFloat32(safetensors.Float32ToF16(max(am, 1e-3) / float32(half-1)))
				t.Scales[r*G+k], t.Zeros[r*G+k] = s, uint8(half)
				for i, v := range x {
					t.Q[r*cols+k*g+i] = uint8(max(0, min(2*half-1, math.Round(float64(v/s))+half)))
				}
			}
		}
		return t, nil
	}
}

// TestIntBaseGradsEqualDequantized: a LoRA training pass over an INT4/INT8
// base gives the loss and adapter gradients of the same pass over the fp32
// dequantized copy, bit for bit (forward and din go through the same gemm
// chains), with and without checkpointing; both block sizes occur (per
// channel: 64-wide inputs take 32-blocks, 128-wide ones 128-blocks).
func TestIntBaseGradsEqualDequantized(t *testing.T) {
	for _, tc := range []struct {
		name     string
		bits, gs int
		dtypes   []kernels.DType
	}{
		{"int4-g32", 4, 32, []kernels.DType{kernels.INT4_32}},
		{"int4-ch", 4, -1, []kernels.DType{kernels.INT4_32, kernels.INT4}},
		{"int8-ch", 8, -1, []kernels.DType{kernels.INT8_32, kernels.INT8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mq, md, m0 := loadTiny(t, "qwen3-untied-bf16"), loadTiny(t, "qwen3-untied-bf16"), loadTiny(t, "qwen3-untied-bf16")
			want, err := mq.BaseLinearBytesInt(tc.bits, tc.gs)
			if err != nil {
				t.Fatal(err)
			}
			if err := mq.QuantizeBaseInt(3, simpleIntQuantizer(tc.bits, tc.gs)); err != nil {
				t.Fatal(err)
			}
			if got := mq.BaseLinearBytes(); got != want {
				t.Fatalf("base %d bytes, BaseLinearBytesInt said %d", got, want)
			}
			seen := map[kernels.DType]bool{}
			for l := range mq.layers {
				for _, mod := range AdapterModules {
					w, _ := mq.LinearWeight(l, mod)
					seen[w.DType] = true
					f := make([]float32, w.Rows*w.Cols)
					rb := w.RowBytes()
					for r := 0; r < w.Rows; r++ {
						w.DType.Format().Dequantize(f[r*w.Cols:(r+1)*w.Cols], w.Data[r*rb:(r+1)*rb])
					}
					b := make([]byte, 4*len(f))
					if err := safetensors.FromFloat32(b, f, safetensors.F32); err != nil {
						t.Fatal(err)
					}
					if err := md.SetLinearWeight(l, mod, kernels.Weight{DType: kernels.F32, Data: b, Rows: w.Rows, Cols: w.Cols}); err != nil {
						t.Fatal(err)
					}
				}
			}
			for _, dt := range tc.dtypes {
				if !seen[dt] {
					t.Fatalf("no %v weight among %v", dt, seen)
				}
			}
			c := mq.Config
			b := makeBatch(rand.New(rand.NewPCG(9, 10)), []int{11, 2, 9}, c.Vocab)
			for _, ckpt := range []bool{false, true} {
				opts := TrainOptions{Checkpointing: ckpt, LossChunk: 4}
				lq, gq := passGrads(t, mq, c, b, opts)
				ld, gd := passGrads(t, md, c, b, opts)
				l0, _ := passGrads(t, m0, c, b, opts)
				if lq != ld || lq == l0 {
					t.Fatalf("ckpt=%v: loss %.17g quantized, %.17g dequantized copy, %.17g unquantized", ckpt, lq, ld, l0)
				}
				for i := range gq {
					for j := range gq[i] {
						if math.Float32bits(gq[i][j]) != math.Float32bits(gd[i][j]) {
							t.Fatalf("ckpt=%v: grad %d[%d] = %v quantized, %v dequantized", ckpt, i, j, gq[i][j], gd[i][j])
						}
					}
				}
			}
		})
	}
}

func TestIntWeightErrors(t *testing.T) {
	ok := func() IntLinear {
		return IntLinear{Name: "w", Rows: 2, Cols: 64, Bits: 4, GroupSize: 32, Q: make([]uint8, 128),
			Scales: []float32{1, 1, 1, 1}, Zeros: []uint8{8, 8, 8, 8}}
	}
	if _, err := IntWeight(ok()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		edit func(*IntLinear)
		want string
	}{
		{func(t *IntLinear) { t.GIdx = make([]int32, 64) }, "w: act-order checkpoint (g_idx[32] = 0, not column/group_size = 1)"},
		{func(t *IntLinear) { t.GroupSize = 48 }, "w: 64 columns are not a multiple of the group size 48"},
		{func(t *IntLinear) { t.Q = t.Q[:5] }, "w: 5 codes, want 2×64"},
		{func(t *IntLinear) { t.Scales[3] = 0.1 }, "w: row 1, columns 32..63: INT4_32: scale 0.1 is not an fp16 value"},
		{func(t *IntLinear) { t.Bits = 2 }, "int2: want 4 or 8 bits"},
	} {
		l := ok()
		tc.edit(&l)
		if _, err := IntWeight(l); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v, want %q", err, tc.want)
		}
	}
	m := loadTiny(t, "qwen3-tied")
	if _, err := m.BaseLinearBytesInt(4, 128); err == nil || !strings.Contains(err.Error(), "model.layers.0.self_attn.q_proj.weight: 64 columns are not a multiple of the group size 128") {
		t.Errorf("g128 on 64 columns: %v", err)
	}
	if err := m.QuantizeBase(kernels.INT4, 1, nil); err == nil || !strings.Contains(err.Error(), "QuantizeBaseInt") {
		t.Errorf("QuantizeBase(INT4): %v", err)
	}
}
