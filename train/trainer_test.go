package train

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/data"
)

// fakeModel: the loss of trained token t is (w[label % D] * x[t] - 1)^2,
// with x[t] = 1 + position/10, so steps, accumulation and order all matter.
type fakeModel struct {
	p        *fakeParams
	last     []int32 // labels of the last Forward
	lastPos  []int32
	lastSeg  []int32
	nanAt    int // Forward call that returns NaN (1-based), 0 = never
	forwards int
	dropStep uint64
}

type fakeParams struct {
	w, g []float32
}

func (p *fakeParams) Slabs() ([][]float32, [][]float32) { return [][]float32{p.w}, [][]float32{p.g} }
func (p *fakeParams) ZeroGrads()                        { clear(p.g) }
func (p *fakeParams) Save(dir, dtype string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return writeF32(filepath.Join(dir, "w.f32"), p.w)
}

func (m *fakeModel) loss(labels, pos, seg []int32, grad float32) (float64, int) {
	var s float64
	n := 0
	for t := 1; t < len(labels); t++ {
		if labels[t] == data.IgnoreIndex || seg[t] != seg[t-1] {
			continue
		}
		i := int(labels[t]) % len(m.p.w)
		x := float32(1 + float32(pos[t-1])/10)
		r := m.p.w[i]*x - 1
		s += float64(r * r)
		n++
		if grad != 0 {
			m.p.g[i] += grad * 2 * r * x
		}
	}
	return s, n
}

func (m *fakeModel) Forward(tokens, positions, segIDs, labels []int32) (float64, int, error) {
	m.forwards++
	m.last, m.lastPos, m.lastSeg = labels, positions, segIDs
	s, n := m.loss(labels, positions, segIDs, 0)
	if m.nanAt > 0 && m.forwards >= m.nanAt {
		s = math.NaN()
	}
	return s, n, nil
}
func (m *fakeModel) Backward(scale float32) error {
	m.loss(m.last, m.lastPos, m.lastSeg, scale)
	return nil
}
func (m *fakeModel) Eval(tokens, positions, segIDs, labels []int32) (float64, int, error) {
	s, n := m.loss(labels, positions, segIDs, 0)
	return s, n, nil
}

// fakeData: packed sequences of two examples each, padded at the end, in an
// epoch-dependent order.
type fakeData struct {
	train, val [][]int32 // labels per sequence (ids = labels)
}

func (d *fakeData) Sequences(split string) int {
	if split == data.SplitTrain {
		return len(d.train)
	}
	return len(d.val)
}
func (d *fakeData) Err() error { return nil }
func (d *fakeData) Batches(split string, epoch, bs int) func(func(data.Batch) bool) {
	seqs := d.val
	if split == data.SplitTrain {
		seqs = d.train
	}
	order := data.Permutation(7, epoch, len(seqs))
	if split != data.SplitTrain {
		for i := range order {
			order[i] = uint32(i)
		}
	}
	const T = 12
	return func(yield func(data.Batch) bool) {
		for lo := 0; lo < len(order); lo += bs {
			idx := order[lo:min(lo+bs, len(order))]
			b := data.Batch{B: len(idx), T: T}
			for _, i := range idx {
				s := seqs[i]
				half := len(s) / 2
				for t := 0; t < T; t++ {
					switch {
					case t < half:
						b.IDs, b.Labels, b.Positions, b.SegIDs = append(b.IDs, s[t]), append(b.Labels, s[t]), append(b.Positions, int32(t)), append(b.SegIDs, 0)
					case t < len(s):
						b.IDs, b.Labels, b.Positions, b.SegIDs = append(b.IDs, s[t]), append(b.Labels, s[t]), append(b.Positions, int32(t-half)), append(b.SegIDs, 1)
					default:
						b.IDs, b.Labels, b.Positions, b.SegIDs = append(b.IDs, 0), append(b.Labels, -100), append(b.Positions, 0), append(b.SegIDs, -1)
					}
				}
			}
			if !yield(b) {
				return
			}
		}
	}
}

func newFake(n int) (*fakeModel, *fakeParams, *fakeData) {
	p := &fakeParams{w: make([]float32, 7), g: make([]float32, 7)}
	for i := range p.w {
		p.w[i] = float32(i) / 10
	}
	d := &fakeData{}
	for i := 0; i < n; i++ {
		s := make([]int32, 6+i%5)
		for t := range s {
			s[t] = int32((i*3 + t*5) % 11)
		}
		s[1] = -100
		d.train = append(d.train, s)
	}
	d.val = d.train[:3]
	return &fakeModel{p: p}, p, d
}

