package jinja

import (
	"fmt"
	"html"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// argOr returns positional argument i, else keyword name, else def.
func argOr(args []any, kw *Map, i int, name string, def any) any {
	if i < len(args) {
		return args[i]
	}
	if kw != nil {
		if v, ok := kw.Get(name); ok {
			return v
		}
	}
	return def
}

func strArg(fn string, v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", errorf("%s: expected str argument, got %s", fn, typeName(v))
	}
	return s, nil
}

func intArg(fn string, v any) (int64, error) {
	switch v.(type) {
	case int64, bool:
		return toInt(v), nil
	}
	return 0, errorf("%s: expected int argument, got %s", fn, typeName(v))
}

var globals = map[string]any{
	"range": Func(func(args []any, _ *Map) (any, error) {
		var start, stop, step int64 = 0, 0, 1
		ints := make([]int64, len(args))
		for i, a := range args {
			n, err := intArg("range", a)
			if err != nil {
				return nil, err
			}
			ints[i] = n
		}
		switch len(ints) {
		case 1:
			stop = ints[0]
		case 2:
			start, stop = ints[0], ints[1]
		case 3:
			start, stop, step = ints[0], ints[1], ints[2]
		default:
			return nil, errorf("range expected 1 to 3 arguments, got %d", len(args))
		}
		if step == 0 {
			return nil, errorf("range() arg 3 must not be zero")
		}
		n := int64(0)
		if step > 0 && stop > start {
			n = (stop - start + step - 1) / step
		} else if step < 0 && stop < start {
			n = (start - stop - step - 1) / -step
		}
		if n > maxSeqLen {
			return nil, errorf("range of %d items is too large", n)
		}
		out := make([]any, n)
		for i := range out {
			out[i] = start + int64(i)*step
		}
		return out, nil
	}),
	"namespace": Func(func(args []any, kw *Map) (any, error) {
		m := NewMap()
		for _, a := range args {
			d, ok := a.(*Map)
			if !ok {
				return nil, errorf("namespace() positional argument must be a dict, not %s", typeName(a))
			}
			for _, k := range d.keys {
				v, _ := d.Get(k)
				m.Set(k, v)
			}
		}
		for _, k := range kw.keys {
			v, _ := kw.Get(k)
			m.Set(k, v)
		}
		return &Namespace{m}, nil
	}),
	"dict": Func(func(args []any, kw *Map) (any, error) {
		m := NewMap()
		for _, a := range args {
			d, ok := a.(*Map)
			if !ok {
				return nil, errorf("dict() positional argument must be a dict, not %s", typeName(a))
			}
			for _, k := range d.keys {
				v, _ := d.Get(k)
				m.Set(k, v)
			}
		}
		for _, k := range kw.keys {
			v, _ := kw.Get(k)
			m.Set(k, v)
		}
		return m, nil
	}),
	"raise_exception": Func(func(args []any, _ *Map) (any, error) {
		msg := ""
		if len(args) > 0 {
			msg = toStr(args[0])
		}
		return nil, &Error{Msg: msg, Raised: true}
	}),
}

// method returns the bound Python method obj.name, or nil. Methods that
// mutate (list.append, dict.update, ...) are refused as transformers'
// ImmutableSandboxedEnvironment refuses them.
func method(obj any, name string) Func {
	switch x := obj.(type) {
	case string:
		return strMethod(x, name)
	case *Map:
		switch name {
		case "items":
			return func(args []any, _ *Map) (any, error) { return mapItems(x), nil }
		case "keys":
			return func(args []any, _ *Map) (any, error) { return append([]any{}, x.keys...), nil }
		case "values":
			return func(args []any, _ *Map) (any, error) {
				out := make([]any, len(x.keys))
				for i, k := range x.keys {
					out[i], _ = x.Get(k)
				}
				return out, nil
			}
		case "get":
			return func(args []any, kw *Map) (any, error) {
				if len(args) == 0 {
					return nil, errorf("get expected at least 1 argument, got 0")
				}
				if v, ok := x.Get(args[0]); ok {
					return v, nil
				}
				return argOr(args, kw, 1, "default", nil), nil
			}
		case "copy":
			return func(args []any, _ *Map) (any, error) {
				m := NewMap()
				for _, k := range x.keys {
					v, _ := x.Get(k)
					m.Set(k, v)
				}
				return m, nil
			}
		case "update", "pop", "popitem", "setdefault", "clear":
			return unsafeMethod("dict", name)
		}
	case []any, Tuple:
		var l []any
		if t, ok := x.(Tuple); ok {
			l = t
		} else {
			l = x.([]any)
		}
		switch name {
		case "index":
			return func(args []any, _ *Map) (any, error) {
				if len(args) == 0 {
					return nil, errorf("index expected 1 argument")
				}
				for i, e := range l {
					if equal(e, args[0]) {
						return int64(i), nil
					}
				}
				return nil, errorf("%s is not in list", repr(args[0]))
			}
		case "count":
			return func(args []any, _ *Map) (any, error) {
				if len(args) == 0 {
					return nil, errorf("count expected 1 argument")
				}
				n := int64(0)
				for _, e := range l {
					if equal(e, args[0]) {
						n++
					}
				}
				return n, nil
			}
		case "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse":
			if _, ok := x.([]any); ok {
				return unsafeMethod("list", name)
			}
		}
	}
	return nil
}

func unsafeMethod(typ, name string) Func {
	return func([]any, *Map) (any, error) {
		return nil, errorf("access to attribute '%s' of '%s' object is unsafe", name, typ)
	}
}

func mapItems(m *Map) []any {
	out := make([]any, len(m.keys))
	for i, k := range m.keys {
		v, _ := m.Get(k)
		out[i] = Tuple{k, v}
	}
	return out
}

const pyWhitespace = " \t\n\r\v\f\x1c\x1d\x1e\x1f\x85\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"

func isPySpace(r rune) bool { return strings.ContainsRune(pyWhitespace, r) }

