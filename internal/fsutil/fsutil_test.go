package fsutil

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteCopyPublish(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.json")
	if err := WriteFile(p, []byte("x")); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("%v %v", st, err)
	}
	if err := WriteFile(filepath.Join(dir, "missing", "b"), []byte("x")); err == nil {
		t.Error("write into a missing folder: no error")
	}
	if err := CopyFile(filepath.Join(dir, "nope"), filepath.Join(dir, "c")); err != nil {
		t.Errorf("missing source: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "c")); err == nil {
		t.Error("a missing source created the copy")
	}
	if err := CopyFile(p, filepath.Join(dir, "c")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "c")); string(b) != "x" {
		t.Errorf("copy holds %q", b)
	}
	tmp, out := filepath.Join(dir, "tmp"), filepath.Join(dir, "out")
	for i, content := range []string{"first", "second"} {
		os.MkdirAll(tmp, 0o755)
		os.WriteFile(filepath.Join(tmp, "f"), []byte(content), 0o644)
		if err := PublishDir(tmp, out); err != nil {
			t.Fatal(i, err)
		}
		if b, _ := os.ReadFile(filepath.Join(out, "f")); string(b) != content {
			t.Errorf("publish %d: %q", i, b)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() == "tmp" || e.Name() == "tmp.old" {
			t.Errorf("%s left behind", e.Name())
		}
	}
}
