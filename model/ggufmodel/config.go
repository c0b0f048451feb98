package ggufmodel

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/quantize/gguf"
)

// meta reads typed metadata values; GGUF writers differ in integer widths
// (gguf-py writes u32, others i32 or u64), so integers of any width are
// accepted.
type meta struct {
	gf   *gguf.File
	path string
}

func (m meta) int(key string) (int, bool, error) {
	v, ok := m.gf.Value(key)
	if !ok {
		return 0, false, nil
	}
	var n int64
	switch x := v.(type) {
	case uint8:
		n = int64(x)
	case int8:
		n = int64(x)
	case uint16:
		n = int64(x)
	case int16:
		n = int64(x)
	case uint32:
		n = int64(x)
	case int32:
		n = int64(x)
	case uint64:
		if x > math.MaxInt32 {
			return 0, true, fmt.Errorf("ggufmodel: %s: %s = %d, too large", m.path, key, x)
		}
		n = int64(x)
	case int64:
		n = x
	default:
		return 0, true, fmt.Errorf("ggufmodel: %s: %s is a %T, want an integer", m.path, key, v)
	}
	if n < 0 || n > math.MaxInt32 {
		return 0, true, fmt.Errorf("ggufmodel: %s: %s = %d, want 0..%d", m.path, key, n, math.MaxInt32)
	}
	return int(n), true, nil
}

// float returns a float32 value as the shortest decimal that rounds to it,
// read as float64: config.json's 1e-06 is stored as float32 in a GGUF and
// comes back as 1e-06, not 9.99999997e-07.
func (m meta) float(key string) (float64, bool, error) {
	v, ok := m.gf.Value(key)
	if !ok {
		return 0, false, nil
	}
	switch x := v.(type) {
	case float32:
		f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
		return f, true, nil
	case float64:
		return x, true, nil
	}
	return 0, true, fmt.Errorf("ggufmodel: %s: %s is a %T, want a float", m.path, key, v)
}

func (m meta) str(key string) (string, bool, error) {
	v, ok := m.gf.Value(key)
	if !ok {
		return "", false, nil
	}
	s, isStr := v.(string)
	if !isStr {
		return "", true, fmt.Errorf("ggufmodel: %s: %s is a %T, want a string", m.path, key, v)
	}
	return s, true, nil
}

