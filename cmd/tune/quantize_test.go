package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/quantize/gguf"
)

func TestNewCmdQuantize(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    QuantizeOptions
		wantErr string
	}{
		{name: "defaults", args: []string{"--model", "m", "--out", "o.gguf"},
			want: QuantizeOptions{ModelDir: "m", Format: "gguf", Type: "Q4_K_M", Bits: 4, Out: "o.gguf"}},
		{name: "bits 8", args: []string{"--model", "m", "--format", "gguf", "--bits", "8", "--out", "o.gguf"},
			want: QuantizeOptions{ModelDir: "m", Format: "gguf", Type: "Q8_0", Bits: 8, Out: "o.gguf"}},
		{name: "type any case", args: []string{"--model", "m", "--type", "q3_k_l", "--out", "o.gguf", "--force", "--json", "--workers", "3"},
			want: QuantizeOptions{ModelDir: "m", Format: "gguf", Type: "Q3_K_L", Bits: 4, Out: "o.gguf", Force: true, JSON: true, Workers: 3}},
		{name: "f16", args: []string{"--model", "m", "--type", "F16", "--out", "o.gguf"},
			want: QuantizeOptions{ModelDir: "m", Format: "gguf", Type: "F16", Bits: 4, Out: "o.gguf"}},
		{name: "no model", args: []string{"--out", "o.gguf"}, wantErr: "--model is required"},
		{name: "no out", args: []string{"--model", "m"}, wantErr: "--out is required"},
		{name: "format", args: []string{"--model", "m", "--out", "o", "--format", "gptq"}, wantErr: `--format: want gguf, got "gptq"`},
		{name: "bits 3", args: []string{"--model", "m", "--out", "o", "--bits", "3"}, wantErr: "--bits: want 4 or 8, got 3"},
		{name: "bits and type", args: []string{"--model", "m", "--out", "o", "--bits", "8", "--type", "Q8_0"}, wantErr: "--bits and --type are exclusive"},
		{name: "unknown type", args: []string{"--model", "m", "--out", "o", "--type", "Q4_K"},
			wantErr: `--type: unknown type "Q4_K", want one of F32, F16, Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K`},
		{name: "negative workers", args: []string{"--model", "m", "--out", "o", "--workers", "-1"}, wantErr: "--workers: want >= 0, got -1"},
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
