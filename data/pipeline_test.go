package data

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// writeChatJSONL writes n chat rows of varying length.
func writeChatJSONL(t testing.TB, path string, n int) {
	t.Helper()
	var b strings.Builder
	for i := range n {
		row := map[string]any{"messages": []any{
			map[string]any{"role": "user", "content": fmt.Sprintf("Question %d: %s", i, strings.Repeat("why? ", i%7))},
			map[string]any{"role": "assistant", "content": fmt.Sprintf("Answer %d. %s", i, strings.Repeat("because. ", (i*5)%11))},
		}}
		j, err := json.Marshal(row)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func collect(t *testing.T, d *Dataset, split string, epoch, bs int) []Batch {
	t.Helper()
	var out []Batch
	for b := range d.Batches(split, epoch, bs) {
		out = append(out, b)
	}
	if err := d.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPrepareCacheRestart(t *testing.T) {
	tok := loadModelTok(t, "qwen3-tied")
	dir := t.TempDir()
	path := filepath.Join(dir, "chat.jsonl")
	writeChatJSONL(t, path, 300)
	cfg := Config{Path: path, Format: "chat", MaxSeqLen: 256, Packing: true, Seed: 7, ValFraction: 0.1, CacheDir: filepath.Join(dir, "cache")}

	before := rowsTokenized.Load()
	d1, err := Prepare(cfg, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	if got := rowsTokenized.Load() - before; got != 300 {
		t.Fatalf("first Prepare tokenized %d rows, want 300", got)
	}
	if d1.Stats().FromCache {
		t.Fatal("first Prepare claims the cache")
	}
	before = rowsTokenized.Load()
	d2, err := Prepare(cfg, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got := rowsTokenized.Load() - before; got != 0 {
		t.Fatalf("second Prepare tokenized %d rows, want 0 (cache)", got)
	}
	if !d2.Stats().FromCache {
		t.Fatal("second Prepare did not use the cache")
	}
	s1, s2 := d1.Stats(), d2.Stats()
	s1.FromCache, s2.FromCache = false, false
	if !reflect.DeepEqual(s1, s2) {
		t.Fatalf("stats differ:\n%+v\n%+v", s1, s2)
	}
	for _, split := range []string{SplitTrain, SplitValidation} {
		for epoch := range 2 {
			a, b := collect(t, d1, split, epoch, 4), collect(t, d2, split, epoch, 4)
			if len(a) == 0 || !reflect.DeepEqual(a, b) {
				t.Fatalf("%s epoch %d: batches differ after restart (%d vs %d batches)", split, epoch, len(a), len(b))
			}
		}
	}
	// Another epoch, another order; the same seed, the same order.
	e0, e1 := collect(t, d1, SplitTrain, 0, 4), collect(t, d1, SplitTrain, 1, 4)
	if reflect.DeepEqual(e0, e1) {
		t.Fatal("epochs 0 and 1 give the same batches")
	}
	cfg.Seed = 8
	d3, err := Prepare(cfg, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d3.Close()
	if reflect.DeepEqual(e0, collect(t, d3, SplitTrain, 0, 4)) {
		t.Fatal("seeds 7 and 8 give the same batches")
	}

	// A corrupt cache is rebuilt, not trusted.
	ents, _ := filepath.Glob(filepath.Join(cfg.CacheDir, "*", "tokens.bin"))
	if len(ents) == 0 {
		t.Fatal("no tokens.bin in the cache")
	}
	for _, p := range ents {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xFF
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Seed = 7
	before = rowsTokenized.Load()
	d4, err := Prepare(cfg, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d4.Close()
	if got := rowsTokenized.Load() - before; got != 300 || d4.Stats().FromCache {
		t.Fatalf("corrupt cache: tokenized %d rows (want 300), from cache %v", got, d4.Stats().FromCache)
	}
	if !reflect.DeepEqual(e0, collect(t, d4, SplitTrain, 0, 4)) {
		t.Fatal("rebuilt cache gives other batches")
	}
}

// TestPackedSequences: positions restart, SegIDs number the examples, every
// example of the split is in exactly one sequence, whole and in order.
func TestPackedSequences(t *testing.T) {
	tok := loadModelTok(t, "qwen3-tied")
	dir := t.TempDir()
	path := filepath.Join(dir, "chat.jsonl")
	writeChatJSONL(t, path, 200)
	const T = 300
	d, err := Prepare(Config{Path: path, MaxSeqLen: T, Packing: true, CacheDir: dir}, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st := d.Stats()
	if st.TrainExamples != 200 || st.Truncated != 0 {
		t.Fatalf("stats %+v", st)
	}
	// Every example as the cache holds it, by content.
	byIDs := map[string]int{}
	for i := range int(st.Examples) {
		ex, err := d.Example(i)
		if err != nil {
			t.Fatal(err)
		}
		byIDs[fmt.Sprint(ex.IDs)]++
	}
	seen := 0
	var real int
	for i := range d.Sequences(SplitTrain) {
		s, err := d.Sequence(SplitTrain, i)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.IDs) != T || len(s.Labels) != T || len(s.Positions) != T || len(s.SegIDs) != T {
			t.Fatalf("sequence %d: lengths %d %d %d %d, want %d", i, len(s.IDs), len(s.Labels), len(s.Positions), len(s.SegIDs), T)
		}
		seg := int32(0)
		start := 0
		for k := 0; k <= T; k++ {
			if k < T && s.SegIDs[k] == seg {
				if s.Positions[k] != int32(k-start) {
					t.Fatalf("sequence %d token %d: position %d, want %d", i, k, s.Positions[k], k-start)
				}
				if k == start && s.Labels[k] != IgnoreIndex {
					t.Fatalf("sequence %d token %d: an example's first token has label %d", i, k, s.Labels[k])
				}
				continue
			}
			if k == start {
				t.Fatalf("sequence %d: empty segment %d", i, seg)
			}
			key := fmt.Sprint(s.IDs[start:k])
			if byIDs[key] == 0 {
				t.Fatalf("sequence %d segment %d is not a whole example", i, seg)
			}
			byIDs[key]--
			seen++
			real += k - start
			if k == T || s.SegIDs[k] == -1 {
				for j := k; j < T; j++ {
					if s.SegIDs[j] != -1 || s.Labels[j] != IgnoreIndex {
						t.Fatalf("sequence %d token %d: padding with seg %d label %d", i, j, s.SegIDs[j], s.Labels[j])
					}
				}
				break
			}
			if s.SegIDs[k] != seg+1 {
				t.Fatalf("sequence %d token %d: seg %d after %d", i, k, s.SegIDs[k], seg)
			}
			seg++
			start = k
		}
	}
	if seen != 200 {
		t.Fatalf("%d examples in sequences, want 200", seen)
	}
	if eff := float64(real) / float64(T*d.Sequences(SplitTrain)); eff != st.PackingEfficiency || eff < 0.8 {
		t.Fatalf("packing efficiency %g, stats say %g", eff, st.PackingEfficiency)
	}
	// Batches hold the same sequences, in the epoch's permutation.
	perm := Permutation(0, 3, d.Sequences(SplitTrain))
	n := 0
	for b := range d.Batches(SplitTrain, 3, 5) {
		if b.T != T || len(b.IDs) != b.B*b.T {
			t.Fatalf("batch %dx%d with %d ids", b.B, b.T, len(b.IDs))
		}
		for r := range b.B {
			s, _ := d.Sequence(SplitTrain, int(perm[n]))
			if !slices.Equal(b.IDs[r*T:(r+1)*T], s.IDs) || !slices.Equal(b.SegIDs[r*T:(r+1)*T], s.SegIDs) {
				t.Fatalf("batch row %d is not sequence %d", n, perm[n])
			}
			n++
		}
	}
	if n != d.Sequences(SplitTrain) {
		t.Fatalf("batches hold %d sequences, want %d", n, d.Sequences(SplitTrain))
	}
}

func TestUnpackedBatches(t *testing.T) {
	tok := loadModelTok(t, "qwen3-tied")
	dir := t.TempDir()
	path := filepath.Join(dir, "chat.jsonl")
	writeChatJSONL(t, path, 120)
	d, err := Prepare(Config{Path: path, MaxSeqLen: 64, CacheDir: dir}, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st := d.Stats()
	if st.Truncated == 0 || st.Truncated+0 > st.Examples {
		t.Fatalf("want some truncation at 64 tokens: %+v", st)
	}
	pad := padID(tok)
	rows := 0
	for b := range d.Batches(SplitTrain, 0, 8) {
		longest := 0
		for r := range b.B {
			n := 0
			for k := range b.T {
				i := r*b.T + k
				if b.SegIDs[i] == -1 {
					if b.IDs[i] != pad || b.Labels[i] != IgnoreIndex {
						t.Fatalf("padding id %d label %d", b.IDs[i], b.Labels[i])
					}
					continue
				}
				if b.Positions[i] != int32(k) || b.SegIDs[i] != 0 {
					t.Fatalf("row %d token %d: position %d seg %d", r, k, b.Positions[i], b.SegIDs[i])
				}
				n++
			}
			longest = max(longest, n)
			rows++
		}
		if longest != b.T || b.T > 64 {
			t.Fatalf("batch T %d, longest row %d", b.T, longest)
		}
	}
	if rows != 120 {
		t.Fatalf("%d rows in an epoch, want 120", rows)
	}
}

func TestPrepareErrors(t *testing.T) {
	tok := loadModelTok(t, "qwen3-tied")
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}` + "\n"
	for _, c := range []struct {
		name, body, format string
		skip               bool
		want               []string // substrings of the error
		bad                int64
	}{
		{"missing.jsonl", `{"msgs": []}` + "\n", "chat", false, []string{`no column "messages"`, "missing.jsonl", "msgs"}, 0},
		{"type.jsonl", `{"text": 5}` + "\n", "text", false, []string{"type.jsonl line 1", `column "text"`, "want a string, found a number"}, 0},
		{"role.jsonl", `{"messages": [{"content": "x"}]}` + "\n", "chat", false, []string{"type.jsonl", "message 0", `"role"`}, 0},
		{"skip.jsonl", good + `{"text": 1}` + "\n" + good, "chat", true, nil, 1},
		{"empty.jsonl", `{"messages": [{"role": "user", "content": "no answer"}]}` + "\n", "chat", true, []string{"empty dataset"}, 0},
		{"noinstr.jsonl", good, "instruction", false, []string{"noinstr.jsonl line 1", `no column "instruction"`, "messages"}, 0},
		// Qwen3's template cannot render an empty history (messages[0]).
		{"render.jsonl", `{"messages": [{"role": "assistant", "content": "a"}]}` + "\n", "chat", false, []string{"render.jsonl line 1", "render messages[:0]"}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := write(c.name, c.body)
			if c.name == "role.jsonl" {
				c.want[0] = "role.jsonl"
			}
			d, err := Prepare(Config{Path: p, Format: c.format, MaxSeqLen: 128, SkipBadRows: c.skip, CacheDir: filepath.Join(dir, "cache")}, tok, nil)
			if c.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				if st := d.Stats(); st.BadRows != c.bad || st.TrainExamples != 2 || len(st.BadRowErrors) != 1 {
					t.Fatalf("stats %+v, want %d bad rows and 2 examples", st, c.bad)
				}
				return
			}
			if err == nil {
				d.Close()
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error has several lines: %q", err)
			}
		})
	}
}

func TestValidationPath(t *testing.T) {
	tok := loadModelTok(t, "qwen3-tied")
	dir := t.TempDir()
	tr, va := filepath.Join(dir, "train.jsonl"), filepath.Join(dir, "val.jsonl")
	writeChatJSONL(t, tr, 50)
	writeChatJSONL(t, va, 7)
	d, err := Prepare(Config{Path: tr, ValPath: va, MaxSeqLen: 512, Packing: false, CacheDir: dir}, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Sequences(SplitTrain) != 50 || d.Sequences(SplitValidation) != 7 {
		t.Fatalf("train %d validation %d, want 50 and 7", d.Sequences(SplitTrain), d.Sequences(SplitValidation))
	}
}

func TestValidationFraction(t *testing.T) {
	n, val := 20000, 0
	for i := range n {
		if isValidation(1, 0, int64(i), 0.05) {
			val++
		}
		if isValidation(1, 0, int64(i), 0.05) != isValidation(1, 0, int64(i), 0.05) {
			t.Fatal("not deterministic")
		}
	}
	if val < 850 || val > 1150 {
		t.Fatalf("%d of %d rows in validation at 5%%", val, n)
	}
}

func TestPermutation(t *testing.T) {
	for _, n := range []int{0, 1, 2, 10, 1000} {
		p := Permutation(42, 0, n)
		s := slices.Clone(p)
		slices.Sort(s)
		for i, v := range s {
			if v != uint32(i) {
				t.Fatalf("n=%d: not a permutation", n)
			}
		}
		if !slices.Equal(p, Permutation(42, 0, n)) {
			t.Fatalf("n=%d: not deterministic", n)
		}
		if n >= 10 && slices.Equal(p, Permutation(42, 1, n)) {
			t.Fatalf("n=%d: epochs 0 and 1 agree", n)
		}
	}
}

// TestPrepareWorkersDeterministic: one worker or several, the same cache.
func TestPrepareWorkersDeterministic(t *testing.T) {
	tok := loadModelTok(t, "qwen3-tied")
	dir := t.TempDir()
	path := filepath.Join(dir, "chat.jsonl")
	writeChatJSONL(t, path, 500)
	var runs [][]Batch
	for _, procs := range []int{1, 4} {
		old := runtime.GOMAXPROCS(procs)
		d, err := Prepare(Config{Path: path, MaxSeqLen: 200, Packing: true, CacheDir: filepath.Join(dir, fmt.Sprint(procs))}, tok, nil)
		runtime.GOMAXPROCS(old)
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, collect(t, d, SplitTrain, 0, 4))
		d.Close()
	}
	if !reflect.DeepEqual(runs[0], runs[1]) {
		t.Fatal("1 and 4 workers give different batches")
	}
}
