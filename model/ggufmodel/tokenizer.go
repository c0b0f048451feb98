package ggufmodel

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tunellm/tune/quantize/gguf"
	"github.com/tunellm/tune/tokenizer"
)

// GGUF token types (llama.cpp's llama_token_type).
const (
	tokNormal      = 1
	tokUnknown     = 2
	tokControl     = 3
	tokUserDefined = 4
	tokUnused      = 5
	tokByte        = 6
)

// The pre-tokenizers llama.cpp implements for these `tokenizer.ggml.pre`
// values (llama-vocab.cpp), written as the models' own tokenizer.json
// spells them (Qwen2/Qwen3 and Llama 3's files).
const (
	qwen2Regex = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	llamaRegex = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

type obj = map[string]any

func byteLevel(trimOffsets, regex bool) obj {
	return obj{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trimOffsets, "use_regex": regex}
}

// newTokenizer synthesizes the Hugging Face tokenizer.json and
// tokenizer_config.json that the GGUF's tokenizer.ggml.* keys describe (the
// inverse of the converter's _set_vocab_gpt2 and SpecialVocab) and loads
// them with package tokenizer: control tokens become special added tokens,
// user-defined tokens non-special added tokens, unused ([PADn]) tokens are
// dropped; add_bos_token becomes a TemplateProcessing post-processor.
func newTokenizer(gf *gguf.File, path string) (*tokenizer.Tokenizer, error) {
	m := meta{gf, path}
	model, _, err := m.str("tokenizer.ggml.model")
	if err != nil {
		return nil, err
	}
	if model != "gpt2" {
		return nil, fmt.Errorf("ggufmodel: %s: tokenizer.ggml.model %q not supported (supported: gpt2, byte-level BPE)", path, model)
	}
	pre, _, err := m.str("tokenizer.ggml.pre")
	if err != nil {
		return nil, err
	}
	var regex string
	normalizer := any(nil)
	ignoreMerges := false
	addBOS := false // llama.cpp's default for BPE vocabs
	switch pre {
	case "qwen2":
		regex = qwen2Regex
		normalizer = obj{"type": "NFC"}
	case "llama-bpe", "llama3", "llama-v3":
		regex = llamaRegex
		ignoreMerges = true
		addBOS = true
	default:
		return nil, fmt.Errorf("ggufmodel: %s: tokenizer.ggml.pre %q not supported (supported: qwen2, llama-bpe)", path, pre)
	}
	v, _ := gf.Value("tokenizer.ggml.tokens")
	tokens, ok := v.([]string)
	if !ok || len(tokens) == 0 {
		return nil, fmt.Errorf("ggufmodel: %s: tokenizer.ggml.tokens missing or not a string array", path)
	}
	v, _ = gf.Value("tokenizer.ggml.token_type")
	types, ok := v.([]int32)
	if !ok || len(types) != len(tokens) {
		return nil, fmt.Errorf("ggufmodel: %s: tokenizer.ggml.token_type: want %d int32 values", path, len(tokens))
	}
	v, ok = gf.Value("tokenizer.ggml.merges")
	merges, isList := v.([]string)
	if ok && !isList {
		return nil, fmt.Errorf("ggufmodel: %s: tokenizer.ggml.merges is a %T, want a string array", path, v)
	}
	if merges == nil {
		merges = []string{}
	}
	vocab := make(map[string]int, len(tokens))
	var added []obj
	for id, s := range tokens {
		switch types[id] {
		case tokNormal, tokByte, tokUnknown:
			if _, dup := vocab[s]; dup {
				return nil, fmt.Errorf("ggufmodel: %s: tokenizer.ggml.tokens[%d] %q is a duplicate", path, id, s)
			}
			vocab[s] = id
		case tokControl, tokUserDefined:
			added = append(added, obj{"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
				"normalized": false, "special": types[id] == tokControl})
		case tokUnused:
		default:
			return nil, fmt.Errorf("ggufmodel: %s: tokenizer.ggml.token_type[%d] = %d, want 1..6", path, id, types[id])
		}
	}
	tokenAt := func(key string) (string, int, bool, error) {
		id, ok, err := m.int(key)
		if err != nil || !ok {
			return "", 0, false, err
		}
		if id >= len(tokens) {
			return "", 0, false, fmt.Errorf("ggufmodel: %s: %s = %d beyond the %d tokens", path, key, id, len(tokens))
		}
		return tokens[id], id, true, nil
	}
	if b, ok := gf.Value("tokenizer.ggml.add_bos_token"); ok {
		if bv, isBool := b.(bool); isBool {
			addBOS = bv
		}
	}
	tc := obj{"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false, "add_bos_token": addBOS, "bos_token": nil, "eos_token": nil}
	post := any(byteLevel(false, false))
	for _, k := range []struct{ key, name string }{{"tokenizer.ggml.bos_token_id", "bos_token"}, {"tokenizer.ggml.eos_token_id", "eos_token"},
		{"tokenizer.ggml.padding_token_id", "pad_token"}, {"tokenizer.ggml.unknown_token_id", "unk_token"}} {
		s, id, ok, err := tokenAt(k.key)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		tc[k.name] = s
		if k.name == "bos_token" && addBOS {
			tp := obj{"type": "TemplateProcessing",
				"single": []any{obj{"SpecialToken": obj{"id": s, "type_id": 0}}, obj{"Sequence": obj{"id": "A", "type_id": 0}}},
				"pair": []any{obj{"SpecialToken": obj{"id": s, "type_id": 0}}, obj{"Sequence": obj{"id": "A", "type_id": 0}},
					obj{"SpecialToken": obj{"id": s, "type_id": 1}}, obj{"Sequence": obj{"id": "B", "type_id": 1}}},
				"special_tokens": obj{s: obj{"id": s, "ids": []int{id}, "tokens": []string{s}}}}
			post = obj{"type": "Sequence", "processors": []any{byteLevel(false, false), tp}}
		}
	}
	if addBOS && tc["bos_token"] == nil {
		return nil, fmt.Errorf("ggufmodel: %s: tokenizer.ggml.add_bos_token is set but there is no tokenizer.ggml.bos_token_id", path)
	}
	if tmpl, ok, err := m.str("tokenizer.chat_template"); err != nil {
		return nil, err
	} else if ok {
		tc["chat_template"] = tmpl
	}
	if n, ok, _ := m.int(meta{gf, path}.arch() + ".context_length"); ok {
		tc["model_max_length"] = n
	}
	if added == nil {
		added = []obj{}
	}
	tj := obj{
		"version":      "1.0",
		"truncation":   nil,
		"padding":      nil,
		"added_tokens": added,
		"normalizer":   normalizer,
		"pre_tokenizer": obj{"type": "Sequence", "pretokenizers": []any{
			obj{"type": "Split", "pattern": obj{"Regex": regex}, "behavior": "Isolated", "invert": false},
			byteLevel(pre != "qwen2", false),
		}},
		"post_processor": post,
		"decoder":        byteLevel(true, true),
		"model": obj{"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignoreMerges,
			"vocab": vocab, "merges": merges},
	}
	dir, err := os.MkdirTemp("", "tune-gguf-tokenizer-")
	if err != nil {
		return nil, fmt.Errorf("ggufmodel: %w", err)
	}
	defer os.RemoveAll(dir)
	for name, v := range map[string]obj{"tokenizer.json": tj, "tokenizer_config.json": tc} {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("ggufmodel: %s: %v", path, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, fmt.Errorf("ggufmodel: %w", err)
		}
	}
	t, err := tokenizer.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("ggufmodel: %s: tokenizer from metadata: %w", path, err)
	}
	return t, nil
}

func (m meta) arch() string {
	s, _, _ := m.str("general.architecture")
	return s
}
