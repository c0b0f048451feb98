package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/tokenizer"
)

// The golden files come from testdata/gen/reference.py (PyTorch), never from tune.
type golden struct {
	Tokens []int `json:"tokens"`
	Greedy struct {
		Prompt    []int `json:"prompt"`
		NewTokens []int `json:"new_tokens"`
	} `json:"greedy"`
	PPL []struct {
		TextFile     string  `json:"text_file"`
		Ctx          int     `json:"ctx"`
		NLLSum       float64 `json:"nll_sum"`
		TokensScored int     `json:"tokens_scored"`
		PPL          float64 `json:"ppl"`
	} `json:"ppl"`
}

func readGolden(t *testing.T, name string) golden {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "golden", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	return g
}

func modelDir(name string) string { return filepath.Join("..", "..", "testdata", "models", name) }

// `tune eval ppl --json` on the reference checkpoints equals exp(mean NLL) of the
// PyTorch reference over the same windows.
func TestEvalPPLMatchesReference(t *testing.T) {
	for _, name := range []string{"qwen3-tied", "llama3"} {
		g := readGolden(t, name)
		if len(g.PPL) == 0 {
			t.Fatalf("%s: golden has no ppl", name)
		}
		for _, p := range g.PPL {
			out, _, err := runCLI(t, "", "eval", "ppl", "--model", modelDir(name),
				"--data", filepath.Join("..", "..", p.TextFile), "--ctx", itoa(p.Ctx), "--json")
			if err != nil {
				t.Fatalf("%s ctx %d: %v", name, p.Ctx, err)
			}
			var res struct {
				PPL    float64 `json:"ppl"`
				NLL    float64 `json:"nll"`
				Tokens int     `json:"tokens"`
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("%s: --json output %q: %v", name, out, err)
			}
			if res.Tokens != p.TokensScored {
				t.Errorf("%s ctx %d: scored %d tokens, reference %d", name, p.Ctx, res.Tokens, p.TokensScored)
			}
			if rel := math.Abs(res.PPL-p.PPL) / p.PPL; rel > 1e-5 {
				t.Errorf("%s ctx %d: ppl %.9g, reference %.9g (rel err %.2g)", name, p.Ctx, res.PPL, p.PPL, rel)
			}
			if want := p.NLLSum / float64(p.TokensScored); math.Abs(res.NLL-want) > 1e-5*math.Abs(want) {
				t.Errorf("%s ctx %d: mean nll %.9g, reference %.9g", name, p.Ctx, res.NLL, want)
			}
		}
	}
}

// Greedy `tune generate` continues the reference prompt with the reference's tokens.
func TestGenerateGreedyMatchesReference(t *testing.T) {
	for _, name := range []string{"qwen3-tied", "qwen3-untied-bf16", "llama3", "qwen2", "mistral"} {
		t.Run(name, func(t *testing.T) {
			g := readGolden(t, name)
			tok, err := tokenizer.Load(modelDir(name))
			if err != nil {
				t.Fatal(err)
			}
			// The prompt travels as text; it must tokenize back to the reference's ids.
			prompt := g.Greedy.Prompt
			addsBOS := tok.AddsBOS()
			if addsBOS {
				prompt = prompt[1:]
			}
			text := tok.Decode(prompt, false)
			if got := tok.Encode(text, true); !equalInts(got, g.Greedy.Prompt) {
				t.Skipf("prompt ids do not survive a text round trip (%v vs %v): not expressible through --prompt", got, g.Greedy.Prompt)
			}
			out, _, err := runCLI(t, "", "generate", "--model", modelDir(name), "--prompt", text,
				"--temperature", "0", "--max-tokens", itoa(len(g.Greedy.NewTokens)))
			if err != nil {
				t.Fatal(err)
			}
			// Stop tokens end generation early; the reference does not stop.
			want := g.Greedy.NewTokens
			stops := map[int]bool{}
			if id, ok := tok.EOS(); ok {
				stops[id] = true
			}
			for i, id := range want {
				if stops[id] {
					want = want[:i]
					break
				}
			}
			if got, w := strings.TrimSuffix(out, "\n"), tok.Decode(want, false); got != w {
				t.Fatalf("generated %q, reference %q", got, w)
			}
		})
	}
}

