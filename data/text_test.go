package data

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// texts.parquet is written by DuckDB (data/testdata/gen_parquet.mjs): 5000 rows in
// three row groups, a dictionary-encoded text column with nulls.
func TestReadTextsParquetDuckDB(t *testing.T) {
	var want struct {
		N     int       `json:"n"`
		Cycle []*string `json:"cycle"`
	}
	b, err := os.ReadFile("testdata/texts.want.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	var exp []string
	for i := 0; i < want.N; i++ {
		if s := want.Cycle[i%len(want.Cycle)]; s != nil {
			exp = append(exp, *s)
		}
	}
	var got []string
	if err := ReadTexts("testdata/texts.parquet", "text", func(s string) error {
		got = append(got, s)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(exp) {
		t.Fatalf("got %d rows, want %d", len(got), len(exp))
	}
	for i := range exp {
		if got[i] != exp[i] {
			t.Fatalf("row %d: got %q, want %q", i, got[i], exp[i])
		}
	}
}

func TestReadTextsFormats(t *testing.T) {
	write := tempWriter(t)
	tests := []struct {
		name, file, content, column string
		want                        []string
	}{
		{"txt whole file", "a.txt", "one\n\ntwo\n", "text", []string{"one\n\ntwo\n"}},
		{"jsonl", "a.jsonl", "{\"text\":\"x\"}\n\n{\"text\":\"y\\nz\",\"id\":3}\n", "text", []string{"x", "y\nz"}},
		{"jsonl other column", "b.jsonl", "{\"body\":\"x\"}\n", "body", []string{"x"}},
		{"json list", "a.json", `[{"text":"a"},{"text":"b"}]`, "text", []string{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			err := ReadTexts(write(tt.file, tt.content), tt.column, func(s string) error {
				got = append(got, s)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReadTextsErrors(t *testing.T) {
	write := tempWriter(t)
	tests := []struct {
		name, path, column string
		want               []string // substrings of the error
	}{
		{"missing jsonl field", write("m.jsonl", "{\"text\":\"a\"}\n{\"body\":\"b\",\"id\":1}\n"), "text", []string{"m.jsonl", "line 2", `no field "text"`, "body, id"}},
		{"wrong type", write("w.jsonl", "{\"text\":3}\n"), "text", []string{"line 1", "want a string, found a number"}},
		{"not json", write("n.jsonl", "hello\n"), "text", []string{"line 1", "not a JSON object"}},
		{"empty jsonl", write("e.jsonl", ""), "text", []string{"e.jsonl", "empty file"}},
		{"json not a list", write("o.json", `{"text":"a"}`), "text", []string{"o.json", "want a JSON list"}},
		{"unknown extension", write("x.csv", "a,b"), "text", []string{"x.csv", `unsupported file extension ".csv"`, ".parquet"}},
		{"missing parquet column", "testdata/texts.parquet", "body", []string{"texts.parquet", `no column "body"`, "id, text"}},
		{"non-string parquet column", "testdata/numbers.parquet", "score", []string{"numbers.parquet", `column "score": want a string column`}},
		{"parquet that is not parquet", write("fake.parquet", "this is text, not parquet"), "text", []string{"fake.parquet", "not a readable Parquet file"}},
		{"missing file", filepath.Join(t.TempDir(), "nope.txt"), "text", []string{"nope.txt", "no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ReadTexts(tt.path, tt.column, func(string) error { return nil })
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

// tempWriter returns a function that writes a file into a fresh temporary folder.
func tempWriter(t *testing.T) func(name, content string) string {
	dir := t.TempDir()
	return func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
}
