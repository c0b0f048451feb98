package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// The split patterns tune knows. Go's regexp has no look-ahead and no
// (?i:...) groups that these need, so each is a hand-written scanner that
// follows the regex's alternatives in order, as the backtracking Oniguruma
// engine of tokenizers does. Character classes: \p{L} = unicode.Letter,
// \p{N} = unicode.Number, \s = White_Space (Oniguruma's Unicode \s).
const (
	patternQwen2  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	patternLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	patternGPT2   = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
)

type splitKind int

const (
	splitQwen2 splitKind = iota
	splitLlama3
	splitGPT2
)

var knownPatterns = map[string]splitKind{
	patternQwen2:  splitQwen2,
	patternLlama3: splitLlama3,
	patternGPT2:   splitGPT2,
}

var knownPatternNames = "the Qwen2/Qwen3 pattern, the Llama 3 pattern (\\p{N}{1,3}), the GPT-2 pattern"

// Character classes, bit flags.
const (
	cL   = 1 << iota // \p{L}
	cN               // \p{N}
	cS               // \s
	cNL              // \r or \n
	cNFC             // NFC_Quick_Check is not Yes, or combining class is not 0
)

var asciiClass [128]uint8

func init() {
	for r := range rune(128) {
		asciiClass[r] = classOfSlow(r)
	}
}

func classOfSlow(r rune) uint8 {
	var c uint8
	if unicode.IsLetter(r) {
		c |= cL
	}
	if unicode.IsNumber(r) {
		c |= cN
	}
	if unicode.Is(unicode.White_Space, r) {
		c |= cS
	}
	if r == '\r' || r == '\n' {
		c |= cNL
	}
	return c
}

// runeAt decodes the rune at s[i:]; invalid bytes decode as U+FFFD of width
// 1, which classes as punctuation (So).
func runeAt(s string, i int) (rune, int, uint8) {
	b := s[i]
	if b < utf8.RuneSelf {
		return rune(b), 1, asciiClass[b]
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	if r < 0x10000 {
		return r, n, bmpClass()[r]
	}
	return r, n, classOfSlow(r)
}

// bmpClass is the class of every BMP rune, built on first use (a few ms)
// because three unicode table lookups per rune dominated non-ASCII text.
var bmpClass = sync.OnceValue(func() *[0x10000]uint8 {
	var t [0x10000]uint8
	for r := range rune(0x10000) {
		t[r] = classOfSlow(r)
		if nfcQC[r] != 0 || combiningClass(r) != 0 {
			t[r] |= cNFC
		}
	}
	return &t
})

// contraction returns the length of 's|'t|'re|'ve|'m|'ll|'d at s (which
// starts with '\”), or 0. fold makes it case-insensitive: under Unicode
// simple case folding the only non-ASCII character that folds to one of
// these letters is U+017F LATIN SMALL LETTER LONG S (to s).
func contraction(s string, fold bool) int {
	if len(s) < 2 {
		return 0
	}
	lower := func(b byte) byte {
		if fold && 'A' <= b && b <= 'Z' {
			return b + 32
		}
		return b
	}
	c1 := lower(s[1])
	switch c1 {
	case 's', 't', 'm', 'd':
		return 2
	case 'r', 'v', 'l':
		if len(s) >= 3 {
			c2 := lower(s[2])
			if (c1 == 'r' || c1 == 'v') && c2 == 'e' || c1 == 'l' && c2 == 'l' {
				return 3
			}
		}
	}
	if fold && strings.HasPrefix(s[1:], "\u017f") {
		return 3
	}
	return 0
}

// scanWhile returns the end of the run of runes from i whose class has any
// bit of want and none of avoid.
func scanWhile(s string, i int, want, avoid uint8) int {
	for i < len(s) {
		_, n, c := runeAt(s, i)
		if c&want == 0 || c&avoid != 0 {
			break
		}
		i += n
	}
	return i
}

func scanPunct(s string, i int) int {
	for i < len(s) {
		_, n, c := runeAt(s, i)
		if c&(cL|cN|cS) != 0 {
			break
		}
		i += n
	}
	return i
}

// matchAt returns the end of the match starting at i.
func matchAt(kind splitKind, s string, i int) int {
	r, n, c := runeAt(s, i)
	if r == '\'' {
		if l := contraction(s[i:], kind != splitGPT2); l > 0 {
			return i + l
		}
	}
	var nc uint8 // class of the next rune
	nn := 0
	if i+n < len(s) {
		_, nn, nc = runeAt(s, i+n)
	}
	if kind == splitGPT2 {
		p, pc := i, c
		if r == ' ' && nn > 0 {
			p, pc = i+1, nc
		}
		switch {
		case pc&cL != 0: // ` ?\p{L}+`
			return scanWhile(s, p, cL, 0)
		case pc&cN != 0: // ` ?\p{N}+`
			return scanWhile(s, p, cN, 0)
		case pc&(cS) == 0: // ` ?[^\s\p{L}\p{N}]+`
			return scanPunct(s, p)
		}
	} else {
		// [^\r\n\p{L}\p{N}]?\p{L}+
		if c&cL != 0 {
			return scanWhile(s, i+n, cL, 0)
		}
		if c&(cN|cNL) == 0 && nc&cL != 0 {
			return scanWhile(s, i+n+nn, cL, 0)
		}
		// \p{N} or \p{N}{1,3}
		if c&cN != 0 {
			j := i + n
			if kind == splitLlama3 {
				for k := 0; k < 2 && j < len(s); k++ {
					_, m, cc := runeAt(s, j)
					if cc&cN == 0 {
						break
					}
					j += m
				}
			}
			return j
		}
		// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
		p, pc := i, c
		if r == ' ' && nn > 0 {
			p, pc = i+1, nc
		}
		if pc&(cS|cL|cN) == 0 && p < len(s) {
			j := scanPunct(s, p)
			for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
				j++
			}
			return j
		}
		// Here c is \s. \s*[\r\n]+ : the longest whitespace run from i,
		// cut just after its last \r or \n.
		j := i
		lastNL := -1
		for j < len(s) {
			_, m, cc := runeAt(s, j)
			if cc&cS == 0 {
				break
			}
			if cc&cNL != 0 {
				lastNL = j
			}
			j += m
		}
		if lastNL >= 0 {
			return lastNL + 1
		}
		return wsEnd(s, i, j)
	}
	// GPT-2, c is \s.
	return wsEnd(s, i, scanWhile(s, i, cS, 0))
}

