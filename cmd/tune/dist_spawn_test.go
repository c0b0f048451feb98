package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// evalDistWorker runs the command in TUNE_EVAL_DIST_ARGS (a JSON list) as
// this process's part of a test launch and writes its stdout to
// $TUNE_TEST_OUT/out.<rank> ("spawner" for a --nproc-per-node parent).
func evalDistWorker(t *testing.T, argsJSON string) {
	var args []string
	if err := json.Unmarshal([]byte(argsJSON), &args); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runCLI(t, "", args...)
	if err != nil {
		t.Fatalf("%v\n%s%s", err, out, errOut)
	}
	rank := "spawner"
	for _, k := range []string{"RANK", "OMPI_COMM_WORLD_RANK"} {
		if v := os.Getenv(k); v != "" {
			rank = v
		}
	}
	if err := os.WriteFile(filepath.Join(os.Getenv("TUNE_TEST_OUT"), "out."+rank), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestEvalDistMatchesOneProcess: `tune eval ppl|kld|bench --json` with
// --nproc-per-node 2 (the spawner, two TCP ranks of this test binary, one
// thread each) and under mpirun -np 2 prints the same bytes as one process
// (JSON floats are shortest round-trip: same bytes, same bits); rank 1
// prints nothing.
func TestEvalDistMatchesOneProcess(t *testing.T) {
	if a := os.Getenv("TUNE_EVAL_DIST_ARGS"); a != "" {
		evalDistWorker(t, a)
		return
	}
	testdata := filepath.Join("..", "..", "testdata")
	corpus := filepath.Join(testdata, "golden", "ppl.txt")
	adapter := filepath.Join(testdata, "adapters", "qwen3-tied-r4")
	cases := []struct {
		name string
		args []string
	}{
		{"ppl", []string{"eval", "ppl", "--model", modelDir("qwen3-tied"), "--adapter", adapter, "--data", corpus, "--ctx", "40", "--json"}},
		{"kld", []string{"eval", "kld", "--base", modelDir("qwen3-tied"), "--model", modelDir("qwen3-tied"), "--adapter", adapter, "--data", corpus, "--ctx", "64", "--json"}},
		{"bench", []string{"eval", "bench", "--model", modelDir("qwen3-tied"), "--task", "arc", "--data", filepath.Join("..", "..", "eval", "testdata", "arc_sample.jsonl"), "--json"}},
	}
	mpirun, _ := exec.LookPath("mpirun")
	if mpirun == "" && os.Getenv("CI") == "true" {
		t.Fatal("mpirun is missing and CI=true: apt-get install openmpi-bin libopenmpi-dev")
	}
	for _, tc := range cases {
		want, errOut, err := runCLI(t, "", tc.args...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", tc.name, err, errOut)
		}
		launches := [][]string{{os.Args[0], "-test.run=^TestEvalDistMatchesOneProcess$"}}
		if mpirun != "" {
			launches = append(launches, []string{mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2",
				"-x", "TUNE_EVAL_DIST_ARGS", "-x", "TUNE_TEST_OUT", os.Args[0], "-test.run=^TestEvalDistMatchesOneProcess$"})
		}
		for _, launch := range launches {
			how := "--nproc-per-node 2"
			args := append(append([]string{}, tc.args...), "--nproc-per-node", "2")
			if launch[0] == mpirun {
				how, args = "mpirun -np 2", tc.args
			}
			dir := t.TempDir()
			aj, _ := json.Marshal(args)
			cmd := exec.Command(launch[0], launch[1:]...)
			cmd.Env = append(os.Environ(), "TUNE_EVAL_DIST_ARGS="+string(aj), "TUNE_TEST_OUT="+dir)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				t.Fatalf("%s %s: %v\n%s", tc.name, how, err, out.String())
			}
			got0, err := os.ReadFile(filepath.Join(dir, "out.0"))
			if err != nil {
				t.Fatalf("%s %s: rank 0 wrote nothing: %v\n%s", tc.name, how, err, out.String())
			}
			if string(got0) != want {
				t.Errorf("%s %s: rank 0 printed\n%s\none process\n%s", tc.name, how, got0, want)
			}
			if got1, err := os.ReadFile(filepath.Join(dir, "out.1")); err != nil || len(got1) != 0 {
				t.Errorf("%s %s: rank 1 printed %q (%v), want nothing", tc.name, how, got1, err)
			}
		}
		t.Logf("%s: 2 ranks = one process: %s", tc.name, strings.TrimSpace(want)[:min(120, len(strings.TrimSpace(want)))])
	}
}

// TestQuantizeGPTQDistMatchesOneProcess: `tune quantize --method gptq` with
// --nproc-per-node 2 (and under mpirun -np 2) writes the same safetensors
// and config.json as one process, and only rank 0 writes.
func TestQuantizeGPTQDistMatchesOneProcess(t *testing.T) {
	if a := os.Getenv("TUNE_EVAL_DIST_ARGS"); a != "" {
		evalDistWorker(t, a)
		return
	}
	calib := filepath.Join("..", "..", "testdata", "golden", "ppl.txt")
	args := func(out string) []string {
		return []string{"quantize", "--model", modelDir("qwen3-untied-bf16"), "--format", "safetensors", "--bits", "4", "--group-size", "32",
			"--calib", calib, "--calib-samples", "5", "--calib-len", "50", "--act-order", "--out", out}
	}
	single := filepath.Join(t.TempDir(), "q")
	if _, errOut, err := runCLI(t, "", args(single)...); err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	files := []string{"model.safetensors", "config.json"}
	want := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(single, f))
		if err != nil {
			t.Fatal(err)
		}
		want[f] = b
	}
	launches := [][]string{{os.Args[0], "-test.run=^TestQuantizeGPTQDistMatchesOneProcess$"}}
	if mpirun, _ := exec.LookPath("mpirun"); mpirun != "" {
		launches = append(launches, []string{mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2",
			"-x", "TUNE_EVAL_DIST_ARGS", "-x", "TUNE_TEST_OUT", os.Args[0], "-test.run=^TestQuantizeGPTQDistMatchesOneProcess$"})
	} else if os.Getenv("CI") == "true" {
		t.Fatal("mpirun is missing and CI=true: apt-get install openmpi-bin libopenmpi-dev")
	}
	for i, launch := range launches {
		parent := t.TempDir()
		out := filepath.Join(parent, "q")
		a, how := append(args(out), "--nproc-per-node", "2"), "--nproc-per-node 2"
		if i == 1 {
			a, how = args(out), "mpirun -np 2"
		}
		aj, _ := json.Marshal(a)
		cmd := exec.Command(launch[0], launch[1:]...)
		cmd.Env = append(os.Environ(), "TUNE_EVAL_DIST_ARGS="+string(aj), "TUNE_TEST_OUT="+t.TempDir())
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Run(); err != nil {
			if strings.Contains(log.String(), "needs quantize.IntOptions.Comm") {
				t.Skip("GPTQ across ranks waits for quantize.IntOptions.Comm (see quantizeSafetensors)")
			}
			t.Fatalf("%s: %v\n%s", how, err, log.String())
		}
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(out, f))
			if err != nil {
				t.Fatalf("%s: %v", how, err)
			}
			if !bytes.Equal(b, want[f]) {
				t.Errorf("%s: %s differs from one process's", how, f)
			}
		}
		if ents, _ := os.ReadDir(parent); len(ents) != 1 {
			t.Errorf("%s: %d entries next to the output, want only it (did rank 1 write?)", how, len(ents))
		}
	}
}

// TestOneProcessCommandsRefuseRanks: what runs on one process says so
// under a launcher instead of writing the same output from every rank.
func TestOneProcessCommandsRefuseRanks(t *testing.T) {
	t.Setenv("RANK", "1")
	t.Setenv("WORLD_SIZE", "2")
	out := filepath.Join(t.TempDir(), "o")
	for _, args := range [][]string{
		{"quantize", "--model", modelDir("qwen3-tied"), "--out", out + ".gguf"},
		{"quantize", "--model", modelDir("qwen3-tied"), "--format", "safetensors", "--out", out},
	} {
		_, _, err := runCLI(t, "", args...)
		if err == nil || !strings.Contains(err.Error(), "runs on one process, and this is rank 1 of 2 (torchrun)") {
			t.Errorf("%v: %v", args, err)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a refused rank wrote its output")
	}
	_, _, err := runCLI(t, "", "eval", "ppl", "--model", "m", "--data", "d.txt", "--nproc-per-node", "-1")
	if err == nil || !strings.Contains(err.Error(), "--nproc-per-node -1") {
		t.Errorf("negative --nproc-per-node: %v", err)
	}
}
