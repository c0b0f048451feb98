package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// JSON Lines are read a line at a time (memory: one line), JSON lists an element
// at a time through json.Decoder's tokens. Numbers go through json.Number so that
// integers stay int64 and only numbers with a fraction or exponent are float64.

// openJSON reads the first row to learn the columns (in the order of its keys).
func openJSON(sf *sourceFile, r io.Reader, list bool) error {
	var first json.RawMessage
	stop := errors.New("stop")
	err := scanJSON(sf, r, list, func(ref RowRef, raw []byte) error {
		first = append(json.RawMessage(nil), raw...)
		return stop
	})
	if err != nil && err != stop {
		return err
	}
	if first == nil {
		return nil // empty; Rows reports it if the whole source is empty
	}
	keys, vals, err := orderedObject(first)
	if err != nil {
		return fmt.Errorf("data: %s: first row: %v", sf.path, err)
	}
	sf.columns = keys
	for _, v := range vals {
		x, err := decodeJSONValue(v)
		if err != nil {
			return fmt.Errorf("data: %s: first row: %v", sf.path, err)
		}
		sf.types = append(sf.types, jsonType(x))
	}
	return nil
}

// scanJSON calls fn with the raw bytes of every row (valid during the call only).
func scanJSON(sf *sourceFile, r io.Reader, list bool, fn func(RowRef, []byte) error) error {
	if list {
		return scanJSONList(sf, r, fn)
	}
	br := bufio.NewReaderSize(r, 1<<16)
	var buf []byte
	var row int64
	for line := int64(1); ; line++ {
		buf = buf[:0]
		var err error
		for {
			var b []byte
			b, err = br.ReadSlice('\n')
			buf = append(buf, b...)
			if !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("data: %s line %d: %v", sf.path, line, err)
		}
		b := bytes.TrimSpace(buf)
		if line == 1 {
			b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
		}
		if len(b) > 0 {
			ref := RowRef{File: sf.path, Index: row, Line: line}
			if b[0] != '{' {
				return fmt.Errorf("data: %s: want a JSON object, found %s", ref, jsonKind(b))
			}
			if err := fn(ref, b); err != nil {
				return err
			}
			row++
		}
		if err != nil { // io.EOF
			return nil
		}
	}
}

func scanJSONList(sf *sourceFile, r io.Reader, fn func(RowRef, []byte) error) error {
	dec := json.NewDecoder(bufio.NewReaderSize(r, 1<<16))
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("data: %s: %v", sf.path, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return fmt.Errorf("data: %s: want a JSON list of objects, found %v", sf.path, tok)
	}
	var raw json.RawMessage
	var row int64
	for ; dec.More(); row++ {
		ref := RowRef{File: sf.path, Index: row}
		raw = raw[:0]
		if err := dec.Decode(&raw); err != nil {
			return fmt.Errorf("data: %s: %v", ref, err)
		}
		if raw[0] != '{' {
			return fmt.Errorf("data: %s: want a JSON object, found %s", ref, jsonKind(raw))
		}
		if err := fn(ref, raw); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("data: %s: after row %d: %v", sf.path, row, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("data: %s: data after the closing ] of the list", sf.path)
	}
	return nil
}

func rowsJSON(sf *sourceFile, columns []string, fn func(RowRef, Row) error) error {
	fh, err := os.Open(sf.path)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	defer fh.Close()
	head := make([]byte, 512)
	n, _ := io.ReadFull(fh, head)
	list := sniff(head[:n], nil) == "a JSON list"
	if _, err := fh.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("data: %s: %v", sf.path, err)
	}
	return scanJSON(sf, fh, list, func(ref RowRef, b []byte) error {
		row, err := parseJSONRow(b, columns, ref.Index == 0)
		if err != nil {
			if ref.Line == 1 && sf.kind == fmtJSON && errors.Is(err, errTrailing) {
				return fmt.Errorf("data: %s: a JSON object spanning several lines: want a JSON list of objects or JSON Lines", sf.path)
			}
			return fmt.Errorf("data: %s: %v", ref, err)
		}
		return fn(ref, row)
	})
}

var errTrailing = errors.New("trailing data")

