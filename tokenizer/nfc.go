package tokenizer

import (
	"sort"
	"strings"
	"unicode/utf8"
)

// NFC (Unicode canonical composition) for the NFC normalizer of Qwen2/Qwen3,
// written here because the module takes no dependency on golang.org/x/text.
// It follows UAX #15: full canonical decomposition, canonical ordering of
// combining marks, then canonical composition. Tables: nfc_tables.go.
// Invalid UTF-8 bytes pass through unchanged.

// Hangul syllable constants (Unicode §3.12).
const (
	hangulSBase  = 0xAC00
	hangulLBase  = 0x1100
	hangulVBase  = 0x1161
	hangulTBase  = 0x11A7
	hangulLCount = 19
	hangulVCount = 21
	hangulTCount = 28
	hangulNCount = hangulVCount * hangulTCount
	hangulSCount = hangulLCount * hangulNCount
)

func combiningClass(r rune) uint8 {
	if r < 0x300 {
		return 0
	}
	i := sort.Search(len(cccRanges), func(i int) bool { return cccRanges[i][1] >= int32(r) })
	if i < len(cccRanges) && cccRanges[i][0] <= int32(r) {
		return uint8(cccRanges[i][2])
	}
	return 0
}

// isNFC is the NFC quick check; it answers true only when s is certainly NFC.
func isNFC(s string) bool {
	var last uint8
	for i := 0; i < len(s); {
		c := s[i]
		if c < 0x80 {
			last = 0
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		if r < 0x300 || r < 0x10000 && bmpClass()[r]&cNFC == 0 {
			last = 0
			continue
		}
		if nfcQC[r] != 0 {
			return false
		}
		k := combiningClass(r)
		if k != 0 && last > k {
			return false
		}
		last = k
	}
	return true
}

// nfc returns the NFC form of s.
func nfc(s string) string {
	if isNFC(s) {
		return s
	}
	// Decompose into runes; invalid bytes are kept as negative values
	// (-1-byte) so they can be written back verbatim and act as starters.
	buf := make([]rune, 0, len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			buf = append(buf, -1-rune(s[i]))
			i++
			continue
		}
		i += n
		buf = appendDecomposed(buf, r)
	}
	// Canonical ordering: stable sort each run of non-starters by class.
	for i := 0; i < len(buf); {
		if cls(buf[i]) == 0 {
			i++
			continue
		}
		j := i
		for j < len(buf) && cls(buf[j]) != 0 {
			j++
		}
		run := buf[i:j]
		sort.SliceStable(run, func(a, b int) bool { return cls(run[a]) < cls(run[b]) })
		i = j
	}
	// Canonical composition.
	out := buf[:0]
	starter := -1 // index in out of the last starter, -1 if none
	var lastCls uint8
	for _, r := range buf {
		k := cls(r)
		if starter >= 0 {
			// r may compose with the starter if not blocked: either
			// adjacent to it, or the previous kept mark has a lower class.
			adjacent := len(out)-1 == starter
			if adjacent || (lastCls != 0 && lastCls < k) || (lastCls == 0 && adjacent) {
				if c, ok := compose(out[starter], r); ok {
					out[starter] = c
					continue
				}
			}
		}
		if k == 0 {
			starter = len(out)
			lastCls = 0
		} else {
			lastCls = k
		}
		out = append(out, r)
	}
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range out {
		if r < 0 {
			b.WriteByte(byte(-1 - r))
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func cls(r rune) uint8 {
	if r < 0 {
		return 0
	}
	return combiningClass(r)
}

func appendDecomposed(buf []rune, r rune) []rune {
	if r >= hangulSBase && r < hangulSBase+hangulSCount {
		si := r - hangulSBase
		buf = append(buf, hangulLBase+si/hangulNCount, hangulVBase+(si%hangulNCount)/hangulTCount)
		if t := si % hangulTCount; t != 0 {
			buf = append(buf, hangulTBase+t)
		}
		return buf
	}
	if d, ok := nfcDecomp[r]; ok {
		for _, x := range d {
			buf = append(buf, x)
		}
		return buf
	}
	return append(buf, r)
}

func compose(a, b rune) (rune, bool) {
	if a < 0 || b < 0 {
		return 0, false
	}
	// Hangul LV and LVT.
	if a >= hangulLBase && a < hangulLBase+hangulLCount && b >= hangulVBase && b < hangulVBase+hangulVCount {
		return hangulSBase + ((a-hangulLBase)*hangulVCount+(b-hangulVBase))*hangulTCount, true
	}
	if a >= hangulSBase && a < hangulSBase+hangulSCount && (a-hangulSBase)%hangulTCount == 0 && b > hangulTBase && b < hangulTBase+hangulTCount {
		return a + (b - hangulTBase), true
	}
	c, ok := nfcCompose[uint64(a)<<21|uint64(b)]
	return c, ok
}
