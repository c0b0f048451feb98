package lora

import (
	"bytes"
	"fmt"
	"math"
	"sort"
	"strconv"
	"unicode/utf16"
)

// pyJSON encodes v the way Python's json.dumps(v, indent=2, sort_keys=True)
// does, which is how PEFT writes adapter_config.json (PeftConfigMixin.
// save_pretrained): ", " / ": " separators, non-ASCII escaped (ensure_ascii),
// floats in repr form (0.0, 0.05, 1e-05), no trailing newline. v may hold
// map[string]any, []any, []string, []int, string, int, float64, bool and nil.
func pyJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := pyEncode(&b, v, 0); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func pyEncode(b *bytes.Buffer, v any, depth int) error {
	indent := func(d int) {
		b.WriteByte('\n')
		for i := 0; i < 2*d; i++ {
			b.WriteByte(' ')
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
	case int:
		b.WriteString(strconv.Itoa(x))
	case float64:
		s, err := pyFloat(x)
		if err != nil {
			return err
		}
		b.WriteString(s)
	case string:
		pyString(b, x)
	case []string:
		items := make([]any, len(x))
		for i, s := range x {
			items[i] = s
		}
		return pyEncode(b, items, depth)
	case []int:
		items := make([]any, len(x))
		for i, n := range x {
			items[i] = n
		}
		return pyEncode(b, items, depth)
	case []any:
		if len(x) == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			indent(depth + 1)
			if err := pyEncode(b, e, depth+1); err != nil {
				return err
			}
		}
		indent(depth)
		b.WriteByte(']')
	case map[string]any:
		if len(x) == 0 {
			b.WriteString("{}")
			return nil
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys) // Python sorts by code point; Go strings compare bytewise: same order for UTF-8
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			indent(depth + 1)
			pyString(b, k)
			b.WriteString(": ")
			if err := pyEncode(b, x[k], depth+1); err != nil {
				return err
			}
		}
		indent(depth)
		b.WriteByte('}')
	default:
		return fmt.Errorf("pyJSON: unsupported type %T", v)
	}
	return nil
}

// pyFloat is Python's float repr: the shortest round-trip digits, with ".0"
// on integral values and exponent form outside [1e-4, 1e16).
func pyFloat(f float64) (string, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", fmt.Errorf("pyJSON: %v has no JSON form", f)
	}
	a := math.Abs(f)
	if a == 0 || (a >= 1e-4 && a < 1e16) {
		s := strconv.FormatFloat(f, 'f', -1, 64)
		if !bytes.ContainsAny([]byte(s), ".") {
			s += ".0"
		}
		return s, nil
	}
	// Go and Python both write at least two exponent digits ("1e-05").
	return strconv.FormatFloat(f, 'e', -1, 64), nil
}

// pyString writes s with ensure_ascii escaping: \" \\ \n \r \t \b \f,
// other controls and every non-ASCII rune as \uXXXX (UTF-16 pairs).
func pyString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r < 0x20 || r == 0x7f:
			if r == 0x7f {
				b.WriteRune(r) // Python leaves DEL as is
			} else {
				fmt.Fprintf(b, `\u%04x`, r)
			}
		case r < 0x80:
			b.WriteRune(r)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(b, `\u%04x\u%04x`, r1, r2)
		default:
			fmt.Fprintf(b, `\u%04x`, r)
		}
	}
	b.WriteByte('"')
}
