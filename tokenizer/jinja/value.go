package jinja

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// Values a template sees are plain Go values of a small closed set:
//
//	nil                 Python None
//	Undefined           jinja2's default Undefined (prints "", falsy, iterates empty)
//	bool, int64, float64, string
//	[]any               Python list
//	Tuple               Python tuple (prints with parentheses; dict.items() yields these)
//	*Map                Python dict, insertion-ordered
//	*Namespace          jinja2 namespace()
//	*Macro, Func        callables
//
// FromGo converts what callers hand in (map[string]any, int, float32, ...) into this set.

// Undefined is the value of a missing variable, attribute or item. Hint says
// what was looked up ("'x' is undefined"), for error messages.
type Undefined struct{ Hint string }

// Tuple is an immutable sequence; it differs from a list only in how it prints.
type Tuple []any

// Func is a built-in callable: global functions and bound methods.
type Func func(args []any, kwargs *Map) (any, error)

// Namespace is the mutable attribute bag made by namespace(); `{% set ns.x = 1 %}`
// is the one way a template can carry state out of a loop.
type Namespace struct{ m *Map }

// Map is an insertion-ordered dictionary, as Python dicts are. Keys are
// strings, ints, floats, bools or nil.
type Map struct {
	keys []any
	vals map[any]any
}

// NewMap returns an empty Map.
func NewMap() *Map { return &Map{vals: map[any]any{}} }

// hashKey makes 1, 1.0 and True the same key, as in Python.
func hashKey(k any) any {
	switch x := k.(type) {
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<62 {
			return int64(x)
		}
	case bool:
		return toInt(x) // True == 1 in Python, so they are one key
	}
	return k
}

func hashable(k any) bool {
	switch k.(type) {
	case nil, bool, int64, float64, string:
		return true
	}
	return false
}

// Set inserts or replaces key k; a new key goes last.
func (m *Map) Set(k, v any) {
	h := hashKey(k)
	if _, ok := m.vals[h]; !ok {
		m.keys = append(m.keys, k)
	}
	m.vals[h] = v
}

// Get returns the value stored under k.
func (m *Map) Get(k any) (any, bool) {
	if !hashable(k) {
		return nil, false
	}
	v, ok := m.vals[hashKey(k)]
	return v, ok
}

// Keys returns the keys in insertion order.
func (m *Map) Keys() []any { return m.keys }

// Len returns the number of entries.
func (m *Map) Len() int { return len(m.keys) }

// FromGo converts a Go value into the template's value set. Maps with string
// keys become *Map with sorted keys (Go maps have no order to keep);
// *Map values pass through unchanged.
func FromGo(v any) any {
	switch x := v.(type) {
	case nil, bool, int64, float64, string, Undefined, Tuple, *Map, *Namespace, Func, *Macro:
		return v
	case int:
		return int64(x)
	case int8:
		return int64(x)
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case uint8:
		return int64(x)
	case uint16:
		return int64(x)
	case uint32:
		return int64(x)
	case uint:
		return int64(x)
	case uint64:
		return int64(x)
	case float32:
		return float64(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = FromGo(e)
		}
		return out
	case []string:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = e
		}
		return out
	case []map[string]any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = FromGo(e)
		}
		return out
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		m := NewMap()
		for _, k := range keys {
			m.Set(k, FromGo(x[k]))
		}
		return m
	case map[string]string:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		m := NewMap()
		for _, k := range keys {
			m.Set(k, x[k])
		}
		return m
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return n
		}
		if f, err := x.Float64(); err == nil {
			return f
		}
		return x.String()
	}
	// Other slices and string-keyed maps, by reflection.
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		out := make([]any, rv.Len())
		for i := range out {
			out[i] = FromGo(rv.Index(i).Interface())
		}
		return out
	case reflect.Map:
		if rv.Type().Key().Kind() == reflect.String {
			keys := make([]string, 0, rv.Len())
			for _, k := range rv.MapKeys() {
				keys = append(keys, k.String())
			}
			sort.Strings(keys)
			m := NewMap()
			for _, k := range keys {
				m.Set(k, FromGo(rv.MapIndex(reflect.ValueOf(k).Convert(rv.Type().Key())).Interface()))
			}
			return m
		}
	case reflect.Pointer:
		if rv.IsNil() {
			return nil
		}
		return FromGo(rv.Elem().Interface())
	case reflect.String:
		return rv.String()
	case reflect.Bool:
		return rv.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return int64(rv.Uint())
	case reflect.Float32, reflect.Float64:
		return rv.Float()
	}
	if s, ok := v.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprint(v)
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "NoneType"
	case Undefined:
		return "Undefined"
	case bool:
		return "bool"
	case int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []any:
		return "list"
	case Tuple:
		return "tuple"
	case *Map:
		return "dict"
	case *Namespace:
		return "Namespace"
	case *Macro:
		return "Macro"
	case Func:
		return "builtin_function_or_method"
	case *loopInfo:
		return "LoopContext"
	}
	return fmt.Sprintf("%T", v)
}

