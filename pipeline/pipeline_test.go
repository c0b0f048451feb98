package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/recipes"
)

const testModels = "../testdata/models"

func TestHashPath(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, s string) {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a/x.txt", "hello")
	write("a/sub/y.txt", "world")
	h := func(p string) string {
		t.Helper()
		s, err := HashPath(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// sha256("hello"), computed independently (coreutils sha256sum).
	if got := h("a/x.txt"); got != "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" {
		t.Errorf("file hash %s", got)
	}
	folder := h("a")
	write("a/validation.json", "{}") // written beside an artifact: not part of it
	write("a/.tmp-x", "partial")
	if h("a") != folder {
		t.Error("validation.json or a temporary file changed the folder's hash")
	}
	write("a/sub/y.txt", "World")
	if h("a") == folder {
		t.Error("a changed file kept the folder's hash")
	}
	if s, err := HashPath(""); err != nil || s != "none" {
		t.Errorf("empty path: %s %v", s, err)
	}
	if _, err := HashPath(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing path hashed")
	}
	// Above the limit: (path, size, mtime), so a rewrite of the same size
	// and time is not seen, a touch is.
	defer func(n int64) { ContentHashLimit = n }(ContentHashLimit)
	ContentHashLimit = 3
	p := filepath.Join(dir, "a/x.txt")
	fi, _ := os.Stat(p)
	same := h("a/x.txt")
	write("a/x.txt", "HELLp")
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	if h("a/x.txt") != same {
		t.Error("stat hash changed without a size or mtime change: it read the content")
	}
	write("a/x.txt", "HELLO!")
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	if h("a/x.txt") == same {
		t.Error("stat hash kept a size change")
	}
}

func TestUpToDate(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "out.bin"), []byte("x"), 0o644)
	h, _ := HashPath(filepath.Join(dir, "out.bin"))
	in := map[string]string{"model": "sha256:1"}
	rec := &Stage{Name: "s", Status: "ok", Inputs: map[string]string{"model": "sha256:1"}, Outputs: map[string]string{"out.bin": h}}
	if !upToDate(rec, in, dir) {
		t.Error("same inputs and outputs: not up to date")
	}
	if upToDate(rec, map[string]string{"model": "sha256:2"}, dir) {
		t.Error("changed input: up to date")
	}
	failed := *rec
	failed.Status = "failed" // a gate: the numbers would be the same
	if !upToDate(&failed, in, dir) {
		t.Error("failed gate redone")
	}
	bad := *rec
	bad.Status = "error"
	if upToDate(&bad, in, dir) {
		t.Error("an error is not retried")
	}
	os.WriteFile(filepath.Join(dir, "out.bin"), []byte("y"), 0o644)
	if upToDate(rec, in, dir) {
		t.Error("changed output: up to date")
	}
	if upToDate(nil, in, dir) {
		t.Error("no record: up to date")
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	os.MkdirAll(dst, 0o755)
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		in, _ := os.Open(filepath.Join(src, e.Name()))
		out, _ := os.Create(filepath.Join(dst, e.Name()))
		io.Copy(out, in)
		in.Close()
		out.Close()
	}
}

