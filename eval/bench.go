package eval

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/tunellm/tune/data"
)

// Benchmarks follow EleutherAI/lm-evaluation-harness task definitions
// (lm_eval/tasks/{mmlu,arc,hellaswag,gsm8k}) over the Hub's Parquet schemas:
// the same prompt strings, target delimiter " ", few-shot delimiter "\n\n",
// the same metrics. What differs: which few-shot examples are drawn (harness
// uses Python's random.Random; we draw with a seeded PCG, or take the first K
// of --fewshot-data for mmlu and gsm8k as harness's first_n sampler does).

// BenchTasks lists the task names Bench accepts.
var BenchTasks = []string{"arc", "gsm8k", "hellaswag", "mcq", "mmlu"}

// Item is one benchmark document after the task's doc processing.
type Item struct {
	Ref     string   // where it came from, for errors
	Subject string   // mmlu: subject with "_" → " "
	Query   string   // doc_to_text
	Choices []string // doc_to_choice (without the target delimiter)
	Gold    int      // index into Choices
	Answer  string   // gsm8k: doc_to_target (the full solution with "#### N")
}

// Target is doc_to_target rendered as the few-shot examples show it.
func (it Item) Target() string {
	if it.Choices == nil {
		return it.Answer
	}
	return it.Choices[it.Gold]
}

// taskColumns are the columns each task reads.
var taskColumns = map[string][]string{
	"mmlu":      {"question", "subject", "choices", "answer"},
	"arc":       {"question", "choices", "answerKey"},
	"hellaswag": {"activity_label", "ctx_a", "ctx_b", "endings", "label"},
	"gsm8k":     {"question", "answer"},
	"mcq":       {"question", "choices", "answer"},
}

func unknownTask(task string) error {
	return fmt.Errorf("eval: bench: unknown task %q (tasks: %s)", task, strings.Join(BenchTasks, ", "))
}