// parseJSONRow decodes one object. With columns, only those fields are decoded;
// on the first row of a file a column it lacks is an error, later rows give nil
// (datasets fills missing keys with null the same way).
func parseJSONRow(b []byte, columns []string, first bool) (Row, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var row Row
	if columns == nil {
		if err := dec.Decode(&row); err != nil {
			return nil, shortJSONError(err)
		}
		for k, v := range row {
			row[k] = fixNumbers(v)
		}
	} else {
		var raw map[string]json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, shortJSONError(err)
		}
		row = make(Row, len(columns))
		for _, c := range columns {
			r, ok := raw[c]
			if !ok {
				if first {
					keys, _, _ := orderedObject(b)
					return nil, fmt.Errorf("no column %q (columns: %s)", c, strings.Join(keys, ", "))
				}
				row[c] = nil
				continue
			}
			v, err := decodeJSONValue(r)
			if err != nil {
				return nil, fmt.Errorf("column %q: %v", c, err)
			}
			row[c] = v
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w after the object", errTrailing)
	}
	return row, nil
}

// shortJSONError drops encoding/json's Go type names, which mean nothing to users.
func shortJSONError(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid JSON at byte %d: %v", se.Offset, se)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: the object is not closed", errTrailing)
	}
	return err
}

func decodeJSONValue(raw []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, shortJSONError(err)
	}
	return fixNumbers(v), nil
}

// fixNumbers turns json.Numbers into int64 (integers that fit) or float64.
func fixNumbers(v any) any {
	switch v := v.(type) {
	case json.Number:
		if i, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return i
		}
		f, _ := strconv.ParseFloat(string(v), 64)
		return f
	case []any:
		for i := range v {
			v[i] = fixNumbers(v[i])
		}
	case map[string]any:
		for k := range v {
			v[k] = fixNumbers(v[k])
		}
	}
	return v
}

// orderedObject returns the keys of a JSON object in file order, with their values.
func orderedObject(b []byte) ([]string, []json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, fmt.Errorf("want a JSON object, found %s", jsonKind(b))
	}
	var keys []string
	var vals []json.RawMessage
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, shortJSONError(err)
		}
		k, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, shortJSONError(err)
		}
		if i := slices.Index(keys, k); i >= 0 { // a repeated key: the last one wins, as in encoding/json
			vals[i] = v
			continue
		}
		keys = append(keys, k)
		vals = append(vals, v)
	}
	return keys, vals, nil
}

// jsonType names the type of a decoded JSON value in the notation of Schema.
func jsonType(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return "string"
	case bool:
		return "bool"
	case int64:
		return "int64"
	case float64:
		return "float64"
	case []any:
		if len(v) == 0 {
			return "list<null>"
		}
		return "list<" + jsonType(v[0]) + ">"
	case map[string]any:
		var parts []string
		for _, k := range slices.Sorted(mapKeys(v)) {
			parts = append(parts, k+": "+jsonType(v[k]))
		}
		return "struct<" + strings.Join(parts, ", ") + ">"
	}
	return fmt.Sprintf("%T", v)
}

// rowsText reads a text file as datasets' "text" builder does: one row per line,
// line breaks dropped, empty lines kept.
func rowsText(sf *sourceFile, columns []string, fn func(RowRef, Row) error) error {
	fh, err := os.Open(sf.path)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	defer fh.Close()
	br := bufio.NewReaderSize(fh, 1<<16)
	var buf []byte
	for line := int64(1); ; line++ {
		buf = buf[:0]
		var err error
		for {
			var b []byte
			b, err = br.ReadSlice('\n')
			buf = append(buf, b...)
			if !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("data: %s line %d: %v", sf.path, line, err)
		}
		if len(buf) == 0 && err != nil {
			return nil
		}
		s := strings.TrimSuffix(strings.TrimSuffix(string(buf), "\n"), "\r")
		if line == 1 {
			s = strings.TrimPrefix(s, "\ufeff")
		}
		if err := fn(RowRef{File: sf.path, Index: line - 1, Line: line}, Row{"text": s}); err != nil {
			return err
		}
		if err != nil {
			return nil
		}
	}
}