// TestRunStagesAndSkips runs the stages after training on a ready-made
// adapter (the fake Train copies testdata/adapters/qwen3-tied-r4): a changed
// threshold redoes only the validations; a missing INT quantizer is an error
// on that artifact alone, retried on the next run.
func TestRunStagesAndSkips(t *testing.T) {
	dir := t.TempDir()
	models, err := filepath.Abs(testModels)
	if err != nil {
		t.Fatal(err)
	}
	held := filepath.Join(dir, "held.txt")
	os.WriteFile(held, []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 12)), 0o644)
	y := `model:
  path: ` + filepath.Join(models, "qwen3-tied") + `
dataset:
  path: d.jsonl
output:
  dir: ` + filepath.Join(dir, "run") + `
merge:
  dtype: f32
quantize:
  - {format: gguf, type: Q8_0}
  - {format: safetensors, bits: 8, group_size: -1}
validate:
  data: ` + held + `
  ctx: 64
  max_mean_kld: 0.05
  min_top1_agreement: 0.8
`
	r, err := recipes.Parse(filepath.Join(dir, "r.yaml"), []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	trains := 0
	opts := Options{Train: func(ctx context.Context, force bool) error {
		trains++
		copyDir(t, "../testdata/adapters/qwen3-tied-r4", filepath.Join(dir, "run", "adapter"))
		return nil
	}}
	// The INT quantization fails the first time (as a full disk would).
	opts.QuantizeInt = func(modelDir, outDir string, q recipes.QuantizeOutput, calib [][]int, progress func(done, total int64)) error {
		return errors.New("write " + outDir + ": no space left on device")
	}
	s, err := Run(context.Background(), r, opts)
	var ge *GateError
	if !errors.As(err, &ge) || len(ge.Failed) != 1 || !strings.Contains(ge.Failed[0], "quantize:int8-ch-rtn: ") || !strings.Contains(ge.Failed[0], "no space left on device") {
		t.Fatalf("first run: %v", err)
	}
	status := func(s *Summary) map[string]string {
		m := map[string]string{}
		for _, a := range s.Artifacts {
			m[a.Name] = a.Status
		}
		return m
	}
	if st := status(s); st["adapter"] != "pass" || st["merged"] != "pass" || st["gguf-q8_0"] != "pass" || st["int8-ch-rtn"] != "error" {
		t.Errorf("statuses %v", st)
	}
	// Retry with the quantizer and loader available (here: a stand-in that
	// writes the merged model as is, so the gates see no loss).
	opts.QuantizeInt = func(modelDir, outDir string, q recipes.QuantizeOutput, calib [][]int, progress func(done, total int64)) error {
		copyDir(t, modelDir, outDir)
		return nil
	}
	opts.LoadQuantized = func(d string) (*model.Model, error) { return model.Load(d, model.LoadOptions{}) }
	s, err = Run(context.Background(), r, opts)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	ran := func(s *Summary) string {
		var out []string
		for _, st := range s.Stages {
			if !st.Skipped {
				out = append(out, st.Name)
			}
		}
		return strings.Join(out, " ")
	}
	if got := ran(s); got != "quantize:int8-ch-rtn validate:int8-ch-rtn" || trains != 1 {
		t.Errorf("retry ran %q (trained %d times)", got, trains)
	}
	if st := status(s); st["int8-ch-rtn"] != "pass" {
		t.Errorf("statuses %v", st)
	}
	// A stricter gate redoes the validations only, and fails the GGUF.
	r.Set("validate.max_mean_kld=1e-9")
	s, err = Run(context.Background(), r, opts)
	if got := ran(s); got != "validate:adapter validate:merged validate:gguf-q8_0 validate:int8-ch-rtn" {
		t.Errorf("after a threshold change ran %q", got)
	}
	if !errors.As(err, &ge) || len(ge.Failed) != 1 || !strings.HasPrefix(ge.Failed[0], "gguf-q8_0: max_mean_kld: mean KLD ") {
		t.Errorf("strict gate: %v", err)
	}
	// Force redoes all, training included.
	opts.Force = true
	s, _ = Run(context.Background(), r, opts)
	if strings.Count(ran(s), " ")+1 != len(s.Stages) || trains != 2 {
		t.Errorf("--force ran %q of %d stages, trained %d times", ran(s), len(s.Stages), trains)
	}
	for _, f := range []string{"manifest.json", "report.html", "report.md", "adapter/validation.json", "merged/validation.json", "gguf-q8_0/validation.json", "gguf-q8_0/gguf-q8_0.gguf"} {
		if _, err := os.Stat(filepath.Join(dir, "run", f)); err != nil {
			t.Error(err)
		}
	}
}

