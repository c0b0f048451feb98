package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/quantize"
)

// TestEvalPPLOnGGUF: eval ppl on our F32 GGUF export equals eval ppl on the
// folder (the folder's numbers are checked against PyTorch in package
// model); on a Q8_0 export it is close; kld and generate take the file.
func TestEvalPPLOnGGUF(t *testing.T) {
	data := filepath.Join("..", "..", "testdata", "golden", "ppl.txt")
	ppl := func(t *testing.T, model string) float64 {
		t.Helper()
		out, _, err := runCLI(t, "", "eval", "ppl", "--model", model, "--data", data, "--ctx", "64", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			PPL    float64 `json:"ppl"`
			Tokens int     `json:"tokens"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		return res.PPL
	}
	for _, name := range []string{"qwen3-untied-bf16", "llama3"} {
		t.Run(name, func(t *testing.T) {
			dir := modelDir(name)
			tmp := t.TempDir()
			f32, q8 := filepath.Join(tmp, "f32.gguf"), filepath.Join(tmp, "q8.gguf")
			if err := quantize.ExportGGUF(dir, f32, "f32"); err != nil {
				t.Fatal(err)
			}
			if _, err := quantize.QuantizeGGUF(dir, q8, quantize.GGUFOptions{Type: "Q8_0"}); err != nil {
				t.Fatal(err)
			}
			want := ppl(t, dir)
			if got := ppl(t, f32); got != want {
				t.Errorf("F32 GGUF ppl %.10g, folder %.10g", got, want)
			}
			got := ppl(t, q8)
			t.Logf("%s: ppl folder %.6g, Q8_0 GGUF %.6g (%+.3f%%)", name, want, got, 100*(got/want-1))
			if math.Abs(got/want-1) > 0.03 {
				t.Errorf("Q8_0 GGUF ppl %.6g, folder %.6g: more than 3%% apart", got, want)
			}
			out, _, err := runCLI(t, "", "eval", "kld", "--base", dir, "--model", f32, "--data", data, "--ctx", "64")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "Same top p: 100.000 ± 0.000 %") {
				t.Errorf("kld folder vs its F32 GGUF:\n%s", out)
			}
			g1, _, err := runCLI(t, "", "generate", "--model", f32, "--prompt", "Hello", "--temperature", "0", "--max-tokens", "8")
			if err != nil {
				t.Fatal(err)
			}
			g2, _, err := runCLI(t, "", "generate", "--model", dir, "--prompt", "Hello", "--temperature", "0", "--max-tokens", "8")
			if err != nil {
				t.Fatal(err)
			}
			if g1 != g2 {
				t.Errorf("generate on the F32 GGUF %q, on the folder %q", g1, g2)
			}
		})
	}
}

func TestLoadModelNotAModel(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.bin")
	os.WriteFile(p, []byte("nope"), 0o644)
	if _, err := loadModel(p, ""); err == nil || !strings.Contains(err.Error(), "not a model folder nor a GGUF file") {
		t.Errorf("loadModel(%s) = %v", p, err)
	}
	p = filepath.Join(t.TempDir(), "x.gguf")
	os.WriteFile(p, []byte("GGUF\x03\x00\x00\x00"), 0o644)
	if _, err := loadModel(p, ""); err == nil || !strings.Contains(err.Error(), "gguf") {
		t.Errorf("loadModel(truncated gguf) = %v", err)
	}
}

// TestEvalPPLOnQuantizedFolder: eval ppl takes an INT8 GPTQ-layout folder
// (loaded through wq.LoadModel) and lands near the folder's perplexity.
func TestEvalPPLOnQuantizedFolder(t *testing.T) {
	dir := modelDir("qwen3-untied-bf16")
	out := filepath.Join(t.TempDir(), "int8")
	if _, err := quantize.QuantizeSafetensors(dir, out, quantize.IntOptions{Bits: 8, GroupSize: -1, Sym: true, Layout: "gptq"}); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join("..", "..", "testdata", "golden", "ppl.txt")
	get := func(m string) float64 {
		o, _, err := runCLI(t, "", "eval", "ppl", "--model", m, "--data", data, "--ctx", "64", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var res struct{ PPL float64 }
		if err := json.Unmarshal([]byte(o), &res); err != nil {
			t.Fatal(err)
		}
		return res.PPL
	}
	want, got := get(dir), get(out)
	t.Logf("ppl folder %.6g, INT8 folder %.6g", want, got)
	if math.Abs(got/want-1) > 0.03 {
		t.Errorf("INT8 folder ppl %.6g, folder %.6g", got, want)
	}
}