// wsEnd resolves \s+(?!\S)|\s+ for the whitespace run s[i:j]: at the end of
// the text the whole run; else the run less its last rune (which then leads
// the next piece), unless that would leave nothing.
func wsEnd(s string, i, j int) int {
	if j == len(s) {
		return j
	}
	_, last := utf8.DecodeLastRuneInString(s[i:j])
	if j-last > i {
		return j - last
	}
	return j
}

// preTokenizer splits normalized text into the pieces the model encodes.
type preTokenizer interface {
	// split appends the pieces of s to dst; first says s starts the input.
	split(dst []string, s string, first bool, sc *scratch) []string
}

type seqPre []preTokenizer

func (p seqPre) split(dst []string, s string, first bool, sc *scratch) []string {
	// Stage by stage over two reused buffers.
	cur := append(sc.bufA[:0], s)
	next := sc.bufB[:0]
	for _, stage := range p {
		next = next[:0]
		for i, piece := range cur {
			next = stage.split(next, piece, first && i == 0, sc)
		}
		cur, next = next, cur
	}
	dst = append(dst, cur...)
	sc.bufA, sc.bufB = cur[:0], next[:0]
	return dst
}

type patternPre struct{ kind splitKind }

func (p patternPre) split(dst []string, s string, _ bool, _ *scratch) []string {
	for i := 0; i < len(s); {
		j := matchAt(p.kind, s, i)
		dst = append(dst, s[i:j])
		i = j
	}
	return dst
}

// byteLevelPre is the ByteLevel pre-tokenizer. The byte-to-unicode mapping
// itself is not done here: the model works on raw bytes (bpe.byteLevel).
type byteLevelPre struct {
	addPrefixSpace bool
	useRegex       bool
}

func (p byteLevelPre) split(dst []string, s string, _ bool, sc *scratch) []string {
	if p.addPrefixSpace && !strings.HasPrefix(s, " ") {
		s = " " + s
	}
	if p.useRegex {
		return patternPre{splitGPT2}.split(dst, s, false, sc)
	}
	return append(dst, s)
}

// metaspacePre is the Metaspace pre-tokenizer (pre_tokenizers/metaspace.rs).
type metaspacePre struct {
	replacement string
	prepend     string // "always", "first", "never"
	split_      bool
}

func (p metaspacePre) split(dst []string, s string, first bool, _ *scratch) []string {
	s = strings.ReplaceAll(s, " ", p.replacement)
	if !strings.HasPrefix(s, p.replacement) && (p.prepend == "always" || p.prepend == "first" && first) {
		s = p.replacement + s
	}
	if !p.split_ {
		return append(dst, s)
	}
	// Split on the replacement, each piece keeping it at its front
	// (SplitDelimiterBehavior::MergedWithNext).
	for start := 0; start < len(s); {
		_, n := utf8.DecodeRuneInString(s[start:])
		k := strings.Index(s[start+n:], p.replacement)
		if k < 0 {
			return append(dst, s[start:])
		}
		dst = append(dst, s[start:start+n+k])
		start += n + k
	}
	return dst
}

