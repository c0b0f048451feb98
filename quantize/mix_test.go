package quantize

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/gguf"
)

// mixWant is what llama-quant.cpp (llama_tensor_get_type_impl and
// tensor_type_fallback, read by hand) picks for one test model: the token
// embedding, output.weight ("" when tied), attn_q/attn_k/ffn_gate/ffn_up,
// attn_output, and attn_v and ffn_down per layer (space separated).
type mixWant struct {
	embd, out, def, attnO string
	attnV, ffnDown        string
}

// k256Mixes are for the hidden-256 model below: 8 layers, 4 heads sharing
// 2 kv heads (n_gqa 2), untied output, rows of 256 and 512, so every K-quant
// is used as is. use_more_bits(i, 8) holds for layers 0, 3, 6, 7.
var k256Mixes = map[string]mixWant{
	"F32":    {"F32", "F32", "F32", "F32", "F32 F32 F32 F32 F32 F32 F32 F32", "F32 F32 F32 F32 F32 F32 F32 F32"},
	"F16":    {"F16", "F16", "F16", "F16", "F16 F16 F16 F16 F16 F16 F16 F16", "F16 F16 F16 F16 F16 F16 F16 F16"},
	"Q8_0":   {"Q8_0", "Q8_0", "Q8_0", "Q8_0", "Q8_0 Q8_0 Q8_0 Q8_0 Q8_0 Q8_0 Q8_0 Q8_0", "Q8_0 Q8_0 Q8_0 Q8_0 Q8_0 Q8_0 Q8_0 Q8_0"},
	"Q4_0":   {"Q4_0", "Q6_K", "Q4_0", "Q4_0", "Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0", "Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0"},
	"Q4_1":   {"Q4_1", "Q6_K", "Q4_1", "Q4_1", "Q4_1 Q4_1 Q4_1 Q4_1 Q4_1 Q4_1 Q4_1 Q4_1", "Q4_1 Q4_1 Q4_1 Q4_1 Q4_1 Q4_1 Q4_1 Q4_1"},
	"Q5_0":   {"Q5_0", "Q6_K", "Q5_0", "Q5_0", "Q5_0 Q5_0 Q5_0 Q5_0 Q5_0 Q5_0 Q5_0 Q5_0", "Q5_0 Q5_0 Q5_0 Q5_0 Q5_0 Q5_0 Q5_0 Q5_0"},
	"Q5_1":   {"Q5_1", "Q6_K", "Q5_1", "Q5_1", "Q5_1 Q5_1 Q5_1 Q5_1 Q5_1 Q5_1 Q5_1 Q5_1", "Q5_1 Q5_1 Q5_1 Q5_1 Q5_1 Q5_1 Q5_1 Q5_1"},
	"Q2_K":   {"Q2_K", "Q6_K", "Q2_K", "Q3_K", "Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K", "Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K"},
	"Q3_K_S": {"Q3_K", "Q6_K", "Q3_K", "Q3_K", "Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K", "Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K Q3_K"},
	"Q3_K_M": {"Q3_K", "Q6_K", "Q3_K", "Q4_K", "Q5_K Q5_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K", "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K"},
	"Q3_K_L": {"Q3_K", "Q6_K", "Q3_K", "Q5_K", "Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K", "Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K"},
	"Q4_K_S": {"Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q5_K Q5_K Q5_K Q5_K Q4_K Q4_K Q4_K Q4_K", "Q5_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K"},
	"Q4_K_M": {"Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K Q4_K Q4_K Q6_K Q4_K Q4_K Q6_K Q6_K", "Q6_K Q4_K Q4_K Q6_K Q4_K Q4_K Q6_K Q6_K"},
	"Q5_K_S": {"Q5_K", "Q6_K", "Q5_K", "Q5_K", "Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K", "Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K"},
	"Q5_K_M": {"Q5_K", "Q6_K", "Q5_K", "Q5_K", "Q6_K Q5_K Q5_K Q6_K Q5_K Q5_K Q6_K Q6_K", "Q6_K Q5_K Q5_K Q6_K Q5_K Q5_K Q6_K Q6_K"},
	"Q6_K":   {"Q6_K", "Q6_K", "Q6_K", "Q6_K", "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K", "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K"},
}