func stripArg(fn string, args []any, kw *Map) (string, bool, error) {
	v := argOr(args, kw, 0, "chars", nil)
	if v == nil {
		return "", false, nil
	}
	s, err := strArg(fn, v)
	return s, true, err
}

func strMethod(s, name string) Func {
	switch name {
	case "startswith", "endswith":
		return func(args []any, _ *Map) (any, error) {
			if len(args) == 0 {
				return nil, errorf("%s takes at least 1 argument", name)
			}
			var prefixes []any
			switch p := args[0].(type) {
			case string:
				prefixes = []any{p}
			case Tuple:
				prefixes = p
			case []any:
				return nil, errorf("%s first arg must be str or a tuple of str, not list", name)
			default:
				return nil, errorf("%s first arg must be str or a tuple of str, not %s", name, typeName(p))
			}
			for _, p := range prefixes {
				ps, err := strArg(name, p)
				if err != nil {
					return nil, err
				}
				if name == "startswith" && strings.HasPrefix(s, ps) || name == "endswith" && strings.HasSuffix(s, ps) {
					return true, nil
				}
			}
			return false, nil
		}
	case "strip", "lstrip", "rstrip":
		return func(args []any, kw *Map) (any, error) {
			chars, ok, err := stripArg(name, args, kw)
			if err != nil {
				return nil, err
			}
			return pyStrip(s, name, chars, ok), nil
		}
	case "split", "rsplit":
		return func(args []any, kw *Map) (any, error) {
			sepV := argOr(args, kw, 0, "sep", nil)
			maxV, err := intArg(name, argOr(args, kw, 1, "maxsplit", int64(-1)))
			if err != nil {
				return nil, err
			}
			var parts []string
			if sepV == nil {
				parts = splitWhitespace(s, int(maxV), name == "rsplit")
			} else {
				sep, err := strArg(name, sepV)
				if err != nil {
					return nil, err
				}
				if sep == "" {
					return nil, errorf("empty separator")
				}
				if name == "split" || maxV < 0 {
					parts = strings.SplitN(s, sep, int(maxV+1))
					if maxV < 0 {
						parts = strings.Split(s, sep)
					}
				} else {
					parts = rsplitN(s, sep, int(maxV))
				}
			}
			out := make([]any, len(parts))
			for i, p := range parts {
				out[i] = p
			}
			return out, nil
		}
	case "splitlines":
		return func(args []any, kw *Map) (any, error) {
			keep := truthy(argOr(args, kw, 0, "keepends", false))
			lines := splitLines(s, keep)
			out := make([]any, len(lines))
			for i, l := range lines {
				out[i] = l
			}
			return out, nil
		}
	case "upper":
		return func([]any, *Map) (any, error) { return strings.ToUpper(s), nil }
	case "lower":
		return func([]any, *Map) (any, error) { return strings.ToLower(s), nil }
	case "title":
		return func([]any, *Map) (any, error) { return pyTitle(s), nil }
	case "capitalize":
		return func([]any, *Map) (any, error) { return pyCapitalize(s), nil }
	case "swapcase":
		return func([]any, *Map) (any, error) {
			return strings.Map(func(r rune) rune {
				if unicode.IsUpper(r) {
					return unicode.ToLower(r)
				}
				return unicode.ToUpper(r)
			}, s), nil
		}
	case "replace":
		return func(args []any, kw *Map) (any, error) {
			if len(args) < 2 {
				return nil, errorf("replace expected at least 2 arguments, got %d", len(args))
			}
			old, err := strArg(name, args[0])
			if err != nil {
				return nil, err
			}
			nw, err := strArg(name, args[1])
			if err != nil {
				return nil, err
			}
			n, err := intArg(name, argOr(args, kw, 2, "count", int64(-1)))
			if err != nil {
				return nil, err
			}
			return safeReplace(s, old, nw, int(n))
		}
	case "find", "rfind", "index", "rindex", "count":
		return func(args []any, _ *Map) (any, error) {
			if len(args) == 0 {
				return nil, errorf("%s takes at least 1 argument", name)
			}
			sub, err := strArg(name, args[0])
			if err != nil {
				return nil, err
			}
			var i int
			switch name {
			case "count":
				if sub == "" {
					return int64(utf8.RuneCountInString(s) + 1), nil
				}
				return int64(strings.Count(s, sub)), nil
			case "find", "index":
				i = strings.Index(s, sub)
			default:
				i = strings.LastIndex(s, sub)
			}
			if i < 0 {
				if name == "index" || name == "rindex" {
					return nil, errorf("substring not found")
				}
				return int64(-1), nil
			}
			return int64(utf8.RuneCountInString(s[:i])), nil
		}
	case "join":
		return func(args []any, _ *Map) (any, error) {
			if len(args) != 1 {
				return nil, errorf("join takes exactly one argument")
			}
			items, err := iterate(args[0])
			if err != nil {
				return nil, err
			}
			parts := make([]string, len(items))
			for i, it := range items {
				p, ok := it.(string)
				if !ok {
					return nil, errorf("sequence item %d: expected str instance, %s found", i, typeName(it))
				}
				parts[i] = p
			}
			return strings.Join(parts, s), nil
		}
	case "format":
		return func(args []any, kw *Map) (any, error) { return strFormat(s, args, kw) }
	case "isdigit", "isnumeric", "isdecimal", "isalpha", "isalnum", "isspace", "islower", "isupper":
		return func([]any, *Map) (any, error) { return strIs(s, name), nil }
	case "zfill":
		return func(args []any, _ *Map) (any, error) {
			if len(args) != 1 {
				return nil, errorf("zfill takes exactly one argument")
			}
			w, err := intArg(name, args[0])
			if err != nil {
				return nil, err
			}
			n := utf8.RuneCountInString(s)
			if int64(n) >= w {
				return s, nil
			}
			if w > maxSeqLen {
				return nil, errorf("zfill width too large")
			}
			sign := ""
			rest := s
			if strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
				sign, rest = s[:1], s[1:]
			}
			return sign + strings.Repeat("0", int(w)-n) + rest, nil
		}
	}
	return nil
}

