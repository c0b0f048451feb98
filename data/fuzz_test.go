package data

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The fuzz targets check that bytes in a file never panic Open or Rows: a bad
// shard must be an error naming the file. Seeds are the committed fixtures.
//
//	go test ./data -run XXX -fuzz FuzzOpenParquet -fuzztime 60s

func fuzzFile(t *testing.T, name string, b []byte) {
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := Open(path)
	if err != nil {
		if !strings.Contains(err.Error(), name) {
			t.Fatalf("error does not name the file: %v", err)
		}
		return
	}
	_ = src.Columns()
	_ = src.Schema()
	n := 0
	err = src.Rows(nil, func(ref RowRef, row Row) error {
		if ref.Index != int64(n) {
			t.Fatalf("row %d has index %d", n, ref.Index)
		}
		n++
		return nil
	})
	if err != nil && strings.Contains(err.Error(), "\n") {
		t.Fatalf("error is not one line: %q", err)
	}
	if cols := src.Columns(); len(cols) > 0 {
		_ = src.Rows(cols[:1], func(RowRef, Row) error { return nil })
	}
}

func addFixtureSeeds(f *testing.F, names ...string) {
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(srcDir, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzJSONLRow(f *testing.F) {
	addFixtureSeeds(f, "json/chat.jsonl")
	for _, s := range []string{
		`{"a": 1, "b": [1, 2.5, {"c": null}]}`, "\n\n{}\n", `{"a": 1} {"b": 2}`, `[1]`,
		`{"big": 1e400, "n": -0, "u": "\u0000\ud800"}`, "\ufeff{\"a\":\"x\"}\r\n", `{"a":`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzFile(t, "fuzz.jsonl", b)
		fuzzFile(t, "fuzz.json", b)
	})
}

func FuzzOpenParquet(f *testing.F) {
	addFixtureSeeds(f, "alpaca.parquet", "sharegpt/sharegpt.parquet", "types.parquet", "empty.parquet")
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzFile(t, "fuzz.parquet", b)
	})
}

func FuzzOpenArrow(f *testing.F) {
	addFixtureSeeds(f, "save_to_disk/data-00000-of-00001.arrow", "file_format.arrow")
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzFile(t, "fuzz.arrow", b)
	})
}
