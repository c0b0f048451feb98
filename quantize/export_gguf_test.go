package quantize

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/gguf"
)

// exportCase lists what the converter (convert_hf_to_gguf.py, read by hand)
// writes for each tiny checkpoint of testdata/models (made by
// testdata/gen/reference.py); the values are copied from their config.json
// and tokenizer files, not from ExportGGUF.
type exportCase struct {
	model   string
	arch    string
	hparams map[string]any // without the "<arch>." prefix
	vocab   int
	special []int32 // token ids >= 256 that are CONTROL (3); the rest of the added ones are USER_DEFINED (4)
	user    []int32
	ids     map[string]any // tokenizer.ggml.* ids and flags
	pre     string
	tied    bool
	hasTmpl bool
}

var exportCases = []exportCase{
	{
		model: "qwen3-tied", arch: "qwen3",
		hparams: map[string]any{"block_count": uint32(2), "context_length": uint32(512), "embedding_length": uint32(64),
			"feed_forward_length": uint32(128), "attention.head_count": uint32(4), "attention.head_count_kv": uint32(2),
			"rope.freq_base": float32(1e6), "attention.layer_norm_rms_epsilon": float32(1e-6),
			"attention.key_length": uint32(32), "attention.value_length": uint32(32)},
		vocab: 261, special: []int32{256, 257, 258}, user: []int32{259, 260},
		// eos and pad from tokenizer_config.json; bos from config.json bos_token_id.
		ids: map[string]any{"eos_token_id": uint32(258), "padding_token_id": uint32(256), "bos_token_id": uint32(256), "add_bos_token": false},
		pre: "qwen2", tied: true, hasTmpl: true,
	},
	{
		model: "qwen3-untied-bf16", arch: "qwen3",
		hparams: map[string]any{"block_count": uint32(3), "embedding_length": uint32(64), "attention.key_length": uint32(32)},
		vocab:   272, special: []int32{256, 257, 258}, user: []int32{259, 260},
		ids: map[string]any{"eos_token_id": uint32(258), "padding_token_id": uint32(256), "bos_token_id": uint32(256), "add_bos_token": false},
		pre: "qwen2", tied: false, hasTmpl: true,
	},
	{
		model: "llama3", arch: "llama",
		hparams: map[string]any{"block_count": uint32(2), "attention.head_count": uint32(2), "attention.head_count_kv": uint32(1),
			"rope.freq_base": float32(500000), "attention.layer_norm_rms_epsilon": float32(1e-5), "vocab_size": uint32(266),
			"rope.dimension_count": uint32(32), "attention.key_length": uint32(32)},
		vocab: 266, special: []int32{256, 257, 258, 259, 260, 261, 262, 263, 264, 265},
		// bos/eos from tokenizer_config.json; eos_token_id in config.json is a list (ignored);
		// add_bos from the TemplateProcessing post-processor.
		ids: map[string]any{"bos_token_id": uint32(256), "eos_token_id": uint32(265), "add_bos_token": true},
		pre: "llama-bpe", tied: false, hasTmpl: true,
	},
	{
		model: "qwen2", arch: "qwen2",
		hparams: map[string]any{"block_count": uint32(2), "attention.head_count_kv": uint32(2),
			"rope.scaling.type": "linear", "rope.scaling.factor": float32(2)},
		vocab: 261, special: []int32{256, 257, 258}, user: []int32{259, 260},
		ids: map[string]any{"eos_token_id": uint32(258), "padding_token_id": uint32(256), "bos_token_id": uint32(256)},
		pre: "qwen2", tied: true, hasTmpl: true,
	},
}

func testModelDir(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join("..", "testdata", "models", name)
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err != nil {
		t.Fatalf("missing test checkpoint (regenerate with /usr/bin/python3 testdata/gen/reference.py): %v", err)
	}
	return dir
}

