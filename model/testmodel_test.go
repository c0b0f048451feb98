package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"

	"github.com/tunellm/tune/model/safetensors"
)

// memSource is an in-memory TensorSource.
type memSource map[string]safetensors.Tensor

func (m memSource) Tensor(name string) (safetensors.Tensor, error) {
	t, ok := m[name]
	if !ok {
		return t, fmt.Errorf("memSource: tensor %q not found", name)
	}
	return t, nil
}

// tensorShapes lists the tensors a config implies, written out independently
// of New's binding code.
func tensorShapes(c *Config) map[string][]int {
	C, I, V, qd, kvd := c.Hidden, c.Intermediate, c.Vocab, c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	s := map[string][]int{"model.embed_tokens.weight": {V, C}, "model.norm.weight": {C}}
	if !c.TieEmbeddings {
		s["lm_head.weight"] = []int{V, C}
	}
	for l := 0; l < c.Layers; l++ {
		p := "model.layers." + strconv.Itoa(l) + "."
		s[p+"input_layernorm.weight"] = []int{C}
		s[p+"post_attention_layernorm.weight"] = []int{C}
		s[p+"self_attn.q_proj.weight"] = []int{qd, C}
		s[p+"self_attn.k_proj.weight"] = []int{kvd, C}
		s[p+"self_attn.v_proj.weight"] = []int{kvd, C}
		s[p+"self_attn.o_proj.weight"] = []int{C, qd}
		s[p+"mlp.gate_proj.weight"] = []int{I, C}
		s[p+"mlp.up_proj.weight"] = []int{I, C}
		s[p+"mlp.down_proj.weight"] = []int{C, I}
		if c.QKVBias {
			s[p+"self_attn.q_proj.bias"] = []int{qd}
			s[p+"self_attn.k_proj.bias"] = []int{kvd}
			s[p+"self_attn.v_proj.bias"] = []int{kvd}
		}
		if c.QKNorm {
			s[p+"self_attn.q_norm.weight"] = []int{c.HeadDim}
			s[p+"self_attn.k_norm.weight"] = []int{c.HeadDim}
		}
	}
	return s
}

// randomSource fills every tensor of c with seeded random values in dtype dt:
// matrices ~ U(-1,1)/sqrt(in), norm weights ~ 1 ± 0.2, biases ~ U(-0.1,0.1).
func randomSource(c *Config, dt safetensors.DType, seed uint64) memSource {
	r := rand.New(rand.NewPCG(seed, 7))
	src := memSource{}
	for name, shape := range tensorShapes(c) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		data := make([]byte, n*dt.Size())
		for i := 0; i < n; i++ {
			var v float64
			switch {
			case len(shape) == 2:
				v = (r.Float64()*2 - 1) / math.Sqrt(float64(shape[1]))
				if name == "model.embed_tokens.weight" {
					v = r.Float64()*2 - 1
				}
			case hasSuffix(name, ".bias"):
				v = (r.Float64()*2 - 1) * 0.1
			default:
				v = 1 + (r.Float64()*2-1)*0.2
			}
			switch dt {
			case safetensors.F32:
				binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(v)))
			case safetensors.BF16:
				binary.LittleEndian.PutUint16(data[2*i:], safetensors.Float32ToBF16(float32(v)))
			case safetensors.F16:
				binary.LittleEndian.PutUint16(data[2*i:], safetensors.Float32ToF16(float32(v)))
			}
		}
		src[name] = safetensors.Tensor{Name: name, DType: dt, Shape: shape, Data: data}
	}
	return src
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

// smallConfig is a tiny qwen3-like config for consistency tests.
func smallConfig() *Config {
	c := &Config{ModelType: "qwen3", Hidden: 48, Intermediate: 80, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 12,
		Vocab: 70, MaxPositions: 256, RMSNormEps: 1e-6, RopeTheta: 10000, QKNorm: true, TieEmbeddings: true}
	c.Windows = make([]int, c.Layers)
	return c
}