func strIs(s, name string) bool {
	if s == "" {
		return false
	}
	cased := false
	for _, r := range s {
		switch name {
		case "isdigit", "isnumeric", "isdecimal":
			if !unicode.IsDigit(r) {
				return false
			}
		case "isalpha":
			if !unicode.IsLetter(r) {
				return false
			}
		case "isalnum":
			if !unicode.IsLetter(r) && !unicode.IsDigit(r) {
				return false
			}
		case "isspace":
			if !isPySpace(r) {
				return false
			}
		case "islower":
			if unicode.IsUpper(r) {
				return false
			}
			cased = cased || unicode.IsLower(r)
		case "isupper":
			if unicode.IsLower(r) {
				return false
			}
			cased = cased || unicode.IsUpper(r)
		}
	}
	if name == "islower" || name == "isupper" {
		return cased
	}
	return true
}

func safeReplace(s, old, nw string, n int) (any, error) {
	count := strings.Count(s, old)
	if old == "" {
		count = utf8.RuneCountInString(s) + 1
	}
	if n >= 0 && n < count {
		count = n
	}
	if len(s)+count*len(nw) > maxOutput {
		return nil, errorf("replace result too long")
	}
	return strings.Replace(s, old, nw, n), nil
}

func pyStrip(s, which, chars string, haveChars bool) string {
	cut := isPySpace
	if haveChars {
		cut = func(r rune) bool { return strings.ContainsRune(chars, r) }
	}
	switch which {
	case "lstrip":
		return strings.TrimLeftFunc(s, cut)
	case "rstrip":
		return strings.TrimRightFunc(s, cut)
	}
	return strings.TrimFunc(s, cut)
}