// LoadItems reads a task's documents from a Parquet, Arrow or JSONL file.
func LoadItems(task, path string) ([]Item, error) {
	cols, ok := taskColumns[task]
	if !ok {
		return nil, unknownTask(task)
	}
	src, err := data.Open(path)
	if err != nil {
		return nil, err
	}
	var items []Item
	err = src.Rows(cols, func(ref data.RowRef, row data.Row) error {
		for _, c := range cols {
			if _, ok := row[c]; !ok {
				have := make([]string, 0, len(row))
				for k := range row {
					have = append(have, k)
				}
				slices.Sort(have)
				return fmt.Errorf("eval: bench: %s: no column %q for task %s (columns: %s)", ref, c, task, strings.Join(have, ", "))
			}
		}
		it, err := parseItem(task, row)
		if err != nil {
			return fmt.Errorf("eval: bench: %s: %v", ref, err)
		}
		it.Ref = ref.String()
		items = append(items, it)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return items, nil
}

func str(row data.Row, c string) (string, error) {
	switch v := row[c].(type) {
	case string:
		return v, nil
	case []byte:
		return string(v), nil
	}
	return "", fmt.Errorf("column %q is %T, want a string", c, row[c])
}

func integer(row data.Row, c string) (int, error) {
	switch v := row[c].(type) {
	case int:
		return v, nil
	case int32:
		return int(v), nil
	case int64:
		return int(v), nil
	case uint64:
		return int(v), nil
	case float64:
		if v == math.Trunc(v) {
			return int(v), nil
		}
	case json.Number:
		if n, err := strconv.Atoi(string(v)); err == nil {
			return n, nil
		}
	case string: // hellaswag's label is a string on the Hub
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("column %q = %v, want an integer", c, row[c])
}

func strList(v any, c string) ([]string, error) {
	l, ok := v.([]any)
	if !ok {
		if s, ok := v.([]string); ok {
			return s, nil
		}
		return nil, fmt.Errorf("column %q is %T, want a list of strings", c, v)
	}
	out := make([]string, len(l))
	for i, x := range l {
		s, ok := x.(string)
		if !ok {
			return nil, fmt.Errorf("column %q: element %d is %T, want a string", c, i, x)
		}
		out[i] = s
	}
	return out, nil
}

func parseItem(task string, row data.Row) (Item, error) {
	var it Item
	var err error
	switch task {
	case "mmlu", "mcq", "arc":
		var q string
		if q, err = str(row, "question"); err != nil {
			return it, err
		}
		if task == "arc" {
			ch, ok := row["choices"].(map[string]any)
			if !ok {
				return it, fmt.Errorf("column \"choices\" is %T, want a struct {text, label}", row["choices"])
			}
			if it.Choices, err = strList(ch["text"], "choices.text"); err != nil {
				return it, err
			}
			labels, err := strList(ch["label"], "choices.label")
			if err != nil {
				return it, err
			}
			key, err := str(row, "answerKey")
			if err != nil {
				return it, err
			}
			if it.Gold = slices.Index(labels, key); it.Gold < 0 {
				return it, fmt.Errorf("answerKey %q is not one of the labels %v", key, labels)
			}
			if len(labels) != len(it.Choices) {
				return it, fmt.Errorf("%d choice labels for %d choice texts", len(labels), len(it.Choices))
			}
		} else {
			if it.Choices, err = strList(row["choices"], "choices"); err != nil {
				return it, err
			}
			if it.Gold, err = integer(row, "answer"); err != nil {
				return it, err
			}
		}
		if len(it.Choices) == 0 {
			return it, fmt.Errorf("no choices")
		}
		if it.Gold < 0 || it.Gold >= len(it.Choices) {
			return it, fmt.Errorf("answer index %d out of range [0,%d)", it.Gold, len(it.Choices))
		}
		switch task {
		case "mmlu":
			if len(it.Choices) > 26 {
				return it, fmt.Errorf("%d choices: mmlu letters go up to Z", len(it.Choices))
			}
			subj, err := str(row, "subject")
			if err != nil {
				return it, err
			}
			it.Subject = strings.ReplaceAll(subj, "_", " ")
			it.Query = MMLUPrompt(q, it.Choices)
			letters := make([]string, len(it.Choices))
			for i := range letters {
				letters[i] = string(rune('A' + i))
			}
			it.Choices = letters
		default: // arc_easy.yaml: "Question: {{question}}\nAnswer:"
			it.Query = "Question: " + q + "\nAnswer:"
		}
	case "hellaswag":
		var label, ctxA, ctxB string
		if label, err = str(row, "activity_label"); err != nil {
			return it, err
		}
		if ctxA, err = str(row, "ctx_a"); err != nil {
			return it, err
		}
		if ctxB, err = str(row, "ctx_b"); err != nil {
			return it, err
		}
		endings, err := strList(row["endings"], "endings")
		if err != nil {
			return it, err
		}
		if len(endings) == 0 {
			return it, fmt.Errorf("no endings")
		}
		if it.Gold, err = integer(row, "label"); err != nil {
			return it, err
		}
		if it.Gold < 0 || it.Gold >= len(endings) {
			return it, fmt.Errorf("label %d out of range [0,%d)", it.Gold, len(endings))
		}
		it.Query = HellaswagPreprocess(label + ": " + ctxA + " " + pyCapitalize(ctxB))
		it.Choices = make([]string, len(endings))
		for i, e := range endings {
			it.Choices[i] = HellaswagPreprocess(e)
		}
	case "gsm8k":
		var q string
		if q, err = str(row, "question"); err != nil {
			return it, err
		}
		if it.Answer, err = str(row, "answer"); err != nil {
			return it, err
		}
		it.Query = "Question: " + q + "\nAnswer:"
	default:
		return it, unknownTask(task)
	}
	return it, nil
}

// MMLUPrompt is mmlu/default/_default_template_yaml's doc_to_text:
// "{{question.strip()}}\nA. {{choices[0]}}\nB. ...\nAnswer:".
func MMLUPrompt(question string, choices []string) string {
	var b strings.Builder
	b.WriteString(pyStrip(question))
	for i, c := range choices {
		fmt.Fprintf(&b, "\n%c. %s", 'A'+i, c)
	}
	b.WriteString("\nAnswer:")
	return b.String()
}

// MMLUDescription is the per-subject description harness puts before the
// few-shot examples.
func MMLUDescription(subject string) string {
	return "The following are multiple choice questions (with answers) about " + subject + ".\n\n"
}

// pyStrip is Python's str.strip() (Unicode whitespace).
func pyStrip(s string) string { return strings.TrimSpace(s) }

// pyCapitalize is Python's str.capitalize(): first character upper-cased,
// the rest LOWER-cased (which hellaswag's ctx_b goes through).
func pyCapitalize(s string) string {
	if s == "" {
		return s
	}
	r := []rune(s)
	return strings.ToUpper(string(r[0])) + strings.ToLower(string(r[1:]))
}

var bracketed = regexp.MustCompile(`\[.*?\]`)

// HellaswagPreprocess is hellaswag/utils.py preprocess: strip, " [title]" →
// ". ", drop every "[...]" (non-greedy), then one pass of "  " → " ".
func HellaswagPreprocess(text string) string {
	text = pyStrip(text)
	text = strings.ReplaceAll(text, " [title]", ". ")
	text = bracketed.ReplaceAllString(text, "")
	return strings.ReplaceAll(text, "  ", " ")
}

// Context renders what harness feeds the model for item with these few-shot
// examples: description + join(text + " " + target, "\n\n") + "\n\n" + text.
func Context(task string, it Item, shots []Item) string {
	var b strings.Builder
	if task == "mmlu" {
		b.WriteString(MMLUDescription(it.Subject))
	}
	for _, s := range shots {
		b.WriteString(s.Query)
		b.WriteString(" ")
		b.WriteString(s.Target())
		b.WriteString("\n\n")
	}
	b.WriteString(it.Query)
	return b.String()
}

// FewShot picks k examples for items[i] from pool. sameFile says pool is the
// evaluation file itself, so item i is left out. firstN takes pool's first k
// (harness's first_n sampler, mmlu and gsm8k with a dev/train split);
// otherwise k are drawn without replacement by a PCG seeded with (seed, i).
// mmlu draws only from the item's own subject, as each harness subtask does.
func FewShot(task string, items []Item, i int, pool []Item, sameFile, firstN bool, k int, seed uint64) []Item {
	if k <= 0 {
		return nil
	}
	var cand []int
	for j, p := range pool {
		if sameFile && j == i {
			continue
		}
		if task == "mmlu" && p.Subject != items[i].Subject {
			continue
		}
		cand = append(cand, j)
	}
	if !firstN {
		r := rand.New(rand.NewPCG(seed, uint64(i)))
		r.Shuffle(len(cand), func(a, b int) { cand[a], cand[b] = cand[b], cand[a] })
	}
	out := make([]Item, 0, k)
	for _, j := range cand[:min(k, len(cand))] {
		out = append(out, pool[j])
	}
	return out
}

// Metric is a mean over items with harness's stderr: the sample standard
// deviation over sqrt(n) (mean_stderr), sqrt(p(1-p)/(n-1)) for 0/1 scores.
type Metric struct {
	Value  float64 `json:"value"`
	Stderr float64 `json:"stderr"`
}

// MeanStderr is metrics.py mean and mean_stderr; stderr is NaN for n < 2 as
// harness's sample_stddev divides by n-1.
func MeanStderr(x []float64) Metric {
	n := float64(len(x))
	var s float64
	for _, v := range x {
		s += v
	}
	mu := s / n
	if len(x) < 2 {
		return Metric{Value: mu, Stderr: math.NaN()}
	}
	var ss float64
	for _, v := range x {
		ss += (v - mu) * (v - mu)
	}
	return Metric{Value: mu, Stderr: math.Sqrt(ss/(n-1)) / math.Sqrt(n)}
}

// ChoiceScores turns per-choice log-likelihoods into acc and acc_norm as
// harness's ConfigurableTask.process_results does: argmax (first on ties) of
// ll, and of ll / len(choice) where len counts characters (Python len of the
// choice string, without the target delimiter).
func ChoiceScores(lls []float64, choices []string, gold int) (acc, accNorm float64) {
	best, bestN := 0, 0
	for i := range lls {
		if lls[i] > lls[best] {
			best = i
		}
		ni := lls[i] / float64(len([]rune(choices[i])))
		nb := lls[bestN] / float64(len([]rune(choices[bestN])))
		if ni > nb {
			bestN = i
		}
	}
	if best == gold {
		acc = 1
	}
	if bestN == gold {
		accNorm = 1
	}
	return acc, accNorm
}

// GSM8KStops are the generation stop strings: gsm8k.yaml's until
// ("Question:", "</s>", "<|im_end|>") plus "\n\n" (the few-shot delimiter,
// in harness's earlier gsm8k.yaml), besides the tokenizer's EOS.
var GSM8KStops = []string{"Question:", "</s>", "<|im_end|>", "\n\n"}

// CutAtStops is harness's `for term in until: s = s.split(term)[0]`.
func CutAtStops(s string, stops []string) string {
	for _, t := range stops {
		if t != "" {
			s, _, _ = strings.Cut(s, t)
		}
	}
	return s
}

var (
	strictRe   = regexp.MustCompile(`#### (\-?[0-9\.\,]+)`)
	flexibleRe = regexp.MustCompile(`(-?[$0-9.,]{2,})|(-?[0-9]+)`)
	ignoreRes  = []*regexp.Regexp{
		regexp.MustCompile(`,`),
		regexp.MustCompile(`\$`),
		regexp.MustCompile(`(?s).*#### `),
		// Python's `\.$` also matches before a final "\n"; Go's $ is \z.
		regexp.MustCompile(`\.(\n?)$`),
	}
)

// regexFilter is harness's RegexFilter: findall, pick match group_select
// (negative from the end), the first non-empty group of a tuple, strip;
// "[invalid]" when nothing matches.
func regexFilter(re *regexp.Regexp, s string, sel int) string {
	ms := re.FindAllStringSubmatch(s, -1)
	if len(ms) == 0 {
		return "[invalid]"
	}
	if sel < 0 {
		sel += len(ms)
	}
	m := ms[sel]
	if len(m) == 2 {
		return pyStrip(m[1])
	}
	for _, g := range m[1:] {
		if g != "" {
			return pyStrip(g)
		}
	}
	return pyStrip(m[0])
}

// GSM8KStrict is the "strict-match" filter: the number after "#### ".
func GSM8KStrict(resp string) string { return regexFilter(strictRe, resp, 0) }

// GSM8KFlexible is the "flexible-extract" filter: the last number-like run.
func GSM8KFlexible(resp string) string { return regexFilter(flexibleRe, resp, -1) }

// gsm8kNorm applies exact_match's regexes_to_ignore and ignore_case.
func gsm8kNorm(s string) string {
	for i, re := range ignoreRes {
		if i == len(ignoreRes)-1 {
			s = re.ReplaceAllString(s, "$1")
		} else {
			s = re.ReplaceAllString(s, "")
		}
	}
	return strings.ToLower(s)
}

// GSM8KExactMatch is exact_match(pred, reference) after harness's filters:
// reference is the dataset's answer ("... #### 72").
func GSM8KExactMatch(pred, reference string) bool { return gsm8kNorm(pred) == gsm8kNorm(reference) }
