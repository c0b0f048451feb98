package data

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Row is one dataset record. Values are nil, string, bool, int64, float64, []any
// (lists) and map[string]any (structs and maps), as encoding/json would give them
// except that integers stay int64. Binary columns become strings holding the raw
// bytes; timestamps become RFC 3339 strings in UTC and dates "2006-01-02" strings,
// which is what a chat template or a JSON export would show.
type Row = map[string]any

// RowRef says where a row came from, for error messages.
type RowRef struct {
	File  string
	Index int64 // row within its file, 0-based
	Line  int64 // 1-based line for JSONL and text files, 0 where lines mean nothing
}

func (r RowRef) String() string {
	if r.Line > 0 {
		return fmt.Sprintf("%s line %d", r.File, r.Line)
	}
	return fmt.Sprintf("%s row %d", r.File, r.Index)
}

// fileKind is a file kind a Source reads.
type fileKind int

const (
	fmtParquet fileKind = iota
	fmtArrow            // IPC file or stream; which one is decided by the magic bytes
	fmtJSONL
	fmtJSON // a list of objects, or JSON Lines (HF datasets accepts both as .json)
	fmtText // one row {"text": line} per line, as HF datasets' "text" builder
)

var formatNames = [...]string{"Parquet", "Arrow IPC", "JSON Lines", "JSON", "text"}

func (f fileKind) String() string { return formatNames[f] }

// extFormats maps extensions to formats; the order is the preference when one folder
// holds several kinds (the columnar shards are the data, stray .json files are
// metadata such as dataset_info.json).
var extFormats = []struct {
	ext string
	f   fileKind
}{
	{".parquet", fmtParquet},
	{".arrow", fmtArrow}, {".feather", fmtArrow}, {".ipc", fmtArrow},
	{".jsonl", fmtJSONL},
	{".json", fmtJSON},
	{".txt", fmtText},
}

// SourceFormats lists the extensions Open understands.
func SourceFormats() []string {
	var s []string
	for _, e := range extFormats {
		s = append(s, e.ext)
	}
	return s
}

func formatOfExt(path string) (fileKind, bool) {
	ext := strings.ToLower(filepath.Ext(path))
	for _, e := range extFormats {
		if e.ext == ext {
			return e.f, true
		}
	}
	return 0, false
}

// metadataFiles are the non-data files of datasets.save_to_disk and Hub repos
// that carry a data extension.
var metadataFiles = map[string]bool{
	"dataset_info.json": true, "state.json": true, "dataset_dict.json": true,
	"dataset_infos.json": true, "config.json": true, "package.json": true,
	"requirements.txt": true, "license.txt": true, "readme.txt": true,
}

// Source is a dataset made of one or more files of one schema, read row by row.
// It holds no open files: each Rows call opens its own, so concurrent calls are
// safe.
type Source struct {
	spec  string
	files []*sourceFile
}

// sourceFile is what Open learned about one file without reading its rows.
type sourceFile struct {
	path    string
	kind    fileKind
	stream  bool     // Arrow: IPC stream (true) or IPC file format (false)
	columns []string // top-level columns in schema order (JSON: keys of the first row)
	types   []string // type of each column, in the common notation of Schema
	rows    int64
	rowsOK  bool // rows is known from metadata
}

// Open takes a file, a folder (every data file inside, recursively, sorted by
// path) or a glob such as "data/train-*.parquet". The format comes from the
// extension and is checked against the file's first bytes. Parquet and Arrow
// shards must agree on their schema.
func Open(spec string) (*Source, error) {
	paths, err := expand(spec)
	if err != nil {
		return nil, err
	}
	s := &Source{spec: spec}
	for _, p := range paths {
		sf, err := openFile(p)
		if err != nil {
			return nil, err
		}
		s.files = append(s.files, sf)
	}
	if err := s.checkSchemas(); err != nil {
		return nil, err
	}
	if n, ok := s.NumRows(); ok && n == 0 {
		return nil, fmt.Errorf("data: %s: no rows", spec)
	}
	return s, nil
}