// splitWhitespace is str.split() / str.rsplit() without a separator.
func splitWhitespace(s string, maxsplit int, fromRight bool) []string {
	if !fromRight {
		var out []string
		rest := strings.TrimLeftFunc(s, isPySpace)
		for rest != "" {
			if maxsplit >= 0 && len(out) == maxsplit {
				out = append(out, rest)
				return out
			}
			i := strings.IndexFunc(rest, isPySpace)
			if i < 0 {
				out = append(out, rest)
				break
			}
			out = append(out, rest[:i])
			rest = strings.TrimLeftFunc(rest[i:], isPySpace)
		}
		return out
	}
	var out []string
	rest := strings.TrimRightFunc(s, isPySpace)
	for rest != "" {
		if maxsplit >= 0 && len(out) == maxsplit {
			out = append(out, rest)
			break
		}
		i := strings.LastIndexFunc(rest, isPySpace)
		if i < 0 {
			out = append(out, rest)
			break
		}
		_, n := utf8.DecodeRuneInString(rest[i:])
		out = append(out, rest[i+n:])
		rest = strings.TrimRightFunc(rest[:i], isPySpace)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func rsplitN(s, sep string, maxsplit int) []string {
	var out []string
	for len(out) < maxsplit {
		i := strings.LastIndex(s, sep)
		if i < 0 {
			break
		}
		out = append(out, s[i+len(sep):])
		s = s[:i]
	}
	out = append(out, s)
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// splitLines is str.splitlines().
func splitLines(s string, keep bool) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch r {
		case '\n', '\r', '\v', '\f', 0x1c, 0x1d, 0x1e, 0x85, 0x2028, 0x2029:
			end := i + n
			if r == '\r' && end < len(s) && s[end] == '\n' {
				end++
			}
			if keep {
				out = append(out, s[start:end])
			} else {
				out = append(out, s[start:i])
			}
			start = end
			i = end
			continue
		}
		i += n
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

func pyTitle(s string) string {
	var b strings.Builder
	prevCased := false
	for _, r := range s {
		if prevCased {
			b.WriteRune(unicode.ToLower(r))
		} else {
			b.WriteRune(unicode.ToTitle(r))
		}
		prevCased = unicode.IsUpper(r) || unicode.IsLower(r) || unicode.IsTitle(r)
	}
	return b.String()
}

func pyCapitalize(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 {
		return s
	}
	return string(unicode.ToTitle(r)) + strings.ToLower(s[n:])
}

// strFormat is a subset of str.format: {}, {0}, {name}, {{ and }}; format
// specs other than empty are rejected.
func strFormat(s string, args []any, kw *Map) (any, error) {
	var b strings.Builder
	auto := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '}' {
			if i+1 < len(s) && s[i+1] == '}' {
				i++
			}
			b.WriteByte('}')
			continue
		}
		if c != '{' {
			b.WriteByte(c)
			continue
		}
		if i+1 < len(s) && s[i+1] == '{' {
			b.WriteByte('{')
			i++
			continue
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return nil, errorf("Single '{' encountered in format string")
		}
		field := s[i+1 : i+end]
		i += end
		conv := ""
		if j := strings.IndexByte(field, '!'); j >= 0 {
			field, conv = field[:j], field[j+1:]
		}
		if j := strings.IndexByte(field, ':'); j >= 0 {
			if field[j+1:] != "" {
				return nil, errorf("format spec %q is not supported", field[j+1:])
			}
			field = field[:j]
		}
		var v any
		if field == "" {
			if auto >= len(args) {
				return nil, errorf("Replacement index %d out of range for positional args tuple", auto)
			}
			v = args[auto]
			auto++
		} else if n, err := strconv.Atoi(field); err == nil {
			if n >= len(args) {
				return nil, errorf("Replacement index %d out of range for positional args tuple", n)
			}
			v = args[n]
		} else {
			var ok bool
			if v, ok = kw.Get(field); !ok {
				return nil, errorf("KeyError: %s", repr(field))
			}
		}
		if conv == "r" {
			b.WriteString(repr(v))
		} else {
			b.WriteString(toStr(v))
		}
	}
	return b.String(), nil
}

// percentFormat is Python's `fmt % args` for the conversions templates use:
// s r d i f F e E g G x X o c and %, with flags, width and precision.
func percentFormat(s string, arg any) (any, error) {
	var args []any
	mappingLike := false
	switch t := arg.(type) {
	case Tuple:
		args = t
	case []any, *Map, Undefined:
		// Python treats a non-tuple with __getitem__ as a mapping: it may
		// be left unused.
		args, mappingLike = []any{arg}, true
	default:
		args = []any{arg}
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		j := i + 1
		for j < len(s) && strings.IndexByte("-+ #0", s[j]) >= 0 {
			j++
		}
		for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '.') {
			j++
		}
		if j >= len(s) {
			return nil, errorf("incomplete format")
		}
		spec, c := s[i+1:j], s[j]
		i = j
		if c == '%' {
			b.WriteByte('%')
			continue
		}
		if n >= len(args) {
			return nil, errorf("not enough arguments for format string")
		}
		v := args[n]
		n++
		switch c {
		case 's', 'r':
			str := toStr(v)
			if c == 'r' {
				str = repr(v)
			}
			if k := strings.IndexByte(spec, '.'); k >= 0 {
				if p, err := strconv.Atoi(spec[k+1:]); err == nil && p < utf8.RuneCountInString(str) {
					str = string([]rune(str)[:p])
				}
				spec = spec[:k]
			}
			left := strings.Contains(spec, "-")
			w, _ := strconv.Atoi(strings.TrimLeft(spec, "-+ #0"))
			if w > 1<<16 {
				return nil, errorf("format width too large")
			}
			pad := strings.Repeat(" ", max(w-utf8.RuneCountInString(str), 0))
			if left {
				b.WriteString(str + pad)
			} else {
				b.WriteString(pad + str)
			}
		case 'd', 'i', 'x', 'X', 'o', 'c', 'f', 'F', 'e', 'E', 'g', 'G':
			if !isNumber(v) {
				return nil, errorf("%%%c format: a real number is required, not %s", c, typeName(v))
			}
			if w, _ := strconv.Atoi(strings.TrimLeft(strings.SplitN(spec, ".", 2)[0], "-+ #0")); w > 1<<16 {
				return nil, errorf("format width too large")
			}
			switch c {
			case 'd', 'i':
				fmt.Fprintf(&b, "%"+spec+"d", toInt(v))
			case 'x', 'X', 'o':
				fmt.Fprintf(&b, "%"+spec+string(c), toInt(v))
			case 'c':
				b.WriteRune(rune(toInt(v)))
			default:
				if !strings.Contains(spec, ".") {
					spec += ".6"
				}
				fmt.Fprintf(&b, "%"+spec+string(c), toFloat(v))
			}
		default:
			return nil, errorf("unsupported format character '%c'", c)
		}
	}
	if n < len(args) && !mappingLike {
		return nil, errorf("not all arguments converted during string formatting")
	}
	return b.String(), nil
}

// Strftime formats t with Python's strftime codes (C locale); it is what
// the strftime_now global uses.
func Strftime(t time.Time, f string) string {
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 >= len(f) {
			b.WriteByte(f[i])
			continue
		}
		i++
		pad := true
		if f[i] == '-' && i+1 < len(f) {
			pad = false
			i++
		}
		num := func(v, width int) {
			if pad {
				fmt.Fprintf(&b, "%0*d", width, v)
			} else {
				fmt.Fprintf(&b, "%d", v)
			}
		}
		switch f[i] {
		case 'Y':
			fmt.Fprintf(&b, "%d", t.Year())
		case 'y':
			num(t.Year()%100, 2)
		case 'm':
			num(int(t.Month()), 2)
		case 'd':
			num(t.Day(), 2)
		case 'e':
			fmt.Fprintf(&b, "%2d", t.Day())
		case 'H':
			num(t.Hour(), 2)
		case 'I':
			h := t.Hour() % 12
			if h == 0 {
				h = 12
			}
			num(h, 2)
		case 'M':
			num(t.Minute(), 2)
		case 'S':
			num(t.Second(), 2)
		case 'f':
			fmt.Fprintf(&b, "%06d", t.Nanosecond()/1000)
		case 'p':
			if t.Hour() < 12 {
				b.WriteString("AM")
			} else {
				b.WriteString("PM")
			}
		case 'b', 'h':
			b.WriteString(t.Month().String()[:3])
		case 'B':
			b.WriteString(t.Month().String())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'j':
			num(t.YearDay(), 3)
		case 'w':
			fmt.Fprintf(&b, "%d", int(t.Weekday()))
		case 'Z':
			name, _ := t.Zone()
			b.WriteString(name)
		case 'z':
			b.WriteString(t.Format("-0700"))
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(f[i])
		}
	}
	return b.String()
}

// Tests (`x is name(args)`).