func TestInspectModelFolder(t *testing.T) {
	out, _, err := runCLI(t, "", "inspect", modelDir("qwen3-untied-bf16"), "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep inspectReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.ModelType != "qwen3" || rep.Kind != "model" {
		t.Errorf("model_type %q kind %q", rep.ModelType, rep.Kind)
	}
	var n int64
	for _, tt := range rep.Tensors {
		e := int64(1)
		for _, d := range tt.Shape {
			e *= int64(d)
		}
		if tt.DType != "BF16" && !strings.HasSuffix(tt.Name, "norm.weight") {
			t.Errorf("%s: dtype %s, want BF16", tt.Name, tt.DType)
		}
		n += e
	}
	if n != rep.Parameters || rep.Parameters == 0 {
		t.Errorf("parameters %d, tensors add up to %d", rep.Parameters, n)
	}
}

func TestTokenizeChat(t *testing.T) {
	out, _, err := runCLI(t, `[{"role":"user","content":"Hi"}]`, "tokenize", "--model", modelDir("qwen3-tied"), "--chat", "--thinking=false", "--json")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(modelDir("qwen3-tied"))
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		IDs []int `json:"ids"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	// Qwen3's template with enable_thinking=False and the generation prompt.
	want := "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
	if got := tok.Decode(res.IDs, false); got != want {
		t.Fatalf("decoded %q, want %q", got, want)
	}
}

// Bad input: one line, naming what is wrong, non-zero exit.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	notST := filepath.Join(dir, "x.safetensors")
	os.WriteFile(notST, []byte("\x05\x00\x00\x00\x00\x00\x00\x00{bad}"), 0o644)
	noTok := filepath.Join(dir, "empty")
	os.Mkdir(noTok, 0o755)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"inspect corrupt file", []string{"inspect", notST}, []string{"x.safetensors"}},
		{"inspect missing", []string{"inspect", filepath.Join(dir, "nope")}, []string{"nope"}},
		{"tokenize no tokenizer", []string{"tokenize", "--model", noTok}, []string{"tokenizer.json"}},
		{"ppl missing data", []string{"eval", "ppl", "--model", modelDir("qwen3-tied"), "--data", filepath.Join(dir, "none.txt")}, []string{"none.txt"}},
		{"ppl bad column", []string{"eval", "ppl", "--model", modelDir("qwen3-tied"), "--data", "../../data/testdata/texts.parquet", "--column", "body"}, []string{"texts.parquet", `no column "body"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runCLI(t, "", tt.args...)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is more than one line: %q", err)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestDataPreviewJSON(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "chat.jsonl")
	rows := `{"messages":[{"role":"user","content":"What is 2+2?"},{"role":"assistant","content":"4."}]}` + "\n" +
		`{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}]}` + "\n"
	if err := os.WriteFile(path, []byte(rows), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, "", "data", "preview", "--data", path, "--model", modelDir("qwen3-tied"), "--json", "-n", "1")
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Examples []struct {
			Row    string `json:"row"`
			IDs    []int  `json:"ids"`
			Labels []int  `json:"labels"`
		} `json:"examples"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Examples) != 1 {
		t.Fatalf("-n 1 gave %d examples", len(res.Examples))
	}
	tok, err := tokenizer.Load(modelDir("qwen3-tied"))
	if err != nil {
		t.Fatal(err)
	}
	e := res.Examples[0]
	var trained, all []int
	for i, l := range e.Labels {
		if l != -100 {
			if l != e.IDs[i] {
				t.Fatalf("label %d at %d is not the token %d", l, i, e.IDs[i])
			}
			trained = append(trained, l)
		}
	}
	all = e.IDs
	// Qwen3's template renders the last assistant turn after an empty think block; the
	// loss covers what the model writes after "<|im_start|>assistant\n", up to <|im_end|>.
	if got, want := tok.Decode(trained, false), "<think>\n\n</think>\n\n4.<|im_end|>"; got != want {
		t.Errorf("trained text %q, want %q", got, want)
	}
	if got, want := tok.Decode(all, false), "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4.<|im_end|>\n"; got != want {
		t.Errorf("text %q, want %q", got, want)
	}
	if !strings.HasSuffix(e.Row, "chat.jsonl line 1") {
		t.Errorf("row %q", e.Row)
	}
}

func TestDataStats(t *testing.T) {
	out, _, err := runCLI(t, "", "data", "stats", "--data", "../../data/testdata/texts.parquet", "--format", "text",
		"--model", modelDir("qwen3-tied"), "--max-seq-len", "32", "--cache-dir", t.TempDir(), "--skip-bad-rows", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Rows          int64 `json:"rows"`
		BadRows       int64 `json:"bad_rows"`
		Tokens        int64 `json:"tokens"`
		TrainedTokens int64 `json:"trained_tokens"`
		Truncated     int64 `json:"truncated"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	// 5000 rows of which one in eight is null (data/testdata/gen_parquet.mjs): skipped.
	if st.Rows != 5000 || st.BadRows != 625 {
		t.Errorf("rows %d, bad rows %d; want 5000 and 625", st.Rows, st.BadRows)
	}
	if st.Tokens == 0 || st.TrainedTokens == 0 || st.Truncated == 0 {
		t.Errorf("stats %+v", st)
	}
}

