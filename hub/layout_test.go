package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/hub/hubtest"
)

var hfjsDir = flag.String("hfjs", "", "a folder with node_modules/@huggingface/hub: regenerate testdata/hfjs_layout.golden with it")

// layoutRepos are served to huggingface.js (by hand, -hfjs) and to tune (always).
func layoutRepos() []*hubtest.Repo {
	return []*hubtest.Repo{
		{ID: "tune-test/layout", Files: map[string][]byte{
			"config.json":                      []byte(`{"model_type":"qwen3"}`),
			"tokenizer.json":                   weights(12_000, 7), // over 10 kB: in LFS
			"tokenizer_config.json":            []byte(`{}`),
			"model-00001-of-00002.safetensors": weights(70_000, 8),
			"model-00002-of-00002.safetensors": weights(30_000, 9),
			"model.safetensors.index.json":     []byte(`{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}`),
			"same-as-config.json":              []byte(`{"model_type":"qwen3"}`), // one blob, two links
		}},
		{Dataset: true, ID: "tune-test/layout-data", Files: map[string][]byte{
			"data/train-00000-of-00001.parquet": weights(5_000, 10),
			"data/test-00000-of-00001.parquet":  weights(1_000, 11),
		}},
	}
}

// listCache describes a cache folder, one line per file or link (.locks left out):
// "f PATH sha256" for files, "l PATH -> TARGET" for symlinks.
func listCache(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == ".locks" {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			lines = append(lines, "l "+rel+" -> "+filepath.ToSlash(target))
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		h := sha256.Sum256(b)
		lines = append(lines, "f "+rel+" "+hex.EncodeToString(h[:]))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n") + "\n"
}

// The cache tune writes is the one huggingface.js writes (huggingface_hub's layout):
// the same blob names, the same relative links, the same refs. The golden tree comes
// from huggingface.js' snapshotDownload against the same fake Hub.
func TestCacheLayoutMatchesHuggingFaceJS(t *testing.T) {
	golden := filepath.Join("testdata", "hfjs_layout.golden")
	srv := hubtest.New(layoutRepos()...)
	defer srv.Close()
	if *hfjsDir != "" {
		script, err := os.ReadFile(filepath.Join("testdata", "gen_hfjs_layout.mjs"))
		if err != nil {
			t.Fatal(err)
		}
		cache := t.TempDir()
		cmd := exec.Command("node", "--input-type=module", "-e", string(script), srv.URL, cache)
		cmd.Dir = *hfjsDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("huggingface.js: %v\n%s", err, out)
		}
		if err := os.WriteFile(golden, []byte(listCache(t, cache)), 0o644); err != nil {
			t.Fatal(err)
		}
		srv.Reset()
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{Endpoint: srv.URL, CacheDir: t.TempDir()}
	all := DownloadOptions{Include: []string{"*"}}
	if _, err := c.ResolveModel(context.Background(), "tune-test/layout", all); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ResolveDataset(context.Background(), "tune-test/layout-data", all); err != nil {
		t.Fatal(err)
	}
	if got := listCache(t, c.CacheDir); got != string(want) {
		t.Errorf("cache tree differs from huggingface.js'\n got:\n%s\nwant:\n%s", got, want)
	}
}