func runTest(name string, v any, args []any, r *renderer) (bool, error) {
	need := func(n int) error {
		if len(args) < n {
			return errorf("test '%s' expects %d argument(s), got %d", name, n, len(args))
		}
		return nil
	}
	switch name {
	case "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number", "string", "mapping",
		"iterable", "sequence", "callable", "lower", "upper", "even", "odd", "escaped":
		if len(args) > 0 {
			return false, errorf("test '%s' takes no arguments (%d given)", name, len(args))
		}
	}
	switch name {
	case "defined":
		_, u := v.(Undefined)
		return !u, nil
	case "undefined":
		_, u := v.(Undefined)
		return u, nil
	case "none":
		return v == nil, nil
	case "boolean":
		_, ok := v.(bool)
		return ok, nil
	case "true":
		b, ok := v.(bool)
		return ok && b, nil
	case "false":
		b, ok := v.(bool)
		return ok && !b, nil
	case "integer":
		_, ok := v.(int64)
		return ok, nil
	case "float":
		_, ok := v.(float64)
		return ok, nil
	case "number":
		return isNumber(v), nil
	case "string":
		_, ok := v.(string)
		return ok, nil
	case "mapping":
		_, ok := v.(*Map)
		return ok, nil
	case "iterable":
		switch v.(type) {
		case string, []any, Tuple, *Map, Undefined:
			return true, nil
		}
		return false, nil
	case "sequence":
		switch v.(type) {
		case string, []any, Tuple, *Map:
			return true, nil
		}
		return false, nil
	case "callable":
		switch v.(type) {
		case Func, *Macro:
			return true, nil
		}
		return false, nil
	case "lower":
		return strIs(toStr(v), "islower"), nil
	case "upper":
		return strIs(toStr(v), "isupper"), nil
	case "even", "odd":
		m, err := binaryOp("%", v, int64(2))
		if err != nil {
			return false, err
		}
		if name == "even" {
			return toFloat(m) == 0, nil
		}
		return toFloat(m) == 1, nil
	case "divisibleby":
		if err := need(1); err != nil {
			return false, err
		}
		m, err := binaryOp("%", v, args[0])
		if err != nil {
			return false, err
		}
		return isNumber(m) && toFloat(m) == 0, nil
	case "eq", "equalto", "==":
		if err := need(1); err != nil {
			return false, err
		}
		return equal(v, args[0]), nil
	case "ne", "!=":
		if err := need(1); err != nil {
			return false, err
		}
		return !equal(v, args[0]), nil
	case "lt", "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=":
		if err := need(1); err != nil {
			return false, err
		}
		op := map[string]string{"lt": "<", "lessthan": "<", "le": "<=", "gt": ">", "greaterthan": ">", "ge": ">="}[name]
		if op == "" {
			op = name
		}
		return compareOp(op, v, args[0])
	case "in":
		if err := need(1); err != nil {
			return false, err
		}
		return contains(args[0], v)
	case "sameas":
		if err := need(1); err != nil {
			return false, err
		}
		switch v.(type) {
		case nil, bool:
			return v == args[0], nil
		}
		return equal(v, args[0]) && typeName(v) == typeName(args[0]), nil
	case "escaped":
		return false, nil
	case "filter":
		if err := need(1); err != nil {
			return false, err
		}
		s, _ := args[0].(string)
		_, ok := filters[s]
		return ok, nil
	case "test":
		if err := need(1); err != nil {
			return false, err
		}
		s, _ := args[0].(string)
		return knownTests[s], nil
	}
	return false, errorf("no test named '%s'", name)
}

var knownTests = map[string]bool{}

func init() {
	for _, n := range strings.Fields("defined undefined none boolean true false integer float number string mapping iterable sequence callable lower upper even odd divisibleby eq equalto == ne != lt lessthan < le <= gt greaterthan > ge >= in sameas escaped filter test") {
		knownTests[n] = true
	}
}

// Filters (`x | name(args)`).

type filterFunc func(r *renderer, v any, args []any, kw *Map) (any, error)

var filters map[string]filterFunc

func init() {
	filters = map[string]filterFunc{
		"length":      fLength,
		"count":       fLength,
		"first":       fFirst,
		"last":        fLast,
		"join":        fJoin,
		"upper":       strFilter(strings.ToUpper),
		"lower":       strFilter(strings.ToLower),
		"title":       strFilter(jinjaTitle),
		"capitalize":  strFilter(pyCapitalize),
		"trim":        fTrim,
		"replace":     fReplace,
		"default":     fDefault,
		"d":           fDefault,
		"tojson":      fToJSON,
		"string":      func(_ *renderer, v any, _ []any, _ *Map) (any, error) { return toStr(v), nil },
		"int":         fInt,
		"float":       fFloat,
		"list":        fList,
		"abs":         fAbs,
		"round":       fRound,
		"map":         fMap,
		"select":      fSelect(false, false),
		"reject":      fSelect(true, false),
		"selectattr":  fSelect(false, true),
		"rejectattr":  fSelect(true, true),
		"unique":      fUnique,
		"sort":        fSort,
		"reverse":     fReverse,
		"items":       fItems,
		"dictsort":    fDictsort,
		"indent":      fIndent,
		"safe":        func(_ *renderer, v any, _ []any, _ *Map) (any, error) { return v, nil },
		"e":           fEscape,
		"escape":      fEscape,
		"forceescape": fEscape,
		"batch":       fBatch,
		"wordcount": func(_ *renderer, v any, _ []any, _ *Map) (any, error) {
			return int64(len(splitWhitespace(toStr(v), -1, false))), nil
		},
		"sum":      fSum,
		"min":      fMinMax(-1),
		"max":      fMinMax(1),
		"attr":     fAttr,
		"format":   fFormat,
		"center":   fCenter,
		"truncate": fTruncate,
	}
}

func (r *renderer) applyFilter(fc *filterCall, v any, f *frame) (any, error) {
	fn, ok := filters[fc.name]
	if !ok {
		return nil, newError(fc.p, "no filter named '%s'", fc.name)
	}
	args, kw, err := r.evalArgs(fc.args, fc.kwargs, f)
	if err != nil {
		return nil, err
	}
	out, err := fn(r, v, args, kw)
	if err != nil {
		return nil, atPos(err, fc.p)
	}
	return out, nil
}

func strFilter(fn func(string) string) filterFunc {
	return func(_ *renderer, v any, _ []any, _ *Map) (any, error) { return fn(toStr(v)), nil }
}

// jinjaTitle is jinja2's title filter, which differs from str.title: words
// begin after whitespace, '-', and opening brackets only.
func jinjaTitle(s string) string {
	var b strings.Builder
	start := true
	for _, r := range s {
		if unicode.IsSpace(r) || strings.ContainsRune("-[({", r) {
			b.WriteRune(r)
			start = true
			continue
		}
		if start {
			b.WriteRune(unicode.ToUpper(r))
		} else {
			b.WriteRune(unicode.ToLower(r))
		}
		start = false
	}
	return b.String()
}