// gpt2ByteChars is GPT-2's bytes_to_unicode(): printable Latin-1 bytes map
// to themselves, the other 68 bytes to U+0100.. in byte order.
func gpt2ByteChars() [256]string {
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

// hfToGGUF is tensor_mapping.py for these models, written out.
func hfToGGUF(name string) string {
	for hf, g := range map[string]string{"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"} {
		if name == hf {
			return g
		}
	}
	var layer int
	var rest string
	if _, err := fmt.Sscanf(name, "model.layers.%d.%s", &layer, &rest); err != nil {
		return ""
	}
	for hf, g := range map[string]string{
		"input_layernorm.": "attn_norm.", "self_attn.q_proj.": "attn_q.", "self_attn.k_proj.": "attn_k.",
		"self_attn.v_proj.": "attn_v.", "self_attn.o_proj.": "attn_output.", "self_attn.q_norm.": "attn_q_norm.",
		"self_attn.k_norm.": "attn_k_norm.", "post_attention_layernorm.": "ffn_norm.", "mlp.gate_proj.": "ffn_gate.",
		"mlp.up_proj.": "ffn_up.", "mlp.down_proj.": "ffn_down.",
	} {
		if strings.HasPrefix(rest, hf) {
			return fmt.Sprintf("blk.%d.%s%s", layer, g, strings.TrimPrefix(rest, hf))
		}
	}
	return ""
}

// unpermute is the inverse view of LlamaModel.permute, written as loops:
// GGUF row h*HD + 2*j + i holds HF row h*HD + i*HD/2 + j.
func llamaPermute(src []float32, rows, cols, nHead int) []float32 {
	hd := rows / nHead
	dst := make([]float32, len(src))
	for h := 0; h < nHead; h++ {
		for i := 0; i < 2; i++ {
			for j := 0; j < hd/2; j++ {
				copy(dst[(h*hd+2*j+i)*cols:(h*hd+2*j+i+1)*cols], src[(h*hd+i*hd/2+j)*cols:(h*hd+i*hd/2+j+1)*cols])
			}
		}
	}
	return dst
}

func TestExportGGUF(t *testing.T) {
	chars := gpt2ByteChars()
	for _, tc := range exportCases {
		for _, typ := range []string{"f32", "f16"} {
			t.Run(tc.model+"/"+typ, func(t *testing.T) {
				dir := testModelDir(t, tc.model)
				out := filepath.Join(t.TempDir(), "m.gguf")
				if err := ExportGGUF(dir, out, typ); err != nil {
					t.Fatal(err)
				}
				f, err := gguf.Open(out)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				checkKV := func(key string, want any) {
					t.Helper()
					got, ok := f.Value(key)
					if !ok || !reflect.DeepEqual(got, want) {
						t.Errorf("%s = %T %v (present %v), want %T %v", key, got, got, ok, want, want)
					}
				}
				wantFtype := uint32(0)
				if typ == "f16" {
					wantFtype = 1
				}
				checkKV("general.architecture", tc.arch)
				checkKV("general.file_type", wantFtype)
				checkKV("general.quantization_version", uint32(2))
				for k, v := range tc.hparams {
					checkKV(tc.arch+"."+k, v)
				}
				if tc.arch != "llama" {
					if _, ok := f.Value(tc.arch + ".rope.dimension_count"); ok {
						t.Errorf("%s.rope.dimension_count written; the converter writes it for llama only", tc.arch)
					}
				}
				checkKV("tokenizer.ggml.model", "gpt2")
				checkKV("tokenizer.ggml.pre", tc.pre)
				for k, v := range tc.ids {
					checkKV("tokenizer.ggml."+k, v)
				}
				checkKV("tokenizer.ggml.merges", []string{})
				if _, ok := f.Value("tokenizer.chat_template"); ok != tc.hasTmpl {
					t.Errorf("chat template present %v, want %v", ok, tc.hasTmpl)
				}

				// Vocab: bytes, added tokens, padding.
				tv, _ := f.Value("tokenizer.ggml.tokens")
				tokens, _ := tv.([]string)
				yv, _ := f.Value("tokenizer.ggml.token_type")
				types, _ := yv.([]int32)
				if len(tokens) != tc.vocab || len(types) != tc.vocab {
					t.Fatalf("%d tokens, %d types, want %d", len(tokens), len(types), tc.vocab)
				}
				for b := 0; b < 256; b++ {
					if tokens[b] != chars[b] || types[b] != 1 {
						t.Fatalf("token %d = %q type %d, want %q type 1", b, tokens[b], types[b], chars[b])
					}
				}
				wantType := map[int32]int32{}
				for _, id := range tc.special {
					wantType[id] = 3
				}
				for _, id := range tc.user {
					wantType[id] = 4
				}
				var tj struct {
					AddedTokens []struct {
						ID      int32  `json:"id"`
						Content string `json:"content"`
					} `json:"added_tokens"`
				}
				b, _ := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
				if err := json.Unmarshal(b, &tj); err != nil {
					t.Fatal(err)
				}
				lastAdded := int32(255)
				for _, a := range tj.AddedTokens {
					if tokens[a.ID] != a.Content || types[a.ID] != wantType[a.ID] {
						t.Errorf("token %d = %q type %d, want %q type %d", a.ID, tokens[a.ID], types[a.ID], a.Content, wantType[a.ID])
					}
					lastAdded = max(lastAdded, a.ID)
				}
				for id := int(lastAdded) + 1; id < tc.vocab; id++ {
					if want := fmt.Sprintf("[PAD%d]", id); tokens[id] != want || types[id] != 5 {
						t.Errorf("token %d = %q type %d, want %q type 5", id, tokens[id], types[id], want)
					}
				}

				// Tensors: every HF tensor, mapped, converted, permuted for llama.
				var cfg struct {
					Heads   int `json:"num_attention_heads"`
					KVHeads int `json:"num_key_value_heads"`
				}
				b, _ = os.ReadFile(filepath.Join(dir, "config.json"))
				json.Unmarshal(b, &cfg)
				st, err := safetensors.Open(dir)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				seen := map[string]bool{}
				for _, name := range st.Names() {
					gname := hfToGGUF(name)
					if gname == "" {
						t.Fatalf("test has no mapping for %q", name)
					}
					seen[gname] = true
					ht, _ := st.Tensor(name)
					info, ok := f.Tensor(gname)
					if !ok {
						t.Errorf("tensor %q (from %q) missing", gname, name)
						continue
					}
					if !reflect.DeepEqual(info.Shape, ht.Shape) {
						t.Errorf("%s: shape %v, want %v", gname, info.Shape, ht.Shape)
					}
					wantT := gguf.TypeF32
					if typ == "f16" && len(ht.Shape) == 2 && !strings.HasSuffix(gname, "_norm.weight") {
						wantT = gguf.TypeF16
					}
					if info.Type != wantT {
						t.Errorf("%s: type %s, want %s", gname, info.Type, wantT)
					}
					want, err := ht.Float32()
					if err != nil {
						t.Fatal(err)
					}
					if tc.arch == "llama" && (strings.Contains(name, "q_proj") || strings.Contains(name, "k_proj")) {
						nh := cfg.Heads
						if strings.Contains(name, "k_proj") {
							nh = cfg.KVHeads
						}
						want = llamaPermute(want, ht.Shape[0], len(want)/ht.Shape[0], nh)
					}
					data, err := f.TensorData(gname)
					if err != nil {
						t.Fatal(err)
					}
					var wantBytes []byte
					if wantT == gguf.TypeF16 {
						wantBytes = make([]byte, 2*len(want))
						for i, v := range want {
							h := safetensors.Float32ToF16(v)
							wantBytes[2*i], wantBytes[2*i+1] = byte(h), byte(h>>8)
						}
					} else {
						wantBytes = make([]byte, 4*len(want))
						for i, v := range want {
							u := math.Float32bits(v)
							wantBytes[4*i], wantBytes[4*i+1], wantBytes[4*i+2], wantBytes[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
						}
					}
					if !bytes.Equal(data, wantBytes) {
						t.Errorf("%s: data differs from %s", gname, name)
					}
				}
				if _, ok := f.Tensor("output.weight"); ok == tc.tied {
					t.Errorf("output.weight present %v with tied=%v", ok, tc.tied)
				}
				extra := 0
				if tc.arch == "llama" {
					extra = 1 // rope_freqs.weight
					checkRopeFreqs(t, f)
				}
				if len(f.Tensors) != len(seen)+extra {
					t.Errorf("%d tensors, want %d", len(f.Tensors), len(seen)+extra)
				}
			})
		}
	}
}

// checkRopeFreqs checks llama3's rope_freqs against the frequencies the
// PyTorch reference used (golden rope_inv_freq is the scaled inv_freq; the
// factors are base^(-2i/d) / inv_freq).
func checkRopeFreqs(t *testing.T, f *gguf.File) {
	t.Helper()
	var golden struct {
		InvFreq []float64 `json:"rope_inv_freq"`
	}
	b, err := os.ReadFile(filepath.Join("..", "testdata", "golden", "llama3.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &golden); err != nil {
		t.Fatal(err)
	}
	data, err := f.TensorData("rope_freqs.weight")
	if err != nil {
		t.Fatal(err)
	}
	d := 2 * len(golden.InvFreq)
	if len(data) != 4*len(golden.InvFreq) {
		t.Fatalf("rope_freqs: %d bytes, want %d", len(data), 4*len(golden.InvFreq))
	}
	for i, inv := range golden.InvFreq {
		got := math.Float32frombits(uint32(data[4*i]) | uint32(data[4*i+1])<<8 | uint32(data[4*i+2])<<16 | uint32(data[4*i+3])<<24)
		want := math.Pow(500000, -float64(2*i)/float64(d)) / inv
		if math.Abs(float64(got)-want) > 1e-4*want {
			t.Errorf("rope_freqs[%d] = %v, want %v", i, got, want)
		}
	}
}

func TestExportGGUFErrors(t *testing.T) {
	src := testModelDir(t, "qwen3-tied")
	copyDir := func(t *testing.T, edit func(dir string)) string {
		dir := t.TempDir()
		for _, n := range []string{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} {
			b, err := os.ReadFile(filepath.Join(src, n))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, n), b, 0o644)
		}
		edit(dir)
		return dir
	}
	setConfig := func(key string, v any) func(string) {
		return func(dir string) {
			p := filepath.Join(dir, "config.json")
			var m map[string]any
			b, _ := os.ReadFile(p)
			json.Unmarshal(b, &m)
			m[key] = v
			b, _ = json.Marshal(m)
			os.WriteFile(p, b, 0o644)
		}
	}
	tests := []struct {
		name    string
		dir     func(t *testing.T) string
		typ     string
		wantErr string
	}{
		{"type", func(t *testing.T) string { return src }, "q4", `unsupported type "q4", want f32 or f16`},
		{"model_type", func(t *testing.T) string { return copyDir(t, setConfig("model_type", "gpt2")) }, "f32", `model_type "gpt2" not supported`},
		{"heads", func(t *testing.T) string { return copyDir(t, setConfig("num_key_value_heads", 3)) }, "f32", "does not divide"},
		{"vocab", func(t *testing.T) string { return copyDir(t, setConfig("vocab_size", 100)) }, "f32", "token id 260 >= vocab_size 100"},
		{"unknown tensor", func(t *testing.T) string {
			return copyDir(t, func(dir string) {
				err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), []safetensors.WriteTensor{
					{Name: "model.embed_tokens.weight", DType: safetensors.F32, Shape: []int{261, 64}, Write: safetensors.Bytes(make([]byte, 261*64*4))},
					{Name: "model.layers.0.mlp.experts.weight", DType: safetensors.F32, Shape: []int{2}, Write: safetensors.Bytes(make([]byte, 8))},
				}, nil)
				if err != nil {
					t.Fatal(err)
				}
			})
		}, "f32", `can not map tensor "model.layers.0.mlp.experts.weight"`},
		{"sentencepiece", func(t *testing.T) string {
			return copyDir(t, func(dir string) { os.WriteFile(filepath.Join(dir, "tokenizer.model"), []byte("x"), 0o644) })
		}, "f32", "SentencePiece vocabs are not supported"},
		{"missing", func(t *testing.T) string { return t.TempDir() }, "f32", "config.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outDir := t.TempDir()
			err := ExportGGUF(tt.dir(t), filepath.Join(outDir, "out.gguf"), tt.typ)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
				t.Errorf("failed export left %d files", len(ents))
			}
		})
	}
}