// tiedMixes are for testdata/models/qwen3-tied: 2 layers, tied embeddings,
// rows of 64 (attn_output and ffn_down: 128), so every K-quant falls back
// (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0) and the
// tied token_embd follows the output rule: 64 % blck != 0 or Q6_K's
// fallback give Q8_0. use_more_bits(i, 2) holds for layer 1 only.
var tiedMixes = map[string]mixWant{
	"F32":    {"F32", "", "F32", "F32", "F32 F32", "F32 F32"},
	"F16":    {"F16", "", "F16", "F16", "F16 F16", "F16 F16"},
	"Q8_0":   {"Q8_0", "", "Q8_0", "Q8_0", "Q8_0 Q8_0", "Q8_0 Q8_0"},
	"Q4_0":   {"Q8_0", "", "Q4_0", "Q4_0", "Q4_0 Q4_0", "Q4_0 Q4_0"},
	"Q4_1":   {"Q8_0", "", "Q4_1", "Q4_1", "Q4_1 Q4_1", "Q4_1 Q4_1"},
	"Q5_0":   {"Q8_0", "", "Q5_0", "Q5_0", "Q5_0 Q5_0", "Q5_0 Q5_0"},
	"Q5_1":   {"Q8_0", "", "Q5_1", "Q5_1", "Q5_1 Q5_1", "Q5_1 Q5_1"},
	"Q2_K":   {"Q8_0", "", "Q4_0", "Q4_0", "Q4_0 Q4_0", "Q4_0 Q4_0"},
	"Q3_K_S": {"Q8_0", "", "Q4_0", "Q4_0", "Q4_0 Q4_0", "Q4_0 Q4_0"},
	"Q3_K_M": {"Q8_0", "", "Q4_0", "Q5_0", "Q5_1 Q5_1", "Q5_0 Q5_0"},
	"Q3_K_L": {"Q8_0", "", "Q4_0", "Q5_1", "Q5_1 Q5_1", "Q5_1 Q5_1"},
	"Q4_K_S": {"Q8_0", "", "Q5_0", "Q5_0", "Q5_1 Q5_1", "Q5_0 Q5_0"},
	"Q4_K_M": {"Q8_0", "", "Q5_0", "Q5_0", "Q5_0 Q8_0", "Q5_0 Q8_0"},
	"Q5_K_S": {"Q8_0", "", "Q5_1", "Q5_1", "Q5_1 Q5_1", "Q5_1 Q5_1"},
	"Q5_K_M": {"Q8_0", "", "Q5_1", "Q5_1", "Q5_1 Q8_0", "Q5_1 Q8_0"},
	"Q6_K":   {"Q8_0", "", "Q8_0", "Q8_0", "Q8_0 Q8_0", "Q8_0 Q8_0"},
}

// wantType is the type mixWant gives a GGUF tensor name; 1-D tensors
// (norms) stay F32 in every mix.
func (m mixWant) wantType(name string, dims int) string {
	if dims == 1 {
		return "F32"
	}
	var layer int
	var rest string
	if _, err := fmt.Sscanf(name, "blk.%d.%s", &layer, &rest); err == nil {
		switch rest {
		case "attn_v.weight":
			return strings.Fields(m.attnV)[layer]
		case "ffn_down.weight":
			return strings.Fields(m.ffnDown)[layer]
		case "attn_output.weight":
			return m.attnO
		}
		return m.def
	}
	switch name {
	case "token_embd.weight":
		return m.embd
	case "output.weight":
		return m.out
	}
	return "?"
}

// relErrMax bounds, per stored type, RMS(dequantized - w) / RMS(w) over a
// tensor of Gaussian weights: about 1.2x the worst measured on the test
// models (Q6_K 0.018, Q5_K 0.036, Q5_1 0.039, Q5_0 0.043, Q4_K 0.072,
// Q4_1 0.079, Q4_0 0.087, Q3_K 0.152, Q2_K 0.300), in the order of bits per
// weight.
var relErrMax = map[string]float64{
	"F32": 0, "F16": 5e-4, "Q8_0": 0.006, "Q6_K": 0.022, "Q5_K": 0.044, "Q5_1": 0.047, "Q5_0": 0.052,
	"Q4_K": 0.087, "Q4_1": 0.095, "Q4_0": 0.105, "Q3_K": 0.18, "Q2_K": 0.36,
}

