package export

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteModelCard(t *testing.T) {
	dir := t.TempDir()
	card := Card{
		Title: "Qwen3-8B legal", Kind: "adapter", BaseModel: "Qwen/Qwen3-8B", License: "apache-2.0",
		Datasets: []string{"org/legal-qa"}, Tags: []string{"legal", "yes"},
		Params:     [][2]string{{"r", "16"}, {"lr", "2e-4"}},
		Recipe:     "model: Qwen/Qwen3-8B\nlora:\n  r: 16\n",
		Validation: &Table{Header: []string{"metric", "base", "tuned"}, Rows: [][]string{{"ppl", "9.1", "6.2"}, {"a|b", "1", "2"}}},
		Command:    "tune lora --recipe r.yaml",
	}
	if err := WriteModelCard(dir, card); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	head, _, ok := strings.Cut(strings.TrimPrefix(s, "---\n"), "\n---\n")
	if !strings.HasPrefix(s, "---\n") || !ok {
		t.Fatalf("no front matter:\n%s", s)
	}
	for _, want := range []string{"base_model: Qwen/Qwen3-8B", "library_name: peft", "license: apache-2.0",
		"pipeline_tag: text-generation", "- tune", "- legal", `- "yes"`, "- lora", "- base_model:adapter:Qwen/Qwen3-8B", "datasets:\n- org/legal-qa"} {
		if !strings.Contains(head, want) {
			t.Errorf("front matter lacks %q:\n%s", want, head)
		}
	}
	for _, want := range []string{"# Qwen3-8B legal", "## Base model", "[Qwen/Qwen3-8B](https://huggingface.co/Qwen/Qwen3-8B)",
		"## Training recipe", "| r | 16 |", "```yaml\nmodel: Qwen/Qwen3-8B", "## Validation", "| ppl | 9.1 | 6.2 |", `| a\|b |`,
		"PeftModel.from_pretrained", "vllm serve Qwen/Qwen3-8B --enable-lora", "llama-server -m base.gguf --lora adapter.gguf",
		"## Licence", "`tune lora --recipe r.yaml`"} {
		if !strings.Contains(s, want) {
			t.Errorf("card lacks %q", want)
		}
	}
	// A local base path is not linked to the Hub; a model card of a merged
	// model says how transformers and vLLM load it.
	card = Card{Kind: "model", BaseModel: dir}
	if md := card.Markdown(); strings.Contains(md, "huggingface.co/") || !strings.Contains(md, "vllm serve path/to/this/folder") || !strings.Contains(md, "library_name: transformers") {
		t.Errorf("merged card:\n%s", md)
	}
}

func TestBaseLicense(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "README.md"), []byte("---\nlicense: other\nlicense_link: \"https://x/LICENSE\"\ntags:\n- a\n---\n# x\nlicense: no\n"), 0o644)
	if l, k := BaseLicense(dir); l != "other" || k != "https://x/LICENSE" {
		t.Fatalf("got %q %q", l, k)
	}
	if l, _ := BaseLicense(t.TempDir()); l != "" {
		t.Fatalf("no README: got %q", l)
	}
}