// An output dropped from the recipe leaves the summary; listed again, it is
// reused with its validation (read back from its validation.json).
func TestRunOutputDroppedAndReadded(t *testing.T) {
	dir := t.TempDir()
	models, _ := filepath.Abs(testModels)
	held := filepath.Join(dir, "held.txt")
	os.WriteFile(held, []byte(strings.Repeat("Pack my box with five dozen liquor jugs. ", 10)), 0o644)
	y := "model:\n  path: " + filepath.Join(models, "qwen3-tied") + "\ndataset:\n  path: d.jsonl\noutput:\n  dir: " + filepath.Join(dir, "run") +
		"\nmerge:\n  dtype: f32\nquantize:\n  - {format: gguf, type: Q8_0}\nvalidate:\n  data: " + held + "\n  ctx: 64\n  min_top1_agreement: 0.5\n"
	r, err := recipes.Parse(filepath.Join(dir, "r.yaml"), []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	opts := Options{Train: func(ctx context.Context, force bool) error {
		copyDir(t, "../testdata/adapters/qwen3-tied-r4", filepath.Join(dir, "run", "adapter"))
		return nil
	}}
	if _, err := Run(context.Background(), r, opts); err != nil {
		t.Fatal(err)
	}
	r.Set("quantize=[]")
	s, err := Run(context.Background(), r, opts)
	if err != nil || len(s.Artifacts) != 2 {
		t.Fatalf("without the GGUF: %v %+v", err, s.Artifacts)
	}
	r.Set("quantize=[{format: gguf, type: Q8_0}]")
	s, err = Run(context.Background(), r, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range s.Stages {
		if !st.Skipped {
			t.Errorf("stage %s redone", st.Name)
		}
	}
	a := s.Artifacts[len(s.Artifacts)-1]
	if a.Name != "gguf-q8_0" || a.Status != "pass" || a.Validation == nil || a.Validation.KLD == nil || a.BitsPerWeight < 8 {
		t.Errorf("re-added artifact %+v", a)
	}
	if m := s.Artifacts[1]; m.Name != "merged" || math.Abs(m.BitsPerWeight-32) > 0.5 {
		t.Errorf("merged f32: %+v", m)
	}
}

// A run folder that tune lora trained (recipe.yaml and adapter/, no
// manifest) is taken as the train stage when its training sections match.
func TestRunAdoptsFinishedTraining(t *testing.T) {
	dir := t.TempDir()
	models, _ := filepath.Abs(testModels)
	y := "model:\n  path: " + filepath.Join(models, "qwen3-tied") + "\ndataset:\n  path: d.jsonl\noutput:\n  dir: " + filepath.Join(dir, "run") + "\nmerge:\n  dtype: f32\n"
	r, err := recipes.Parse(filepath.Join(dir, "r.yaml"), []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	copyDir(t, "../testdata/adapters/qwen3-tied-r4", filepath.Join(run, "adapter"))
	// What the trainer wrote: the whole recipe, other stages included.
	os.WriteFile(filepath.Join(run, "recipe.yaml"), []byte(r.YAML()), 0o644)
	r.Set("merge.dtype=bf16") // not a training key
	trained := false
	s, err := Run(context.Background(), r, Options{Train: func(context.Context, bool) error { trained = true; return nil }})
	if err != nil || trained || len(s.Stages) == 0 || !s.Stages[0].Skipped {
		t.Fatalf("adopt: err %v, trained %v, stages %+v", err, trained, s.Stages)
	}
	// A different training recipe is not adopted.
	os.Remove(filepath.Join(run, ManifestName))
	r.Set("train.lr=1e-3")
	if _, err := Run(context.Background(), r, Options{Train: func(context.Context, bool) error { trained = true; return nil }}); err != nil || !trained {
		t.Fatalf("changed recipe: err %v, trained %v", err, trained)
	}
}

// Full training: the trained model/ is checked against the base and is what
// the quantized outputs start from and are checked against; nothing merges.
func TestRunFullTraining(t *testing.T) {
	dir := t.TempDir()
	models, _ := filepath.Abs(testModels)
	held := filepath.Join(dir, "held.txt")
	os.WriteFile(held, []byte(strings.Repeat("Sphinx of black quartz, judge my vow. ", 10)), 0o644)
	y := "model:\n  path: " + filepath.Join(models, "qwen3-tied") + "\ndataset:\n  path: d.jsonl\ntrain:\n  mode: full\noutput:\n  dir: " + filepath.Join(dir, "run") +
		"\nquantize:\n  - {format: gguf, type: Q8_0}\nvalidate:\n  data: " + held + "\n  ctx: 64\n  min_top1_agreement: 0.5\n"
	r, err := recipes.Parse(filepath.Join(dir, "r.yaml"), []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := Run(context.Background(), r, Options{Train: func(context.Context, bool) error {
		copyDir(t, filepath.Join(models, "qwen3-tied"), filepath.Join(dir, "run", "model"))
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range s.Artifacts {
		names = append(names, a.Name+":"+a.Status+":"+a.Validation.Reference)
	}
	if got := strings.Join(names, " "); got != "model:pass:base gguf-q8_0:pass:model" {
		t.Errorf("artifacts %s", got)
	}
	if v := s.Artifacts[0].Validation; v.PPLChangePct != 0 {
		t.Errorf("the base copied as the trained model: ppl change %g", v.PPLChangePct)
	}
}

// TestParityGate: a folder whose chat template renders other tokens than
// the base's fails the template_parity gate with the first differing token.
func TestParityGate(t *testing.T) {
	base := filepath.Join(testModels, "qwen3-tied")
	p := &runner{r: &recipes.Recipe{Model: recipes.ModelSection{Path: base}}}
	good := filepath.Join(t.TempDir(), "good")
	copyDir(t, base, good)
	val := &Validation{Pass: true}
	p.checkParity(val, "merged", good)
	if !val.Pass || val.Parity != "ok" {
		t.Fatalf("same template: %+v", val)
	}
	bad := filepath.Join(t.TempDir(), "bad")
	copyDir(t, base, bad)
	cfgPath := filepath.Join(bad, "tokenizer_config.json")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	tmpl, _ := cfg["chat_template"].(string)
	if !strings.Contains(tmpl, "<|im_start|>") {
		t.Fatalf("no ChatML template in %s", cfgPath)
	}
	cfg["chat_template"] = strings.ReplaceAll(tmpl, "<|im_start|>", "<|im_start|> ")
	b, _ = json.Marshal(cfg)
	os.WriteFile(cfgPath, b, 0o644)
	val = &Validation{Pass: true}
	p.checkParity(val, "merged", bad)
	if val.Pass || !strings.Contains(val.Parity, "differs") {
		t.Fatalf("changed template: %+v", val)
	}
	if g := val.Gates[len(val.Gates)-1]; g.Name != "template_parity" || g.Pass {
		t.Errorf("gate %+v", g)
	}
}
