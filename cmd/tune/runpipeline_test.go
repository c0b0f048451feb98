package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tunellm/tune/pipeline"
)

func TestNewCmdRun(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    RunOptions
		wantErr string
	}{
		{name: "recipe", args: []string{"r.yaml"}, want: RunOptions{Recipe: "r.yaml"}},
		{name: "all", args: []string{"r.yaml", "--set", "train.lr=1e-4", "--force", "--json"},
			want: RunOptions{Recipe: "r.yaml", Set: []string{"train.lr=1e-4"}, Force: true, JSON: true}},
		{name: "resume", args: []string{"r.yaml", "--resume"}, want: RunOptions{Recipe: "r.yaml", Resume: true}},
		{name: "no recipe", args: []string{}, wantErr: "accepts 1 arg"},
		{name: "resume and force", args: []string{"r", "--resume", "--force"}, wantErr: "--resume and --force exclude each other"},
		{name: "bad set", args: []string{"r", "--set", "train.lr"}, wantErr: "--set train.lr: want key=value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdRun, tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.IO = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("options\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func pipelineRecipe() string { return filepath.Join("..", "..", "recipes", "tiny-pipeline.yaml") }

// runPipelineJSON runs `tune ARGS --json` and decodes the summary, which is
// printed whether or not a gate failed.
func runPipelineJSON(t *testing.T, args ...string) (*pipeline.Summary, error) {
	t.Helper()
	out, stderr, err := runCLI(t, "", append(args, "--json")...)
	var s pipeline.Summary
	if jerr := json.Unmarshal([]byte(out), &s); jerr != nil {
		t.Fatalf("summary: %v (error %v)\nstdout:\n%s\nstderr:\n%s", jerr, err, out, stderr)
	}
	return &s, err
}

func stageMap(s *pipeline.Summary) map[string]pipeline.StageResult {
	m := map[string]pipeline.StageResult{}
	for _, st := range s.Stages {
		m[st.Name] = st
	}
	return m
}

func artifactMap(s *pipeline.Summary) map[string]*pipeline.Artifact {
	m := map[string]*pipeline.Artifact{}
	for _, a := range s.Artifacts {
		m[a.Name] = a
	}
	return m
}

// TestRunPipelineGates: recipes/tiny-pipeline.yaml with an honest (Q8_0) and
// a broken (Q2_K, no imatrix) GGUF. The broken one fails its gates, with the
// numbers, and stays on disk marked failed; Q8_0, the adapter and the merge
// (logits equal base+adapter) pass. A re-run skips every stage; a deleted
// output is redone alone, without retraining; --force redoes everything.
func TestRunPipelineGates(t *testing.T) {
	if testing.Short() {
		t.Skip("trains, quantizes and validates for a few seconds")
	}
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	sets := tinySets(dir, "quantize=[{format: gguf, type: Q8_0}, {format: gguf, type: Q2_K}]")
	// tune lora --recipe runs the whole pipeline when the recipe has its sections.
	s, err := runPipelineJSON(t, append([]string{"lora", "--recipe", pipelineRecipe()}, sets...)...)
	var ge *pipeline.GateError
	if !errors.As(err, &ge) {
		t.Fatalf("want a gate failure, got %v", err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "gguf-q2_k: ") || !strings.Contains(msg, "max_mean_kld: mean KLD ") || strings.Contains(msg, "gguf-q8_0") {
		t.Errorf("gate error: %s", msg)
	}
	t.Logf("%s", msg)
	arts := artifactMap(s)
	for name, want := range map[string]string{"adapter": "pass", "merged": "pass", "gguf-q8_0": "pass", "gguf-q2_k": "fail"} {
		a := arts[name]
		if a == nil || a.Status != want {
			t.Fatalf("artifact %s: %+v, want status %s", name, a, want)
		}
		if a.Validation == nil {
			t.Fatalf("artifact %s has no validation", name)
		}
		v := a.Validation
		t.Logf("%-10s vs %-12s ppl %.4f (%+.2f%%) kld %+v logits %+v bench %+v", name, v.Reference, v.PPL, v.PPLChangePct, v.KLD, v.Logits, v.Bench)
		// validation.json beside the artifact says the same.
		vdir := filepath.Join(run, a.Path)
		if strings.HasSuffix(a.Path, ".gguf") {
			vdir = filepath.Dir(vdir)
		}
		b, err := os.ReadFile(filepath.Join(vdir, "validation.json"))
		if err != nil {
			t.Fatal(err)
		}
		var onDisk pipeline.Validation
		if err := json.Unmarshal(b, &onDisk); err != nil {
			t.Fatal(err)
		}
		if onDisk.Pass != (want == "pass") || onDisk.Artifact != name {
			t.Errorf("%s/validation.json: %+v", name, onDisk)
		}
	}
	// The merged model computes what base+adapter computes (f32 merge).
	if l := arts["merged"].Validation.Logits; l == nil || l.MaxAbs > 1e-3 || l.Rows == 0 {
		t.Errorf("merged vs base+adapter: %+v", l)
	}
	// Training helped on held-out text; the honest quantization barely moves.
	if v := arts["adapter"].Validation; v.PPLChangePct > -20 {
		t.Errorf("adapter ppl change %.2f%%", v.PPLChangePct)
	}
	if k := arts["gguf-q8_0"].Validation.KLD; k == nil || k.Mean > 0.01 || k.SameTop < 0.95 {
		t.Errorf("Q8_0 KLD %+v", k)
	}
	if k := arts["gguf-q2_k"].Validation.KLD; k == nil || k.Mean < 10*arts["gguf-q8_0"].Validation.KLD.Mean {
		t.Errorf("Q2_K KLD %+v: want it far above Q8_0's", k)
	}
	q2 := filepath.Join(run, "gguf-q2_k", "gguf-q2_k.gguf")
	if _, err := os.Stat(q2); err != nil {
		t.Errorf("the failed artifact was deleted: %v", err)
	}
	for _, f := range []string{"manifest.json", "report.html", "report.md"} {
		if _, err := os.Stat(filepath.Join(run, f)); err != nil {
			t.Error(err)
		}
	}
	md, _ := os.ReadFile(filepath.Join(run, "report.md"))
	if !strings.Contains(string(md), "| gguf-q2_k | gguf | merged |") || !strings.Contains(string(md), "**FAIL**") {
		t.Errorf("report.md:\n%s", md)
	}

	// Re-run: nothing to do, the same verdict.
	s, err = runPipelineJSON(t, append([]string{"run", pipelineRecipe()}, sets...)...)
	if !errors.As(err, &ge) {
		t.Fatalf("re-run: %v", err)
	}
	st := stageMap(s)
	for _, name := range []string{"train", "validate:adapter", "merge", "validate:merged", "quantize:gguf-q8_0", "validate:gguf-q8_0", "quantize:gguf-q2_k", "validate:gguf-q2_k"} {
		if !st[name].Skipped {
			t.Errorf("re-run: stage %s %+v, want skipped", name, st[name])
		}
	}

	// A lost (or failed) quantization is redone alone; the new file is
	// byte-identical (quantization is deterministic), so its validation, whose
	// inputs are content hashes, still stands.
	if err := os.Remove(q2); err != nil {
		t.Fatal(err)
	}
	s, _ = runPipelineJSON(t, append([]string{"run", pipelineRecipe()}, sets...)...)
	st = stageMap(s)
	if st["train"].Skipped != true || st["merge"].Skipped != true || st["quantize:gguf-q8_0"].Skipped != true ||
		st["quantize:gguf-q2_k"].Skipped || !st["validate:gguf-q2_k"].Skipped {
		t.Errorf("after removing the Q2_K file: %+v", s.Stages)
	}

	// The recipe without the broken output passes; --force redoes everything.
	s, err = runPipelineJSON(t, append([]string{"run", pipelineRecipe(), "--force"}, tinySets(dir)...)...)
	if err != nil {
		t.Fatalf("honest recipe: %v", err)
	}
	for _, r := range s.Stages {
		if r.Skipped {
			t.Errorf("--force skipped %s", r.Name)
		}
	}
	if _, ok := artifactMap(s)["gguf-q2_k"]; ok || !s.Pass {
		t.Errorf("summary after dropping Q2_K: %+v", s.Artifacts)
	}
}

// A threshold that is not a number is an error naming the key.
func TestRunBadThreshold(t *testing.T) {
	dir := t.TempDir()
	_, _, err := runCLI(t, "", append([]string{"run", pipelineRecipe()}, tinySets(dir, "validate.max_mean_kld=low")...)...)
	if err == nil || !strings.Contains(err.Error(), `validate.max_mean_kld: want a number or off, found "low"`) {
		t.Fatalf("error %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "run")); err == nil {
		t.Error("a bad recipe created the run folder")
	}
}

// Under a launcher, the pipeline refuses to run on every rank.
func TestRunRefusesDistributed(t *testing.T) {
	t.Setenv("RANK", "1")
	t.Setenv("WORLD_SIZE", "2")
	t.Setenv("MASTER_ADDR", "127.0.0.1")
	t.Setenv("MASTER_PORT", "29500")
	_, _, err := runCLI(t, "", "run", filepath.Join("..", "..", "recipes", "tiny-pipeline.yaml"))
	if err == nil || !strings.Contains(err.Error(), "rank 1 of 2") || !strings.Contains(err.Error(), "run on one process") {
		t.Fatalf("err = %v", err)
	}
}
