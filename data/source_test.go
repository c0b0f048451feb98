package data

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
)

// The fixtures under testdata/sources are written by DuckDB and apache-arrow (JS)
// from gen_fixtures.mjs, which also writes the *.want.json expectations from its
// own input data.

const srcDir = "testdata/sources"

func loadWant(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(srcDir, name))
	if err != nil {
		t.Fatalf("%v (regenerate with: node data/testdata/gen_fixtures.mjs)", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		t.Fatal(err)
	}
}

// sameValue compares a Row value with its JSON expectation. A JSON number without
// fraction or exponent that fits int64 must be an int64; any other number a
// float64. A string may stand for a float64 too large for JSON's exact integers.
func sameValue(path string, got, want any) error {
	switch w := want.(type) {
	case nil:
		if got != nil {
			return fmt.Errorf("%s: got %#v, want nil", path, got)
		}
		return nil
	case json.Number:
		if i, err := strconv.ParseInt(string(w), 10, 64); err == nil {
			if g, ok := got.(int64); !ok || g != i {
				return fmt.Errorf("%s: got %#v (%T), want int64 %d", path, got, got, i)
			}
			return nil
		}
		f, _ := strconv.ParseFloat(string(w), 64)
		if g, ok := got.(float64); !ok || g != f {
			return fmt.Errorf("%s: got %#v (%T), want float64 %v", path, got, got, f)
		}
		return nil
	case string:
		if g, ok := got.(float64); ok {
			if f, err := strconv.ParseFloat(w, 64); err == nil && f == g {
				return nil
			}
		}
		if g, ok := got.(string); !ok || g != w {
			return fmt.Errorf("%s: got %#v (%T), want string %q", path, got, got, w)
		}
		return nil
	case bool:
		if g, ok := got.(bool); !ok || g != w {
			return fmt.Errorf("%s: got %#v, want %v", path, got, w)
		}
		return nil
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) || g == nil {
			return fmt.Errorf("%s: got %#v, want a list of %d", path, got, len(w))
		}
		for i := range w {
			if err := sameValue(fmt.Sprintf("%s[%d]", path, i), g[i], w[i]); err != nil {
				return err
			}
		}
		return nil
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("%s: got %#v, want an object with keys %v", path, got, slices.Sorted(mapKeys(w)))
		}
		for k := range w {
			if _, ok := g[k]; !ok {
				return fmt.Errorf("%s: no key %q in %#v", path, k, got)
			}
			if err := sameValue(path+"."+k, g[k], w[k]); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("%s: unexpected expectation %T", path, want)
}

type gotRow struct {
	ref RowRef
	row Row
}