// expand turns a spec into the sorted list of data files it names.
func expand(spec string) ([]string, error) {
	if strings.ContainsAny(spec, "*?[") {
		if _, err := os.Stat(spec); err != nil { // a real name with [ in it is not a glob
			m, err := filepath.Glob(spec)
			if err != nil {
				return nil, fmt.Errorf("data: %s: bad glob: %v", spec, err)
			}
			var files []string
			for _, p := range m {
				if st, err := os.Stat(p); err == nil && !st.IsDir() {
					files = append(files, p)
				}
			}
			if len(files) == 0 {
				return nil, fmt.Errorf("data: %s: glob matches no files", spec)
			}
			for _, p := range files {
				if _, ok := formatOfExt(p); !ok {
					return nil, unsupportedExt(p)
				}
			}
			slices.Sort(files)
			return files, nil
		}
	}
	st, err := os.Stat(spec)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	if !st.IsDir() {
		if _, ok := formatOfExt(spec); !ok {
			return nil, unsupportedExt(spec)
		}
		return []string{spec}, nil
	}
	return expandDir(spec)
}

func unsupportedExt(path string) error {
	ext := filepath.Ext(path)
	if ext == "" {
		ext = "(none)"
	}
	return fmt.Errorf("data: %s: unsupported extension %s (supported: %s)", path, ext, strings.Join(SourceFormats(), ", "))
}

var splitDirs = map[string]bool{"train": true, "test": true, "validation": true, "valid": true, "dev": true, "eval": true}

// splitShard matches the Hub's shard names: train-00000-of-00003.parquet.
var splitShard = regexp.MustCompile(`^(.+)-\d{5}-of-\d{5}\.[a-z]+$`)

func expandDir(dir string) ([]string, error) {
	if _, err := os.Stat(filepath.Join(dir, "dataset_dict.json")); err == nil {
		var splits []string
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				splits = append(splits, e.Name())
			}
		}
		return nil, fmt.Errorf("data: %s: a DatasetDict folder with splits %s: open one split, e.g. %s", dir, strings.Join(splits, ", "), filepath.Join(dir, firstOr(splits, "train")))
	}
	byFormat := map[fileKind][]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if p != dir && strings.HasPrefix(name, ".") { // .git, .cache, .huggingface
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || metadataFiles[strings.ToLower(name)] {
			return nil
		}
		if f, ok := formatOfExt(p); ok {
			byFormat[f] = append(byFormat[f], p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("data: %s: %v", dir, err)
	}
	var files []string
	for _, e := range extFormats {
		if fs := byFormat[e.f]; len(fs) > 0 {
			files = fs
			break
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("data: %s: no data files (supported: %s)", dir, strings.Join(SourceFormats(), ", "))
	}
	slices.Sort(files)
	// Training on the test split by accident is worse than an error.
	splits := map[string]bool{}
	for _, p := range files {
		if m := splitShard.FindStringSubmatch(filepath.Base(p)); m != nil {
			splits[m[1]] = true
		}
	}
	// The Hub's parquet conversion lays splits out as folders: default/train/0000.parquet.
	dirSplits := map[string]bool{}
	for _, p := range files {
		if d := filepath.Base(filepath.Dir(p)); splitDirs[strings.ToLower(d)] && filepath.Dir(p) != filepath.Clean(dir) {
			dirSplits[d] = true
		}
	}
	if len(dirSplits) > 1 {
		names := slices.Sorted(mapKeys(dirSplits))
		return nil, fmt.Errorf("data: %s: holds several splits (%s): open one folder, e.g. %s", dir, strings.Join(names, ", "), filepath.Join(dir, names[len(names)-1]))
	}
	if len(splits) > 1 {
		names := slices.Sorted(mapKeys(splits))
		return nil, fmt.Errorf("data: %s: holds several splits (%s): pick one with a glob such as %s", dir, strings.Join(names, ", "), filepath.Join(filepath.Dir(files[0]), names[len(names)-1]+"-*"+filepath.Ext(files[0])))
	}
	return files, nil
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// openFile checks a file's magic against its extension and reads its schema.
func openFile(path string) (sf *sourceFile, err error) {
	f, _ := formatOfExt(path)
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("data: %s: %v", path, err)
	}
	head := make([]byte, 512)
	n, _ := io.ReadFull(fh, head)
	head = head[:n]
	var tail []byte
	if st.Size() >= 8 {
		tail = make([]byte, 4)
		if _, err := fh.ReadAt(tail, st.Size()-4); err != nil {
			return nil, fmt.Errorf("data: %s: %v", path, err)
		}
	}
	looks := sniff(head, tail)
	sf = &sourceFile{path: path, kind: f}
	mismatch := func() error {
		return fmt.Errorf("data: %s: extension %s says %s but the file looks like %s", path, filepath.Ext(path), f, looks)
	}
	switch f {
	case fmtParquet:
		if looks != "Parquet" {
			if looks == "encrypted Parquet" {
				return nil, fmt.Errorf("data: %s: encrypted Parquet footer (PARE) is not supported", path)
			}
			return nil, mismatch()
		}
		err = openParquet(sf, fh, st.Size())
	case fmtArrow:
		switch looks {
		case "an Arrow IPC file":
		case "an Arrow IPC stream":
			sf.stream = true
		default:
			if bytes.HasPrefix(head, []byte("FEA1")) {
				return nil, fmt.Errorf("data: %s: Feather v1 is not supported (re-save it as Feather v2 / Arrow IPC)", path)
			}
			return nil, mismatch()
		}
		if _, err := fh.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("data: %s: %v", path, err)
		}
		err = openArrow(sf, fh)
	case fmtJSONL, fmtJSON:
		switch {
		case looks == "empty":
		case f == fmtJSONL && looks != "a JSON object",
			f == fmtJSON && looks != "a JSON object" && looks != "a JSON list":
			return nil, mismatch()
		}
		if _, err := fh.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("data: %s: %v", path, err)
		}
		err = openJSON(sf, fh, looks == "a JSON list")
	case fmtText:
		if looks != "text" && looks != "empty" && !strings.HasPrefix(looks, "a JSON") {
			return nil, mismatch()
		}
		sf.columns, sf.types = []string{"text"}, []string{"string"}
	}
	if err != nil {
		return nil, err
	}
	return sf, nil
}

