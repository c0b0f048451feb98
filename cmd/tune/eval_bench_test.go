package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewCmdEvalBench(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    EvalBenchOptions
		wantErr string
	}{
		{name: "defaults", args: []string{"--model", "m", "--task", "arc", "--data", "d.parquet"},
			want: EvalBenchOptions{ModelDir: "m", Task: "arc", Data: "d.parquet", Seed: 1234}},
		{name: "all", args: []string{"--model", "m", "--adapter", "a", "--task", "mmlu", "--data", "t.parquet", "--fewshot-data", "dev.parquet",
			"--shots", "5", "--limit", "10", "--seed", "7", "--json"},
			want: EvalBenchOptions{ModelDir: "m", AdapterDir: "a", Task: "mmlu", Data: "t.parquet", FewShotData: "dev.parquet", Shots: 5, Limit: 10, Seed: 7, JSON: true}},
		{name: "bad task", args: []string{"--model", "m", "--task", "piqa", "--data", "d"}, wantErr: `--task "piqa": want one of arc, gsm8k, hellaswag, mcq, mmlu`},
		{name: "negative shots", args: []string{"--model", "m", "--task", "mcq", "--data", "d", "--shots", "-1"}, wantErr: "--shots: want >= 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdEvalBench, tt.args)
			checkParse(t, got, err, tt.want, tt.wantErr, func(o *EvalBenchOptions) { o.IO = nil })
		})
	}
}

// `tune eval bench --task arc` gives the acc and acc_norm that
// testdata/gen/eval_reference.py computes from PyTorch log-likelihoods.
func TestEvalBenchMatchesReference(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "golden", "eval-bench-qwen3-tied.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g map[string]struct {
		Acc     struct{ Value, Stderr float64 } `json:"acc"`
		AccNorm struct{ Value, Stderr float64 } `json:"acc_norm"`
	}
	json.Unmarshal(b, &g)
	for _, task := range []string{"arc", "mcq"} {
		out, _, err := runCLI(t, "", "eval", "bench", "--model", modelDir("qwen3-tied"), "--task", task,
			"--data", filepath.Join("..", "..", "eval", "testdata", task+"_sample.jsonl"), "--json")
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			Metrics map[string]struct{ Value, Stderr float64 }
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		if res.Metrics["acc"].Value != g[task].Acc.Value || res.Metrics["acc_norm"].Value != g[task].AccNorm.Value {
			t.Errorf("%s: %+v, want acc %v acc_norm %v", task, res.Metrics, g[task].Acc.Value, g[task].AccNorm.Value)
		}
	}
	_, _, err = runCLI(t, "", "eval", "bench", "--model", modelDir("qwen3-tied"), "--task", "mcq",
		"--data", filepath.Join("..", "..", "eval", "testdata", "bad_answer.jsonl"))
	if err == nil || !strings.Contains(err.Error(), "answer index 2 out of range [0,2)") {
		t.Errorf("bad answer: %v", err)
	}
}