func TestReadMerges(t *testing.T) {
	tests := []struct {
		raw  string
		want []string
	}{
		{`["Ġ t", "h e"]`, []string{"Ġ t", "h e"}},
		{`[["Ġ", "t"], ["a b", "c"]]`, []string{"Ġ t", "a\u0120b c"}},
		{`null`, nil},
	}
	for _, tt := range tests {
		got, err := readMerges(json.RawMessage(tt.raw))
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("readMerges(%s) = %q, %v, want %q", tt.raw, got, err, tt.want)
		}
	}
	if _, err := readMerges(json.RawMessage(`[["a"]]`)); err == nil {
		t.Error("readMerges of a 1-part pair: no error")
	}
}

// llamaCppAvailable reports whether llama.cpp (node-llama-cpp in
// bench/llamacpp) can run; without it the test skips, unless CI=true and
// TUNE_LLAMACPP=1 ask for it.
func llamaCppAvailable(t *testing.T) string {
	t.Helper()
	dir, _ := filepath.Abs(filepath.Join("..", "bench", "llamacpp"))
	_, errNode := exec.LookPath("node")
	_, errMods := os.Stat(filepath.Join(dir, "node_modules", "node-llama-cpp"))
	if errNode != nil || errMods != nil {
		if os.Getenv("CI") == "true" && os.Getenv("TUNE_LLAMACPP") == "1" {
			t.Fatalf("llama.cpp oracle missing (run npm install --omit=optional in bench/llamacpp): node %v, node_modules %v", errNode, errMods)
		}
		t.Skip("llama.cpp oracle missing: run `npm install --omit=optional` in bench/llamacpp")
	}
	return dir
}

