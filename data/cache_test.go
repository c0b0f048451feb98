package data

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCachePartial: a cache folder without meta.json (a crash before the
// end) or with a truncated file is rebuilt, and no temporary folder stays.
func TestCachePartial(t *testing.T) {
	tok := loadModelTok(t, "qwen3-tied")
	dir := t.TempDir()
	path := filepath.Join(dir, "chat.jsonl")
	writeChatJSONL(t, path, 40)
	cfg := Config{Path: path, MaxSeqLen: 128, Packing: true, CacheDir: filepath.Join(dir, "cache")}
	d, err := Prepare(cfg, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := collect(t, d, SplitTrain, 0, 3)
	d.Close()
	key, _ := filepath.Glob(filepath.Join(cfg.CacheDir, "*"))
	if len(key) != 1 {
		t.Fatalf("cache holds %v, want one folder", key)
	}
	for _, damage := range []func(dir string) error{
		func(dir string) error { return os.Remove(filepath.Join(dir, "meta.json")) },
		func(dir string) error { return os.Truncate(filepath.Join(dir, "mask.bin"), 1) },
		func(dir string) error { return os.WriteFile(filepath.Join(dir, "seqs-train.bin"), []byte{1, 2}, 0o644) },
	} {
		if err := damage(key[0]); err != nil {
			t.Fatal(err)
		}
		before := rowsTokenized.Load()
		d, err := Prepare(cfg, tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rowsTokenized.Load()-before != 40 || d.Stats().FromCache {
			t.Fatal("damaged cache was used")
		}
		got := collect(t, d, SplitTrain, 0, 3)
		d.Close()
		if len(got) != len(want) {
			t.Fatal("rebuilt cache differs")
		}
		for i := range got {
			if !equalInt32(got[i].IDs, want[i].IDs) || !equalInt32(got[i].Labels, want[i].Labels) {
				t.Fatal("rebuilt cache differs")
			}
		}
	}
	ents, _ := os.ReadDir(cfg.CacheDir)
	if len(ents) != 1 {
		t.Fatalf("cache folder holds %d entries, want 1", len(ents))
	}
}

func TestDefaultCacheDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	if got := DefaultCacheDir(); got != "/x/cache/tune/data" {
		t.Fatalf("DefaultCacheDir() = %q", got)
	}
}
