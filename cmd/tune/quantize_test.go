package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/quantize/gguf"
	"github.com/tunellm/tune/quantize/wq"
)

// qdef adds the safetensors flags' defaults to a QuantizeOptions literal.
func qdef(o QuantizeOptions) QuantizeOptions {
	o.Sym, o.CalibSamples, o.CalibLen, o.Damp = true, 128, 2048, 0.01
	return o
}

func TestNewCmdQuantize(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    QuantizeOptions
		wantErr string
	}{
		{name: "defaults", args: []string{"--model", "m", "--out", "o.gguf"},
			want: qdef(QuantizeOptions{ModelDir: "m", Format: "gguf", Type: "Q4_K_M", Bits: 4, Out: "o.gguf"})},
		{name: "bits 8", args: []string{"--model", "m", "--format", "gguf", "--bits", "8", "--out", "o.gguf"},
			want: qdef(QuantizeOptions{ModelDir: "m", Format: "gguf", Type: "Q8_0", Bits: 8, Out: "o.gguf"})},
		{name: "type any case", args: []string{"--model", "m", "--type", "q3_k_l", "--out", "o.gguf", "--force", "--json", "--workers", "3"},
			want: qdef(QuantizeOptions{ModelDir: "m", Format: "gguf", Type: "Q3_K_L", Bits: 4, Out: "o.gguf", Force: true, JSON: true, Workers: 3})},
		{name: "f16", args: []string{"--model", "m", "--type", "F16", "--out", "o.gguf"},
			want: qdef(QuantizeOptions{ModelDir: "m", Format: "gguf", Type: "F16", Bits: 4, Out: "o.gguf"})},
		{name: "imatrix", args: []string{"--model", "m.gguf", "--out", "o.gguf", "--imatrix", "i.dat"},
			want: qdef(QuantizeOptions{ModelDir: "m.gguf", Format: "gguf", Type: "Q4_K_M", Bits: 4, Out: "o.gguf", Imatrix: "i.dat"})},
		{name: "no model", args: []string{"--out", "o.gguf"}, wantErr: "--model is required"},
		{name: "no out", args: []string{"--model", "m"}, wantErr: "--out is required"},
		{name: "format", args: []string{"--model", "m", "--out", "o", "--format", "gptq"}, wantErr: `--format: want gguf or safetensors, got "gptq"`},
		{name: "bits 3", args: []string{"--model", "m", "--out", "o", "--bits", "3"}, wantErr: "--bits: want 4 or 8, got 3"},
		{name: "bits and type", args: []string{"--model", "m", "--out", "o", "--bits", "8", "--type", "Q8_0"}, wantErr: "--bits and --type are exclusive"},
		{name: "unknown type", args: []string{"--model", "m", "--out", "o", "--type", "Q4_K"},
			wantErr: `--type: unknown type "Q4_K", want one of F32, F16, Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K`},
		{name: "negative workers", args: []string{"--model", "m", "--out", "o", "--workers", "-1"}, wantErr: "--workers: want >= 0, got -1"},
		{name: "gguf with group size", args: []string{"--model", "m", "--out", "o", "--group-size", "32"}, wantErr: "--group-size applies to --format safetensors"},

		// --format safetensors
		{name: "st int4 defaults", args: []string{"--model", "m", "--out", "o", "--format", "safetensors"},
			want: qdef(QuantizeOptions{ModelDir: "m", Format: "safetensors", Bits: 4, Out: "o", GroupSize: 128, Layout: "gptq", Method: "rtn"})},
		{name: "st int8 defaults", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--bits", "8"},
			want: qdef(QuantizeOptions{ModelDir: "m", Format: "safetensors", Bits: 8, Out: "o", GroupSize: -1, Layout: "compressed-tensors", Method: "rtn"})},
		{name: "st gptq from calib", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--calib", "c.txt", "--calib-samples", "8", "--calib-len", "512", "--act-order", "--sym=false", "--group-size", "32", "--layout", "compressed-tensors", "--damp", "0.05"},
			want: QuantizeOptions{ModelDir: "m", Format: "safetensors", Bits: 4, Out: "o", GroupSize: 32, Layout: "compressed-tensors", Method: "gptq",
				Calib: "c.txt", CalibSamples: 8, CalibLen: 512, ActOrder: true, Damp: 0.05}},
		{name: "st type", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--type", "Q4_K_M"}, wantErr: "--type names a GGUF mix"},
		{name: "st imatrix", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--imatrix", "i.dat"}, wantErr: "--imatrix applies to --format gguf"},
		{name: "st bits", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--bits", "2"}, wantErr: "--bits: want 4 or 8, got 2"},
		{name: "st group size", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--group-size", "0"}, wantErr: "--group-size: want -1 (per channel) or > 0, got 0"},
		{name: "st layout", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--layout", "awq"}, wantErr: `--layout: want gptq or compressed-tensors, got "awq"`},
		{name: "st method", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--method", "awq"}, wantErr: `--method: want rtn or gptq, got "awq"`},
		{name: "st gptq no calib", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--method", "gptq"}, wantErr: "--method gptq needs --calib FILE"},
		{name: "st rtn calib", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--method", "rtn", "--calib", "c.txt"}, wantErr: "--calib is for --method gptq"},
		{name: "st rtn act-order", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--act-order"}, wantErr: "--act-order applies to --method gptq"},
		{name: "st damp", args: []string{"--model", "m", "--out", "o", "--format", "safetensors", "--calib", "c", "--damp", "2"}, wantErr: "--damp: want a fraction in (0, 1), got 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdQuantize, tt.args)
			checkParse(t, got, err, tt.want, tt.wantErr, func(o *QuantizeOptions) { o.IO = nil })
		})
	}
}

func TestQuantizeRun(t *testing.T) {
	out := filepath.Join(t.TempDir(), "m.gguf")
	stdout, stderr, err := runCLI(t, "", "quantize", "--model", modelDir("qwen3-tied"), "--format", "gguf", "--type", "Q4_K_M", "--out", out, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Type     string         `json:"type"`
		FileType uint32         `json:"file_type"`
		Out      string         `json:"out"`
		Types    map[string]int `json:"tensor_types"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v: %q", err, stdout)
	}
	// qwen3-tied: 2 layers of 7 matrices, rows of 64 or 128, tied embedding.
	// Q4_K falls back to Q5_0, Q6_K (layer 1 attn_v, ffn_down; token_embd) to Q8_0.
	if rep.Type != "Q4_K_M" || rep.FileType != 15 || rep.Out != out || rep.Types["Q5_0"] != 12 || rep.Types["Q8_0"] != 3 || rep.Types["F32"] != 9 {
		t.Errorf("report %+v", rep)
	}
	if n := strings.Count(stderr, "warning: blk."); n != 14 || !strings.Contains(stderr, "warning: blk.1.ffn_down.weight: row of 128 not divisible by 256 (required for Q6_K), falling back to Q8_0\n") {
		t.Errorf("stderr has %d fallback warnings, want 14:\n%s", n, stderr)
	}
	f, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := f.Value("general.file_type"); v != uint32(15) {
		t.Errorf("general.file_type %v, want 15", v)
	}
	f.Close()

	// An existing file is kept without --force, replaced with it.
	before, _ := os.ReadFile(out)
	_, _, err = runCLI(t, "", "quantize", "--model", modelDir("qwen3-tied"), "--bits", "8", "--out", out)
	if err == nil || !strings.Contains(err.Error(), "exists; use --force to replace it") {
		t.Errorf("existing out: err %v", err)
	}
	if after, _ := os.ReadFile(out); string(after) != string(before) {
		t.Error("existing out was modified without --force")
	}
	stdout, _, err = runCLI(t, "", "quantize", "--model", modelDir("qwen3-tied"), "--bits", "8", "--out", out, "--force")
	if err != nil || !strings.Contains(stdout, "Q8_0 (file type 7)") {
		t.Errorf("--force: %v, %q", err, stdout)
	}
}

func TestQuantizeBadInput(t *testing.T) {
	bad := t.TempDir()
	src := modelDir("qwen3-tied")
	for _, n := range []string{"model.safetensors", "tokenizer.json", "tokenizer_config.json"} {
		b, _ := os.ReadFile(filepath.Join(src, n))
		os.WriteFile(filepath.Join(bad, n), b, 0o644)
	}
	os.WriteFile(filepath.Join(bad, "config.json"), []byte(`{"model_type": "gemma3", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}`), 0o644)
	outDir := t.TempDir()
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"architecture", []string{"--model", bad}, `model_type "gemma3" not supported, want qwen3, qwen2 or llama`},
		{"missing model", []string{"--model", filepath.Join(outDir, "nope")}, "config.json"},
		{"unknown type", []string{"--model", src, "--type", "IQ4_XS"}, `unknown type "IQ4_XS", want one of F32, F16, Q4_0`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runCLI(t, "", append([]string{"quantize", "--out", filepath.Join(outDir, "m.gguf")}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err %v, want one line with %q", err, tt.want)
			}
			if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
				t.Errorf("failed run left %d files", len(ents))
			}
		})
	}
}

func TestQuantizeSafetensorsRun(t *testing.T) {
	out := filepath.Join(t.TempDir(), "q")
	stdout, stderr, err := runCLI(t, "", "quantize", "--model", modelDir("qwen3-tied"), "--format", "safetensors", "--bits", "4", "--group-size", "32", "--out", out, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Layout    string `json:"layout"`
		Scheme    string `json:"scheme"`
		Method    string `json:"method"`
		Quantized int    `json:"quantized_tensors"`
		Dense     int    `json:"dense_tensors"`
		Out       string `json:"out"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v: %q", err, stdout)
	}
	// qwen3-tied: 2 layers x 7 linears; embedding, final norm and 4 norms per layer dense.
	if rep.Layout != "gptq" || rep.Scheme != "int4 g32 sym" || rep.Method != "rtn" || rep.Quantized != 14 || rep.Dense != 10 || rep.Out != out || stderr != "" {
		t.Errorf("report %+v, stderr %q", rep, stderr)
	}
	if !wq.IsQuantizedFolder(out) {
		t.Fatal("not a quantized folder")
	}
	for _, f := range []string{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}

	// Existing output: refused without --force, replaced with it.
	before, _ := os.ReadFile(filepath.Join(out, "model.safetensors"))
	_, _, err = runCLI(t, "", "quantize", "--model", modelDir("qwen3-tied"), "--format", "safetensors", "--bits", "8", "--out", out)
	if err == nil || err.Error() != "quantize: "+out+" exists; use --force to replace it" {
		t.Errorf("existing out: err %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(out, "model.safetensors")); string(after) != string(before) {
		t.Error("existing out was modified without --force")
	}
	stdout, stderr, err = runCLI(t, "", "quantize", "--model", modelDir("qwen3-tied"), "--format", "safetensors", "--bits", "4", "--out", out, "--force")
	if err != nil || !strings.Contains(stdout, "int4 g128 sym by rtn in the gptq layout") || !strings.Contains(stdout, "4 linears quantized, 20 tensors dense") {
		t.Errorf("--force: %v, %q", err, stdout)
	}
	// g128 on 64 input columns: those linears stay dense, with one warning each.
	if n := strings.Count(stderr, "warning: model.layers."); n != 10 || !strings.Contains(stderr, "warning: model.layers.0.mlp.gate_proj.weight: shape [128 64]: wq: 64 input columns are not a multiple of the group size 128; kept dense (F32)\n") {
		t.Errorf("stderr has %d warnings:\n%s", n, stderr)
	}

	// GPTQ from a calibration text.
	calib := filepath.Join(t.TempDir(), "calib.txt")
	os.WriteFile(calib, []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 40)), 0o644)
	out2 := filepath.Join(t.TempDir(), "g")
	stdout, stderr, err = runCLI(t, "", "quantize", "--model", modelDir("qwen3-tied"), "--format", "safetensors", "--group-size", "32",
		"--calib", calib, "--calib-samples", "4", "--calib-len", "64", "--layout", "compressed-tensors", "--out", out2)
	if err != nil || !strings.Contains(stdout, "by gptq in the compressed-tensors layout") || !strings.Contains(stdout, "gptq: 4 windows, 256 tokens") {
		t.Errorf("gptq: %v, %q, %q", err, stdout, stderr)
	}
	_, _, err = runCLI(t, "", "quantize", "--model", modelDir("qwen3-tied"), "--format", "safetensors", "--calib", calib, "--calib-len", "100000", "--out", filepath.Join(t.TempDir(), "x"))
	if err == nil || !strings.Contains(err.Error(), "fewer than one --calib-len window of 100000") {
		t.Errorf("short calib: %v", err)
	}
}

func TestQuantizeGGUFInputAndImatrix(t *testing.T) {
	dir := t.TempDir()
	f32 := filepath.Join(dir, "m-f32.gguf")
	if err := quantize.ExportGGUF(modelDir("qwen3-tied"), f32, "f32"); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "m-q8.gguf")
	stdout, _, err := runCLI(t, "", "quantize", "--model", f32, "--bits", "8", "--out", out)
	if err != nil || !strings.Contains(stdout, "Q8_0 (file type 7)") {
		t.Fatalf("gguf input: %v, %q", err, stdout)
	}
	_, _, err = runCLI(t, "", "quantize", "--model", f32, "--format", "safetensors", "--out", filepath.Join(dir, "st"))
	if err == nil || !strings.Contains(err.Error(), "is a GGUF file; --format safetensors needs a Hugging Face model folder") {
		t.Errorf("gguf to safetensors: %v", err)
	}
	_, _, err = runCLI(t, "", "quantize", "--model", modelDir("qwen3-tied"), "--imatrix", filepath.Join(dir, "none.dat"), "--out", filepath.Join(dir, "x.gguf"))
	if err == nil || !strings.Contains(err.Error(), "none.dat") || strings.Contains(err.Error(), "\n") {
		t.Errorf("missing imatrix: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.gguf")); err == nil {
		t.Error("output written despite the error")
	}
}

// tune inspect names a quantized folder's scheme and layout.
func TestInspectQuantizedFolder(t *testing.T) {
	out := filepath.Join(t.TempDir(), "int8")
	if _, _, err := runCLI(t, "", "quantize", "--model", modelDir("qwen3-tied"), "--format", "safetensors", "--bits", "8", "--out", out); err != nil {
		t.Fatal(err)
	}
	got, _, err := runCLI(t, "", "inspect", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "quantization: int8 per-channel sym, compressed-tensors layout") {
		t.Errorf("inspect:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(out, "README.md")); err != nil {
		t.Errorf("no model card: %v", err)
	}
}
