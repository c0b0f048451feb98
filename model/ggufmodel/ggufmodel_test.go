package ggufmodel

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tunellm/tune/kernels"
	_ "github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/tokenizer"
)

const modelsDir = "../../testdata/models"

// exportable are the tiny models the GGUF exporter takes (mistral's
// model_type is not one of its architectures).
var exportable = []string{"qwen3-tied", "qwen3-untied-bf16", "llama3", "qwen2"}

var sampleTokens = []int{5, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33, 10, 200, 3, 77, 250, 31, 64}

// multilingual is the tokenizer sample: scripts, digits, whitespace runs,
// contractions and special tokens written in the text.
const multilingual = "Hello, world! It's 2024 — naïve café, Ünïcödé.\n\n  Привет мир 你好世界 こんにちは 안녕하세요 مرحبا 🙂🚀\t<|im_start|>user\nhi<|im_end|> <think>x</think> 12345 don't  we'll"

func logits(t *testing.T, m *model.Model, tokens []int) []float32 {
	t.Helper()
	rows, err := m.ForwardLogits(m.NewCache(len(tokens)), tokens)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Concat(rows...)
}

// maxRel is max |a-b| / max(max|b|, tiny) over the vectors.
func maxRel(a, b []float32) (rel float64, identical bool) {
	identical = true
	var scale, d float64
	for i := range b {
		scale = max(scale, math.Abs(float64(b[i])))
		d = max(d, math.Abs(float64(a[i])-float64(b[i])))
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			identical = false
		}
	}
	return d / max(scale, 1e-30), identical
}

// TestF32ExportMatchesFolder: our F32 GGUF export of each tiny model loads
// with the folder's logits (the oracle: model.Load, itself checked against
// PyTorch in package model) and a tokenizer that encodes like the folder's.
func TestF32ExportMatchesFolder(t *testing.T) {
	for _, name := range exportable {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(modelsDir, name)
			path := filepath.Join(t.TempDir(), "m.gguf")
			if err := quantize.ExportGGUF(dir, path, "f32"); err != nil {
				t.Fatal(err)
			}
			ref, err := model.Load(dir, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			m, tok, err := Load(path, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			rc, gc := *ref.Config, *m.Config
			rc.EOS, gc.EOS, rc.TorchDType, gc.TorchDType = nil, nil, "", ""
			if fmt.Sprintf("%+v", rc) != fmt.Sprintf("%+v", gc) {
				t.Errorf("config:\n gguf   %+v\n folder %+v", gc, rc)
			}
			want := logits(t, ref, sampleTokens)
			got := logits(t, m, sampleTokens)
			rel, same := maxRel(got, want)
			t.Logf("%s: max relative logit difference %.3g (bit-identical: %v)", name, rel, same)
			if rel > 1e-5 {
				t.Errorf("logits differ from the folder's by %.3g relative, want <= 1e-5", rel)
			}

			ftok, err := tokenizer.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, add := range []bool{true, false} {
				a, b := tok.Encode(multilingual, add), ftok.Encode(multilingual, add)
				if !slices.Equal(a, b) {
					t.Errorf("Encode(addSpecial=%v): gguf tokenizer %v\nfolder %v", add, a, b)
				}
				if d1, d2 := tok.Decode(a, false), ftok.Decode(b, false); d1 != d2 {
					t.Errorf("Decode: %q, folder %q", d1, d2)
				}
			}
			if tok.Config().ChatTemplate != ftok.Config().ChatTemplate {
				t.Errorf("chat template differs")
			}
			if a, b := tok.AddsBOS(), ftok.AddsBOS(); a != b {
				t.Errorf("AddsBOS %v, folder %v", a, b)
			}
		})
	}
}

