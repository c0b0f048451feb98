package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tunellm/tune/recipes"
)

func TestResolveModelArg(t *testing.T) {
	srv, repo, cache := fakeHubEnv(t)
	ctx := context.Background()
	var errOut bytes.Buffer
	io := &IOStreams{Out: &bytes.Buffer{}, ErrOut: &errOut}
	snap := filepath.Join(cache, "models--tune-test--qwen3-tied", "snapshots", repo.Commit("main"))

	// Local paths, and what is not a Hub id, stay as they are without a request.
	local := modelDir("qwen3-tied")
	cwd := t.TempDir()
	os.MkdirAll(filepath.Join(cwd, "tune-test", "qwen3-tied"), 0o755)
	for _, arg := range []string{local, "", "./missing", "/no/such/dir", "gpt2", "org/model.gguf", filepath.Join(cwd, "tune-test", "qwen3-tied")} {
		got, err := resolveModelArg(ctx, io, arg)
		if err != nil || got != arg {
			t.Errorf("%q -> %q, %v", arg, got, err)
		}
	}
	// A relative folder that looks like an id is local first.
	t.Chdir(cwd)
	if got, err := resolveModelArg(ctx, io, "tune-test/qwen3-tied"); err != nil || got != "tune-test/qwen3-tied" {
		t.Errorf("local org/name folder -> %q, %v", got, err)
	}
	t.Chdir(t.TempDir())
	if n := len(srv.Requests()); n != 0 {
		t.Fatalf("%d requests for local paths", n)
	}

	got, err := resolveModelArg(ctx, io, "tune-test/qwen3-tied")
	if err != nil || got != snap {
		t.Fatalf("-> %q, %v; want %s", got, err, snap)
	}
	if _, err := os.Stat(filepath.Join(got, "model.safetensors")); err != nil {
		t.Error(err)
	}
	if got, err := resolveModelArg(ctx, io, "tune-test/qwen3-tied@"+repo.Commit("main")); err != nil || got != snap {
		t.Errorf("@commit -> %q, %v", got, err)
	}
	_, err = resolveModelArg(ctx, io, "tune-test/qwen3-tyed")
	if want := "hub: repository not found: tune-test/qwen3-tyed (check the id, or set HF_TOKEN if it is private); no local path tune-test/qwen3-tyed either"; err == nil || err.Error() != want {
		t.Errorf("error\n got %v\nwant %s", err, want)
	}

	base, model, adapter := "tune-test/qwen3-tied", local, ""
	if err := resolveModelArgs(ctx, io, &base, &model, &adapter); err != nil || base != snap || model != local || adapter != "" {
		t.Errorf("resolveModelArgs: %q %q %q, %v", base, model, adapter, err)
	}

	// Offline: the cached snapshot, or an error.
	t.Setenv("HF_HUB_OFFLINE", "1")
	srv.Reset()
	if got, err := resolveModelArg(ctx, io, "tune-test/qwen3-tied"); err != nil || got != snap || len(srv.Requests()) != 0 {
		t.Errorf("offline -> %q, %v", got, err)
	}
	if _, err := resolveModelArg(ctx, io, "tune-test/gated"); err == nil || !strings.Contains(err.Error(), "is not in the cache") {
		t.Errorf("offline uncached: %v", err)
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr %q (no TTY: no progress bar)", errOut.String())
	}
}