func fakeConfig(dir string) Config {
	return Config{Epochs: 2, BatchSize: 2, GradAccum: 2, LR: 0.05, Schedule: "cosine", WarmupSteps: 2,
		AdamW: AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01}, MaxGradNorm: 0.5,
		Seed: 1, EvalEvery: 3, SaveEvery: 2, KeepCheckpoints: 2, Dir: dir, DType: "f32"}
}

func readMetrics(t *testing.T, dir string) []map[string]float64 {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]float64
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("metrics line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestTrainerLowersLossAndWritesMetrics(t *testing.T) {
	dir := t.TempDir()
	m, p, d := newFake(9) // 5 batches of 2 -> 3 steps an epoch
	tr := &Trainer{Cfg: fakeConfig(dir), Model: m, Params: p, Data: d}
	res, err := tr.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.TotalSteps != 6 || res.Steps != 6 {
		t.Fatalf("steps %d of %d, want 6 of 6", res.Steps, res.TotalSteps)
	}
	ms := readMetrics(t, dir)
	var steps, evals []map[string]float64
	for _, m := range ms {
		if _, ok := m["eval_loss"]; ok {
			evals = append(evals, m)
		} else {
			steps = append(steps, m)
		}
	}
	if len(steps) != 6 || len(evals) != 3 { // eval at steps 0, 3 and at the end
		t.Fatalf("%d step lines and %d eval lines, want 6 and 3", len(steps), len(evals))
	}
	if steps[0]["lr"] != 0 || steps[1]["lr"] != 0.025 {
		t.Errorf("warmup lrs %v, %v; want 0, 0.025", steps[0]["lr"], steps[1]["lr"])
	}
	if evals[0]["step"] != 0 || !(evals[2]["eval_loss"] < evals[1]["eval_loss"] && evals[1]["eval_loss"] < evals[0]["eval_loss"]) {
		t.Errorf("eval loss did not drop: %v", evals)
	}
	if math.Abs(evals[2]["eval_ppl"]-math.Exp(evals[2]["eval_loss"])) > 1e-9 {
		t.Errorf("ppl %v is not exp(loss %v)", evals[2]["eval_ppl"], evals[2]["eval_loss"])
	}
	// The step's loss is the mean over its trained tokens: recompute step 1.
	m2, p2, _ := newFake(9)
	var sum float64
	var n int
	tr2 := &Trainer{Cfg: fakeConfig(t.TempDir()), Model: m2, Params: p2, Data: d}
	st := newStream(d, 2, position{})
	rows, _, _ := st.step(2)
	st.stop()
	for _, r := range rows {
		s, k := m2.loss(r.labels, r.pos, r.seg, 0)
		sum += s
		n += k
	}
	_ = tr2
	if got := steps[0]["loss"]; math.Abs(got-sum/float64(n)) > 1e-12 || steps[0]["tokens"] != float64(n) {
		t.Errorf("step 1 loss %v tokens %v, want %v over %d", got, steps[0]["tokens"], sum/float64(n), n)
	}
	cks, _ := Checkpoints(dir)
	if len(cks) != 2 || filepath.Base(cks[0]) != "step-4" || filepath.Base(cks[1]) != "step-6" {
		t.Errorf("checkpoints %v, want step-4 and step-6 (keep 2)", cks)
	}
	if _, err := os.Stat(filepath.Join(dir, "adapter", "w.f32")); err != nil {
		t.Error(err)
	}
}