// inspect reads a GGUF written by quantize.ExportGGUF from a reference checkpoint.
func TestInspectGGUF(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := quantize.ExportGGUF(modelDir("qwen3-tied"), path, "f32"); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, "", "inspect", path, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep inspectReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Kind != "gguf" || rep.Architecture != "qwen3" || rep.Metadata["qwen3.block_count"] != "2" {
		t.Errorf("kind %q arch %q block_count %q", rep.Kind, rep.Architecture, rep.Metadata["qwen3.block_count"])
	}
	// Same parameters as the safetensors folder (tied: no output.weight either way).
	st, _, err := runCLI(t, "", "inspect", modelDir("qwen3-tied"), "--json")
	if err != nil {
		t.Fatal(err)
	}
	var srep inspectReport
	if err := json.Unmarshal([]byte(st), &srep); err != nil {
		t.Fatal(err)
	}
	if rep.Parameters != srep.Parameters || len(rep.Tensors) != len(srep.Tensors) {
		t.Errorf("gguf: %d parameters in %d tensors; safetensors: %d in %d", rep.Parameters, len(rep.Tensors), srep.Parameters, len(srep.Tensors))
	}
}

// --adapter (unmerged) and `tune merge` (folded in) give the same perplexity; the
// adapter is the PEFT-format one the PyTorch reference wrote.
func TestAdapterPPLEqualsMerged(t *testing.T) {
	adapter := filepath.Join("..", "..", "testdata", "adapters", "qwen3-tied-r4")
	merged := filepath.Join(t.TempDir(), "merged")
	if _, _, err := runCLI(t, "", "merge", "--base", modelDir("qwen3-tied"), "--adapter", adapter, "--out", merged, "--dtype", "f32"); err != nil {
		t.Fatal(err)
	}
	ppl := func(args ...string) float64 {
		t.Helper()
		out, _, err := runCLI(t, "", append([]string{"eval", "ppl", "--data", "../../testdata/golden/ppl.txt", "--ctx", "64", "--json"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			PPL float64 `json:"ppl"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatal(err)
		}
		return res.PPL
	}
	base := ppl("--model", modelDir("qwen3-tied"))
	unmerged := ppl("--model", modelDir("qwen3-tied"), "--adapter", adapter)
	folded := ppl("--model", merged)
	if math.Abs(unmerged-folded) > 1e-5*folded {
		t.Errorf("ppl with --adapter %.9g, merged %.9g", unmerged, folded)
	}
	if math.Abs(unmerged-base) < 1e-3*base {
		t.Errorf("the adapter did not change ppl (%.6g vs base %.6g)", unmerged, base)
	}
}