// sniff names what a file's first bytes (and last four) look like.
func sniff(head, tail []byte) string {
	switch {
	case len(head) == 0:
		return "empty"
	case bytes.HasPrefix(head, []byte("PAR1")) && bytes.Equal(tail, []byte("PAR1")):
		return "Parquet"
	case bytes.HasPrefix(head, []byte("PAR1")) && bytes.Equal(tail, []byte("PARE")):
		return "encrypted Parquet"
	case bytes.HasPrefix(head, []byte("PAR1")):
		return "a truncated Parquet file (PAR1 at the start but not at the end)"
	case bytes.HasPrefix(head, []byte("ARROW1")):
		return "an Arrow IPC file"
	case bytes.HasPrefix(head, []byte{0xff, 0xff, 0xff, 0xff}):
		return "an Arrow IPC stream"
	case bytes.HasPrefix(head, []byte("version https://git-lfs")):
		return "a Git LFS pointer (run git lfs pull)"
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return "gzip data"
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd data"
	case bytes.HasPrefix(head, []byte("PK\x03\x04")):
		return "a zip archive"
	}
	t := bytes.TrimLeft(bytes.TrimPrefix(head, []byte("\xef\xbb\xbf")), " \t\r\n")
	if len(t) == 0 {
		return "empty"
	}
	switch t[0] {
	case '{':
		return "a JSON object"
	case '[':
		return "a JSON list"
	case '<':
		return "HTML/XML"
	}
	if bytes.IndexByte(head, 0) >= 0 {
		return "binary data"
	}
	return "text"
}

// checkSchemas compares every typed shard with the first one.
func (s *Source) checkSchemas() error {
	var ref *sourceFile
	for _, f := range s.files {
		if f.kind == fmtJSONL || f.kind == fmtJSON || f.kind == fmtText {
			continue
		}
		if ref == nil {
			ref = f
			continue
		}
		for i, c := range ref.columns {
			j := slices.Index(f.columns, c)
			if j < 0 {
				return fmt.Errorf("data: %s: schema differs from %s: no column %q (columns: %s)", f.path, ref.path, c, strings.Join(f.columns, ", "))
			}
			if f.types[j] != ref.types[i] {
				return fmt.Errorf("data: %s: schema differs from %s: column %q is %s, want %s", f.path, ref.path, c, f.types[j], ref.types[i])
			}
		}
		for _, c := range f.columns {
			if !slices.Contains(ref.columns, c) {
				return fmt.Errorf("data: %s: schema differs from %s: extra column %q", f.path, ref.path, c)
			}
		}
	}
	return nil
}

