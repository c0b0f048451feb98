package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// decoder is a tokenizers decoder: decode_chain over the token strings.
type decoder interface {
	chain(toks []string) []string
}

// Decode turns ids back into text as the Rust library's Tokenizer::decode
// does: ids map to tokens (unknown ids are dropped, special added tokens too
// when skipSpecial), then the decoder chain runs and its outputs are joined.
// It never applies transformers' clean_up_tokenization_spaces.
func (t *Tokenizer) Decode(ids []int, skipSpecial bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if id < 0 || id >= len(t.idToToken) {
			continue
		}
		if a, ok := t.addedByID[id]; ok {
			if skipSpecial && a.special {
				continue
			}
			toks = append(toks, a.content)
			continue
		}
		if s := t.idToToken[id]; s != "" {
			toks = append(toks, s)
		}
	}
	if t.dec == nil {
		return strings.Join(toks, " ")
	}
	return strings.Join(t.dec.chain(toks), "")
}

// CleanUpTokenizationSpaces is transformers' clean_up_tokenization, which
// its decode applies when tokenizer_config.json sets
// clean_up_tokenization_spaces (Config.CleanUpTokenizationSpaces; Llama 3
// does): it removes the space before . ? ! , and English contractions. It is
// lossy (" ." in the text is lost too), so tune applies it only where a
// caller wants transformers' exact output.
func CleanUpTokenizationSpaces(s string) string {
	for _, r := range [][2]string{{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}} {
		s = strings.ReplaceAll(s, r[0], r[1])
	}
	return s
}

// byteLevelDec maps GPT-2 unicode characters back to bytes; a token with a
// character outside that table contributes its UTF-8 bytes as they are. The
// bytes are then read as UTF-8 with String::from_utf8_lossy's replacement.
type byteLevelDec struct{}

func (byteLevelDec) chain(toks []string) []string {
	var buf []byte
	for _, t := range toks {
		n := len(buf)
		ok := true
		for _, r := range t {
			if r < rune(len(runeToByte)) && runeToByte[r] >= 0 {
				buf = append(buf, byte(runeToByte[r]))
			} else {
				ok = false
				break
			}
		}
		if !ok {
			buf = append(buf[:n], t...)
		}
	}
	return []string{utf8Lossy(buf)}
}

// utf8Lossy replaces each maximal invalid subpart of b by U+FFFD (Unicode
// §3.9 "substitution of maximal subparts", as Rust's from_utf8_lossy and the
// WHATWG TextDecoder do; Go's strings.ToValidUTF8 merges runs instead).
func utf8Lossy(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || n > 1 {
			sb.Write(b[i : i+n])
			i += n
			continue
		}
		i += invalidPrefixLen(b[i:])
		sb.WriteRune(utf8.RuneError)
	}
	return sb.String()
}

// invalidPrefixLen is the length of the maximal subpart at the start of b,
// which does not begin a valid sequence: a lead byte and the continuation
// bytes that could still have completed it.
func invalidPrefixLen(b []byte) int {
	c := b[0]
	var need int
	lo, hi := byte(0x80), byte(0xBF)
	switch {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c == 0xED:
		need, hi = 2, 0x9F
	case c >= 0xE1 && c <= 0xEF:
		need = 2
	case c == 0xF0:
		need, lo = 3, 0x90
	case c == 0xF4:
		need, hi = 3, 0x8F
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	default:
		return 1
	}
	i := 1
	for ; i <= need && i < len(b); i++ {
		if b[i] < lo || b[i] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
	}
	return i
}

type replaceDec struct{ old, new string }

func (d replaceDec) chain(toks []string) []string {
	for i, t := range toks {
		toks[i] = strings.ReplaceAll(t, d.old, d.new)
	}
	return toks
}

// byteFallbackDec turns runs of <0xNN> tokens into the text of their bytes,
// or one U+FFFD per token when the bytes are not valid UTF-8
// (decoders/byte_fallback.rs).
type byteFallbackDec struct{}