func TestResolveDatasetArg(t *testing.T) {
	srv, _, cache := fakeHubEnv(t)
	ctx := context.Background()
	io := &IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}
	got, err := resolveDatasetArg(ctx, io, "tune-test/chats")
	snap := filepath.Join(cache, "datasets--tune-test--chats", "snapshots")
	if err != nil || !strings.HasPrefix(got, snap) || !strings.HasSuffix(got, filepath.Join("data", "train-00000-of-00001.parquet")) {
		t.Fatalf("-> %q, %v", got, err)
	}
	if _, err := os.Stat(got); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(got)), "README.md")); err == nil {
		t.Error("README.md in a dataset snapshot")
	}
	for _, arg := range []string{"data/train.jsonl", "corpus/x.parquet", "data/*.parquet", "org/x.jsonl:train"} {
		if got, err := resolveDatasetArg(ctx, io, arg); err != nil || got != arg {
			t.Errorf("%q -> %q, %v", arg, got, err)
		}
	}

	// Splits: train by default, another by name, each a path naming only its files.
	srv.Reset()
	got, err = resolveDatasetArg(ctx, io, "tune-test/splits")
	if err != nil || !strings.HasSuffix(got, filepath.Join("data", "train-*.parquet")) {
		t.Fatalf("-> %q, %v", got, err)
	}
	if srv.Count("GET", "/data/test-00000-of-00001.parquet") != 0 {
		t.Error("fetched the test split for training")
	}
	test, err := resolveDatasetArg(ctx, io, "tune-test/splits:test")
	if err != nil || !strings.HasSuffix(test, filepath.Join("data", "test-00000-of-00001.parquet")) {
		t.Fatalf("-> %q, %v", test, err)
	}
	// The train glob still names only the train files now that test is in the folder too.
	if m, _ := filepath.Glob(got); len(m) != 2 {
		t.Errorf("%s matches %v", got, m)
	}
	_, err = resolveDatasetArg(ctx, io, "tune-test/splits:dev")
	if want := `hub: dataset tune-test/splits has no split "dev"; its splits: test, train (name one as tune-test/splits:test)`; err == nil || err.Error() != want {
		t.Errorf("error\n got %v\nwant %s", err, want)
	}
	// A dataset whose file names carry no split is taken whole.
	got, err = resolveDatasetArg(ctx, io, "tune-test/plain")
	if err != nil || !strings.HasSuffix(got, "*.jsonl") {
		t.Errorf("-> %q, %v", got, err)
	}
}

// A recipe's model.path may be a Hub id: the dry run plans on the cached
// snapshot, and the recipe keeps the id for the adapter's base model.
func TestRecipeHubModel(t *testing.T) {
	_, repo, cache := fakeHubEnv(t)
	dir := t.TempDir()
	recipe := filepath.Join(dir, "r.yaml")
	src, err := os.ReadFile(tinyRecipe())
	if err != nil {
		t.Fatal(err)
	}
	// The tiny recipe's relative paths are relative to recipes/: make them absolute.
	abs, _ := filepath.Abs(filepath.Dir(tinyRecipe()))
	y := strings.NewReplacer("../testdata/", abs+"/../testdata/", "examples/", abs+"/examples/").Replace(string(src))
	y = regexp.MustCompile(`(?m)^  path: .*qwen3-tied.*$`).ReplaceAllString(y, "  path: tune-test/qwen3-tied")
	if !strings.Contains(y, "path: tune-test/qwen3-tied") {
		t.Fatalf("recipe has no model.path to replace:\n%s", y)
	}
	if err := os.WriteFile(recipe, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := recipes.Load(recipe, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Model.ID != "tune-test/qwen3-tied" {
		t.Fatalf("model.path %q: id %q, want the Hub id kept as written", r.Model.Path, r.Model.ID)
	}
	if !strings.Contains(r.YAML(), "path: tune-test/qwen3-tied\n") {
		t.Errorf("the unresolved recipe's YAML lost the id:\n%s", r.YAML())
	}
	io := &IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}
	if err := resolveRecipe(context.Background(), io, r); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(cache, "models--tune-test--qwen3-tied", "snapshots", repo.Commit("main"))
	if r.Model.Path != snap || r.Model.ID != "tune-test/qwen3-tied" {
		t.Errorf("resolved to %q (id %q), want %s", r.Model.Path, r.Model.ID, snap)
	}
	out, _, err := runCLI(t, "", append([]string{"lora", "--recipe", recipe, "--dry-run"}, tinySets(dir)...)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, snap) {
		t.Errorf("dry run does not plan on the snapshot %s:\n%s", snap, out)
	}
}
