package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewCmdEvalKLD(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    EvalKLDOptions
		wantErr string
	}{
		{name: "defaults", args: []string{"--base", "b", "--model", "m", "--data", "d.txt"},
			want: EvalKLDOptions{BaseDir: "b", ModelDir: "m", Data: "d.txt", Column: "text", Ctx: 512}},
		{name: "all", args: []string{"--base", "b", "--model", "m", "--adapter", "a", "--data", "d.jsonl", "--ctx", "64", "--all-tokens", "--json"},
			want: EvalKLDOptions{BaseDir: "b", ModelDir: "m", AdapterDir: "a", Data: "d.jsonl", Column: "text", Ctx: 64, AllTokens: true, JSON: true}},
		{name: "no base", args: []string{"--model", "m", "--data", "d"}, wantErr: "--base is required"},
		{name: "ctx too small", args: []string{"--base", "b", "--model", "m", "--data", "d", "--ctx", "2"}, wantErr: "--ctx: want at least 3 tokens, got 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdEvalKLD, tt.args)
			checkParse(t, got, err, tt.want, tt.wantErr, func(o *EvalKLDOptions) { o.IO = nil })
		})
	}
}

// `tune eval kld --json` of qwen3-tied vs itself + qwen3-tied-r4 equals
// testdata/gen/eval_reference.py's PyTorch numbers, in both scoring modes.
func TestEvalKLDMatchesReference(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "golden", "eval-kld-qwen3-tied-r4.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Modes []struct {
			Ctx     int
			Scored  string
			Tokens  int
			Summary map[string]any
		}
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	for _, mode := range g.Modes {
		args := []string{"eval", "kld", "--base", modelDir("qwen3-tied"), "--model", modelDir("qwen3-tied"),
			"--adapter", filepath.Join("..", "..", "testdata", "adapters", "qwen3-tied-r4"),
			"--data", filepath.Join("..", "..", "testdata", "golden", "ppl.txt"), "--ctx", itoa(mode.Ctx), "--json"}
		if mode.Scored == "all" {
			args = append(args, "--all-tokens")
		}
		out, _, err := runCLI(t, "", args...)
		if err != nil {
			t.Fatal(err)
		}
		var res map[string]any
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		if int(res["tokens"].(float64)) != mode.Tokens {
			t.Errorf("%s: %v tokens, want %d", mode.Scored, res["tokens"], mode.Tokens)
		}
		for _, k := range []string{"kld_mean", "same_top", "ppl_base", "ppl_model", "ln_ppl_ratio", "delta_p_rms"} {
			got, want := res[k].(float64), mode.Summary[k].(float64)
			if math.Abs(got-want) > 2e-4*math.Max(1, math.Abs(want)) {
				t.Errorf("%s: %s = %.8g, want %.8g", mode.Scored, k, got, want)
			}
		}
	}
	// the text summary prints llama.cpp's blocks
	out, _, err := runCLI(t, "", "eval", "kld", "--base", modelDir("qwen3-tied"), "--model", modelDir("qwen3-tied"),
		"--data", filepath.Join("..", "..", "testdata", "golden", "ppl.txt"), "--ctx", "64")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Mean    KLD:   0.000000 ±   0.000000", "Same top p: 100.000 ± 0.000 %", "124 tokens scored (second-half of 4 windows of 64)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestEvalKLDDifferentTokenizers(t *testing.T) {
	_, _, err := runCLI(t, "", "eval", "kld", "--base", modelDir("qwen3-tied"), "--model", modelDir("llama3"),
		"--data", filepath.Join("..", "..", "testdata", "golden", "ppl.txt"), "--ctx", "64")
	if err == nil || !strings.Contains(err.Error(), "tokenizers differ") || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %v", err)
	}
}
