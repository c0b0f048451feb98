// Package data reads user datasets (plain text, JSONL/JSON, Parquet) and turns them
// into token streams. This file holds the plain-text corpus reader used by
// perplexity and calibration; the chat/instruction formats, masking and packing of
// training data build on the same sources.
package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/parquet-go/parquet-go"
)

// TextFormats lists the corpus file kinds ReadTexts understands, by extension.
var TextFormats = []string{".txt", ".text", ".md", ".jsonl", ".json", ".parquet"}

// ReadTexts calls fn with every text of a corpus file, in file order:
//   - .txt/.text/.md: the whole file is one text;
//   - .jsonl: one JSON object a line, the string field named column;
//   - .json: a JSON list of such objects;
//   - .parquet: the string column named column (nulls are skipped), read row group by
//     row group so memory stays bounded.
//
// Row numbers in errors are 1-based lines for JSONL and 0-based indices elsewhere.
func ReadTexts(path, column string, fn func(text string) error) error {
	ext := strings.ToLower(filepath.Ext(path))
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	switch ext {
	case ".txt", ".text", ".md", "":
		b, err := io.ReadAll(f)
		if err != nil {
			return fmt.Errorf("data: %s: %w", path, err)
		}
		return fn(string(b))
	case ".jsonl":
		return readJSONL(f, path, column, fn)
	case ".json":
		return readJSONList(f, path, column, fn)
	case ".parquet":
		return readParquetColumn(f, path, column, fn)
	}
	return fmt.Errorf("data: %s: unsupported file extension %q (supported: %s)", path, ext, strings.Join(TextFormats, ", "))
}

// JoinTexts reads every text of a corpus file (ReadTexts) and joins them
// with a blank line between rows: the one stream perplexity windows,
// calibration windows and importance matrices are cut from, as
// llama-perplexity reads a text file.
func JoinTexts(path, column string) (string, error) {
	var sb strings.Builder
	rows := 0
	err := ReadTexts(path, column, func(s string) error {
		if rows > 0 {
			sb.WriteString("\n\n")
		}
		sb.WriteString(s)
		rows++
		return nil
	})
	return sb.String(), err
}

func readJSONL(r io.Reader, path, column string, fn func(string) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 1<<30)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		s, err := textField(b, column)
		if err != nil {
			return fmt.Errorf("data: %s: line %d: %v", path, line, err)
		}
		if err := fn(s); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("data: %s: line %d: %w", path, line+1, err)
	}
	if line == 0 {
		return fmt.Errorf("data: %s: empty file", path)
	}
	return nil
}

func readJSONList(r io.Reader, path, column string, fn func(string) error) error {
	dec := json.NewDecoder(r)
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("data: %s: %v", path, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return fmt.Errorf("data: %s: want a JSON list of objects, found %v", path, tok)
	}
	for row := 0; dec.More(); row++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return fmt.Errorf("data: %s: row %d: %v", path, row, err)
		}
		s, err := textField(raw, column)
		if err != nil {
			return fmt.Errorf("data: %s: row %d: %v", path, row, err)
		}
		if err := fn(s); err != nil {
			return err
		}
	}
	return nil
}

func textField(b []byte, column string) (string, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		return "", fmt.Errorf("not a JSON object: %v", err)
	}
	raw, ok := obj[column]
	if !ok {
		return "", fmt.Errorf("no field %q (fields: %s)", column, strings.Join(slices.Sorted(maps.Keys(obj)), ", "))
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("field %q: want a string, found %s", column, jsonKind(raw))
	}
	return s, nil
}

func jsonKind(raw json.RawMessage) string {
	b := bytes.TrimSpace(raw)
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '{':
		return "an object"
	case '[':
		return "a list"
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	case '"':
		return "a string"
	}
	return "a number"
}

func readParquetColumn(f *os.File, path, column string, fn func(string) error) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("data: %s: %w", path, err)
	}
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		return fmt.Errorf("data: %s: not a readable Parquet file: %v", path, err)
	}
	leaf, ok := pf.Schema().Lookup(column)
	if !ok {
		var names []string
		for _, c := range pf.Schema().Fields() {
			names = append(names, c.Name())
		}
		return fmt.Errorf("data: %s: no column %q (columns: %s)", path, column, strings.Join(names, ", "))
	}
	if leaf.MaxRepetitionLevel > 0 || leaf.Node.Type().Kind() != parquet.ByteArray {
		return fmt.Errorf("data: %s: column %q: want a string column, found %s", path, column, leaf.Node.Type())
	}
	buf := make([]parquet.Value, 256)
	for gi, rg := range pf.RowGroups() {
		pages := rg.ColumnChunks()[leaf.ColumnIndex].Pages()
		for {
			p, err := pages.ReadPage()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				pages.Close()
				return fmt.Errorf("data: %s: row group %d, column %q: %v", path, gi, column, err)
			}
			vr := p.Values()
			for {
				n, err := vr.ReadValues(buf)
				for _, v := range buf[:n] {
					if v.IsNull() {
						continue
					}
					if err := fn(string(v.ByteArray())); err != nil {
						pages.Close()
						return err
					}
				}
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					pages.Close()
					return fmt.Errorf("data: %s: row group %d, column %q: %v", path, gi, column, err)
				}
			}
			parquet.Release(p)
		}
		pages.Close()
	}
	return nil
}