func runNode(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("node", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// TestExportGGUFLlamaCpp loads each export into llama.cpp and compares its
// logits at every prompt position with the PyTorch reference's
// (testdata/golden): llama.cpp and the reference are both independent of
// this package, so agreement checks names, layouts, permutations, rope
// settings and the vocab size together.
func TestExportGGUFLlamaCpp(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := llamaCppAvailable(t)
	for _, tc := range exportCases {
		// F32 weights with an F32 KV cache agree with PyTorch to ~2e-5;
		// F16 weights move logits of magnitude ~15 by up to ~0.08; Q8_0
		// weights with llama.cpp's Q8_0 activations by 0.43 (qwen3-untied)
		// to 1.4 (qwen2), measured.
		for _, c := range []struct {
			typ string
			tol float64
		}{{"f32", 1e-3}, {"f16", 0.25}, {"Q8_0", 2.0}} {
			t.Run(tc.model+"/"+c.typ, func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "m.gguf")
				var err error
				if c.typ == "Q8_0" {
					// Quantization (after the llama q/k permutation) checked
					// against PyTorch through llama.cpp.
					_, err = QuantizeGGUF(testModelDir(t, tc.model), out, GGUFOptions{Type: c.typ})
				} else {
					err = ExportGGUF(testModelDir(t, tc.model), out, c.typ)
				}
				if err != nil {
					t.Fatal(err)
				}
				if c.typ == "f32" { // the load check does not depend on the weight type
					checkLlamaCppLoad(t, dir, out, tc, 64)
				}
				var golden struct {
					Tokens []int       `json:"tokens"`
					Logits [][]float64 `json:"logits"`
				}
				b, err := os.ReadFile(filepath.Join("..", "testdata", "golden", tc.model+".json"))
				if err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(b, &golden); err != nil {
					t.Fatal(err)
				}
				args := []string{"logits.mjs", out, "--all"}
				for _, id := range golden.Tokens {
					args = append(args, fmt.Sprint(id))
				}
				var got struct {
					Positions []int       `json:"positions"`
					Logits    [][]float64 `json:"logits"`
				}
				if err := json.Unmarshal(runNode(t, dir, args...), &got); err != nil {
					t.Fatal(err)
				}
				if len(got.Positions) != len(golden.Tokens) {
					t.Fatalf("llama.cpp gave %d positions, want %d", len(got.Positions), len(golden.Tokens))
				}
				maxDiff, at := 0.0, ""
				for k, p := range got.Positions {
					want := golden.Logits[p]
					if len(got.Logits[k]) != len(want) {
						t.Fatalf("position %d: %d logits, want %d", p, len(got.Logits[k]), len(want))
					}
					for v, x := range got.Logits[k] {
						if d := math.Abs(x - want[v]); d > maxDiff || math.IsNaN(d) {
							maxDiff, at = d, fmt.Sprintf("position %d token %d: llama.cpp %v, reference %v", p, v, x, want[v])
						}
					}
				}
				t.Logf("max |llama.cpp - reference| = %.3g", maxDiff)
				if !(maxDiff <= c.tol) {
					t.Errorf("logits differ by %.3g > %g at %s", maxDiff, c.tol, at)
				}
			})
		}
	}
}

