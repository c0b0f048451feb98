package model

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const baseConfig = `{"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 100, "max_position_embeddings": 512,
 "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2}`

// patch returns baseConfig with keys replaced (a nil value deletes the key).
func patch(t *testing.T, kv map[string]any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(baseConfig), &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range kv {
		if v == "DELETE" {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name  string
		kv    map[string]any
		check func(*Config) bool
	}{
		{"base", nil, func(c *Config) bool {
			return c.QKNorm && !c.QKVBias && c.HeadDim == 16 && c.KVHeads == 2 && c.TieEmbeddings &&
				slices.Equal(c.EOS, []int{2}) && slices.Equal(c.BOS, []int{1}) && slices.Equal(c.Windows, []int{0, 0, 0})
		}},
		{"kv heads default to heads", map[string]any{"num_key_value_heads": "DELETE"}, func(c *Config) bool { return c.KVHeads == 4 }},
		{"qwen3 head_dim default 128", map[string]any{"head_dim": "DELETE"}, func(c *Config) bool { return c.HeadDim == 128 }},
		{"llama head_dim default hidden/heads", map[string]any{"model_type": "llama", "head_dim": "DELETE"}, func(c *Config) bool {
			return c.HeadDim == 16 && !c.QKNorm && !c.QKVBias
		}},
		{"llama attention_bias", map[string]any{"model_type": "llama", "attention_bias": true, "mlp_bias": true}, func(c *Config) bool {
			return c.QKVBias && c.OBias && c.MLPBias
		}},
		{"qwen2 qkv bias", map[string]any{"model_type": "qwen2"}, func(c *Config) bool { return c.QKVBias && !c.OBias && !c.QKNorm }},
		{"eos list", map[string]any{"eos_token_id": []int{2, 7}}, func(c *Config) bool { return slices.Equal(c.EOS, []int{2, 7}) }},
		{"eos null", map[string]any{"eos_token_id": nil}, func(c *Config) bool { return c.EOS == nil }},
		{"mistral window", map[string]any{"model_type": "mistral", "sliding_window": 5}, func(c *Config) bool {
			return slices.Equal(c.Windows, []int{5, 5, 5})
		}},
		{"mistral null window", map[string]any{"model_type": "mistral", "sliding_window": nil}, func(c *Config) bool {
			return slices.Equal(c.Windows, []int{0, 0, 0})
		}},
		{"mistral absent window is the class default", map[string]any{"model_type": "mistral"}, func(c *Config) bool {
			return slices.Equal(c.Windows, []int{4096, 4096, 4096})
		}},
		{"qwen2 window ignored without use_sliding_window", map[string]any{"model_type": "qwen2", "sliding_window": 8}, func(c *Config) bool {
			return slices.Equal(c.Windows, []int{0, 0, 0})
		}},
		{"qwen3 window from max_window_layers", map[string]any{"sliding_window": 8, "use_sliding_window": true, "max_window_layers": 1}, func(c *Config) bool {
			return slices.Equal(c.Windows, []int{0, 8, 8})
		}},
		{"qwen2 layer_types", map[string]any{"model_type": "qwen2", "sliding_window": 8, "use_sliding_window": true,
			"layer_types": []string{"sliding_attention", "full_attention", "sliding_attention"}}, func(c *Config) bool {
			return slices.Equal(c.Windows, []int{8, 0, 8})
		}},
		{"rope linear", map[string]any{"rope_scaling": map[string]any{"type": "linear", "factor": 2.0}}, func(c *Config) bool {
			return c.Rope.Type == "linear" && c.Rope.Factor == 2
		}},
		{"rope_parameters (transformers v5)", map[string]any{"rope_theta": "DELETE", "rope_parameters": map[string]any{"rope_type": "default", "rope_theta": 5e5}}, func(c *Config) bool {
			return c.RopeTheta == 5e5 && c.Rope.Type == ""
		}},
	}
	for _, tt := range tests {
		c, err := ParseConfig(patch(t, tt.kv))
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if !tt.check(c) {
			t.Errorf("%s: unexpected config %+v", tt.name, c)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		kv   map[string]any
		want string
	}{
		{map[string]any{"model_type": "gemma3"}, `config.json: unsupported model_type "gemma3" (supported: llama, mistral, qwen2, qwen3)`},
		{map[string]any{"rope_scaling": map[string]any{"rope_type": "yarn", "factor": 4.0}}, `unsupported rope_type "yarn" (supported: default, linear, llama3)`},
		{map[string]any{"rope_scaling": map[string]any{"rope_type": "llama3", "factor": 8.0}}, `needs low_freq_factor`},
		{map[string]any{"num_key_value_heads": 3}, `num_key_value_heads = 3 must divide num_attention_heads = 4`},
		{map[string]any{"hidden_size": 0}, `hidden_size = 0`},
		{map[string]any{"hidden_act": "gelu"}, `unsupported hidden_act "gelu"`},
		{map[string]any{"eos_token_id": "x"}, `eos_token_id = "x"`},
	}
	for _, tt := range tests {
		_, err := ParseConfig(patch(t, tt.kv))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want it to contain %q", tt.kv, err, tt.want)
		}
	}
}

// TestInvFreqGolden checks default, linear (qwen2) and llama3 RoPE frequencies
// against the float32 buffers transformers' formulas give in the reference.
func TestInvFreqGolden(t *testing.T) {
	for _, name := range goldenModels {
		data, err := os.ReadFile(filepath.Join("..", "testdata", "golden", name+".json"))
		if err != nil {
			t.Skip(err)
		}
		var g struct {
			Inv []float64 `json:"rope_inv_freq"`
		}
		if err := json.Unmarshal(data, &g); err != nil {
			t.Fatal(err)
		}
		c, err := LoadConfig(filepath.Join("..", "testdata", "models", name))
		if err != nil {
			t.Fatal(err)
		}
		got := c.InvFreq()
		if len(got) != len(g.Inv) {
			t.Fatalf("%s: %d frequencies, want %d", name, len(got), len(g.Inv))
		}
		for i := range got {
			if d := math.Abs(float64(got[i]) - g.Inv[i]); d > 1e-6*g.Inv[i] {
				t.Errorf("%s: inv_freq[%d] = %v, want %v", name, i, got[i], g.Inv[i])
			}
		}
	}
}
