package eval

import (
	"encoding/json"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/tunellm/tune/tokenizer"
)

func TestMMLUPromptFormat(t *testing.T) {
	items, err := LoadItems("mmlu", "testdata/mmlu_sample.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	// harness: description "The following are multiple choice questions (with answers) about
	// {{subject}}.\n\n" (subject with "_" → " "), doc_to_text "{{question.strip()}}\nA. {{choices[0]}}
	// \nB. ...\nAnswer:", choices " A" .. " D".
	want := "The following are multiple choice questions (with answers) about elementary mathematics.\n\n" +
		"What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 23\nAnswer:"
	if got := Context("mmlu", items[0], nil); got != want {
		t.Errorf("prompt\n%q\nwant\n%q", got, want)
	}
	dev, err := LoadItems("mmlu", "testdata/mmlu_dev.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	shots := FewShot("mmlu", items, 0, dev, false, true, 2, 0)
	want = "The following are multiple choice questions (with answers) about elementary mathematics.\n\n" +
		"What is 1 + 1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n" +
		"What is 3 - 1?\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: C\n\n" +
		"What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 23\nAnswer:"
	if got := Context("mmlu", items[0], shots); got != want {
		t.Errorf("2-shot prompt\n%q\nwant\n%q", got, want)
	}
	if items[0].Choices[items[0].Gold] != "B" {
		t.Errorf("gold %v", items[0])
	}
}

func TestHellaswagPreprocess(t *testing.T) {
	tests := []struct{ in, want string }{
		// strip; " [title]" → ". "; "[...]" removed; "  " → " " once
		{"  [header] How to grow tomatoes [title] Choose a sunny  spot. ", " How to grow tomatoes. Choose a sunny spot."},
		{"[step] in spring.  Water daily.", " in spring. Water daily."},
		{"a [b] c [d]e", "a c e"},
		{"x    y", "x  y"}, // one replace pass, as Python's str.replace
		{"no brackets", "no brackets"},
	}
	for _, tt := range tests {
		if got := HellaswagPreprocess(tt.in); got != tt.want {
			t.Errorf("%q → %q, want %q", tt.in, got, tt.want)
		}
	}
	items, err := LoadItems("hellaswag", "testdata/hellaswag_sample.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	// ctx_b.capitalize() lower-cases the rest: "YOU should Plant them" → "You should plant them"
	want := "Home and Garden: How to grow tomatoes. Choose a sunny spot. You should plant them"
	if items[1].Query != want || items[1].Gold != 0 || items[1].Choices[3] != "underwater. forever" {
		t.Errorf("doc %+v\nwant query %q", items[1], want)
	}
}

func TestGSM8KFilters(t *testing.T) {
	tests := []struct {
		resp, strict, flex string
		ref                string
		strictOK, flexOK   bool
	}{
		{"She has 3 + 4 = 7 apples.\n#### 7", "7", "7", "3+4=7\n#### 7", true, true},
		{"The answer is $1,234.", "[invalid]", "$1,234.", "#### 1234", false, true},
		{"#### -5.", "-5.", "-5.", "#### -5", true, true},
		{"#### 12\n#### 13", "12", "13", "#### 12", true, false},
		{"no number", "[invalid]", "[invalid]", "#### 3", false, false},
		{"7 then 42", "[invalid]", "42", "#### 42", false, true},
	}
	for _, tt := range tests {
		s, f := GSM8KStrict(tt.resp), GSM8KFlexible(tt.resp)
		if s != tt.strict || f != tt.flex {
			t.Errorf("%q: strict %q flexible %q, want %q %q", tt.resp, s, f, tt.strict, tt.flex)
		}
		if GSM8KExactMatch(s, tt.ref) != tt.strictOK || GSM8KExactMatch(f, tt.ref) != tt.flexOK {
			t.Errorf("%q vs %q: strict %v flexible %v, want %v %v", tt.resp, tt.ref, GSM8KExactMatch(s, tt.ref), GSM8KExactMatch(f, tt.ref), tt.strictOK, tt.flexOK)
		}
	}
	if got := CutAtStops(" 3 apples.\n\nQuestion: next", GSM8KStops); got != " 3 apples." {
		t.Errorf("cut %q", got)
	}
}

func TestChoiceScoresAndStderr(t *testing.T) {
	// acc_norm divides by characters: "é" is 1 character (2 bytes)
	acc, norm := ChoiceScores([]float64{-4, -5}, []string{"éé", "abcde"}, 1)
	if acc != 0 || norm != 1 { // -2 vs -1
		t.Errorf("acc %v acc_norm %v", acc, norm)
	}
	acc, norm = ChoiceScores([]float64{-3, -3}, []string{"a", "a"}, 0) // ties: first
	if acc != 1 || norm != 1 {
		t.Errorf("ties: acc %v acc_norm %v", acc, norm)
	}
	m := MeanStderr([]float64{1, 0, 1, 1})
	if m.Value != 0.75 || math.Abs(m.Stderr-math.Sqrt(0.75*0.25/3)) > 1e-12 {
		t.Errorf("%+v, want 0.75 ± sqrt(p(1-p)/(n-1))", m)
	}
}

func TestEncodePair(t *testing.T) {
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cont := EncodePair(tok, "Answer: \n", "B")
	if string(bytesOf(ctx)) != "Answer:" || string(bytesOf(cont)) != " \nB" {
		t.Errorf("ctx %q cont %q", bytesOf(ctx), bytesOf(cont))
	}
}

func bytesOf(ids []int) []byte {
	b := make([]byte, len(ids))
	for i, id := range ids {
		b[i] = byte(id)
	}
	return b
}

// TestBenchGolden checks contexts, choice log-likelihoods, acc and acc_norm
// against testdata/gen/eval_reference.py (PyTorch on qwen3-tied).
func TestBenchGolden(t *testing.T) {
	b, err := os.ReadFile("../testdata/golden/eval-bench-qwen3-tied.json")
	if err != nil {
		t.Skip("golden missing: run /usr/bin/python3 testdata/gen/eval_reference.py")
	}
	type gItems struct {
		Items []struct {
			Context string
			LLs     []float64 `json:"lls"`
		}
		Acc     Metric `json:"acc"`
		AccNorm Metric `json:"acc_norm"`
	}
	var g map[string]json.RawMessage
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	m := loadTest(t, "")
	s := &Scorer{M: m, Cfg: m.Config, Tok: tok}
	dev, err := LoadItems("mmlu", "testdata/mmlu_dev.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		key, task, file string
		shots           int
		fewshot         []Item
	}{
		{"mmlu", "mmlu", "mmlu_sample.jsonl", 0, nil},
		{"mmlu_dev_1shot", "mmlu", "mmlu_sample.jsonl", 1, dev},
		{"arc", "arc", "arc_sample.jsonl", 0, nil},
		{"hellaswag", "hellaswag", "hellaswag_sample.jsonl", 0, nil},
		{"mcq", "mcq", "mcq_sample.jsonl", 0, nil},
	}
	var maxDiff float64
	for _, c := range cases {
		var want gItems
		if err := json.Unmarshal(g[c.key], &want); err != nil {
			t.Fatal(c.key, err)
		}
		items, err := LoadItems(c.task, "testdata/"+c.file)
		if err != nil {
			t.Fatal(err)
		}
		for i, it := range items {
			shots := FewShot(c.task, items, i, c.fewshot, false, true, c.shots, 0)
			ctx := Context(c.task, it, shots)
			if ctx != want.Items[i].Context {
				t.Errorf("%s item %d: context\n%q\nwant\n%q", c.key, i, ctx, want.Items[i].Context)
			}
			for j, ch := range it.Choices {
				ll, _, err := s.LogLikelihood(ctx, " "+ch)
				if err != nil {
					t.Fatal(err)
				}
				d := math.Abs(ll - want.Items[i].LLs[j])
				maxDiff = max(maxDiff, d)
				if d > 1e-3 {
					t.Errorf("%s item %d choice %d: ll %.6f, want %.6f", c.key, i, j, ll, want.Items[i].LLs[j])
				}
			}
		}
		r, err := Bench(s, items, BenchOptions{Task: c.task, Shots: c.shots, FewShot: c.fewshot})
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Metrics["acc"]; got.Value != want.Acc.Value || math.Abs(got.Stderr-want.Acc.Stderr) > 1e-12 {
			t.Errorf("%s: acc %+v, want %+v", c.key, got, want.Acc)
		}
		if got, ok := r.Metrics["acc_norm"]; c.task != "mmlu" && (!ok || got.Value != want.AccNorm.Value) {
			t.Errorf("%s: acc_norm %+v, want %+v", c.key, got, want.AccNorm)
		}
		t.Logf("%s: acc %.4f ± %.4f acc_norm %.4f", c.key, r.Metrics["acc"].Value, r.Metrics["acc"].Stderr, r.Metrics["acc_norm"].Value)
	}
	t.Logf("max |ll - PyTorch| = %.3g nats", maxDiff)
}

func TestLoadItemsErrors(t *testing.T) {
	tests := []struct{ task, file, want string }{
		{"mcq", "bad_answer.jsonl", `bad_answer.jsonl line 1: answer index 2 out of range [0,2)`},
		{"mcq", "bad_empty.jsonl", `bad_empty.jsonl line 1: no choices`},
		{"mcq", "bad_missing.jsonl", `bad_missing.jsonl line 1: no column "choices" (columns: question, options, answer)`},
		{"arc", "mcq_sample.jsonl", `no column "answerKey"`},
		{"nope", "mcq_sample.jsonl", `unknown task "nope" (tasks: arc, gsm8k, hellaswag, mcq, mmlu)`},
	}
	for _, tt := range tests {
		_, err := LoadItems(tt.task, "testdata/"+tt.file)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s %s: %v, want %q", tt.task, tt.file, err, tt.want)
		}
	}
}

// TestGSM8KGenerateGolden checks greedy generation with harness's stop
// handling against eval_reference.py's loop over the PyTorch forward.
func TestGSM8KGenerateGolden(t *testing.T) {
	b, err := os.ReadFile("../testdata/golden/eval-bench-qwen3-tied.json")
	if err != nil {
		t.Skip("golden missing: run /usr/bin/python3 testdata/gen/eval_reference.py")
	}
	var g struct {
		G struct {
			MaxGen int `json:"max_gen_toks"`
			Items  []struct {
				Context  string
				Response string
			}
		} `json:"gsm8k_1shot"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	m := loadTest(t, "")
	s := &Scorer{M: m, Cfg: m.Config, Tok: tok, MaxGen: g.G.MaxGen}
	items, err := LoadItems("gsm8k", "testdata/gsm8k_sample.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != len(g.G.Items) {
		t.Fatalf("%d items, golden %d", len(items), len(g.G.Items))
	}
	for i, it := range items {
		ctx := Context("gsm8k", it, FewShot("gsm8k", items, i, items, true, true, 1, 0))
		if ctx != g.G.Items[i].Context {
			t.Errorf("item %d: context %q, want %q", i, ctx, g.G.Items[i].Context)
		}
		resp, err := s.GenerateUntil(ctx, GSM8KStops)
		if err != nil {
			t.Fatal(err)
		}
		if resp != g.G.Items[i].Response {
			t.Errorf("item %d: response %q, want %q", i, resp, g.G.Items[i].Response)
		}
	}
	r, err := Bench(s, items, BenchOptions{Task: "gsm8k", Shots: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Metrics) != 2 || r.Metrics["exact_match,strict-match"].Value != 0 {
		t.Errorf("metrics %+v", r.Metrics)
	}
}

// The Parquet copies (DuckDB, Hub column types: list<string>, struct of lists,
// int64) give the same items as the JSONL fixtures.
func TestLoadItemsParquet(t *testing.T) {
	for _, task := range []string{"mmlu", "arc"} {
		pq, err := LoadItems(task, "testdata/"+task+"_sample.parquet")
		if err != nil {
			t.Fatal(err)
		}
		js, err := LoadItems(task, "testdata/"+task+"_sample.jsonl")
		if err != nil {
			t.Fatal(err)
		}
		if len(pq) != len(js) || len(pq) == 0 {
			t.Fatalf("%s: %d parquet items, %d jsonl", task, len(pq), len(js))
		}
		for i := range pq {
			pq[i].Ref, js[i].Ref = "", ""
			if !reflect.DeepEqual(pq[i], js[i]) {
				t.Errorf("%s item %d: parquet %+v, jsonl %+v", task, i, pq[i], js[i])
			}
		}
	}
	if _, err := LoadItems("hellaswag", "testdata/arc_sample.parquet"); err == nil || !strings.Contains(err.Error(), `arc_sample.parquet: no column "activity_label" (columns: id, question, choices, answerKey)`) {
		t.Errorf("missing parquet column: %v", err)
	}
}