var supportedPreTokenizers = map[string]bool{"Sequence": true, "Split": true, "ByteLevel": true, "Metaspace": true}

type rawPre struct {
	Type          string            `json:"type"`
	Pretokenizers []json.RawMessage `json:"pretokenizers"`
	Pattern       *struct {
		Regex  *string `json:"Regex"`
		String *string `json:"String"`
	} `json:"pattern"`
	Behavior       string  `json:"behavior"`
	Invert         bool    `json:"invert"`
	AddPrefixSpace *bool   `json:"add_prefix_space"`
	UseRegex       *bool   `json:"use_regex"`
	Replacement    *string `json:"replacement"`
	PrependScheme  *string `json:"prepend_scheme"`
	Split          *bool   `json:"split"`
}

// parsePreTokenizer also reports whether a ByteLevel stage is present (it
// must be the last stage: the model then takes raw bytes).
func parsePreTokenizer(file string, b json.RawMessage) (preTokenizer, bool, error) {
	if len(b) == 0 || string(b) == "null" {
		return nil, false, nil
	}
	var raw rawPre
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, false, fmt.Errorf("tokenizer: %s: pre_tokenizer: %v", file, err)
	}
	switch raw.Type {
	case "Sequence":
		var seq seqPre
		bl := false
		for i, sub := range raw.Pretokenizers {
			if bl {
				return nil, false, fmt.Errorf("tokenizer: %s: pre_tokenizer.pretokenizers[%d]: a stage after ByteLevel is not supported", file, i)
			}
			p, isBL, err := parsePreTokenizer(file, sub)
			if err != nil {
				return nil, false, err
			}
			// A ByteLevel stage that neither splits nor adds a space
			// (Qwen's, Llama 3's) only marks the model as byte-level.
			if p != nil && p != (byteLevelPre{}) {
				seq = append(seq, p)
			}
			bl = isBL
		}
		switch len(seq) {
		case 0:
			return nil, bl, nil
		case 1:
			return seq[0], bl, nil
		}
		return seq, bl, nil
	case "Split":
		if raw.Pattern == nil || raw.Pattern.Regex == nil {
			return nil, false, fmt.Errorf("tokenizer: %s: pre_tokenizer Split: only a Regex pattern is supported (supported regexes: %s)", file, knownPatternNames)
		}
		kind, ok := knownPatterns[*raw.Pattern.Regex]
		if !ok {
			return nil, false, fmt.Errorf("tokenizer: %s: pre_tokenizer Split: regex %q is not supported (supported: %s)", file, *raw.Pattern.Regex, knownPatternNames)
		}
		if raw.Behavior != "Isolated" || raw.Invert {
			return nil, false, fmt.Errorf("tokenizer: %s: pre_tokenizer Split: behavior %q invert %v is not supported (supported: Isolated, invert false)", file, raw.Behavior, raw.Invert)
		}
		return patternPre{kind}, false, nil
	case "ByteLevel":
		p := byteLevelPre{addPrefixSpace: true, useRegex: true} // the Rust defaults
		if raw.AddPrefixSpace != nil {
			p.addPrefixSpace = *raw.AddPrefixSpace
		}
		if raw.UseRegex != nil {
			p.useRegex = *raw.UseRegex
		}
		if p == (byteLevelPre{}) {
			return nil, true, nil
		}
		return p, true, nil
	case "Metaspace":
		p := metaspacePre{replacement: "\u2581", prepend: "always", split_: true}
		if raw.Replacement != nil {
			p.replacement = *raw.Replacement
		}
		if raw.PrependScheme != nil {
			p.prepend = *raw.PrependScheme
		} else if raw.AddPrefixSpace != nil && !*raw.AddPrefixSpace {
			p.prepend = "never"
		}
		if raw.Split != nil {
			p.split_ = *raw.Split
		}
		if p.replacement == "" {
			return nil, false, fmt.Errorf("tokenizer: %s: pre_tokenizer Metaspace: empty replacement", file)
		}
		return p, false, nil
	}
	return nil, false, fmt.Errorf("tokenizer: %s: pre_tokenizer type %q is not supported (supported: %s)", file, raw.Type, sortedNames(supportedPreTokenizers))
}

// The GPT-2 byte-to-unicode table (bytes_to_unicode in GPT-2's encoder.py):
// printable bytes map to themselves, the others to U+0100 onwards in order.
var (
	byteToRune [256]rune
	runeToByte [324]int16
)

func init() {
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	n := rune(0)
	for b := range 256 {
		if b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF {
			byteToRune[b] = rune(b)
		} else {
			byteToRune[b] = 256 + n
			n++
		}
		runeToByte[byteToRune[b]] = int16(b)
	}
}

func isWhiteSpace(r rune) bool { return unicode.Is(unicode.White_Space, r) }