func truthy(v any) bool {
	switch x := v.(type) {
	case nil, Undefined:
		return false
	case bool:
		return x
	case int64:
		return x != 0
	case float64:
		return x != 0
	case string:
		return x != ""
	case []any:
		return len(x) > 0
	case Tuple:
		return len(x) > 0
	case *Map:
		return x.Len() > 0
	}
	return true
}

// toStr is Python's str(): what {{ v }} prints.
func toStr(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case Undefined:
		return ""
	}
	var b strings.Builder
	writeRepr(&b, v, false, 0)
	return b.String()
}

func repr(v any) string {
	var b strings.Builder
	writeRepr(&b, v, true, 0)
	return b.String()
}

func writeRepr(b *strings.Builder, v any, quote bool, depth int) {
	// A namespace can hold itself; Python prints the cycle as "...".
	if depth > maxJSONDepth || b.Len() > maxOutput {
		b.WriteString("...")
		return
	}
	switch x := v.(type) {
	case nil:
		b.WriteString("None")
	case Undefined:
		if quote {
			b.WriteString("Undefined")
		}
	case bool:
		if x {
			b.WriteString("True")
		} else {
			b.WriteString("False")
		}
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case float64:
		b.WriteString(pyFloat(x))
	case string:
		if quote {
			b.WriteString(pyQuote(x))
		} else {
			b.WriteString(x)
		}
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, e, true, depth+1)
		}
		b.WriteByte(']')
	case Tuple:
		b.WriteByte('(')
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, e, true, depth+1)
		}
		if len(x) == 1 {
			b.WriteByte(',')
		}
		b.WriteByte(')')
	case *Map:
		b.WriteByte('{')
		for i, k := range x.keys {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, k, true, depth+1)
			b.WriteString(": ")
			writeRepr(b, x.vals[hashKey(k)], true, depth+1)
		}
		b.WriteByte('}')
	case *Namespace:
		b.WriteString("<Namespace ")
		writeRepr(b, x.m, true, depth+1)
		b.WriteString(">")
	case *Macro:
		b.WriteString("<Macro '" + x.name + "'>")
	case Func:
		b.WriteString("<built-in function>")
	case *loopInfo:
		b.WriteString("<LoopContext>")
	default:
		fmt.Fprint(b, x)
	}
}

// pyFloat formats like Python's repr(float): shortest round-trip digits,
// scientific notation below 1e-4 and from 1e16 on, always a '.0' or exponent.
func pyFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	case math.IsNaN(f):
		return "nan"
	}
	s := strconv.FormatFloat(f, 'e', -1, 64) // d.ddde±XX
	mant, expS, _ := strings.Cut(s, "e")
	exp, _ := strconv.Atoi(expS)
	neg := strings.HasPrefix(mant, "-")
	mant = strings.TrimPrefix(mant, "-")
	digits := strings.Replace(mant, ".", "", 1)
	sign := ""
	if neg {
		sign = "-"
	}
	if exp < -4 || exp >= 16 {
		m := digits[:1]
		if len(digits) > 1 {
			m += "." + digits[1:]
		}
		es := fmt.Sprintf("%+03d", exp)
		return sign + m + "e" + es
	}
	if exp < 0 {
		return sign + "0." + strings.Repeat("0", -exp-1) + digits
	}
	if len(digits) <= exp+1 {
		return sign + digits + strings.Repeat("0", exp+1-len(digits)) + ".0"
	}
	return sign + digits[:exp+1] + "." + digits[exp+1:]
}

