package jinja

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

type tokKind int

const (
	tEOF tokKind = iota
	tText
	tVarBegin
	tVarEnd
	tBlockBegin
	tBlockEnd
	tName
	tString
	tInt
	tFloat
	tOp
)

type pos struct{ line, col int }

type token struct {
	kind tokKind
	val  string // text, name, operator, or decoded string literal
	pos  pos
}

// lexer splits a template into text and tag tokens, applying whitespace
// control the way transformers configures jinja2: trim_blocks (drop the first
// newline after a block or comment tag), lstrip_blocks (drop spaces and tabs
// between a line start and a block or comment tag), and the explicit '-'
// (strip all whitespace) and '+' (keep it) markers.
type lexer struct {
	src  string
	toks []token
	// lineStarts[i] is the byte offset where line i+1 begins.
	lineStarts []int
}

func isSpace(r rune) bool { return unicode.IsSpace(r) }

func lex(src string) ([]token, error) {
	// jinja2 normalizes newlines to "\n" and, without keep_trailing_newline,
	// drops one newline at the very end of the template.
	src = strings.ReplaceAll(src, "\r\n", "\n")
	src = strings.ReplaceAll(src, "\r", "\n")
	src = strings.TrimSuffix(src, "\n")
	lx := &lexer{src: src, lineStarts: []int{0}}
	for i := 0; i < len(src); i++ {
		if src[i] == '\n' {
			lx.lineStarts = append(lx.lineStarts, i+1)
		}
	}
	if err := lx.run(); err != nil {
		return nil, err
	}
	return lx.toks, nil
}

