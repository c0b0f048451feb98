package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/export"
	"github.com/tunellm/tune/quantize"
)

func TestNewCmdExportGGUFLoRA(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    ExportGGUFLoRAOptions
		wantErr string
	}{
		{name: "defaults", args: []string{"--adapter", "a", "--base", "b", "--out", "o.gguf"},
			want: ExportGGUFLoRAOptions{Adapter: "a", Base: "b", Out: "o.gguf", Type: "f32"}},
		{name: "all", args: []string{"--adapter", "a", "--base", "b", "--out", "o.gguf", "--type", "f16", "--force", "--json"},
			want: ExportGGUFLoRAOptions{Adapter: "a", Base: "b", Out: "o.gguf", Type: "f16", Force: true, JSON: true}},
		{name: "no adapter", args: []string{"--base", "b", "--out", "o"}, wantErr: "--adapter is required"},
		{name: "no base", args: []string{"--adapter", "a", "--out", "o"}, wantErr: "--base is required"},
		{name: "no out", args: []string{"--adapter", "a", "--base", "b"}, wantErr: "--out is required"},
		{name: "bad type", args: []string{"--adapter", "a", "--base", "b", "--out", "o", "--type", "q8_0"}, wantErr: `--type: want f32 or f16, got "q8_0"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdExportGGUFLoRA, tt.args)
			checkParse(t, got, err, tt.want, tt.wantErr, func(o *ExportGGUFLoRAOptions) { o.IO = nil })
		})
	}
}

func TestNewCmdExportOllama(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    ExportOllamaOptions
		wantErr string
	}{
		{name: "defaults", args: []string{"--model", "m.gguf", "--base", "b", "--out", "o"},
			want: ExportOllamaOptions{Model: "m.gguf", Base: "b", Out: "o"}},
		{name: "all", args: []string{"--model", "m.gguf", "--adapter", "a.gguf", "--base", "b", "--out", "o", "--system", "be brief", "--force", "--json"},
			want: ExportOllamaOptions{Model: "m.gguf", Adapter: "a.gguf", Base: "b", Out: "o", System: "be brief", Force: true, JSON: true}},
		{name: "no check without base", args: []string{"--model", "m.gguf", "--out", "o", "--no-check"},
			want: ExportOllamaOptions{Model: "m.gguf", Out: "o", NoCheck: true}},
		{name: "no model", args: []string{"--out", "o", "--base", "b"}, wantErr: "--model is required"},
		{name: "no out", args: []string{"--model", "m", "--base", "b"}, wantErr: "--out is required"},
		{name: "check needs base", args: []string{"--model", "m", "--out", "o"}, wantErr: "--base is required for the template parity check"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdExportOllama, tt.args)
			checkParse(t, got, err, tt.want, tt.wantErr, func(o *ExportOllamaOptions) { o.IO = nil })
		})
	}
}

// The whole path a user takes: adapter -> LoRA GGUF, model -> GGUF, both ->
// Modelfile with the template parity check, and inspect on each output.
func TestExportRun(t *testing.T) {
	tmp := t.TempDir()
	base := modelDir("llama3")
	adapter := filepath.Join("..", "..", "testdata", "adapters", "llama3-r8-rslora")
	loraOut := filepath.Join(tmp, "lora.gguf")
	stdout, _, err := runCLI(t, "", "export", "gguf-lora", "--adapter", adapter, "--base", base, "--out", loraOut, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep export.LoRAReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v: %q", err, stdout)
	}
	// llama3-r8-rslora: layer 1, down_proj, q_proj, v_proj; rsLoRA is folded.
	if rep.Pairs != 3 || rep.Architecture != "llama" || !rep.Folded || rep.Alpha != 16 {
		t.Fatalf("report %+v", rep)
	}
	if _, _, err := runCLI(t, "", "export", "gguf-lora", "--adapter", adapter, "--base", base, "--out", loraOut); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("existing output: err = %v, want --force", err)
	}
	_, _, err = runCLI(t, "", "export", "gguf-lora", "--adapter", filepath.Join("..", "..", "testdata", "adapters", "qwen3-tied-r4-dora"),
		"--base", modelDir("qwen3-tied"), "--out", filepath.Join(tmp, "dora.gguf"))
	if err == nil || !strings.Contains(err.Error(), "llama.cpp has no DoRA") {
		t.Fatalf("DoRA: err = %v", err)
	}

	modelOut := filepath.Join(tmp, "model.gguf")
	if err := quantize.ExportGGUF(base, modelOut, "f32"); err != nil {
		t.Fatal(err)
	}
	ollamaDir := filepath.Join(tmp, "ollama")
	stdout, _, err = runCLI(t, "", "export", "ollama", "--model", modelOut, "--adapter", loraOut, "--base", base, "--out", ollamaDir, "--system", "Be brief.")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "llama3 template, template parity checked") {
		t.Errorf("stdout %q", stdout)
	}
	mf, err := os.ReadFile(filepath.Join(ollamaDir, "Modelfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"FROM ../model.gguf", "ADAPTER ../lora.gguf", "TEMPLATE \"\"\"", `PARAMETER stop "<|eot_id|>"`, `SYSTEM """Be brief."""`} {
		if !strings.Contains(string(mf), want) {
			t.Errorf("Modelfile lacks %q:\n%s", want, mf)
		}
	}
	card, err := os.ReadFile(filepath.Join(ollamaDir, "README.md"))
	if err != nil || !strings.Contains(string(card), "ollama create my-model -f Modelfile") {
		t.Errorf("model card: %v\n%s", err, card)
	}
	// An adapter passed as the model, and a model passed as the adapter.
	if _, _, err := runCLI(t, "", "export", "ollama", "--model", loraOut, "--base", base, "--out", filepath.Join(tmp, "x")); err == nil || !strings.Contains(err.Error(), "is a LoRA adapter") {
		t.Errorf("adapter as model: err = %v", err)
	}
	if _, _, err := runCLI(t, "", "export", "ollama", "--model", modelOut, "--adapter", modelOut, "--base", base, "--out", filepath.Join(tmp, "x")); err == nil || !strings.Contains(err.Error(), `want "adapter"`) {
		t.Errorf("model as adapter: err = %v", err)
	}

	// inspect understands the LoRA GGUF and the Modelfile.
	stdout, _, err = runCLI(t, "", "inspect", loraOut, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ins struct {
		Kind    string         `json:"kind"`
		Adapter map[string]any `json:"adapter"`
	}
	if err := json.Unmarshal([]byte(stdout), &ins); err != nil {
		t.Fatal(err)
	}
	if ins.Kind != "gguf-lora" || ins.Adapter["pairs"] != float64(3) || ins.Adapter["lora_alpha"] != float64(16) {
		t.Errorf("inspect lora: %s", stdout)
	}
	stdout, _, err = runCLI(t, "", "inspect", filepath.Join(ollamaDir, "Modelfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"(modelfile)", "from:", "../model.gguf", "adapter:", "stop:", "<|eot_id|>"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("inspect Modelfile lacks %q:\n%s", want, stdout)
		}
	}
}

// A chat template tune can not translate is refused with the supported list;
// the Modelfile is not written.
func TestExportOllamaUnknownTemplate(t *testing.T) {
	tmp := t.TempDir()
	base := filepath.Join(tmp, "base")
	os.MkdirAll(base, 0o755)
	src := modelDir("qwen3-tied")
	for _, f := range []string{"config.json", "tokenizer.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(base, f), b, 0o644)
	}
	os.WriteFile(filepath.Join(base, "tokenizer_config.json"), []byte(`{"chat_template": "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}", "eos_token": "<|im_end|>"}`), 0o644)
	modelOut := filepath.Join(tmp, "m.gguf")
	if err := quantize.ExportGGUF(base, modelOut, "f32"); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(tmp, "ollama")
	_, _, err := runCLI(t, "", "export", "ollama", "--model", modelOut, "--base", base, "--out", out)
	if err == nil || !strings.Contains(err.Error(), "not recognized") || !strings.Contains(err.Error(), "Llama 3") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "Modelfile")); err == nil {
		t.Error("a Modelfile was written")
	}
}

// tune merge writes a model card into the merged folder.
func TestMergeWritesModelCard(t *testing.T) {
	out := filepath.Join(t.TempDir(), "merged")
	adapter := filepath.Join("..", "..", "testdata", "adapters", "llama3-r8-rslora")
	if _, _, err := runCLI(t, "", "merge", "--base", modelDir("llama3"), "--adapter", adapter, "--out", out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"---\nlibrary_name: transformers\n", "## Base model\n\n`testdata/models/llama3`", "| r | 8 |", "| use_rslora | true |",
		"| target_modules | down_proj, q_proj, v_proj |", "| layers_to_transform | [1] |", "vllm serve path/to/this/folder", "tune merge --base"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("README.md lacks %q:\n%s", want, b)
		}
	}
}
