package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/quantize/imatrix"
)

func TestNewCmdImatrix(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    ImatrixOptions
		wantErr string
	}{
		{name: "defaults", args: []string{"--model", "m", "--data", "d.txt", "--out", "i.gguf"},
			want: ImatrixOptions{ModelDir: "m", Data: "d.txt", Column: "text", Ctx: 512, Out: "i.gguf"}},
		{name: "all", args: []string{"--model", "m", "--data", "d.parquet", "--column", "body", "--ctx", "64", "--chunks", "3",
			"--process-output", "--out", "i.dat", "--force", "--json"},
			want: ImatrixOptions{ModelDir: "m", Data: "d.parquet", Column: "body", Ctx: 64, Chunks: 3, ProcessOutput: true, Out: "i.dat", Force: true, JSON: true}},
		{name: "no model", args: []string{"--data", "d", "--out", "o"}, wantErr: "--model is required"},
		{name: "no data", args: []string{"--model", "m", "--out", "o"}, wantErr: "--data is required"},
		{name: "no out", args: []string{"--model", "m", "--data", "d"}, wantErr: "--out is required"},
		{name: "ctx", args: []string{"--model", "m", "--data", "d", "--out", "o", "--ctx", "0"}, wantErr: "--ctx: want at least 1 token, got 0"},
		{name: "chunks", args: []string{"--model", "m", "--data", "d", "--out", "o", "--chunks", "-2"}, wantErr: "--chunks: want >= 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdImatrix, tt.args)
			checkParse(t, got, err, tt.want, tt.wantErr, func(o *ImatrixOptions) { o.IO = nil })
		})
	}
}

// TestImatrixRun writes both formats for qwen3-tied over the reference
// corpus (the numbers are checked against PyTorch in
// quantize/imatrix/collect) and reads them back.
func TestImatrixRun(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join("..", "..", "testdata", "golden", "ppl.txt")
	for _, name := range []string{"m.gguf", "m.dat"} {
		out := filepath.Join(dir, name)
		stdout, _, err := runCLI(t, "", "imatrix", "--model", modelDir("qwen3-tied"), "--data", text, "--ctx", "64", "--out", out, "--json")
		if err != nil {
			t.Fatal(err)
		}
		var rep struct {
			Format  string `json:"format"`
			Entries int    `json:"entries"`
			Chunks  int    `json:"chunks"`
			Tokens  int    `json:"tokens"`
		}
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("%v: %q", err, stdout)
		}
		// 296 byte tokens: 4 chunks of 64; 2 layers × 7 matrices.
		if rep.Entries != 14 || rep.Chunks != 4 || rep.Tokens != 256 || rep.Format != strings.TrimPrefix(filepath.Ext(name), ".") {
			t.Errorf("%s: %+v", name, rep)
		}
		m, err := imatrix.Load(out)
		if err != nil {
			t.Fatal(err)
		}
		w := m.Weights("blk.1.ffn_down.weight")
		if len(m.Entries) != 14 || m.ChunkCount != 4 || len(w) != 128 || !(w[0] > 0) {
			t.Errorf("%s: %d entries, %d chunks, ffn_down weights %d", name, len(m.Entries), m.ChunkCount, len(w))
		}
		if _, _, err := runCLI(t, "", "imatrix", "--model", modelDir("qwen3-tied"), "--data", text, "--ctx", "64", "--out", out); err == nil || !strings.Contains(err.Error(), "exists; use --force") {
			t.Errorf("existing output: %v", err)
		}
	}
	_, _, err := runCLI(t, "", "imatrix", "--model", modelDir("qwen3-tied"), "--data", text, "--ctx", "512", "--out", filepath.Join(dir, "x.gguf"))
	if err == nil || !strings.Contains(err.Error(), "ppl.txt: imatrix: 296 tokens, need at least 1024") {
		t.Errorf("short corpus: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.gguf")); err == nil {
		t.Error("failed run left a file")
	}
}