// writeModel writes a random F32 model folder of the given family with
// hidden 256 (so K-quant super-blocks fit its rows), reusing a tiny model's
// tokenizer.
func writeModel(t *testing.T, family string) string {
	t.Helper()
	src := map[string]string{"qwen3": "qwen3-untied-bf16", "llama": "llama3", "qwen2": "qwen2"}[family]
	dir := t.TempDir()
	var cfg map[string]any
	b, err := os.ReadFile(filepath.Join(modelsDir, src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(b, &cfg)
	const C, I, NH, KVH, HD, L = 256, 512, 4, 2, 64, 2
	cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"] = C, I, NH
	cfg["num_key_value_heads"], cfg["head_dim"], cfg["num_hidden_layers"] = KVH, HD, L
	cfg["tie_word_embeddings"] = false
	V := int(cfg["vocab_size"].(float64))
	b, _ = json.Marshal(cfg)
	os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(modelsDir, src, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	r := rand.New(rand.NewPCG(7, uint64(len(family))))
	var ts []safetensors.WriteTensor
	add := func(name string, std float64, ones bool, shape ...int) {
		n := 1
		for _, s := range shape {
			n *= s
		}
		data := make([]byte, 4*n)
		for i := 0; i < n; i++ {
			v := float32(r.NormFloat64() * std)
			if ones {
				v = 1 + float32(r.NormFloat64()*0.1)
			}
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
		}
		ts = append(ts, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: shape, Write: safetensors.Bytes(data)})
	}
	add("model.embed_tokens.weight", 1, false, V, C)
	add("lm_head.weight", 0.1, false, V, C)
	add("model.norm.weight", 0, true, C)
	for l := 0; l < L; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", 0, true, C)
		add(p+"post_attention_layernorm.weight", 0, true, C)
		add(p+"self_attn.q_proj.weight", 0.06, false, NH*HD, C)
		add(p+"self_attn.k_proj.weight", 0.06, false, KVH*HD, C)
		add(p+"self_attn.v_proj.weight", 0.06, false, KVH*HD, C)
		add(p+"self_attn.o_proj.weight", 0.06, false, C, NH*HD)
		if family == "qwen3" {
			add(p+"self_attn.q_norm.weight", 0, true, HD)
			add(p+"self_attn.k_norm.weight", 0, true, HD)
		}
		if family == "qwen2" {
			add(p+"self_attn.q_proj.bias", 0.1, false, NH*HD)
			add(p+"self_attn.k_proj.bias", 0.1, false, KVH*HD)
			add(p+"self_attn.v_proj.bias", 0.1, false, KVH*HD)
		}
		add(p+"mlp.gate_proj.weight", 0.06, false, I, C)
		add(p+"mlp.up_proj.weight", 0.06, false, I, C)
		add(p+"mlp.down_proj.weight", 0.04, false, C, I)
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), ts, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

// dequantSource wraps the GGUF's source and hands out every quantized matrix
// dequantized to F32 by package quantize (llama.cpp's dequantize_row, bit for
// bit): the "dequantize, then fp32" reference.
type dequantSource struct{ *source }

func (d dequantSource) QuantWeight(name string) (kernels.Weight, bool, error) {
	w, ok, err := d.source.QuantWeight(name)
	if !ok || err != nil {
		return w, ok, err
	}
	typ, err := quantize.ParseType(w.DType.String())
	if err != nil {
		return w, false, err
	}
	f := make([]float32, w.Rows*w.Cols)
	if err := quantize.Dequantize(typ, f, w.Data); err != nil {
		return w, false, err
	}
	b := make([]byte, 4*len(f))
	for i, v := range f {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return kernels.Weight{DType: kernels.F32, Data: b, Rows: w.Rows, Cols: w.Cols}, true, nil
}

// TestQuantizedMatchesDequantized: Q8_0, Q4_K_M and Q6_K exports compute the
// logits of the same model with every matrix dequantized to F32 first.
func TestQuantizedMatchesDequantized(t *testing.T) {
	for _, family := range []string{"qwen3", "llama", "qwen2"} {
		dir := writeModel(t, family)
		for _, typ := range []string{"Q8_0", "Q4_K_M", "Q6_K"} {
			t.Run(family+"/"+typ, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "m.gguf")
				rep, err := quantize.QuantizeGGUF(dir, path, quantize.GGUFOptions{Type: typ})
				if err != nil {
					t.Fatal(err)
				}
				m, _, err := Load(path, model.LoadOptions{})
				if err != nil {
					t.Fatal(err)
				}
				defer m.Close()
				f, err := open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				src, err := newSource(f)
				if err != nil {
					t.Fatal(err)
				}
				cfg, _, err := config(f.gf, path, src.ropeFreqs)
				if err != nil {
					t.Fatal(err)
				}
				src.cfg = cfg
				ref, err := model.New(cfg, dequantSource{src}, model.LoadOptions{})
				if err != nil {
					t.Fatal(err)
				}
				got := logits(t, m, sampleTokens)
				want := logits(t, ref, sampleTokens)
				rel, same := maxRel(got, want)
				t.Logf("%s %s (tensor types %v): max relative difference %.3g, bit-identical %v", family, typ, rep.Types, rel, same)
				if rel > 1e-5 {
					t.Errorf("max relative difference %.3g, want <= 1e-5", rel)
				}
				// And the quantized model is still the model: close to
				// the F32 folder.
				hf, err := model.Load(dir, model.LoadOptions{})
				if err != nil {
					t.Fatal(err)
				}
				defer hf.Close()
				rel, _ = maxRel(got, logits(t, hf, sampleTokens))
				t.Logf("%s %s: vs the unquantized folder %.3g", family, typ, rel)
				if rel > 0.2 {
					t.Errorf("quantized logits %.3g relative from the unquantized model's", rel)
				}
			})
		}
	}
}

func TestHFNames(t *testing.T) {
	for g, want := range map[string]string{
		"token_embd.weight":        "model.embed_tokens.weight",
		"output.weight":            "lm_head.weight",
		"output_norm.weight":       "model.norm.weight",
		"blk.12.attn_q.bias":       "model.layers.12.self_attn.q_proj.bias",
		"blk.0.ffn_down.weight":    "model.layers.0.mlp.down_proj.weight",
		"blk.3.attn_k_norm.weight": "model.layers.3.self_attn.k_norm.weight",
		"blk.3.attn_zz.weight":     "",
		"rope_freqs.weight":        "",
	} {
		got, ok := hfName(g)
		if got != want || ok != (want != "") {
			t.Errorf("hfName(%q) = %q, %v; want %q", g, got, ok, want)
		}
	}
}