// config builds the Hugging Face config.json that the GGUF's llama.cpp keys
// describe (the inverse of the converter's set_gguf_parameters) and parses it
// with model.ParseConfig, so family defaults and checks are the folder's.
// ropeFreqs, when the file has rope_freqs.weight, holds its divisors; they
// become llama3 rope_scaling when known parameters reproduce them exactly,
// else are returned as factors for LoadOptions.RopeFreqFactors.
func config(gf *gguf.File, path string, ropeFreqs []float32) (*model.Config, []float32, error) {
	m := meta{gf, path}
	arch, ok, err := m.str("general.architecture")
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		return nil, nil, fmt.Errorf("ggufmodel: %s: no general.architecture", path)
	}
	switch arch {
	case "qwen3", "qwen2", "llama":
	default:
		return nil, nil, fmt.Errorf("ggufmodel: %s: general.architecture %q not supported (supported: llama, qwen2, qwen3)", path, arch)
	}
	raw := map[string]any{"model_type": arch}
	req := []struct{ key, hf string }{
		{"block_count", "num_hidden_layers"},
		{"embedding_length", "hidden_size"},
		{"feed_forward_length", "intermediate_size"},
		{"attention.head_count", "num_attention_heads"},
	}
	for _, k := range req {
		v, ok, err := m.int(arch + "." + k.key)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			return nil, nil, fmt.Errorf("ggufmodel: %s: missing %s.%s", path, arch, k.key)
		}
		raw[k.hf] = v
	}
	for _, k := range []struct{ key, hf string }{
		{"attention.head_count_kv", "num_key_value_heads"},
		{"attention.key_length", "head_dim"},
		{"context_length", "max_position_embeddings"},
	} {
		v, ok, err := m.int(arch + "." + k.key)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			raw[k.hf] = v
		}
	}
	if kl, ok := raw["head_dim"]; ok {
		if vl, has, err := m.int(arch + ".attention.value_length"); err != nil {
			return nil, nil, err
		} else if has && vl != kl {
			return nil, nil, fmt.Errorf("ggufmodel: %s: %s.attention.value_length %d differs from key_length %d", path, arch, vl, kl)
		}
	}
	for _, k := range []struct{ key, hf string }{
		{"attention.layer_norm_rms_epsilon", "rms_norm_eps"},
		{"rope.freq_base", "rope_theta"},
	} {
		v, ok, err := m.float(arch + "." + k.key)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			raw[k.hf] = v
		}
	}
	emb, ok := gf.Tensor("token_embd.weight")
	if !ok || len(emb.Shape) != 2 {
		return nil, nil, fmt.Errorf("ggufmodel: %s: no 2-D token_embd.weight", path)
	}
	raw["vocab_size"] = emb.Shape[0]
	_, hasOut := gf.Tensor("output.weight")
	raw["tie_word_embeddings"] = !hasOut
	if arch == "llama" {
		if _, ok := gf.Tensor("blk.0.attn_q.bias"); ok {
			raw["attention_bias"] = true
		}
		if _, ok := gf.Tensor("blk.0.ffn_gate.bias"); ok {
			raw["mlp_bias"] = true
		}
	}
	if v, ok, err := m.int("tokenizer.ggml.bos_token_id"); err != nil {
		return nil, nil, err
	} else if ok {
		raw["bos_token_id"] = v
	}
	// Generation stops at eos, and, as llama.cpp's end-of-generation set,
	// at the end-of-turn and end-of-message tokens (Llama 3's <|eot_id|>,
	// <|eom_id|>) that the converter writes separately.
	var eos []int
	for _, key := range []string{"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"} {
		v, ok, err := m.int(key)
		if err != nil {
			return nil, nil, err
		}
		if ok && !slices.Contains(eos, v) {
			eos = append(eos, v)
		}
	}
	if eos != nil {
		raw["eos_token_id"] = eos
	}

	// Rope scaling.
	var factors []float32
	typ, _, err := m.str(arch + ".rope.scaling.type")
	if err != nil {
		return nil, nil, err
	}
	switch typ {
	case "", "none":
	case "linear":
		f, ok, err := m.float(arch + ".rope.scaling.factor")
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			return nil, nil, fmt.Errorf("ggufmodel: %s: %s.rope.scaling.type linear without a factor", path, arch)
		}
		if f != 1 {
			raw["rope_scaling"] = map[string]any{"rope_type": "linear", "factor": f}
		}
	default:
		return nil, nil, fmt.Errorf("ggufmodel: %s: %s.rope.scaling.type %q not supported (supported: none, linear)", path, arch, typ)
	}
	if ropeFreqs != nil {
		if _, ok := raw["rope_scaling"]; ok {
			return nil, nil, fmt.Errorf("ggufmodel: %s: both rope_freqs.weight and %s.rope.scaling.type", path, arch)
		}
		theta, _ := raw["rope_theta"].(float64)
		if theta == 0 {
			theta = 10000
		}
		hd, _ := raw["head_dim"].(int)
		if hd == 0 {
			hd = raw["hidden_size"].(int) / max(raw["num_attention_heads"].(int), 1)
		}
		if rs := recoverLlama3(ropeFreqs, theta, hd); rs != nil {
			raw["rope_scaling"] = rs
		} else {
			factors = ropeFreqs
		}
	}
	if arch == "llama" {
		if rd, ok, err := m.int(arch + ".rope.dimension_count"); err != nil {
			return nil, nil, err
		} else if ok {
			hd, _ := raw["head_dim"].(int)
			if hd == 0 {
				hd = raw["hidden_size"].(int) / max(raw["num_attention_heads"].(int), 1)
			}
			if rd != hd {
				return nil, nil, fmt.Errorf("ggufmodel: %s: llama.rope.dimension_count %d, want head_dim %d (partial rotary is not supported)", path, rd, hd)
			}
		}
	}
	js, err := json.Marshal(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("ggufmodel: %s: %v", path, err)
	}
	cfg, err := model.ParseConfig(js)
	if err != nil {
		return nil, nil, fmt.Errorf("ggufmodel: %s: metadata as %w", path, err)
	}
	return cfg, factors, nil
}

// llama3Factors is the converter's rope_freqs (LlamaModel
// generate_extra_tensors) for the given llama3 rope_scaling parameters.
func llama3Factors(base float64, dim int, factor, lowFF, highFF, oldCtx float64) []float32 {
	lowWL, highWL := oldCtx/lowFF, oldCtx/highFF
	out := make([]float32, 0, dim/2)
	for i := 0; i < dim; i += 2 {
		freq := float32(1.0 / math.Pow(base, float64(float32(i)/float32(dim))))
		wl := 2 * math.Pi / float64(freq)
		switch {
		case wl < highWL:
			out = append(out, 1)
		case wl > lowWL:
			out = append(out, float32(factor))
		default:
			smooth := (oldCtx/wl - lowFF) / (highFF - lowFF)
			out = append(out, float32(1/((1-smooth)/factor+smooth)))
		}
	}
	return out
}

// recoverLlama3 finds llama3 rope_scaling parameters that reproduce the
// rope_freqs divisors bit for bit, trying the values Llama 3.x checkpoints
// use (factor 8/16/32, low 1, high 4, original context 8192) and nearby
// ones; nil when none does. With the parameters the model computes its
// inverse frequencies exactly as transformers does.
func recoverLlama3(f []float32, base float64, dim int) map[string]any {
	if len(f) != dim/2 {
		return nil
	}
	var factor float32
	for _, v := range f {
		factor = max(factor, v)
	}
	factors := []float64{float64(factor), 8, 16, 32, 4, 2}
	for _, fa := range factors {
		for _, lo := range []float64{1, 0.5, 2, 0.25} {
			for _, hi := range []float64{4, 2, 8, 1, 16} {
				if hi == lo {
					continue
				}
				for ctx := 64.0; ctx <= 1<<21; ctx *= 2 {
					g := llama3Factors(base, dim, fa, lo, hi, ctx)
					same := true
					for i := range g {
						if math.Float32bits(g[i]) != math.Float32bits(f[i]) {
							same = false
							break
						}
					}
					if same {
						return map[string]any{"rope_type": "llama3", "factor": fa, "low_freq_factor": lo,
							"high_freq_factor": hi, "original_max_position_embeddings": int(ctx)}
					}
				}
			}
		}
	}
	return nil
}
