package tokenizer

import (
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedToken is one entry of tokenizer.json's added_tokens.
type addedToken struct {
	id         int
	content    string
	special    bool
	singleWord bool
	lstrip     bool
	rstrip     bool
	normalized bool
}

// addedMatcher finds added tokens in text the way the tokenizers library's
// AddedVocabulary does: leftmost-longest matches (its aho-corasick uses
// MatchKind::LeftmostLongest), with single_word, lstrip and rstrip applied
// to each match.
type addedMatcher struct {
	first [256][]addedPattern // by first byte, longest first
	any   bool
	// lead is the first byte of every pattern when they all share one
	// (all of Qwen's and Llama's start with '<'), else -1.
	lead int
}

type addedPattern struct {
	s   string // the text matched (normalized content for normalized tokens)
	tok *addedToken
}

func newAddedMatcher(toks []*addedToken, norm normalizer) addedMatcher {
	var m addedMatcher
	for _, a := range toks {
		s := a.content
		if norm != nil {
			s = norm.normalize(s)
		}
		if s == "" {
			continue
		}
		m.first[s[0]] = append(m.first[s[0]], addedPattern{s, a})
		m.any = true
	}
	m.lead = -1
	for i := range m.first {
		l := m.first[i]
		if len(l) == 0 {
			continue
		}
		sort.SliceStable(l, func(a, b int) bool { return len(l[a].s) > len(l[b].s) })
		if m.lead == -1 {
			m.lead = i
		} else {
			m.lead = -2
		}
	}
	if m.lead < 0 {
		m.lead = -1
	}
	return m
}

// segment is a piece of the input: either an added token (id >= 0) or text
// still to be normalized and tokenized (id < 0).
type segment struct {
	text string
	id   int
}

// split appends the segments of s to dst.
func (m *addedMatcher) split(dst []segment, s string) []segment {
	if !m.any {
		return append(dst, segment{s, -1})
	}
	textStart := 0 // start of the pending non-token text
	for i := 0; i < len(s); {
		if m.lead >= 0 {
			k := strings.IndexByte(s[i:], byte(m.lead))
			if k < 0 {
				break
			}
			i += k
		}
		cands := m.first[s[i]]
		var hit *addedPattern
		for k := range cands {
			if strings.HasPrefix(s[i:], cands[k].s) {
				hit = &cands[k]
				break
			}
		}
		if hit == nil {
			i++
			continue
		}
		start, stop := i, i+len(hit.s)
		a := hit.tok
		if a.singleWord {
			before := start == 0 || !endsWithWord(s[:start])
			after := stop == len(s) || !startsWithWord(s[stop:])
			if !before || !after {
				i = stop
				continue
			}
		}
		if a.lstrip {
			for start > textStart {
				r, n := utf8.DecodeLastRuneInString(s[textStart:start])
				if !unicode.Is(unicode.White_Space, r) {
					break
				}
				start -= n
			}
		}
		if a.rstrip {
			for stop < len(s) {
				r, n := utf8.DecodeRuneInString(s[stop:])
				if !unicode.Is(unicode.White_Space, r) {
					break
				}
				stop += n
			}
		}
		if start > textStart {
			dst = append(dst, segment{s[textStart:start], -1})
		}
		dst = append(dst, segment{s[start:stop], a.id})
		textStart, i = stop, stop
	}
	if textStart < len(s) {
		dst = append(dst, segment{s[textStart:], -1})
	}
	return dst
}

func isWordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' }

func endsWithWord(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return isWordRune(r)
}

func startsWithWord(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return isWordRune(r)
}