// k256Model writes a qwen3 folder with hidden 256, intermediate 512 and 8
// layers, Gaussian weights scaled by 1/sqrt(fan_in) from a fixed seed and
// qwen3-tied's tokenizer (vocab 261).
var k256Once struct {
	sync.Once
	dir string
	err error
}

func k256Model(t *testing.T) string {
	t.Helper()
	k256Once.Do(func() {
		dir, err := os.MkdirTemp("", "tune-k256-")
		if err != nil {
			k256Once.err = err
			return
		}
		k256Once.dir, k256Once.err = dir, writeK256(dir)
	})
	if k256Once.err != nil {
		t.Fatal(k256Once.err)
	}
	return k256Once.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if k256Once.dir != "" {
		os.RemoveAll(k256Once.dir)
	}
	os.Exit(code)
}

func writeK256(dir string) error {
	const (
		C, I, L, NH, KVH, HD, V = 256, 512, 8, 4, 2, 64, 261
	)
	src := filepath.Join("..", "testdata", "models", "qwen3-tied")
	for _, n := range []string{"tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			return err
		}
	}
	var cfg map[string]any
	b, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		return err
	}
	json.Unmarshal(b, &cfg)
	for k, v := range map[string]any{"hidden_size": C, "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH,
		"num_key_value_heads": KVH, "head_dim": HD, "vocab_size": V, "tie_word_embeddings": false, "max_window_layers": L} {
		cfg[k] = v
	}
	b, _ = json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(256, 1))
	var tensors []safetensors.WriteTensor
	add := func(name string, shape []int, scale, offset float64) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		buf := make([]byte, 4*n)
		for i := 0; i < n; i++ {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(float32(offset+scale*rng.NormFloat64())))
		}
		tensors = append(tensors, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: shape, Write: safetensors.Bytes(buf)})
	}
	add("model.embed_tokens.weight", []int{V, C}, 1, 0)
	for l := 0; l < L; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", []int{C}, 0.1, 1)
		add(p+"post_attention_layernorm.weight", []int{C}, 0.1, 1)
		add(p+"self_attn.q_norm.weight", []int{HD}, 0.1, 1)
		add(p+"self_attn.k_norm.weight", []int{HD}, 0.1, 1)
		add(p+"self_attn.q_proj.weight", []int{NH * HD, C}, 1/math.Sqrt(C), 0)
		add(p+"self_attn.k_proj.weight", []int{KVH * HD, C}, 1/math.Sqrt(C), 0)
		add(p+"self_attn.v_proj.weight", []int{KVH * HD, C}, 1/math.Sqrt(C), 0)
		add(p+"self_attn.o_proj.weight", []int{C, NH * HD}, 1/math.Sqrt(NH*HD), 0)
		add(p+"mlp.gate_proj.weight", []int{I, C}, 1/math.Sqrt(C), 0)
		add(p+"mlp.up_proj.weight", []int{I, C}, 1/math.Sqrt(C), 0)
		add(p+"mlp.down_proj.weight", []int{C, I}, 1/math.Sqrt(I), 0)
	}
	add("model.norm.weight", []int{C}, 0.1, 1)
	add("lm_head.weight", []int{V, C}, 1/math.Sqrt(C), 0)
	return safetensors.WriteDir(dir, tensors, safetensors.WriteOptions{})
}

