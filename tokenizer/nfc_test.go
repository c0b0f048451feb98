package tokenizer

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestNFCMatchesICU compares nfc with JavaScript's String.normalize("NFC")
// (ICU) on random mixes of bases, combining marks in and out of canonical
// order, Hangul jamo and syllables, singletons and composition exclusions.
func TestNFCMatchesICU(t *testing.T) {
	pieces := []string{
		"a", "e", "o", "u", "A", "E", "O", "U", "n", "s", "i", "w", "y", "z",
		"\u0300", "\u0301", "\u0302", "\u0303", "\u0308", "\u030a", "\u030c", "\u0323", "\u0327", "\u0328", "\u031b", "\u0345", "\u0344",
		"é", "Å", "ǖ", "ệ", "ở", "\u212b", "\u2126", "\u0958", "\u2adc", "\u0f73", "\u0344",
		"\u1100", "\u1161", "\u11a8", "\u1112", "\u1175", "\u11c2", "가", "각", "한",
		"α", "\u0313", "\u0342", "ῷ", "\u05b4", "\u05bc", "\u05d9", "\u0651", "\u064e", "ا",
		"\u0915", "\u093c", "\u0928", "\u0bc6", "\u0bbe", "\u0d46", "\u0d3e", "\u1025", "\u102e", "\u0b47", "\u0b56",
		" ", "x", "中", "😀", "\u0338", "=", "<",
	}
	rng := rand.New(rand.NewPCG(3, 4))
	texts := []string{"", "cafe\u0301", "\u1100\u1161\u11a8", "a\u0323\u0301\u0308", "\u0958\u0301"}
	for range 3000 {
		var sb strings.Builder
		for range 1 + rng.IntN(10) {
			sb.WriteString(pieces[rng.IntN(len(pieces))])
		}
		texts = append(texts, sb.String())
	}
	oracleDir(t, "qwen3") // skips when the oracle is not installed
	want := runOracle(t, texts, "nfc")["nfc"].NFC
	if len(want) != len(texts) {
		t.Fatalf("oracle returned %d strings for %d", len(want), len(texts))
	}
	fails := 0
	for i, s := range texts {
		got := nfc(s)
		if got != want[i] {
			fails++
			if fails < 10 {
				t.Errorf("nfc(%+q) = %+q, ICU %+q", s, got, want[i])
			}
		}
		if isNFC(s) && got != s {
			t.Errorf("isNFC(%+q) but nfc changes it", s)
		}
	}
	// Invalid UTF-8 passes through unchanged around composed text.
	if got := nfc("\xffe\u0301\xfe"); got != "\xffé\xfe" || utf8.ValidString(got) {
		t.Errorf("nfc with invalid bytes = %+q", got)
	}
}