// checkLlamaCppLoad checks what llama.cpp (and node-llama-cpp's JS GGUF
// parser) make of the file: architecture, vocab, context, tensor count.
func checkLlamaCppLoad(t *testing.T, dir, out string, tc exportCase, embd int) {
	t.Helper()
	var load struct {
		Arch     string `json:"architecture"`
		NVocab   int    `json:"n_vocab"`
		NCtx     int    `json:"n_ctx_train"`
		NEmbd    int    `json:"n_embd"`
		NTensors int    `json:"tensor_count"`
		Tensors  []struct {
			Name   string `json:"name"`
			Dims   []int  `json:"dims"`
			Type   uint32 `json:"type"`
			Offset int64  `json:"offset"`
		} `json:"tensors"`
		Metadata map[string]json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(runNode(t, dir, "load.mjs", out), &load); err != nil {
		t.Fatal(err)
	}
	f, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	nt := len(f.Tensors)
	if load.Arch != tc.arch || load.NVocab != tc.vocab || load.NCtx != 512 || load.NEmbd != embd || load.NTensors != nt {
		t.Errorf("llama.cpp sees arch %s vocab %d ctx %d embd %d, %d tensors; want %s, %d, 512, %d, %d", load.Arch, load.NVocab, load.NCtx, load.NEmbd, load.NTensors, tc.arch, tc.vocab, embd, nt)
	}
	// node-llama-cpp's JS GGUF parser is a second, independent reader of
	// what package gguf wrote: every key and tensor info must agree.
	if len(load.Metadata) != len(f.KVs) {
		t.Errorf("JS parser sees %d keys, we wrote %d", len(load.Metadata), len(f.KVs))
	}
	for _, kv := range f.KVs {
		raw, ok := load.Metadata[kv.Key]
		if !ok {
			t.Errorf("JS parser misses key %q", kv.Key)
			continue
		}
		var want any = kv.Value
		switch v := kv.Value.(type) {
		case uint32:
			want = float64(v)
		case float32:
			want = float64(v)
		case []string:
			want = map[string]any{"len": float64(len(v)), "head": toAny(v[:min(4, len(v))]), "tail": toAny(v[max(0, len(v)-2):])}
		case []int32:
			want = map[string]any{"len": float64(len(v)), "head": toAny(v[:min(4, len(v))]), "tail": toAny(v[max(0, len(v)-2):])}
		}
		var got any
		json.Unmarshal(raw, &got)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("key %q: JS parser reads %v, we wrote %v", kv.Key, got, want)
		}
	}
	for i, jt := range load.Tensors {
		ti := f.Tensors[i]
		dims := make([]int, len(ti.Shape))
		for j, d := range ti.Shape {
			dims[len(dims)-1-j] = d
		}
		if jt.Name != ti.Name || !reflect.DeepEqual(jt.Dims, dims) || jt.Type != uint32(ti.Type) || jt.Offset != ti.Offset {
			t.Errorf("tensor %d: JS parser reads %+v, we have %+v", i, jt, ti)
		}
	}
}