func length(v any) (int, error) {
	switch x := v.(type) {
	case string:
		return utf8.RuneCountInString(x), nil
	case []any:
		return len(x), nil
	case Tuple:
		return len(x), nil
	case *Map:
		return x.Len(), nil
	case *Namespace:
		return x.m.Len(), nil
	case Undefined:
		return 0, nil
	}
	return 0, errorf("object of type '%s' has no len()", typeName(v))
}

func fLength(_ *renderer, v any, _ []any, _ *Map) (any, error) {
	n, err := length(v)
	return int64(n), err
}

func fFirst(_ *renderer, v any, _ []any, _ *Map) (any, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return Undefined{"No first item, sequence was empty."}, nil
	}
	return items[0], nil
}

func fLast(_ *renderer, v any, _ []any, _ *Map) (any, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return Undefined{"No last item, sequence was empty."}, nil
	}
	return items[len(items)-1], nil
}

func fJoin(_ *renderer, v any, args []any, kw *Map) (any, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	sep := toStr(argOr(args, kw, 0, "d", ""))
	attr := argOr(args, kw, 1, "attribute", nil)
	parts := make([]string, len(items))
	total := 0
	for i, it := range items {
		if attr != nil {
			if it, err = attrPath(it, attr); err != nil {
				return nil, err
			}
		}
		parts[i] = toStr(it)
		total += len(parts[i]) + len(sep)
		if total > maxOutput {
			return nil, errorf("join result too long")
		}
	}
	return strings.Join(parts, sep), nil
}

func fTrim(_ *renderer, v any, args []any, kw *Map) (any, error) {
	chars, ok, err := stripArg("trim", args, kw)
	if err != nil {
		return nil, err
	}
	return pyStrip(toStr(v), "strip", chars, ok), nil
}

func fReplace(_ *renderer, v any, args []any, kw *Map) (any, error) {
	if len(args) < 2 {
		return nil, errorf("replace filter expects 2 arguments, got %d", len(args))
	}
	n, err := intArg("replace", argOr(args, kw, 2, "count", int64(-1)))
	if err != nil {
		return nil, err
	}
	return safeReplace(toStr(v), toStr(args[0]), toStr(args[1]), int(n))
}

func fDefault(_ *renderer, v any, args []any, kw *Map) (any, error) {
	def := argOr(args, kw, 0, "default_value", "")
	boolean := truthy(argOr(args, kw, 1, "boolean", false))
	if _, u := v.(Undefined); u || boolean && !truthy(v) {
		return def, nil
	}
	return v, nil
}

func fToJSON(_ *renderer, v any, args []any, kw *Map) (any, error) {
	indentV := argOr(args, kw, 0, "indent", nil)
	opts := jsonOpts{itemSep: ", ", keySep: ": "}
	switch x := indentV.(type) {
	case nil:
	case int64:
		opts.indent, opts.hasIndent = strings.Repeat(" ", int(max(x, 0))), true
		opts.itemSep = ","
	case string:
		opts.indent, opts.hasIndent = x, true
		opts.itemSep = ","
	default:
		return nil, errorf("tojson: indent must be int or str, not %s", typeName(indentV))
	}
	if sep, ok := argOr(nil, kw, 0, "separators", nil).(Tuple); ok && len(sep) == 2 {
		opts.itemSep, opts.keySep = toStr(sep[0]), toStr(sep[1])
	} else if sep, ok := argOr(nil, kw, 0, "separators", nil).([]any); ok && len(sep) == 2 {
		opts.itemSep, opts.keySep = toStr(sep[0]), toStr(sep[1])
	}
	opts.ensureASCII = truthy(argOr(nil, kw, 0, "ensure_ascii", false))
	opts.sortKeys = truthy(argOr(nil, kw, 0, "sort_keys", false))
	var b strings.Builder
	if err := writeJSON(&b, v, opts, 0); err != nil {
		return nil, err
	}
	return b.String(), nil
}

func fInt(_ *renderer, v any, args []any, kw *Map) (any, error) {
	def := argOr(args, kw, 0, "default", int64(0))
	switch x := v.(type) {
	case Undefined:
		return nil, errorf("%s", x.Hint)
	case int64:
		return x, nil
	case bool:
		return toInt(x), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return def, nil
		}
		return int64(x), nil
	case string:
		s := strings.ReplaceAll(strings.TrimFunc(x, isPySpace), "_", "")
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n, nil
		}
		if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsInf(f, 0) && !math.IsNaN(f) {
			return int64(f), nil
		}
	}
	return def, nil
}

func fFloat(_ *renderer, v any, args []any, kw *Map) (any, error) {
	def := argOr(args, kw, 0, "default", 0.0)
	switch x := v.(type) {
	case Undefined:
		return nil, errorf("%s", x.Hint)
	case int64, bool:
		return toFloat(x), nil
	case float64:
		return x, nil
	case string:
		if f, err := strconv.ParseFloat(strings.TrimFunc(x, isPySpace), 64); err == nil {
			return f, nil
		}
	}
	return def, nil
}

func fList(_ *renderer, v any, _ []any, _ *Map) (any, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	return append([]any{}, items...), nil
}

func fAbs(_ *renderer, v any, _ []any, _ *Map) (any, error) {
	switch x := v.(type) {
	case int64:
		if x < 0 {
			return -x, nil
		}
		return x, nil
	case float64:
		return math.Abs(x), nil
	case bool:
		return toInt(x), nil
	}
	return nil, errorf("bad operand type for abs(): '%s'", typeName(v))
}

func fRound(_ *renderer, v any, args []any, kw *Map) (any, error) {
	prec, err := intArg("round", argOr(args, kw, 0, "precision", int64(0)))
	if err != nil {
		return nil, err
	}
	method := toStr(argOr(args, kw, 1, "method", "common"))
	if !isNumber(v) {
		return nil, errorf("round: expected a number, got %s", typeName(v))
	}
	if _, isF := v.(float64); !isF && method == "common" {
		return toInt(v), nil
	}
	scale := math.Pow(10, float64(prec))
	x := toFloat(v) * scale
	switch method {
	case "common":
		x = math.RoundToEven(x)
	case "ceil":
		x = math.Ceil(x)
	case "floor":
		x = math.Floor(x)
	default:
		return nil, errorf("method must be common, ceil or floor")
	}
	return x / scale, nil
}