func (lx *lexer) posAt(off int) pos {
	lo, hi := 0, len(lx.lineStarts)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if lx.lineStarts[mid] <= off {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	col := utf8.RuneCountInString(lx.src[lx.lineStarts[lo]:off]) + 1
	return pos{lo + 1, col}
}

func (lx *lexer) errAt(off int, format string, args ...any) error {
	return newError(lx.posAt(off), format, args...)
}

// nextTag finds the next "{{", "{%" or "{#" at or after off.
func (lx *lexer) nextTag(off int) int {
	for {
		i := strings.IndexByte(lx.src[off:], '{')
		if i < 0 || off+i+1 >= len(lx.src) {
			return -1
		}
		j := off + i
		switch lx.src[j+1] {
		case '{', '%', '#':
			return j
		}
		off = j + 1
	}
}

func (lx *lexer) emitText(text string, off int) {
	if text != "" {
		lx.toks = append(lx.toks, token{tText, text, lx.posAt(off)})
	}
}

// leadText applies the strip rules of the tag at tagOff (kind '{', '%' or
// '#', sign '-', '+' or 0) to the text in front of it.
func (lx *lexer) leadText(start, tagOff int, kind, sign byte) string {
	text := lx.src[start:tagOff]
	if sign == '-' {
		return strings.TrimRightFunc(text, isSpace)
	}
	if sign == '+' || kind == '{' {
		return text
	}
	lineStarting := start == 0 || lx.src[start-1] == '\n'
	l := strings.LastIndexByte(text, '\n') + 1
	if l > 0 || lineStarting {
		rest := text[l:]
		if rest != "" && strings.TrimLeftFunc(rest, isSpace) == "" {
			return text[:l]
		}
	}
	return text
}

// afterTag applies the strip rules of a tag's closing marker and returns the
// offset where the following text starts.
func (lx *lexer) afterTag(off int, kind, sign byte) int {
	if sign == '-' {
		for off < len(lx.src) {
			r, n := utf8.DecodeRuneInString(lx.src[off:])
			if !isSpace(r) {
				break
			}
			off += n
		}
		return off
	}
	if sign != '+' && kind != '{' && off < len(lx.src) && lx.src[off] == '\n' {
		off++
	}
	return off
}

func (lx *lexer) run() error {
	src := lx.src
	off := 0
	for off < len(src) {
		t := lx.nextTag(off)
		if t < 0 {
			lx.emitText(src[off:], off)
			break
		}
		kind := src[t+1]
		var sign byte
		if t+2 < len(src) && (src[t+2] == '-' || src[t+2] == '+') {
			sign = src[t+2]
		}
		lx.emitText(lx.leadText(off, t, kind, sign), off)
		body := t + 2
		if sign != 0 {
			body++
		}
		switch kind {
		case '#':
			end := strings.Index(src[body:], "#}")
			if end < 0 {
				return lx.errAt(t, "unterminated comment")
			}
			end += body
			var esign byte
			if end > body && (src[end-1] == '-' || src[end-1] == '+') {
				esign = src[end-1]
			}
			off = lx.afterTag(end+2, '#', esign)
		case '{':
			lx.toks = append(lx.toks, token{tVarBegin, "{{", lx.posAt(t)})
			end, esign, err := lx.lexExpr(body, '}')
			if err != nil {
				return err
			}
			lx.toks = append(lx.toks, token{tVarEnd, "}}", lx.posAt(end - 2 - btoi(esign != 0))})
			off = lx.afterTag(end, '{', esign)
		case '%':
			if rawEnd, ok := lx.rawStart(body); ok {
				n, err := lx.lexRaw(t, rawEnd)
				if err != nil {
					return err
				}
				off = n
				continue
			}
			lx.toks = append(lx.toks, token{tBlockBegin, "{%", lx.posAt(t)})
			end, esign, err := lx.lexExpr(body, '%')
			if err != nil {
				return err
			}
			lx.toks = append(lx.toks, token{tBlockEnd, "%}", lx.posAt(end - 2 - btoi(esign != 0))})
			off = lx.afterTag(end, '%', esign)
		}
	}
	lx.toks = append(lx.toks, token{tEOF, "", lx.posAt(len(src))})
	return nil
}

// rawStart reports whether the block tag body at off is `raw` and returns the
// offset just past its closing "%}".
func (lx *lexer) rawStart(off int) (int, bool) {
	s := lx.src[off:]
	trimmed := strings.TrimLeft(s, " \t\r\n")
	if !strings.HasPrefix(trimmed, "raw") {
		return 0, false
	}
	rest := strings.TrimLeft(trimmed[3:], " \t\r\n")
	skip := len(s) - len(rest)
	// jinja2 accepts "-%}" and "%}" here, not "+%}".
	if strings.HasPrefix(rest, "-%}") {
		return off + skip + 3, true
	}
	if strings.HasPrefix(rest, "%}") {
		return off + skip + 2, true
	}
	return 0, false
}

func (lx *lexer) lexRaw(tagOff, bodyEnd int) (int, error) {
	src := lx.src
	// After "raw %}" jinja2 applies no trim_blocks, only the '-' strip.
	start := bodyEnd
	if src[bodyEnd-3] == '-' {
		start = lx.afterTag(bodyEnd, '%', '-')
	}
	search := start
	for {
		t := strings.Index(src[search:], "{%")
		if t < 0 {
			return 0, lx.errAt(tagOff, "missing endraw for raw block")
		}
		t += search
		p := t + 2
		var sign byte
		if p < len(src) && (src[p] == '-' || src[p] == '+') {
			sign = src[p]
			p++
		}
		rest := strings.TrimLeft(src[p:], " \t\r\n")
		if !strings.HasPrefix(rest, "endraw") {
			search = t + 2
			continue
		}
		rest2 := strings.TrimLeft(rest[6:], " \t\r\n")
		var esign byte
		if strings.HasPrefix(rest2, "-%}") || strings.HasPrefix(rest2, "+%}") {
			esign = rest2[0]
			rest2 = rest2[1:]
		}
		if !strings.HasPrefix(rest2, "%}") {
			search = t + 2
			continue
		}
		end := len(src) - len(rest2) + 2
		lx.emitText(lx.leadText(start, t, '%', sign), start)
		return lx.afterTag(end, '%', esign), nil
	}
}

// lexExpr tokenizes the inside of a tag starting at off until its closing
// marker ('}' for "}}", '%' for "%}"). It returns the offset just past the
// marker and the marker's sign.
func (lx *lexer) lexExpr(off int, closer byte) (int, byte, error) {
	src := lx.src
	depth := 0 // open (, [, { — a "}}" inside a dict literal does not close the tag
	for {
		for off < len(src) && (src[off] == ' ' || src[off] == '\t' || src[off] == '\n' || src[off] == '\r') {
			off++
		}
		if off >= len(src) {
			if closer == '}' {
				return 0, 0, lx.errAt(off, "unexpected end of template, expected '}}'")
			}
			return 0, 0, lx.errAt(off, "unexpected end of template, expected '%%}'")
		}
		rest := src[off:]
		if depth == 0 || closer == '%' {
			end := string(closer) + "}"
			if (rest[0] == '-' || rest[0] == '+') && strings.HasPrefix(rest[1:], end) {
				return off + 3, rest[0], nil
			}
			if strings.HasPrefix(rest, end) && (closer == '%' || depth == 0) {
				return off + 2, 0, nil
			}
		}
		p := lx.posAt(off)
		c := rest[0]
		switch {
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			n := 1
			for n < len(rest) && (rest[n] == '_' || rest[n] >= 'a' && rest[n] <= 'z' || rest[n] >= 'A' && rest[n] <= 'Z' || rest[n] >= '0' && rest[n] <= '9') {
				n++
			}
			lx.toks = append(lx.toks, token{tName, rest[:n], p})
			off += n
		case c >= '0' && c <= '9':
			n, isFloat := scanNumber(rest)
			text := strings.ReplaceAll(rest[:n], "_", "")
			k := tInt
			if isFloat {
				k = tFloat
			}
			lx.toks = append(lx.toks, token{k, text, p})
			off += n
		case c == '\'' || c == '"':
			s, n, err := unquote(rest)
			if err != nil {
				return 0, 0, lx.errAt(off, "%v", err)
			}
			lx.toks = append(lx.toks, token{tString, s, p})
			off += n
		default:
			op := ""
			for _, o := range []string{"//", "**", "==", "!=", "<=", ">="} {
				if strings.HasPrefix(rest, o) {
					op = o
					break
				}
			}
			if op == "" {
				if !strings.ContainsRune("+-*/%~<>=()[]{},.:|", rune(c)) {
					r, _ := utf8.DecodeRuneInString(rest)
					return 0, 0, lx.errAt(off, "unexpected character %q", r)
				}
				op = rest[:1]
			}
			switch op {
			case "(", "[", "{":
				depth++
			case ")", "]", "}":
				depth--
			}
			lx.toks = append(lx.toks, token{tOp, op, p})
			off += len(op)
		}
	}
}

func scanNumber(s string) (int, bool) {
	digits := func(i int) int {
		for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '_') {
			i++
		}
		return i
	}
	n := digits(0)
	isFloat := false
	if n+1 < len(s) && s[n] == '.' && s[n+1] >= '0' && s[n+1] <= '9' {
		n = digits(n + 1)
		isFloat = true
	}
	if n < len(s) && (s[n] == 'e' || s[n] == 'E') {
		m := n + 1
		if m < len(s) && (s[m] == '+' || s[m] == '-') {
			m++
		}
		if m < len(s) && s[m] >= '0' && s[m] <= '9' {
			n = digits(m)
			isFloat = true
		}
	}
	return n, isFloat
}

// unquote decodes a string literal with Python's escapes; unknown escapes keep
// their backslash, as Python does.
func unquote(s string) (string, int, error) {
	q := s[0]
	var b strings.Builder
	for i := 1; i < len(s); {
		c := s[i]
		if c == q {
			return b.String(), i + 1, nil
		}
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			i++
			continue
		}
		e := s[i+1]
		i += 2
		switch e {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case '\\', '\'', '"':
			b.WriteByte(e)
		case '0':
			b.WriteByte(0)
		case 'a':
			b.WriteByte(7)
		case 'b':
			b.WriteByte(8)
		case 'f':
			b.WriteByte(12)
		case 'v':
			b.WriteByte(11)
		case '\n':
		case 'x', 'u', 'U':
			n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[e]
			if i+n > len(s) {
				return "", 0, errorf("truncated \\%c escape in string literal", e)
			}
			v, err := strconv.ParseUint(s[i:i+n], 16, 32)
			if err != nil {
				return "", 0, errorf("bad \\%c escape in string literal", e)
			}
			b.WriteRune(rune(v))
			i += n
		default:
			b.WriteByte('\\')
			b.WriteByte(e)
		}
	}
	return "", 0, errorf("unterminated string literal")
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