func TestMixTable(t *testing.T) {
	if got, want := strings.Join(MixNames(), " "), "F32 F16 Q4_0 Q4_1 Q8_0 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K"; got != want {
		t.Errorf("MixNames = %s, want %s", got, want)
	}
	// llama.h enum llama_ftype.
	ftypes := map[string]uint32{"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
		"Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18}
	for name, ft := range ftypes {
		m, err := ParseMix(strings.ToLower(name))
		if err != nil || m.FileType != ft || m.Name != name {
			t.Errorf("ParseMix(%q) = %+v, %v; want file type %d", strings.ToLower(name), m, err, ft)
		}
	}
	if _, err := ParseMix("Q4_K"); err == nil || !strings.Contains(err.Error(), "want one of F32, F16, Q4_0") {
		t.Errorf("ParseMix(Q4_K) error %v, want the list of mixes", err)
	}
	// n_gqa >= 4 gives Q2_K's attn_v Q4_K instead of Q3_K.
	m, _ := ParseMix("Q2_K")
	if got := m.TensorType("blk.0.attn_v.weight", []int{256, 2048}, 0, MixModel{NLayer: 32, NHead: 32, NHeadKV: 8}); got.Type != gguf.TypeQ4_K {
		t.Errorf("Q2_K attn_v with n_gqa 4: %s, want Q4_K", got.Type)
	}
	// Qwen3-8B Q4_K_M (36 layers): use_more_bits layers 0-3, 6, 9, ..., 30, 31-35.
	m, _ = ParseMix("Q4_K_M")
	var bumped []int
	for l := 0; l < 36; l++ {
		if m.TensorType(fmt.Sprintf("blk.%d.ffn_down.weight", l), []int{4096, 12288}, l, MixModel{NLayer: 36, NHead: 32, NHeadKV: 8}).Type == gguf.TypeQ6_K {
			bumped = append(bumped, l)
		}
	}
	if got, want := fmt.Sprint(bumped), "[0 1 2 3 6 9 12 15 18 21 24 27 30 31 32 33 34 35]"; got != want {
		t.Errorf("Q4_K_M ffn_down Q6_K layers of 36: %s, want %s", got, want)
	}
}

// TestQuantizeGGUF writes every mix for both test models and checks each
// tensor's type against the tables above, its bytes against quantizing the
// checkpoint's rows directly, and its dequantized values against the F32
// weights within the type's error.
func TestQuantizeGGUF(t *testing.T) {
	models := []struct {
		name  string
		dir   func(*testing.T) string
		table map[string]mixWant
	}{
		{"qwen3-tied", func(t *testing.T) string { return testModelDir(t, "qwen3-tied") }, tiedMixes},
		{"k256", k256Model, k256Mixes},
	}
	for _, md := range models {
		for _, mixName := range MixNames() {
			t.Run(md.name+"/"+mixName, func(t *testing.T) {
				if testing.Short() && md.name == "k256" && mixName != "Q4_K_M" {
					t.Skip("-short")
				}
				dir := md.dir(t)
				want := md.table[mixName]
				out := filepath.Join(t.TempDir(), "m.gguf")
				var warns []string
				var lastDone, lastTotal int64
				rep, err := QuantizeGGUF(dir, out, GGUFOptions{Type: mixName, Workers: 3,
					Warn:     func(s string) { warns = append(warns, s) },
					Progress: func(d, tot int64) { lastDone, lastTotal = d, tot }})
				if err != nil {
					t.Fatal(err)
				}
				if lastDone != rep.InBytes || lastTotal != rep.InBytes || rep.InBytes == 0 {
					t.Errorf("progress ended at %d/%d, want %d/%d", lastDone, lastTotal, rep.InBytes, rep.InBytes)
				}
				f, err := gguf.Open(out)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				m, _ := ParseMix(mixName)
				if v, _ := f.Value("general.file_type"); v != m.FileType {
					t.Errorf("general.file_type = %v, want %d", v, m.FileType)
				}
				st, err := safetensors.Open(dir)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				for _, name := range st.Names() {
					gname := hfToGGUF(name)
					ht, _ := st.Tensor(name)
					info, ok := f.Tensor(gname)
					if !ok {
						t.Fatalf("tensor %q missing", gname)
					}
					wt := want.wantType(gname, len(ht.Shape))
					if info.Type.String() != wt {
						t.Errorf("%s: type %s, want %s", gname, info.Type, wt)
						continue
					}
					w, _ := ht.Float32()
					data, err := f.TensorData(gname)
					if err != nil {
						t.Fatal(err)
					}
					got := make([]float32, len(w))
					switch info.Type {
					case gguf.TypeF32:
						for i := range got {
							got[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
						}
					case gguf.TypeF16:
						// checked by TestExportGGUF byte for byte
						continue
					default:
						wantBytes := make([]byte, len(data))
						if err := Quantize(info.Type, wantBytes, w, nil); err != nil {
							t.Fatal(err)
						}
						if !bytes.Equal(data, wantBytes) {
							t.Errorf("%s: %s bytes differ from Quantize of the checkpoint's rows", gname, info.Type)
						}
						if err := Dequantize(info.Type, got, data); err != nil {
							t.Fatal(err)
						}
					}
					var se, ss float64
					for i := range w {
						d := float64(got[i] - w[i])
						se += d * d
						ss += float64(w[i]) * float64(w[i])
					}
					rel := math.Sqrt(se / ss)
					if !(rel <= relErrMax[wt]) {
						t.Errorf("%s: %s relative RMS error %.4f > %.4f", gname, wt, rel, relErrMax[wt])
					}
				}
				// Each fallback warned once, naming the tensor.
				for _, w := range warns {
					if !strings.Contains(w, "falling back to") || !strings.Contains(w, ".weight: row of") {
						t.Errorf("warning %q", w)
					}
				}
				if md.name == "k256" && len(warns) != 0 {
					t.Errorf("k256 has rows of 256: %d fallbacks, want 0: %v", len(warns), warns)
				}
				if md.name == "qwen3-tied" && strings.Contains(mixName, "_K") && len(warns) == 0 {
					t.Errorf("qwen3-tied with %s: no fallback warnings", mixName)
				}
			})
		}
	}
}

// TestQuantizeGGUFWorkers checks the file does not depend on the worker
// count.
func TestQuantizeGGUFWorkers(t *testing.T) {
	dir := k256Model(t)
	var files [][]byte
	for _, n := range []int{1, 5} {
		out := filepath.Join(t.TempDir(), "m.gguf")
		if _, err := QuantizeGGUF(dir, out, GGUFOptions{Type: "Q4_K_M", Workers: n}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, b)
	}
	if !bytes.Equal(files[0], files[1]) {
		t.Error("Q4_K_M files with 1 and 5 workers differ")
	}
}

func TestQuantizeGGUFErrors(t *testing.T) {
	src := testModelDir(t, "qwen3-tied")
	nanDir := t.TempDir()
	for _, n := range []string{"config.json", "tokenizer.json", "tokenizer_config.json"} {
		b, _ := os.ReadFile(filepath.Join(src, n))
		os.WriteFile(filepath.Join(nanDir, n), b, 0o644)
	}
	st, err := safetensors.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	var tensors []safetensors.WriteTensor
	for _, name := range st.Names() {
		ht, _ := st.Tensor(name)
		data := append([]byte(nil), ht.Data...)
		if name == "model.layers.1.mlp.up_proj.weight" { // [128, 64]: row 2, column 5
			binary.LittleEndian.PutUint32(data[4*(2*64+5):], math.Float32bits(float32(math.NaN())))
		}
		tensors = append(tensors, safetensors.WriteTensor{Name: name, DType: ht.DType, Shape: ht.Shape, Write: safetensors.Bytes(data)})
	}
	st.Close()
	if err := safetensors.WriteDir(nanDir, tensors, safetensors.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dir, typ, wantErr string
	}{
		{"nan", nanDir, "Q8_0", `tensor "model.layers.1.mlp.up_proj.weight": non-finite value NaN at row 2, column 5 (index 133)`},
		{"unknown type", src, "Q4_K", `unknown type "Q4_K", want one of F32, F16, Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outDir := t.TempDir()
			_, err := QuantizeGGUF(tt.dir, filepath.Join(outDir, "m.gguf"), GGUFOptions{Type: tt.typ})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
				t.Errorf("failed quantization left %d files", len(ents))
			}
		})
	}
}