// attrPath resolves jinja2's dotted attribute argument ("a.b", or an int
// index) on obj, item-first as environment.getitem does.
func attrPath(obj, attr any) (any, error) {
	s, ok := attr.(string)
	if !ok {
		return getItem(obj, attr)
	}
	for _, part := range strings.Split(s, ".") {
		var key any = part
		if n, err := strconv.ParseInt(part, 10, 64); err == nil {
			key = n
		}
		var err error
		if obj, err = getItem(obj, key); err != nil {
			return nil, err
		}
	}
	return obj, nil
}

func fMap(r *renderer, v any, args []any, kw *Map) (any, error) {
	if !truthy(v) { // jinja2 checks `if value:` before iterating
		return []any{}, nil
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	out := make([]any, len(items))
	if attr, ok := kw.Get("attribute"); ok {
		def, hasDef := kw.Get("default")
		for i, it := range items {
			x, err := attrPath(it, attr)
			if err != nil {
				return nil, err
			}
			if _, u := x.(Undefined); u && hasDef {
				x = def
			}
			out[i] = x
		}
		return out, nil
	}
	if len(args) == 0 {
		return nil, errorf("map requires a filter name or attribute=")
	}
	name, _ := args[0].(string)
	fn, ok := filters[name]
	if !ok {
		return nil, errorf("no filter named '%s'", toStr(args[0]))
	}
	for i, it := range items {
		if out[i], err = fn(r, it, args[1:], kw); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func fSelect(reject, byAttr bool) filterFunc {
	return func(r *renderer, v any, args []any, _ *Map) (any, error) {
		if !truthy(v) { // jinja2 checks `if value:` before iterating
			return []any{}, nil
		}
		items, err := iterate(v)
		if err != nil {
			return nil, err
		}
		var attr any
		if byAttr {
			if len(args) == 0 {
				return nil, errorf("selectattr/rejectattr need an attribute name")
			}
			attr, args = args[0], args[1:]
		}
		out := []any{}
		for _, it := range items {
			x := it
			if byAttr {
				if x, err = attrPath(it, attr); err != nil {
					return nil, err
				}
			}
			var ok bool
			if len(args) == 0 {
				ok = truthy(x)
			} else {
				name, _ := args[0].(string)
				if ok, err = runTest(name, x, args[1:], r); err != nil {
					return nil, err
				}
			}
			if ok != reject {
				out = append(out, it)
			}
		}
		return out, nil
	}
}

// sortKey lowers strings unless case_sensitive, as jinja2's sort does.
func sortKey(v any, caseSensitive bool) any {
	if s, ok := v.(string); ok && !caseSensitive {
		return strings.ToLower(s)
	}
	return v
}

func fUnique(_ *renderer, v any, args []any, kw *Map) (any, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	cs := truthy(argOr(args, kw, 0, "case_sensitive", false))
	attr := argOr(args, kw, 1, "attribute", nil)
	var seen []any
	out := []any{}
	for _, it := range items {
		k := it
		if attr != nil {
			if k, err = attrPath(it, attr); err != nil {
				return nil, err
			}
		}
		k = sortKey(k, cs)
		dup := false
		for _, s := range seen {
			if equal(s, k) {
				dup = true
				break
			}
		}
		if !dup {
			seen = append(seen, k)
			out = append(out, it)
		}
	}
	return out, nil
}

func fSort(_ *renderer, v any, args []any, kw *Map) (any, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	reverse := truthy(argOr(args, kw, 0, "reverse", false))
	cs := truthy(argOr(args, kw, 1, "case_sensitive", false))
	attr := argOr(args, kw, 2, "attribute", nil)
	keys := make([]any, len(items))
	for i, it := range items {
		k := it
		if attr != nil {
			if k, err = attrPath(it, attr); err != nil {
				return nil, err
			}
		}
		keys[i] = sortKey(k, cs)
	}
	return sortBy(items, keys, reverse)
}

func sortBy(items, keys []any, reverse bool) ([]any, error) {
	idx := make([]int, len(items))
	for i := range idx {
		idx[i] = i
	}
	var cmpErr error
	sort.SliceStable(idx, func(a, b int) bool {
		c, err := compare(keys[idx[a]], keys[idx[b]])
		if err != nil && cmpErr == nil {
			cmpErr = err
		}
		if reverse {
			return c > 0
		}
		return c < 0
	})
	if cmpErr != nil {
		return nil, cmpErr
	}
	out := make([]any, len(items))
	for i, j := range idx {
		out[i] = items[j]
	}
	return out, nil
}

func fReverse(_ *renderer, v any, _ []any, _ *Map) (any, error) {
	if s, ok := v.(string); ok {
		r := []rune(s)
		for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
			r[i], r[j] = r[j], r[i]
		}
		return string(r), nil
	}
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	out := make([]any, len(items))
	for i, it := range items {
		out[len(items)-1-i] = it
	}
	return out, nil
}

func fItems(_ *renderer, v any, _ []any, _ *Map) (any, error) {
	switch x := v.(type) {
	case *Map:
		return mapItems(x), nil
	case Undefined:
		return []any{}, nil
	}
	return nil, errorf("items filter: can only get item pairs from a mapping, not %s", typeName(v))
}

func fDictsort(_ *renderer, v any, args []any, kw *Map) (any, error) {
	m, ok := v.(*Map)
	if !ok {
		return nil, errorf("dictsort: expected a dict, got %s", typeName(v))
	}
	cs := truthy(argOr(args, kw, 0, "case_sensitive", false))
	by := toStr(argOr(args, kw, 1, "by", "key"))
	reverse := truthy(argOr(args, kw, 2, "reverse", false))
	items := mapItems(m)
	keys := make([]any, len(items))
	for i, it := range items {
		pair := it.(Tuple)
		if by == "value" {
			keys[i] = sortKey(pair[1], cs)
		} else {
			keys[i] = sortKey(pair[0], cs)
		}
	}
	return sortBy(items, keys, reverse)
}

func fIndent(_ *renderer, v any, args []any, kw *Map) (any, error) {
	s, ok := v.(string)
	if !ok { // jinja2 appends "\n" to the value itself
		return nil, errorf("unsupported operand type(s) for +=: '%s' and 'str'", typeName(v))
	}
	var ind string
	switch w := argOr(args, kw, 0, "width", int64(4)).(type) {
	case string:
		ind = w
	case int64:
		if w > 1<<16 {
			return nil, errorf("indent width too large")
		}
		ind = strings.Repeat(" ", int(max(w, 0)))
	default:
		return nil, errorf("indent width must be int or str")
	}
	first := truthy(argOr(args, kw, 1, "first", false))
	blank := truthy(argOr(args, kw, 2, "blank", false))
	lines := splitLines(s+"\n", false)
	var rv string
	if blank {
		rv = strings.Join(lines, "\n"+ind)
	} else {
		rv = lines[0]
		for _, l := range lines[1:] {
			rv += "\n"
			if l != "" {
				rv += ind + l
			}
		}
	}
	if first {
		rv = ind + rv
	}
	return rv, nil
}

func fEscape(_ *renderer, v any, _ []any, _ *Map) (any, error) {
	// markupsafe.escape: & < > ' " (quotes as &#39; and &#34;).
	s := html.EscapeString(toStr(v))
	return s, nil
}

func fBatch(_ *renderer, v any, args []any, kw *Map) (any, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	n, err := intArg("batch", argOr(args, kw, 0, "linecount", nil))
	if err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, errorf("batch: linecount must be positive")
	}
	fill, hasFill := kw.Get("fill_with")
	if len(args) > 1 {
		fill, hasFill = args[1], true
	}
	out := []any{}
	for i := 0; i < len(items); i += int(n) {
		end := min(i+int(n), len(items))
		row := append([]any{}, items[i:end]...)
		if hasFill && fill != nil {
			for len(row) < int(n) {
				row = append(row, fill)
			}
		}
		out = append(out, row)
	}
	return out, nil
}

func fSum(_ *renderer, v any, args []any, kw *Map) (any, error) {
	items, err := iterate(v)
	if err != nil {
		return nil, err
	}
	attr := argOr(args, kw, 0, "attribute", nil)
	var total any = argOr(args, kw, 1, "start", int64(0))
	for _, it := range items {
		if attr != nil {
			if it, err = attrPath(it, attr); err != nil {
				return nil, err
			}
		}
		if total, err = binaryOp("+", total, it); err != nil {
			return nil, err
		}
	}
	return total, nil
}

func fMinMax(sign int) filterFunc {
	return func(_ *renderer, v any, args []any, kw *Map) (any, error) {
		items, err := iterate(v)
		if err != nil {
			return nil, err
		}
		if len(items) == 0 {
			return Undefined{"No aggregated item, sequence was empty."}, nil
		}
		cs := truthy(argOr(args, kw, 0, "case_sensitive", false))
		attr := argOr(args, kw, 1, "attribute", nil)
		best, bestKey := items[0], any(nil)
		for i, it := range items {
			k := it
			if attr != nil {
				if k, err = attrPath(it, attr); err != nil {
					return nil, err
				}
			}
			k = sortKey(k, cs)
			if i == 0 {
				bestKey = k
				continue
			}
			c, err := compare(k, bestKey)
			if err != nil {
				return nil, err
			}
			if c*sign > 0 {
				best, bestKey = it, k
			}
		}
		return best, nil
	}
}

func fAttr(_ *renderer, v any, args []any, _ *Map) (any, error) {
	if len(args) != 1 {
		return nil, errorf("attr filter expects 1 argument")
	}
	return getAttr(v, toStr(args[0]))
}

func fFormat(_ *renderer, v any, args []any, kw *Map) (any, error) {
	s, err := strArg("format", v)
	if err != nil {
		return nil, err
	}
	if kw.Len() > 0 {
		return nil, errorf("format filter: keyword arguments are not supported")
	}
	if len(args) == 1 {
		return percentFormat(s, args[0])
	}
	return percentFormat(s, Tuple(args))
}

func fCenter(_ *renderer, v any, args []any, kw *Map) (any, error) {
	s := toStr(v)
	w, err := intArg("center", argOr(args, kw, 0, "width", int64(80)))
	if err != nil {
		return nil, err
	}
	n := utf8.RuneCountInString(s)
	if int64(n) >= w {
		return s, nil
	}
	if w > 1<<16 {
		return nil, errorf("center width too large")
	}
	pad := int(w) - n
	left := pad / 2
	if pad%2 == 1 && int(w)%2 == 1 {
		left++
	}
	return strings.Repeat(" ", left) + s + strings.Repeat(" ", pad-left), nil
}

func fTruncate(_ *renderer, v any, args []any, kw *Map) (any, error) {
	s := toStr(v)
	n, err := intArg("truncate", argOr(args, kw, 0, "length", int64(255)))
	if err != nil {
		return nil, err
	}
	killwords := truthy(argOr(args, kw, 1, "killwords", false))
	end := toStr(argOr(args, kw, 2, "end", "..."))
	leeway, err := intArg("truncate", argOr(args, kw, 3, "leeway", int64(5)))
	if err != nil {
		return nil, err
	}
	r := []rune(s)
	if int64(len(r)) <= n+leeway {
		return s, nil
	}
	cut := max(int(n)-utf8.RuneCountInString(end), 0)
	if killwords {
		return string(r[:cut]) + end, nil
	}
	res := string(r[:cut])
	if i := strings.LastIndex(res, " "); i >= 0 {
		res = res[:i]
	}
	return res + end, nil
}