// pyQuote is repr(str): single quotes unless the string has ' and no ".
func pyQuote(s string) string {
	q := byte('\'')
	if strings.ContainsRune(s, '\'') && !strings.ContainsRune(s, '"') {
		q = '"'
	}
	var b strings.Builder
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == rune(q) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r >= 0x80 && r < 0xa0:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(q)
	return b.String()
}

func isNumber(v any) bool {
	switch v.(type) {
	case int64, float64, bool:
		return true
	}
	return false
}

func isFloat(v any) bool {
	_, ok := v.(float64)
	return ok
}

func toFloat(v any) float64 {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case float64:
		return x
	case bool:
		if x {
			return 1
		}
	}
	return 0
}

func toInt(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case float64:
		return int64(x)
	case bool:
		if x {
			return 1
		}
	}
	return 0
}

// equal is Python ==.
func equal(a, b any) bool {
	if isNumber(a) && isNumber(b) {
		_, af := a.(float64)
		_, bf := b.(float64)
		if af || bf {
			return toFloat(a) == toFloat(b)
		}
		return toInt(a) == toInt(b)
	}
	switch x := a.(type) {
	case nil:
		return b == nil
	case Undefined:
		_, ok := b.(Undefined)
		return ok
	case string:
		y, ok := b.(string)
		return ok && x == y
	case []any:
		y, ok := b.([]any)
		return ok && seqEqual(x, y)
	case Tuple:
		y, ok := b.(Tuple)
		return ok && seqEqual(x, y)
	case *Map:
		y, ok := b.(*Map)
		if !ok || x.Len() != y.Len() {
			return false
		}
		for _, k := range x.keys {
			yv, ok := y.Get(k)
			if !ok || !equal(x.vals[hashKey(k)], yv) {
				return false
			}
		}
		return true
	case *Namespace:
		return a == b
	}
	return false
}

func seqEqual(x, y []any) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if !equal(x[i], y[i]) {
			return false
		}
	}
	return true
}

// compare is Python's ordering for the types that have one.
func compare(a, b any) (int, error) {
	if isNumber(a) && isNumber(b) {
		_, af := a.(float64)
		_, bf := b.(float64)
		if af || bf {
			x, y := toFloat(a), toFloat(b)
			switch {
			case x < y:
				return -1, nil
			case x > y:
				return 1, nil
			}
			return 0, nil
		}
		x, y := toInt(a), toInt(b)
		switch {
		case x < y:
			return -1, nil
		case x > y:
			return 1, nil
		}
		return 0, nil
	}
	switch x := a.(type) {
	case string:
		if y, ok := b.(string); ok {
			return strings.Compare(x, y), nil
		}
	case []any:
		if y, ok := b.([]any); ok {
			return seqCompare(x, y)
		}
	case Tuple:
		if y, ok := b.(Tuple); ok {
			return seqCompare(x, y)
		}
	}
	return 0, fmt.Errorf("'<' not supported between instances of '%s' and '%s'", typeName(a), typeName(b))
}

func seqCompare(x, y []any) (int, error) {
	for i := 0; i < len(x) && i < len(y); i++ {
		if equal(x[i], y[i]) {
			continue
		}
		return compare(x[i], y[i])
	}
	switch {
	case len(x) < len(y):
		return -1, nil
	case len(x) > len(y):
		return 1, nil
	}
	return 0, nil
}