func toAny[T any](s []T) []any {
	out := make([]any, len(s))
	for i, v := range s {
		b, _ := json.Marshal(v)
		json.Unmarshal(b, &out[i])
	}
	return out
}

// llamaCppLogits runs llama.cpp on a GGUF file and returns its logits at
// every position of ids.
func llamaCppLogits(t *testing.T, dir, path string, ids []int) [][]float64 {
	t.Helper()
	args := []string{"logits.mjs", path, "--all"}
	for _, id := range ids {
		args = append(args, fmt.Sprint(id))
	}
	var got struct {
		Logits [][]float64 `json:"logits"`
	}
	if err := json.Unmarshal(runNode(t, dir, args...), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Logits) != len(ids) {
		t.Fatalf("llama.cpp gave %d positions, want %d", len(got.Logits), len(ids))
	}
	return got.Logits
}

// llamaCppQuantTol bounds, per mix on the hidden-256 test model,
// RMS(diff) / RMS(reference logits) over all positions of two comparisons:
//   - quant: llama.cpp on the quantized file vs llama.cpp on the F32 export.
//     This is the mix's whole error: weights, plus llama.cpp rounding
//     activations to Q8_0/Q8_K in quantized dot products, amplified by 8
//     random layers.
//   - deq: llama.cpp on the quantized file vs llama.cpp on an F32 file of
//     our dequantized weights. The weight error cancels, leaving llama.cpp's
//     activation rounding: a block our quantizer lays out differently from
//     llama.cpp's reading of it shows up here as an error of order 1.
//
// Bounds are about 1.5x the measured values. The deq error is about 0.02
// for the 32-element types (activations rounded to Q8_0) and 0.028 for the
// K-quants (Q8_K), whatever the weight type: it is activation rounding only.
var llamaCppQuantTol = map[string]struct{ quant, deq float64 }{
	// measured (quant, deq) in the trailing comments
	"F16":    {0.002, 0.002}, // 0.0011, 0.0007
	"Q8_0":   {0.045, 0.03},  // 0.028, 0.019
	"Q6_K":   {0.12, 0.045},  // 0.080, 0.028
	"Q5_K_M": {0.2, 0.045},   // 0.134, 0.027
	"Q5_K_S": {0.22, 0.045},  // 0.146, 0.028
	"Q5_1":   {0.22, 0.03},   // 0.144, 0.021
	"Q5_0":   {0.25, 0.03},   // 0.167, 0.020
	"Q4_K_M": {0.35, 0.045},  // 0.232, 0.028
	"Q4_K_S": {0.35, 0.045},  // 0.235, 0.027
	"Q4_1":   {0.42, 0.03},   // 0.278, 0.020
	"Q4_0":   {0.45, 0.03},   // 0.302, 0.020
	"Q3_K_L": {0.63, 0.045},  // 0.421, 0.028
	"Q3_K_M": {0.65, 0.045},  // 0.429, 0.028
	"Q3_K_S": {0.82, 0.045},  // 0.549, 0.028
	"Q2_K":   {1.1, 0.045},   // 0.787, 0.030
}

