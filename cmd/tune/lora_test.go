package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/recipes"
	"github.com/tunellm/tune/train"
)

func TestNewCmdLoRA(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    LoRAOptions
		wantErr string
	}{
		{name: "recipe", args: []string{"--recipe", "r.yaml"}, want: LoRAOptions{Recipe: "r.yaml"}},
		{name: "all", args: []string{"--recipe", "r.yaml", "--set", "train.lr=1e-4", "--set", "lora.target_modules=[q_proj,v_proj]", "--resume", "--dry-run", "--json"},
			want: LoRAOptions{Recipe: "r.yaml", Set: []string{"train.lr=1e-4", "lora.target_modules=[q_proj,v_proj]"}, Resume: true, DryRun: true, JSON: true}},
		{name: "force", args: []string{"--recipe", "r.yaml", "--force"}, want: LoRAOptions{Recipe: "r.yaml", Force: true}},
		{name: "no recipe", args: []string{}, wantErr: "--recipe is required"},
		{name: "resume and force", args: []string{"--recipe", "r", "--resume", "--force"}, wantErr: "--resume and --force exclude each other"},
		{name: "bad set", args: []string{"--recipe", "r", "--set", "train.lr"}, wantErr: "--set train.lr: want key=value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdLoRA, tt.args)
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

func TestNewCmdMerge(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    MergeOptions
		wantErr string
	}{
		{name: "required", args: []string{"--base", "b", "--adapter", "a", "--out", "o"}, want: MergeOptions{Base: "b", Adapter: "a", Out: "o"}},
		{name: "dtype force", args: []string{"--base", "b", "--adapter", "a", "--out", "o", "--dtype", "bf16", "--force"}, want: MergeOptions{Base: "b", Adapter: "a", Out: "o", DType: "bf16", Force: true}},
		{name: "no base", args: []string{"--adapter", "a", "--out", "o"}, wantErr: "--base is required"},
		{name: "no out", args: []string{"--base", "b", "--adapter", "a"}, wantErr: "--out is required"},
		{name: "bad dtype", args: []string{"--base", "b", "--adapter", "a", "--out", "o", "--dtype", "fp8"}, wantErr: `--dtype: want bf16, f16 or f32, got "fp8"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdMerge, tt.args)
			checkParse(t, got, err, tt.want, tt.wantErr, func(o *MergeOptions) { o.IO = nil })
		})
	}
}

func TestLoRAHelpListsEveryKey(t *testing.T) {
	out, _, err := runCLI(t, "", "lora", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range recipes.Keys() {
		if !strings.Contains(out, k) {
			t.Errorf("help misses %s", k)
		}
	}
	if !strings.Contains(out, "default 0.0002") {
		t.Error("help does not show train.lr's default")
	}
}

// tinyRecipe is recipes/tiny-test.yaml; tinySets keep a test's files in its
// temporary folder.
func tinyRecipe() string { return filepath.Join("..", "..", "recipes", "tiny-test.yaml") }

func tinySets(dir string, extra ...string) []string {
	args := []string{"--set", "output.dir=" + filepath.Join(dir, "run"), "--set", "dataset.cache_dir=" + filepath.Join(dir, "cache")}
	for _, e := range extra {
		args = append(args, "--set", e)
	}
	return args
}

func TestLoRADryRun(t *testing.T) {
	dir := t.TempDir()
	out, _, err := runCLI(t, "", append([]string{"lora", "--recipe", tinyRecipe(), "--dry-run"}, tinySets(dir)...)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# resolved recipe", "  lr: 0.01", "48 train", "8 validation", "30 steps", "memory", "trainable parameters"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output misses %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "run")); err == nil {
		t.Error("a dry run created the run folder")
	}
	js, _, err := runCLI(t, "", append([]string{"lora", "--recipe", tinyRecipe(), "--dry-run", "--json"}, tinySets(dir)...)...)
	if err != nil {
		t.Fatal(err)
	}
	var p recipes.Plan
	if err := json.Unmarshal([]byte(js), &p); err != nil {
		t.Fatal(err)
	}
	// 48 short chats packed into 128-token sequences, 2 per batch.
	perEpoch, _ := train.Plan(p.Data.TrainSequences, 2, 1, 1, 0)
	if p.TotalSteps != 30 || p.StepsPerEpoch != perEpoch || p.Data.TrainExamples != 48 || p.Data.ValExamples != 8 || p.Memory.Total <= p.Memory.Weights {
		t.Errorf("plan %+v", p)
	}
}

// TestLoRAFineTuneLowersHeldOutLoss: on the tiny random model, 30 steps of
// LoRA on "always answer `ok, noted.`" cut the held-out loss on the answers
// by more than half.
func TestLoRAFineTuneLowersHeldOutLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for a few seconds")
	}
	dir := t.TempDir()
	out, _, err := runCLI(t, "", append([]string{"lora", "--recipe", tinyRecipe()}, tinySets(dir)...)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "adapter: ") {
		t.Errorf("summary: %s", out)
	}
	evals := readEvals(t, filepath.Join(dir, "run", "metrics.jsonl"))
	if len(evals) < 2 || evals[0].Step != 0 {
		t.Fatalf("evals %+v", evals)
	}
	first, last := evals[0].EvalLoss, evals[len(evals)-1].EvalLoss
	t.Logf("held-out loss %.4f -> %.4f", first, last)
	if !(last < 0.5*first) {
		t.Errorf("held-out loss %.4f -> %.4f: want it at least halved", first, last)
	}
	if _, err := os.Stat(filepath.Join(dir, "run", "adapter", "adapter_model.safetensors")); err != nil {
		t.Error(err)
	}
	// The same folder again: refused without --resume or --force.
	_, _, err = runCLI(t, "", append([]string{"lora", "--recipe", tinyRecipe()}, tinySets(dir)...)...)
	if err == nil || !strings.Contains(err.Error(), "holds a run") {
		t.Errorf("second run: %v", err)
	}
	// Merge the adapter into the base.
	_, _, err = runCLI(t, "", "merge", "--base", modelDir("qwen3-tied"), "--adapter", filepath.Join(dir, "run", "adapter"), "--out", filepath.Join(dir, "merged"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "merged", "config.json")); err != nil {
		t.Error(err)
	}
}

func readEvals(t *testing.T, path string) []train.EvalMetrics {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []train.EvalMetrics
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if bytes.Contains(sc.Bytes(), []byte(`"eval_loss"`)) {
			var e train.EvalMetrics
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
	}
	return out
}

// buildTune builds the tune binary into a temporary folder.
func buildTune(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tune")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestLoRAKill9DuringCheckpoints: SIGKILL at random moments of a run that
// checkpoints every step never leaves an incomplete step-N folder, and
// --resume always continues from what is there.
func TestLoRAKill9DuringCheckpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary several times")
	}
	bin := buildTune(t)
	dir := t.TempDir()
	mc, err := model.LoadConfig(modelDir("qwen3-tied"))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	sets := tinySets(dir, "train.save_every=1", "train.keep_checkpoints=2", "train.max_steps=400", "train.eval_every=0")
	for i := 0; i < 4; i++ {
		args := append([]string{"lora", "--recipe", tinyRecipe()}, sets...)
		if i > 0 {
			args = append(args, "--resume")
		}
		cmd := exec.Command(bin, args...)
		stderr := &lockedBuffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait for training to start, then a random moment.
		waitFor(t, func() bool { cks, _ := train.Checkpoints(filepath.Join(dir, "run")); return len(cks) > 0 }, 60*time.Second, stderr)
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		cks, err := train.Checkpoints(filepath.Join(dir, "run"))
		if err != nil || len(cks) == 0 {
			t.Fatalf("kill %d: checkpoints %v, %v", i, cks, err)
		}
		for _, ck := range cks {
			if err := train.CheckCheckpoint(ck); err != nil {
				t.Errorf("kill %d: incomplete checkpoint: %v", i, err)
			}
			if _, err := lora.Load(filepath.Join(ck, "adapter"), mc); err != nil {
				t.Errorf("kill %d: checkpoint adapter: %v", i, err)
			}
		}
		ents, _ := os.ReadDir(filepath.Join(dir, "run", "checkpoints"))
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Logf("kill %d: checkpoints folder holds %v", i, names)
	}
}

// TestLoRASIGINT: Ctrl-C writes a checkpoint and exits non-zero saying how
// to resume; the resumed run finishes.
func TestLoRASIGINT(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	bin := buildTune(t)
	dir := t.TempDir()
	sets := tinySets(dir, "train.save_every=0", "train.max_steps=400", "train.eval_every=0")
	cmd := exec.Command(bin, append([]string{"lora", "--recipe", tinyRecipe()}, sets...)...)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	metrics := filepath.Join(dir, "run", "metrics.jsonl")
	waitFor(t, func() bool { b, _ := os.ReadFile(metrics); return bytes.Count(b, []byte("\n")) >= 3 }, 60*time.Second, stderr)
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() == 0 {
		t.Fatalf("exit %v after SIGINT, want non-zero; stderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "checkpoint saved to") || !strings.Contains(stderr.String(), "--resume") {
		t.Errorf("stderr does not say how to resume:\n%s", stderr.String())
	}
	cks, _ := train.Checkpoints(filepath.Join(dir, "run"))
	if len(cks) != 1 {
		t.Fatalf("checkpoints after SIGINT: %v", cks)
	}
	if err := train.CheckCheckpoint(cks[0]); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, append(append([]string{"lora", "--recipe", tinyRecipe()}, tinySets(dir, "train.save_every=0", "train.max_steps=400", "train.eval_every=0")...), "--resume")...).CombinedOutput()
	if err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "trained 400 steps") {
		t.Errorf("resume output:\n%s", out)
	}
}

// lockedBuffer is a bytes.Buffer that a child's output and the test may use
// at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func waitFor(t *testing.T, cond func() bool, limit time.Duration, stderr *lockedBuffer) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out; stderr:\n%s", stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// DoRA end to end: trains, saves PEFT's lora_magnitude_vector tensors, and the
// merged folder scores as the unmerged adapter does.
func TestDoRAFineTuneMergeAndAdapterAgree(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for a few seconds")
	}
	dir := t.TempDir()
	if _, _, err := runCLI(t, "", append([]string{"lora", "--recipe", tinyRecipe()}, tinySets(dir, "lora.use_dora=true", "lora.dropout=0.1")...)...); err != nil {
		t.Fatal(err)
	}
	evals := readEvals(t, filepath.Join(dir, "run", "metrics.jsonl"))
	if first, last := evals[0].EvalLoss, evals[len(evals)-1].EvalLoss; !(last < 0.5*first) {
		t.Errorf("held-out loss %.4f -> %.4f: want it at least halved", first, last)
	}
	adapter := filepath.Join(dir, "run", "adapter")
	out, _, err := runCLI(t, "", "inspect", adapter, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep inspectReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	mags := 0
	for _, tt := range rep.Tensors {
		if strings.HasSuffix(tt.Name, ".lora_magnitude_vector") {
			mags++
		}
	}
	if want := 2 * 7; mags != want { // 2 layers x 7 modules
		t.Errorf("%d magnitude vectors, want %d", mags, want)
	}
	merged := filepath.Join(dir, "merged")
	if _, _, err := runCLI(t, "", "merge", "--base", modelDir("qwen3-tied"), "--adapter", adapter, "--out", merged, "--dtype", "f32"); err != nil {
		t.Fatal(err)
	}
	nll := func(args ...string) float64 {
		out, _, err := runCLI(t, "", append([]string{"eval", "ppl", "--data", "../../testdata/golden/ppl.txt", "--json"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			NLL float64 `json:"nll"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		return r.NLL
	}
	a, m := nll("--model", modelDir("qwen3-tied"), "--adapter", adapter), nll("--model", merged)
	if d := a - m; d > 1e-5 || d < -1e-5 {
		t.Errorf("mean nll with --adapter %.8f, merged %.8f", a, m)
	}
}