// TestResumeBitIdentical: N steps straight equal N/2, interrupt, resume N/2,
// byte for byte, also when the interrupt lands mid-step.
func TestResumeBitIdentical(t *testing.T) {
	straight := t.TempDir()
	m, p, d := newFake(9)
	if _, err := (&Trainer{Cfg: fakeConfig(straight), Model: m, Params: p, Data: d}).Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join(straight, "adapter", "w.f32"))
	wantMetrics := stepLosses(t, straight)

	for _, stopAfter := range []int{3, 5, 9, 13} { // Forward calls before the cancel
		dir := t.TempDir()
		m, p, d := newFake(9)
		ctx, cancel := context.WithCancel(context.Background())
		m2 := &cancelModel{fakeModel: m, after: stopAfter, cancel: cancel}
		_, err := (&Trainer{Cfg: fakeConfig(dir), Model: m2, Params: p, Data: d}).Run(ctx)
		var ie *InterruptedError
		if !errors.As(err, &ie) {
			t.Fatalf("stop after %d: error %v, want an interrupt", stopAfter, err)
		}
		if !strings.Contains(err.Error(), "resume with --resume") {
			t.Errorf("message %q does not say how to resume", err)
		}
		// A fresh process: new params (the checkpoint restores them).
		m, p, d = newFake(9)
		for i := range p.w {
			p.w[i] = 99
		}
		cfg := fakeConfig(dir)
		cfg.Resume = true
		res, err := (&Trainer{Cfg: cfg, Model: m, Params: p, Data: d}).Run(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if res.ResumedFrom != ie.Step {
			t.Errorf("resumed from %d, interrupted at %d", res.ResumedFrom, ie.Step)
		}
		got, _ := os.ReadFile(filepath.Join(dir, "adapter", "w.f32"))
		if !bytes.Equal(got, want) {
			t.Errorf("stop after %d forwards (step %d): resumed adapter differs from the straight run", stopAfter, ie.Step)
		}
		if gm := stepLosses(t, dir); !equalF(gm, wantMetrics) {
			t.Errorf("stop after %d: metrics %v, want %v", stopAfter, gm, wantMetrics)
		}
	}
}

func equalF(a, b []float64) bool {
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

func stepLosses(t *testing.T, dir string) []float64 {
	var out []float64
	for _, m := range readMetrics(t, dir) {
		if _, ok := m["eval_loss"]; !ok {
			out = append(out, m["loss"])
		}
	}
	return out
}

type cancelModel struct {
	*fakeModel
	after  int
	cancel func()
}

func (c *cancelModel) Forward(a, b, s, l []int32) (float64, int, error) {
	r, n, err := c.fakeModel.Forward(a, b, s, l)
	if c.fakeModel.forwards == c.after {
		c.cancel()
	}
	return r, n, err
}

func TestNaNStops(t *testing.T) {
	dir := t.TempDir()
	m, p, d := newFake(9)
	m.nanAt = 9 // in step 3 (steps 1 and 2 have 4 sequences each)
	_, err := (&Trainer{Cfg: fakeConfig(dir), Model: m, Params: p, Data: d}).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "step 3: loss is NaN") || !strings.Contains(err.Error(), "step-2") {
		t.Fatalf("error %v, want a NaN stop at step 3 naming checkpoint step-2", err)
	}
	cks, _ := Checkpoints(dir)
	if len(cks) != 1 || filepath.Base(cks[0]) != "step-2" {
		t.Errorf("checkpoints %v, want only step-2", cks)
	}
	for _, x := range p.w {
		if math.IsNaN(float64(x)) {
			t.Fatal("NaN reached the weights")
		}
	}
}

func TestRunFolderGuard(t *testing.T) {
	dir := t.TempDir()
	m, p, d := newFake(4)
	cfg := fakeConfig(dir)
	if _, err := (&Trainer{Cfg: cfg, Model: m, Params: p, Data: d}).Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := (&Trainer{Cfg: cfg, Model: m, Params: p, Data: d}).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "holds a run") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second run in the same folder: %v", err)
	}
	cfg.Force = true
	if _, err := (&Trainer{Cfg: cfg, Model: m, Params: p, Data: d}).Run(context.Background()); err != nil {
		t.Fatalf("--force: %v", err)
	}
	cfg = fakeConfig(t.TempDir())
	cfg.Resume = true
	if _, err := (&Trainer{Cfg: cfg, Model: m, Params: p, Data: d}).Run(context.Background()); err == nil || !strings.Contains(err.Error(), "no checkpoint") {
		t.Fatalf("--resume without checkpoints: %v", err)
	}
}

func TestSplitRowsTrimsPadding(t *testing.T) {
	b := data.Batch{B: 2, T: 4,
		IDs:       []int32{1, 2, 3, 0, 4, 5, 6, 7},
		Labels:    []int32{1, 2, 3, -100, -100, 5, -100, 7},
		Positions: []int32{0, 1, 0, 0, 0, 1, 2, 0},
		SegIDs:    []int32{0, 0, 1, -1, 0, 0, 0, 1},
	}
	rows := splitRows(b)
	if len(rows) != 2 || len(rows[0].ids) != 3 || len(rows[1].ids) != 4 {
		t.Fatalf("rows %+v", rows)
	}
	// Row 0: label at t=1 (same segment) counts; t=2 starts a segment.
	// Row 1: t=1 counts, t=2 is -100, t=3 starts a segment.
	if rows[0].n != 1 || rows[1].n != 1 {
		t.Errorf("trained tokens %d, %d; want 1, 1", rows[0].n, rows[1].n)
	}
}