// dequantizedModel writes a model folder beside src whose weights are the
// GGUF file's tensors expanded back to F32 (qwen3: no row permutation).
func dequantizedModel(t *testing.T, src, ggufPath string) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{"config.json", "tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, n), b, 0o644)
	}
	f, err := gguf.Open(ggufPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := safetensors.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var tensors []safetensors.WriteTensor
	for _, name := range st.Names() {
		ht, _ := st.Tensor(name)
		gname := hfToGGUF(name)
		info, _ := f.Tensor(gname)
		data, err := f.TensorData(gname)
		if err != nil {
			t.Fatal(err)
		}
		vals := make([]float32, ht.NumElements())
		switch info.Type {
		case gguf.TypeF32:
			err = safetensors.ToFloat32(vals, data, safetensors.F32)
		case gguf.TypeF16:
			err = safetensors.ToFloat32(vals, data, safetensors.F16)
		default:
			err = Dequantize(info.Type, vals, data)
		}
		if err != nil {
			t.Fatalf("%s: %v", gname, err)
		}
		b := make([]byte, 4*len(vals))
		for i, v := range vals {
			u := math.Float32bits(v)
			b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
		}
		tensors = append(tensors, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: ht.Shape, Write: safetensors.Bytes(b)})
	}
	if err := safetensors.WriteDir(dir, tensors, safetensors.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// relRMS is RMS(got - want) / RMS(want) and max |got - want|.
func relRMS(got, want [][]float64) (float64, float64) {
	var se, ss, maxAbs float64
	for p := range want {
		for v, x := range want[p] {
			d := got[p][v] - x
			se += d * d
			ss += x * x
			maxAbs = max(maxAbs, math.Abs(d))
		}
	}
	return math.Sqrt(se / ss), maxAbs
}

// TestQuantizeGGUFLlamaCpp has llama.cpp load every mix of the hidden-256
// model (real K-quant blocks, no fallbacks) and compares its logits with its
// own on the F32 export and on an F32 file of our dequantized weights:
// llama.cpp's dequantizers and quantized dot products are the oracle for
// the block layouts.
func TestQuantizeGGUFLlamaCpp(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := llamaCppAvailable(t)
	model := k256Model(t)
	ids := []int{}
	for _, b := range []byte("The quick brown fox jumps over") {
		ids = append(ids, int(b))
	}
	tmp := t.TempDir()
	ref := filepath.Join(tmp, "f32.gguf")
	if _, err := QuantizeGGUF(model, ref, GGUFOptions{Type: "F32"}); err != nil {
		t.Fatal(err)
	}
	want := llamaCppLogits(t, dir, ref, ids)
	errs := map[string]float64{}
	for _, mix := range MixNames() {
		if mix == "F32" {
			continue
		}
		t.Run(mix, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), mix+".gguf")
			if _, err := QuantizeGGUF(model, out, GGUFOptions{Type: mix}); err != nil {
				t.Fatal(err)
			}
			checkLlamaCppLoad(t, dir, out, exportCase{arch: "qwen3", vocab: 261}, 256)
			got := llamaCppLogits(t, dir, out, ids)
			rel, maxAbs := relRMS(got, want)
			errs[mix] = rel
			deqPath := filepath.Join(t.TempDir(), "deq.gguf")
			if _, err := QuantizeGGUF(dequantizedModel(t, model, out), deqPath, GGUFOptions{Type: "F32"}); err != nil {
				t.Fatal(err)
			}
			relDeq, maxDeq := relRMS(got, llamaCppLogits(t, dir, deqPath, ids))
			t.Logf("%s: logits vs F32 export: rel RMS %.4f, max %.3g; vs dequantized F32: rel RMS %.4f, max %.3g", mix, rel, maxAbs, relDeq, maxDeq)
			tol := llamaCppQuantTol[mix]
			if !(rel <= tol.quant) {
				t.Errorf("%s: logits differ from the F32 export's by %.4f (relative RMS) > %g", mix, rel, tol.quant)
			}
			if !(relDeq <= tol.deq) {
				t.Errorf("%s: logits differ from the dequantized F32 file's by %.4f (relative RMS) > %g", mix, relDeq, tol.deq)
			}
		})
	}
	// More bits, closer logits.
	for _, pair := range [][2]string{{"Q8_0", "Q4_K_M"}, {"Q6_K", "Q4_K_M"}, {"Q4_K_M", "Q2_K"}} {
		if a, b := errs[pair[0]], errs[pair[1]]; a > 0 && b > 0 && !(a < b) {
			t.Errorf("%s logit error %.4f not below %s's %.4f", pair[0], a, pair[1], b)
		}
	}
}