// Files lists the files of the source in the order Rows reads them.
func (s *Source) Files() []string {
	var p []string
	for _, f := range s.files {
		p = append(p, f.path)
	}
	return p
}

// Columns lists the top-level columns of the first file in schema order (JSON:
// the keys of its first row).
func (s *Source) Columns() []string { return slices.Clone(s.files[0].columns) }

// Schema describes the first file, e.g. "messages: list<struct<role: string,
// content: string>>, id: int64". Dictionary encoding and nullability are not
// shown; JSON types come from the first row.
func (s *Source) Schema() string {
	f := s.files[0]
	parts := make([]string, len(f.columns))
	for i, c := range f.columns {
		parts[i] = c + ": " + f.types[i]
	}
	return strings.Join(parts, ", ")
}

// NumRows is the total row count when every file's metadata gives it: Parquet
// footers, and Arrow IPC message headers (Open walks them, skipping the bodies).
// JSON and text files must be read to count: false.
func (s *Source) NumRows() (int64, bool) {
	var n int64
	for _, f := range s.files {
		if !f.rowsOK {
			return 0, false
		}
		n += f.rows
	}
	return n, true
}

// errStop is how a reader tells that fn returned an error to pass through as is.
type callbackError struct{ err error }

func (e callbackError) Error() string { return e.err.Error() }

// Rows calls fn with every row, file by file in file order. Memory stays bounded by
// one Parquet page per column, one Arrow record batch or one JSON line, whatever
// the dataset's size. columns, if non-nil, restricts the rows to those top-level
// columns (Parquet decodes only their column chunks); a missing one is an error
// naming the columns the file has. An error returned by fn stops the scan and is
// returned as is.
func (s *Source) Rows(columns []string, fn func(ref RowRef, row Row) error) error {
	var total int64
	count := func(ref RowRef, row Row) error {
		total++
		if err := fn(ref, row); err != nil {
			return callbackError{err}
		}
		return nil
	}
	for _, f := range s.files {
		if columns != nil && f.kind != fmtJSONL && f.kind != fmtJSON {
			for _, c := range columns {
				if !slices.Contains(f.columns, c) {
					return noColumn(f.path, c, f.columns)
				}
			}
		}
		var err error
		switch f.kind {
		case fmtParquet:
			err = rowsParquet(f, columns, count)
		case fmtArrow:
			err = rowsArrow(f, columns, count)
		case fmtJSONL, fmtJSON:
			err = rowsJSON(f, columns, count)
		case fmtText:
			err = rowsText(f, columns, count)
		}
		if err != nil {
			var ce callbackError
			if errors.As(err, &ce) {
				return ce.err
			}
			return err
		}
	}
	if total == 0 {
		return fmt.Errorf("data: %s: no rows", s.spec)
	}
	return nil
}

func noColumn(path, c string, have []string) error {
	return fmt.Errorf("data: %s: no column %q (columns: %s)", path, c, strings.Join(have, ", "))
}

// guard turns a panic of a file-format library on corrupt input into an error
// naming the file. parquet-go and arrow-go index into buffers using offsets read
// from the file and panic when those are inconsistent; a dataset with one bad shard
// must give an error, not kill a training run. Panics raised inside fn (the
// caller's code) are not ours to hide: inFn marks them and they are re-raised.
func guard(path, what string, inFn *bool, err *error) {
	if r := recover(); r != nil {
		if *inFn {
			panic(r)
		}
		*err = fmt.Errorf("data: %s: corrupt %s file: %s", path, what, oneLine(r))
	}
}

// oneLine keeps a library's message (which may quote file contents) to one
// short line.
func oneLine(v any) string {
	s := strings.ReplaceAll(fmt.Sprint(v), "\n", `\n`)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// project returns the row restricted to columns (nil: all).
func wantColumn(columns []string, name string) bool {
	return columns == nil || slices.Contains(columns, name)
}
