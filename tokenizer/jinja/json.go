package jinja

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"
)

type jsonOpts struct {
	indent      string
	hasIndent   bool
	itemSep     string
	keySep      string
	ensureASCII bool
	sortKeys    bool
}

const maxJSONDepth = 200

// writeJSON is Python's json.dumps as transformers' tojson filter calls it
// (ensure_ascii=False by default, insertion order kept, floats as repr()).
func writeJSON(b *strings.Builder, v any, o jsonOpts, depth int) error {
	if depth > maxJSONDepth {
		return errorf("tojson: nesting deeper than %d", maxJSONDepth)
	}
	if b.Len() > maxOutput {
		return errorf("tojson: output too long")
	}
	newline := func(d int) {
		if o.hasIndent {
			b.WriteByte('\n')
			for i := 0; i < d; i++ {
				b.WriteString(o.indent)
			}
		}
	}
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case float64:
		switch {
		case math.IsNaN(x):
			b.WriteString("NaN")
		case math.IsInf(x, 1):
			b.WriteString("Infinity")
		case math.IsInf(x, -1):
			b.WriteString("-Infinity")
		default:
			b.WriteString(pyFloat(x))
		}
	case string:
		writeJSONString(b, x, o.ensureASCII)
	case []any, Tuple:
		var items []any
		if t, ok := x.(Tuple); ok {
			items = t
		} else {
			items = x.([]any)
		}
		if len(items) == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i, it := range items {
			if i > 0 {
				b.WriteString(o.itemSep)
			}
			newline(depth + 1)
			if err := writeJSON(b, it, o, depth+1); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte(']')
	case *Map, *Namespace:
		m, ok := x.(*Map)
		if !ok {
			m = x.(*Namespace).m
		}
		if m.Len() == 0 {
			b.WriteString("{}")
			return nil
		}
		keys := m.keys
		if o.sortKeys {
			keys = append([]any(nil), keys...)
			var err error
			sort.SliceStable(keys, func(i, j int) bool {
				c, e := compare(keys[i], keys[j])
				if e != nil {
					err = e
				}
				return c < 0
			})
			if err != nil {
				return errorf("tojson: %v", err)
			}
		}
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteString(o.itemSep)
			}
			newline(depth + 1)
			var ks string
			switch kk := k.(type) {
			case string:
				ks = kk
			case nil:
				ks = "null"
			case bool:
				ks = map[bool]string{true: "true", false: "false"}[kk]
			case int64:
				ks = strconv.FormatInt(kk, 10)
			case float64:
				ks = pyFloat(kk)
			}
			writeJSONString(b, ks, o.ensureASCII)
			b.WriteString(o.keySep)
			val, _ := m.Get(k)
			if err := writeJSON(b, val, o, depth+1); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte('}')
	default:
		return errorf("Object of type %s is not JSON serializable", typeName(v))
	}
	return nil
}

func writeJSONString(b *strings.Builder, s string, ascii bool) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			switch {
			case r < 0x20:
				fmt.Fprintf(b, `\u%04x`, r)
			case ascii && r > 0x7e:
				if r > 0xffff {
					r1, r2 := utf16.EncodeRune(r)
					fmt.Fprintf(b, `\u%04x\u%04x`, r1, r2)
				} else {
					fmt.Fprintf(b, `\u%04x`, r)
				}
			default:
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// DecodeJSON decodes JSON into template values keeping object key order
// (objects become *Map), integers as int64 and other numbers as float64.
func DecodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("json: trailing data after the value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, fmt.Errorf("json: nesting deeper than %d at offset %d", maxJSONDepth, dec.InputOffset())
	}
	tok, err := dec.Token()
	if err == io.EOF {
		return nil, fmt.Errorf("json: unexpected end of input")
	}
	if err != nil {
		return nil, fmt.Errorf("json: %w", err)
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '[':
			out := []any{}
			for dec.More() {
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				out = append(out, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, fmt.Errorf("json: unexpected end of input")
			}
			return out, nil
		case '{':
			m := NewMap()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, fmt.Errorf("json: %w", err)
				}
				k, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("json: object key %v is not a string", kt)
				}
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				m.Set(k, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, fmt.Errorf("json: unexpected end of input")
			}
			return m, nil
		}
		return nil, fmt.Errorf("json: unexpected %v at offset %d", t, dec.InputOffset())
	case json.Number:
		s := string(t)
		if !strings.ContainsAny(s, ".eE") {
			if n, err := strconv.ParseInt(s, 10, 64); err == nil {
				return n, nil
			}
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("json: number %s: %w", s, err)
		}
		return f, nil
	case string, bool, nil:
		return t, nil
	}
	return nil, fmt.Errorf("json: unexpected token %v", tok)
}