func (byteFallbackDec) chain(toks []string) []string {
	out := toks[:0:0]
	var bytes []byte
	count := 0
	flush := func() {
		if count == 0 {
			return
		}
		if utf8.Valid(bytes) {
			out = append(out, string(bytes))
		} else {
			for range count {
				out = append(out, "\uFFFD")
			}
		}
		bytes, count = bytes[:0], 0
	}
	for _, t := range toks {
		if b, ok := parseByteToken(t); ok {
			bytes = append(bytes, b)
			count++
			continue
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

func parseByteToken(t string) (byte, bool) {
	if len(t) != 6 || !strings.HasPrefix(t, "<0x") || t[5] != '>' {
		return 0, false
	}
	var v byte
	for _, c := range []byte(t[3:5]) {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | (c - '0')
		case c >= 'A' && c <= 'F':
			v = v<<4 | (c - 'A' + 10)
		case c >= 'a' && c <= 'f':
			v = v<<4 | (c - 'a' + 10)
		default:
			return 0, false
		}
	}
	return v, true
}

type fuseDec struct{}

func (fuseDec) chain(toks []string) []string { return []string{strings.Join(toks, "")} }

// stripDec removes up to start leading and stop trailing copies of content
// from each token (decoders/strip.rs).
type stripDec struct {
	content     rune
	start, stop int
}

func (d stripDec) chain(toks []string) []string {
	for i, t := range toks {
		for k := 0; k < d.start; k++ {
			r, n := utf8.DecodeRuneInString(t)
			if n == 0 || r != d.content {
				break
			}
			t = t[n:]
		}
		for k := 0; k < d.stop; k++ {
			r, n := utf8.DecodeLastRuneInString(t)
			if n == 0 || r != d.content {
				break
			}
			t = t[:len(t)-n]
		}
		toks[i] = t
	}
	return toks
}

// metaspaceDec turns the replacement back into spaces, dropping the one the
// pre-tokenizer prepended at the start of the first token.
type metaspaceDec struct {
	replacement string
	prepend     bool
}

func (d metaspaceDec) chain(toks []string) []string {
	for i, t := range toks {
		if i == 0 && d.prepend {
			t = strings.TrimPrefix(t, d.replacement)
		}
		toks[i] = strings.ReplaceAll(t, d.replacement, " ")
	}
	return toks
}

type seqDec []decoder

func (s seqDec) chain(toks []string) []string {
	for _, d := range s {
		toks = d.chain(toks)
	}
	return toks
}

var supportedDecoders = map[string]bool{"ByteLevel": true, "Replace": true, "ByteFallback": true, "Fuse": true, "Strip": true, "Metaspace": true, "Sequence": true}

type rawDec struct {
	Type     string            `json:"type"`
	Decoders []json.RawMessage `json:"decoders"`
	Pattern  *struct {
		String *string `json:"String"`
	} `json:"pattern"`
	Content        string  `json:"content"`
	Start          int     `json:"start"`
	Stop           int     `json:"stop"`
	Replacement    *string `json:"replacement"`
	PrependScheme  *string `json:"prepend_scheme"`
	AddPrefixSpace *bool   `json:"add_prefix_space"`
}

func parseDecoder(file string, b json.RawMessage) (decoder, error) {
	if len(b) == 0 || string(b) == "null" {
		return nil, nil
	}
	var raw rawDec
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: decoder: %v", file, err)
	}
	switch raw.Type {
	case "ByteLevel":
		return byteLevelDec{}, nil
	case "Replace":
		if raw.Pattern == nil || raw.Pattern.String == nil {
			return nil, fmt.Errorf("tokenizer: %s: decoder Replace: only a String pattern is supported", file)
		}
		return replaceDec{*raw.Pattern.String, raw.Content}, nil
	case "ByteFallback":
		return byteFallbackDec{}, nil
	case "Fuse":
		return fuseDec{}, nil
	case "Strip":
		r, n := utf8.DecodeRuneInString(raw.Content)
		if n == 0 || n != len(raw.Content) {
			return nil, fmt.Errorf("tokenizer: %s: decoder Strip: content %q must be one character", file, raw.Content)
		}
		return stripDec{r, raw.Start, raw.Stop}, nil
	case "Metaspace":
		d := metaspaceDec{replacement: "\u2581", prepend: true}
		if raw.Replacement != nil {
			d.replacement = *raw.Replacement
		}
		if raw.PrependScheme != nil {
			d.prepend = *raw.PrependScheme != "never"
		} else if raw.AddPrefixSpace != nil {
			d.prepend = *raw.AddPrefixSpace
		}
		return d, nil
	case "Sequence":
		var seq seqDec
		for _, sub := range raw.Decoders {
			d, err := parseDecoder(file, sub)
			if err != nil {
				return nil, err
			}
			if d != nil {
				seq = append(seq, d)
			}
		}
		return seq, nil
	}
	return nil, fmt.Errorf("tokenizer: %s: decoder type %q is not supported (supported: %s)", file, raw.Type, sortedNames(supportedDecoders))
}

// StreamDecoder turns ids into text one at a time during generation,
// emitting only complete characters. It follows the Rust library's
// DecodeStream: it decodes a short window of ids and emits what the newest
// id added, holding back while the text ends in U+FFFD (an incomplete UTF-8
// sequence). The window keeps one earlier id as context so decoders that
// strip a leading space (Llama 2) do so only at the very start.
type StreamDecoder struct {
	t           *Tokenizer
	SkipSpecial bool
	ids         []int
	prefix      string
	prefixIndex int
}

// NewStreamDecoder returns a StreamDecoder that keeps special tokens; set
// SkipSpecial to drop them.
func NewStreamDecoder(t *Tokenizer) *StreamDecoder { return &StreamDecoder{t: t} }

// Next adds id and returns the text it completes ("" when it is held back).
func (d *StreamDecoder) Next(id int) string {
	d.ids = append(d.ids, id)
	s := d.t.Decode(d.ids, d.SkipSpecial)
	if len(s) <= len(d.prefix) || strings.HasSuffix(s, "\uFFFD") {
		return ""
	}
	var out string
	if strings.HasPrefix(s, d.prefix) {
		out = s[len(d.prefix):]
	} else {
		out = s // the decoder rewrote earlier text; emit what it says now
	}
	newPrefixIndex := len(d.ids) - d.prefixIndex
	d.ids = append(d.ids[:0], d.ids[d.prefixIndex:]...)
	d.prefix = d.t.Decode(d.ids, d.SkipSpecial)
	d.prefixIndex = newPrefixIndex
	return out
}

// Flush returns text still held back (incomplete UTF-8 at the end of
// generation comes out as U+FFFD) and resets the decoder.
func (d *StreamDecoder) Flush() string {
	s := d.t.Decode(d.ids, d.SkipSpecial)
	out := ""
	if len(s) > len(d.prefix) && strings.HasPrefix(s, d.prefix) {
		out = s[len(d.prefix):]
	}
	d.ids, d.prefix, d.prefixIndex = d.ids[:0], "", 0
	return out
}
