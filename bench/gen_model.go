//go:build ignore

// gen_model writes "bench-qwen3-small", the synthetic Hugging Face model
// folder tune's CPU benchmark runs on (tune and llama.cpp load the same
// weights):
//
//	qwen3, hidden 1024, intermediate 3072, 8 layers, 16 heads, 8 kv heads,
//	head_dim 64, vocab 32000, untied lm_head, rope_theta 1e6, ~166M params.
//
// Weights are BF16 drawn from N(0, 0.02^2) with a fixed seed; norm weights
// are 1. The tokenizer is byte-level BPE with no merges: GPT-2's 256 byte
// characters (ids 0..255, so a text's ids are its UTF-8 bytes) and three
// special tokens; config.vocab_size pads the vocab to 32000. The speed of a
// forward pass does not depend on the weights' values.
//
// Usage: go run bench/gen_model.go [-gguf OUT.gguf] [-gguf-type f32|f16] OUT_DIR
//
// With -gguf it also exports the folder with quantize.ExportGGUF, for
// bench/llamacpp/bench.mjs.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize"
)

const (
	hidden       = 1024
	intermediate = 3072
	layers       = 8
	heads        = 16
	kvHeads      = 8
	headDim      = 64
	vocab        = 32000
	std          = 0.02
)

func main() {
	ggufPath := flag.String("gguf", "", "also export the model to this GGUF file")
	ggufType := flag.String("gguf-type", "f32", "GGUF weight type: f32 or f16")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: go run bench/gen_model.go [-gguf OUT.gguf] [-gguf-type f32|f16] OUT_DIR")
		os.Exit(2)
	}
	dir := flag.Arg(0)
	err := run(dir)
	if err == nil && *ggufPath != "" {
		err = quantize.ExportGGUF(dir, *ggufPath, *ggufType)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen_model:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var tensors []safetensors.WriteTensor
	seed := uint64(1)
	add := func(name string, shape []int, ones bool) {
		seed++
		tensors = append(tensors, safetensors.WriteTensor{Name: name, DType: safetensors.BF16, Shape: shape, Write: bf16Writer(shape, ones, seed)})
	}
	add("model.embed_tokens.weight", []int{vocab, hidden}, false)
	for l := 0; l < layers; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", []int{hidden}, true)
		add(p+"self_attn.q_proj.weight", []int{heads * headDim, hidden}, false)
		add(p+"self_attn.k_proj.weight", []int{kvHeads * headDim, hidden}, false)
		add(p+"self_attn.v_proj.weight", []int{kvHeads * headDim, hidden}, false)
		add(p+"self_attn.o_proj.weight", []int{hidden, heads * headDim}, false)
		add(p+"self_attn.q_norm.weight", []int{headDim}, true)
		add(p+"self_attn.k_norm.weight", []int{headDim}, true)
		add(p+"post_attention_layernorm.weight", []int{hidden}, true)
		add(p+"mlp.gate_proj.weight", []int{intermediate, hidden}, false)
		add(p+"mlp.up_proj.weight", []int{intermediate, hidden}, false)
		add(p+"mlp.down_proj.weight", []int{hidden, intermediate}, false)
	}
	add("model.norm.weight", []int{hidden}, true)
	add("lm_head.weight", []int{vocab, hidden}, false)
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}

	config := map[string]any{
		"architectures":           []string{"Qwen3ForCausalLM"},
		"model_type":              "qwen3",
		"attention_bias":          false,
		"attention_dropout":       0.0,
		"bos_token_id":            256,
		"eos_token_id":            258,
		"head_dim":                headDim,
		"hidden_act":              "silu",
		"hidden_size":             hidden,
		"initializer_range":       std,
		"intermediate_size":       intermediate,
		"max_position_embeddings": 4096,
		"max_window_layers":       layers,
		"num_attention_heads":     heads,
		"num_hidden_layers":       layers,
		"num_key_value_heads":     kvHeads,
		"rms_norm_eps":            1e-6,
		"rope_scaling":            nil,
		"rope_theta":              1000000.0,
		"sliding_window":          nil,
		"tie_word_embeddings":     false,
		"torch_dtype":             "bfloat16",
		"transformers_version":    "4.51.0",
		"use_cache":               true,
		"use_sliding_window":      false,
		"vocab_size":              vocab,
	}
	specials := []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
	vocabMap := map[string]int{}
	for b, s := range byteChars() {
		vocabMap[s] = b
	}
	var added []map[string]any
	decoder := map[string]any{}
	for i, s := range specials {
		added = append(added, map[string]any{"id": 256 + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
		decoder[fmt.Sprint(256+i)] = map[string]any{"content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
	}
	byteLevel := map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
	tokenizer := map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil,
		"added_tokens":   added,
		"normalizer":     nil,
		"pre_tokenizer":  byteLevel,
		"post_processor": byteLevel,
		"decoder":        byteLevel,
		"model": map[string]any{
			"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": "", "end_of_word_suffix": "",
			"fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocabMap, "merges": []string{},
		},
	}
	tokConfig := map[string]any{
		"add_bos_token": false, "add_prefix_space": false, "added_tokens_decoder": decoder,
		"bos_token": nil, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": nil,
		"clean_up_tokenization_spaces": false, "errors": "replace", "model_max_length": 4096,
		"split_special_tokens": false, "tokenizer_class": "Qwen2Tokenizer",
	}
	for name, v := range map[string]any{"config.json": config, "tokenizer.json": tokenizer, "tokenizer_config.json": tokConfig} {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// bf16Writer streams a tensor of N(0, std^2) (or all-ones) BF16 values in
// 64K-element chunks, so the generator never holds a whole matrix.
func bf16Writer(shape []int, ones bool, seed uint64) func(io.Writer) error {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return func(w io.Writer) error {
		rng := rand.New(rand.NewPCG(seed, 0x7475_6e65))
		buf := make([]byte, 2*min(n, 1<<16))
		for done := 0; done < n; {
			k := min(n-done, len(buf)/2)
			for i := 0; i < k; i++ {
				v := float32(1)
				if !ones {
					v = float32(rng.NormFloat64() * std)
				}
				h := safetensors.Float32ToBF16(v)
				buf[2*i], buf[2*i+1] = byte(h), byte(h>>8)
			}
			if _, err := w.Write(buf[:2*k]); err != nil {
				return err
			}
			done += k
		}
		return nil
	}
}

// byteChars is GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for
// themselves, the other 68 bytes for U+0100.. in byte order.
func byteChars() [256]string {
	var out [256]string
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			out[b] = string(rune(b))
		} else {
			out[b] = string(rune(256 + n))
			n++
		}
	}
	return out
}