func readAll(t testing.TB, src *Source, columns []string) []gotRow {
	t.Helper()
	var rows []gotRow
	if err := src.Rows(columns, func(ref RowRef, row Row) error {
		rows = append(rows, gotRow{ref, row})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return rows
}

func mustOpen(t testing.TB, spec string) *Source {
	t.Helper()
	src, err := Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func TestHubParquetShards(t *testing.T) {
	var want struct {
		Templates []map[string]any
		Shards    []struct {
			File     string
			First, N int
		}
		RowGroups     int    `json:"row_groups"`
		RoleEncodings string `json:"role_encodings"`
		Schema        string
	}
	loadWant(t, "hub.want.json", &want)
	// The fixture must exercise what it claims to.
	if want.RowGroups < 2 || !strings.Contains(want.RoleEncodings, "DICTIONARY") {
		t.Fatalf("fixture has %d row groups, encodings %q: want several and dictionary", want.RowGroups, want.RoleEncodings)
	}
	src := mustOpen(t, filepath.Join(srcDir, "hub/data/train-*.parquet"))
	var wantFiles []string
	total := 0
	for _, s := range want.Shards[:3] {
		wantFiles = append(wantFiles, filepath.Join(srcDir, "hub/data", s.File))
		total += s.N
	}
	if !slices.Equal(src.Files(), wantFiles) {
		t.Fatalf("Files() = %v, want %v", src.Files(), wantFiles)
	}
	if got := src.Schema(); got != want.Schema {
		t.Errorf("Schema() = %q\nwant        %q", got, want.Schema)
	}
	if got := src.Columns(); !slices.Equal(got, []string{"id", "messages", "source", "score", "tags"}) {
		t.Errorf("Columns() = %v", got)
	}
	if n, ok := src.NumRows(); !ok || n != int64(total) {
		t.Errorf("NumRows() = %d, %v; want %d, true", n, ok, total)
	}
	rows := readAll(t, src, nil)
	if len(rows) != total {
		t.Fatalf("got %d rows, want %d", len(rows), total)
	}
	i := 0
	for _, s := range want.Shards[:3] {
		for k := 0; k < s.N; k, i = k+1, i+1 {
			id := s.First + k
			w := map[string]any{"id": json.Number(strconv.Itoa(id))}
			for c, v := range want.Templates[id%len(want.Templates)] {
				w[c] = v
			}
			g := rows[i]
			if g.ref.File != filepath.Join(srcDir, "hub/data", s.File) || g.ref.Index != int64(k) {
				t.Fatalf("row %d: ref %v, want %s row %d", i, g.ref, s.File, k)
			}
			if err := sameValue(g.ref.String(), map[string]any(g.row), w); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Projection keeps only the chosen columns, and still every row.
	proj := readAll(t, src, []string{"tags", "id"})
	if len(proj) != total {
		t.Fatalf("projection: got %d rows, want %d", len(proj), total)
	}
	for _, g := range proj[:20] {
		if len(g.row) != 2 || g.row["id"] != g.ref.Index || g.row["tags"] == nil && g.ref.Index%7 != 3 {
			t.Fatalf("projection: %v: %#v", g.ref, g.row)
		}
	}
}

func TestOpenFixtures(t *testing.T) {
	tests := []struct {
		name, spec, want string
		files            []string
		schema           string
		numRows          int64 // -1: unknown
		lines            bool
	}{
		{name: "sharegpt folder", spec: "sharegpt", want: "sharegpt.want.json", files: []string{"sharegpt/sharegpt.parquet"},
			schema: "id: string, conversations: list<struct<from: string, value: string>>", numRows: 4},
		{name: "alpaca", spec: "alpaca.parquet", want: "alpaca.want.json", files: []string{"alpaca.parquet"},
			schema: "instruction: string, input: string, output: string", numRows: 3},
		{name: "types", spec: "types.parquet", want: "types.want.json", files: []string{"types.parquet"}, numRows: 3},
		{name: "save_to_disk stream", spec: "save_to_disk", want: "save_to_disk.want.json", files: []string{"save_to_disk/data-00000-of-00001.arrow"}, numRows: 9},
		{name: "ipc file", spec: "file_format.arrow", want: "file_format.want.json", files: []string{"file_format.arrow"}, numRows: 4},
		{name: "jsonl", spec: "json/chat.jsonl", want: "json.want.json", files: []string{"json/chat.jsonl"},
			schema: "messages: list<struct<content: string, role: string>>, n: int64, x: float64, ok: bool, meta: struct<k: list<int64>>", numRows: -1, lines: true},
		{name: "json list", spec: "json/chat.json", want: "json.want.json", files: []string{"json/chat.json"}, numRows: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want struct {
				Rows   []map[string]any
				Schema string
				Lines  []int64
			}
			loadWant(t, tt.want, &want)
			if tt.schema == "" {
				tt.schema = want.Schema
			}
			src := mustOpen(t, filepath.Join(srcDir, tt.spec))
			var files []string
			for _, f := range tt.files {
				files = append(files, filepath.Join(srcDir, f))
			}
			if !slices.Equal(src.Files(), files) {
				t.Errorf("Files() = %v, want %v", src.Files(), files)
			}
			if tt.schema != "" && src.Schema() != tt.schema {
				t.Errorf("Schema() = %q\nwant        %q", src.Schema(), tt.schema)
			}
			n, ok := src.NumRows()
			if tt.numRows < 0 && ok || tt.numRows >= 0 && (!ok || n != tt.numRows) {
				t.Errorf("NumRows() = %d, %v; want %d", n, ok, tt.numRows)
			}
			rows := readAll(t, src, nil)
			if len(rows) != len(want.Rows) {
				t.Fatalf("got %d rows, want %d", len(rows), len(want.Rows))
			}
			for i, g := range rows {
				if g.ref.Index != int64(i) || g.ref.File != files[0] {
					t.Errorf("row %d: ref %+v", i, g.ref)
				}
				if tt.lines && g.ref.Line != want.Lines[i] {
					t.Errorf("row %d: line %d, want %d", i, g.ref.Line, want.Lines[i])
				}
				if err := sameValue(g.ref.String(), map[string]any(g.row), want.Rows[i]); err != nil {
					t.Error(err)
				}
			}
			// Projection onto the last column gives the same values.
			cols := src.Columns()
			last := cols[len(cols)-1]
			for i, g := range readAll(t, src, []string{last}) {
				if len(g.row) != 1 {
					t.Fatalf("projection onto %q: %#v", last, g.row)
				}
				if err := sameValue(g.ref.String(), g.row[last], want.Rows[i][last]); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func TestArrowFixtureBatches(t *testing.T) {
	// The Arrow fixtures must hold several record batches for the tests above to
	// cover batch boundaries.
	for _, name := range []string{"save_to_disk.want.json", "file_format.want.json"} {
		var want struct{ Batches int }
		loadWant(t, name, &want)
		if want.Batches < 2 {
			t.Errorf("%s: %d record batches, want several", name, want.Batches)
		}
	}
}

func TestRowRefString(t *testing.T) {
	if got := (RowRef{File: "data/train-00001-of-00003.parquet", Index: 17}).String(); got != "data/train-00001-of-00003.parquet row 17" {
		t.Error(got)
	}
	if got := (RowRef{File: "a.jsonl", Index: 16, Line: 18}).String(); got != "a.jsonl line 18" {
		t.Error(got)
	}
}

func TestJSONValues(t *testing.T) {
	w := tempWriter(t)
	tests := []struct {
		name, file, content string
		want                []map[string]any
	}{
		{"numbers", "n.jsonl", `{"i": 3, "neg": -4, "f": 2.5, "e": 1e3, "big": 12345678901234567890, "z": -0}` + "\n",
			[]map[string]any{{"i": int64(3), "neg": int64(-4), "f": 2.5, "e": 1000.0, "big": 12345678901234567890.0, "z": int64(0)}}},
		{"crlf, bom and blank lines", "c.jsonl", "\ufeff{\"a\": \"x\"}\r\n\r\n   \n{\"a\": null}", []map[string]any{{"a": "x"}, {"a": nil}}},
		{"json as jsonl", "l.json", "{\"a\": 1}\n{\"a\": 2}\n", []map[string]any{{"a": int64(1)}, {"a": int64(2)}}},
		{"json list", "k.json", " [ {\"a\": [1, {\"b\": true}]} , {} ] ", []map[string]any{{"a": []any{int64(1), map[string]any{"b": true}}}, {}}},
		{"text lines", "t.txt", "one\r\n\ntwo", []map[string]any{{"text": "one"}, {"text": ""}, {"text": "two"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := mustOpen(t, w(tt.file, tt.content))
			rows := readAll(t, src, nil)
			if len(rows) != len(tt.want) {
				t.Fatalf("got %d rows, want %d", len(rows), len(tt.want))
			}
			for i, g := range rows {
				if len(g.row) != len(tt.want[i]) {
					t.Errorf("row %d: %#v, want %#v", i, g.row, tt.want[i])
				}
				for k, v := range tt.want[i] {
					gv, ok := g.row[k]
					if !ok || fmt.Sprintf("%#v", gv) != fmt.Sprintf("%#v", v) {
						t.Errorf("row %d: %s = %#v, want %#v", i, k, gv, v)
					}
				}
			}
		})
	}
}

func TestJSONLProjectionMissingLater(t *testing.T) {
	w := tempWriter(t)
	src := mustOpen(t, w("a.jsonl", "{\"a\":1,\"b\":2}\n{\"b\":3}\n"))
	rows := readAll(t, src, []string{"a"})
	if len(rows) != 2 || rows[0].row["a"] != int64(1) || rows[1].row["a"] != nil || len(rows[1].row) != 1 {
		t.Fatalf("%+v", rows)
	}
	if got := src.Columns(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("Columns() = %v", got)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(srcDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSourceErrors(t *testing.T) {
	dir := t.TempDir()
	w := func(name string, content []byte) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pq := readFixture(t, "alpaca.parquet")
	stream := readFixture(t, "save_to_disk/data-00000-of-00001.arrow")
	ipcFile := readFixture(t, "file_format.arrow")

	corruptFooter := slices.Clone(pq)
	n := len(corruptFooter)
	for i := n - 40; i < n-8; i++ { // the thrift footer, leaving its length and PAR1
		corruptFooter[i] ^= 0x5a
	}
	badLen := slices.Clone(pq)
	copy(badLen[len(badLen)-8:], []byte{0xff, 0xff, 0xff, 0x7f})

	// Shards whose schemas disagree: a ShareGPT file among the chat shards has id
	// as a string.
	mixed := filepath.Join(dir, "mixed")
	copyFile(t, filepath.Join(srcDir, "hub/data/train-00001-of-00003.parquet"), filepath.Join(mixed, "train-00000-of-00002.parquet"))
	copyFile(t, filepath.Join(srcDir, "sharegpt/sharegpt.parquet"), filepath.Join(mixed, "train-00001-of-00002.parquet"))
	fewer := filepath.Join(dir, "fewer")
	copyFile(t, filepath.Join(srcDir, "alpaca.parquet"), filepath.Join(fewer, "a.parquet"))
	copyFile(t, filepath.Join(srcDir, "sharegpt/sharegpt.parquet"), filepath.Join(fewer, "b.parquet"))
	conv := filepath.Join(dir, "default")
	copyFile(t, filepath.Join(srcDir, "alpaca.parquet"), filepath.Join(conv, "train/0000.parquet"))
	copyFile(t, filepath.Join(srcDir, "alpaca.parquet"), filepath.Join(conv, "test/0000.parquet"))
	dd := filepath.Join(dir, "dd")
	copyFile(t, filepath.Join(srcDir, "save_to_disk/data-00000-of-00001.arrow"), filepath.Join(dd, "train/data-00000-of-00001.arrow"))
	w("dd/dataset_dict.json", []byte(`{"splits": ["train"]}`))

	tests := []struct {
		name, spec string
		columns    []string
		want       []string // substrings of the error
	}{
		{"missing parquet column", filepath.Join(srcDir, "sharegpt"), []string{"messages"}, []string{"sharegpt.parquet", `no column "messages" (columns: id, conversations)`}},
		{"missing arrow column", filepath.Join(srcDir, "file_format.arrow"), []string{"id", "messages"}, []string{"file_format.arrow", `no column "messages"`, "id, text, nums"}},
		{"missing jsonl column", filepath.Join(srcDir, "json/chat.jsonl"), []string{"text"}, []string{"chat.jsonl line 1", `no column "text" (columns: messages, n, x, ok, meta)`}},
		{"corrupt parquet footer", w("cf.parquet", corruptFooter), nil, []string{"cf.parquet", "Parquet"}},
		{"parquet footer length", w("fl.parquet", badLen), nil, []string{"fl.parquet", "Parquet"}},
		{"truncated parquet", w("tp.parquet", pq[:len(pq)/2]), nil, []string{"tp.parquet", "truncated Parquet"}},
		{"truncated arrow stream", w("ts.arrow", stream[:len(stream)*2/3]), nil, []string{"ts.arrow", "Arrow IPC stream"}},
		{"truncated arrow file", w("tf.arrow", ipcFile[:len(ipcFile)-30]), nil, []string{"tf.arrow", "Arrow IPC file"}},
		{"arrow stream cut in its schema", w("tsch.arrow", stream[:20]), nil, []string{"tsch.arrow", "Arrow IPC stream"}},
		{"json named parquet", w("j.parquet", []byte(`[{"a": 1}]`)), nil, []string{"j.parquet", "extension .parquet says Parquet but the file looks like a JSON list"}},
		{"parquet named jsonl", w("p.jsonl", pq), nil, []string{"p.jsonl", "extension .jsonl says JSON Lines but the file looks like Parquet"}},
		{"parquet named arrow", w("p.arrow", pq), nil, []string{"p.arrow", "says Arrow IPC but the file looks like Parquet"}},
		{"arrow named parquet", w("a.parquet", stream), nil, []string{"a.parquet", "looks like an Arrow IPC stream"}},
		{"git lfs pointer", w("lfs.parquet", []byte("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")), nil, []string{"lfs.parquet", "Git LFS pointer"}},
		{"empty parquet", filepath.Join(srcDir, "empty.parquet"), nil, []string{"empty.parquet: no rows"}},
		{"empty jsonl", w("e.jsonl", []byte("\n\n")), nil, []string{"e.jsonl: no rows"}},
		{"glob matches nothing", filepath.Join(dir, "nothing-*.parquet"), nil, []string{"nothing-*.parquet", "matches no files"}},
		{"unsupported extension", w("x.csv", []byte("a,b\n")), nil, []string{"x.csv", "unsupported extension .csv", ".parquet, .arrow"}},
		{"missing file", filepath.Join(dir, "nope.jsonl"), nil, []string{"nope.jsonl", "no such file"}},
		{"schemas disagree", mixed, nil, []string{"train-00001-of-00002.parquet", "schema differs from", "train-00000-of-00002.parquet", `column "id" is string, want int64`}},
		{"shard lacks column", fewer, nil, []string{"b.parquet", "schema differs", `no column "instruction"`}},
		{"several splits", filepath.Join(srcDir, "hub"), nil, []string{"several splits (test, train)", "train-*.parquet"}},
		{"split folders", conv, nil, []string{"several splits (test, train)", filepath.Join(conv, "train")}},
		{"dataset dict", dd, nil, []string{"DatasetDict", "splits train", filepath.Join(dd, "train")}},
		{"jsonl line not an object", w("l.jsonl", []byte("{\"a\":1}\n\n[1,2]\n")), nil, []string{"l.jsonl line 3", "want a JSON object, found a list"}},
		{"jsonl bad json", w("b.jsonl", []byte("{\"a\":1}\n{\"a\":\n")), nil, []string{"b.jsonl line 2"}},
		{"jsonl two objects on a line", w("t.jsonl", []byte("{\"a\":1} {\"a\":2}\n")), nil, []string{"t.jsonl line 1", "trailing data"}},
		{"jsonl starting with a list", w("s.jsonl", []byte("[{\"a\":1}]\n")), nil, []string{"s.jsonl", "looks like a JSON list"}},
		{"json list of numbers", w("n.json", []byte("[1, 2]")), nil, []string{"n.json row 0", "want a JSON object, found a number"}},
		{"json list unterminated", w("u.json", []byte(`[{"a": 1}, {"a": 2}`)), nil, []string{"u.json"}},
		{"json object over lines", w("o.json", []byte("{\n \"data\": [1]\n}\n")), nil, []string{"o.json", "spanning several lines"}},
		{"no data files", w("empty/README.md", []byte("hi")), nil, []string{"README.md", "unsupported extension"}},
		{"folder without data", filepath.Dir(w("nodata/README.md", []byte("hi"))), nil, []string{"nodata", "no data files"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := Open(tt.spec)
			if err == nil {
				err = src.Rows(tt.columns, func(RowRef, Row) error { return nil })
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "data: ") {
				t.Errorf("error is not one line starting with data: %q", err)
			}
		})
	}
}

func TestRowsCallback(t *testing.T) {
	for _, spec := range []string{"alpaca.parquet", "file_format.arrow", "json/chat.jsonl"} {
		src := mustOpen(t, filepath.Join(srcDir, spec))
		stop := errors.New("stop here")
		n := 0
		err := src.Rows(nil, func(RowRef, Row) error {
			n++
			if n == 2 {
				return stop
			}
			return nil
		})
		if err != stop || n != 2 {
			t.Errorf("%s: got %v after %d rows, want the callback's own error after 2", spec, err, n)
		}
		// A panic in the callback is the caller's bug and must not become a
		// "corrupt file" error.
		func() {
			defer func() {
				if r := recover(); r != "boom" {
					t.Errorf("%s: recovered %v, want the callback's panic", spec, r)
				}
			}()
			_ = src.Rows(nil, func(RowRef, Row) error { panic("boom") })
		}()
	}
}

// writeBigParquet writes n chat rows of incompressible text with parquet-go (a
// different writer than DuckDB: three-level lists from Go struct tags).
type benchMsg struct {
	Role    string `parquet:"role,dict"`
	Content string `parquet:"content"`
}
type benchRow struct {
	ID       int64      `parquet:"id"`
	Messages []benchMsg `parquet:"messages,list"`
	Note     *string    `parquet:"note,optional"`
}

func benchRows(n int) []benchRow {
	r := rand.New(rand.NewPCG(1, 2))
	rows := make([]benchRow, n)
	for i := range rows {
		var msgs []benchMsg
		for k := 0; k < 1+i%3; k++ {
			b := make([]byte, 48)
			for j := range b {
				b[j] = "abcdefghijklmnopqrstuvwxyz0123456789 "[r.IntN(37)]
			}
			msgs = append(msgs, benchMsg{Role: []string{"user", "assistant"}[k%2], Content: string(b)})
		}
		rows[i] = benchRow{ID: int64(i), Messages: msgs}
		if i%5 == 0 {
			s := strconv.Itoa(i)
			rows[i].Note = &s
		}
	}
	return rows
}

func writeBigParquet(t testing.TB, path string, rows []benchRow) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := parquet.NewGenericWriter[benchRow](f, parquet.MaxRowsPerRowGroup(20000), parquet.PageBufferSize(64<<10))
	if _, err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestParquetGoWriterRoundTrip(t *testing.T) {
	rows := benchRows(3000)
	path := filepath.Join(t.TempDir(), "pg.parquet")
	writeBigParquet(t, path, rows)
	src := mustOpen(t, path)
	i := 0
	if err := src.Rows(nil, func(ref RowRef, r Row) error {
		w := rows[i]
		msgs, _ := r["messages"].([]any)
		if r["id"] != w.ID || len(msgs) != len(w.Messages) {
			return fmt.Errorf("%v: %#v", ref, r)
		}
		for k, m := range msgs {
			if m.(map[string]any)["role"] != w.Messages[k].Role || m.(map[string]any)["content"] != w.Messages[k].Content {
				return fmt.Errorf("%v: message %d: %#v", ref, k, m)
			}
		}
		if (w.Note == nil) != (r["note"] == nil) || w.Note != nil && r["note"] != *w.Note {
			return fmt.Errorf("%v: note %#v", ref, r["note"])
		}
		i++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if i != len(rows) {
		t.Fatalf("got %d rows, want %d", i, len(rows))
	}
}

// TestParquetMemoryBounded reads a file much larger than the live heap it may
// use: rows are streamed page by page, never the whole file or row group.
func TestParquetMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 30 MB file")
	}
	path := filepath.Join(t.TempDir(), "big.parquet")
	const n = 200000
	writeBigParquet(t, path, benchRows(n))
	st, _ := os.Stat(path)
	src := mustOpen(t, path)
	runtime.GC()
	runtime.GC() // twice: sync.Pool buffers left by the writer survive one cycle
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak uint64
	count := 0
	if err := src.Rows(nil, func(ref RowRef, r Row) error {
		count++
		if count%25000 == 0 {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc-min(base, ms.HeapAlloc))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if count != n {
		t.Fatalf("got %d rows, want %d", count, n)
	}
	t.Logf("file %.1f MB, live heap growth while reading %.3f MB", float64(st.Size())/1e6, float64(peak)/1e6)
	if peak > uint64(st.Size())/4 {
		t.Errorf("live heap grew by %d bytes reading a %d-byte file", peak, st.Size())
	}
}

func BenchmarkRowsParquet(b *testing.B) {
	path := filepath.Join(b.TempDir(), "bench.parquet")
	const n = 50000
	writeBigParquet(b, path, benchRows(n))
	benchSource(b, path, n)
}

func BenchmarkRowsJSONL(b *testing.B) {
	path := filepath.Join(b.TempDir(), "bench.jsonl")
	var buf bytes.Buffer
	const n = 50000
	for _, r := range benchRows(n) {
		m := map[string]any{"id": r.ID, "messages": r.Messages}
		if r.Note != nil {
			m["note"] = *r.Note
		}
		line, _ := json.Marshal(m)
		buf.Write(line)
		buf.WriteByte('\n')
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
	benchSource(b, path, n)
}

func benchSource(b *testing.B, path string, n int) {
	st, _ := os.Stat(path)
	src := mustOpen(b, path)
	b.SetBytes(st.Size())
	b.ResetTimer()
	for range b.N {
		rows := 0
		if err := src.Rows(nil, func(RowRef, Row) error { rows++; return nil }); err != nil {
			b.Fatal(err)
		}
		if rows != n {
			b.Fatalf("%d rows", rows)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}

// TestArrowCorruptSchema patches the schema of the stream fixture the ways the
// fuzzer broke arrow-go before the metadata checks: a children count of 2^31 (an
// 11 GB allocation, fatal) and a child offset that wraps around (flatbuffers
// offsets are 32-bit) to point back at the field itself, which arrow-go would
// follow until the stack overflows. Both must be plain errors.
func TestArrowCorruptSchema(t *testing.T) {
	stream := readFixture(t, "save_to_disk/data-00000-of-00001.arrow")
	// Find the children vector of the first field that has one: message ->
	// header (schema) -> fields -> field -> children.
	meta := stream[8:]
	c := &fbCheck{buf: meta}
	root, _ := c.u32(0)
	msg, err := c.table(root)
	if err != nil {
		t.Fatal(err)
	}
	hp, _ := c.ref(msg, 2)
	schema, err := c.table(hp)
	if err != nil {
		t.Fatal(err)
	}
	var lenAt, elemAt uint64
	var fieldPos uint64
	if err := c.tables(schema, 1, func(f fbTable) error {
		if p, _ := c.ref(f, 5); p != 0 && lenAt == 0 {
			if n, _ := c.u32(p); n > 0 {
				lenAt, elemAt, fieldPos = p, p+4, f.pos
			}
		}
		return nil
	}); err != nil || lenAt == 0 {
		t.Fatalf("no field with children in the fixture (%v)", err)
	}
	dir := t.TempDir()
	huge := slices.Clone(stream)
	binary.LittleEndian.PutUint32(huge[8+lenAt:], 1<<31)
	cyclic := slices.Clone(stream)
	binary.LittleEndian.PutUint32(cyclic[8+elemAt:], uint32(fieldPos-elemAt))
	for name, b := range map[string][]byte{"huge.arrow": huge, "cyclic.arrow": cyclic} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Open(p)
		if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "corrupt Arrow IPC stream") {
			t.Errorf("%s: got %v, want a corrupt-stream error", name, err)
		}
	}
}
