package train

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math"
	"path/filepath"
	"time"

	"github.com/tunellm/tune/data"
)

// Model computes the loss of one packed sequence and its gradients
// (model.Pass with an adapter). Labels follow data's convention (unshifted,
// -100 = no loss); lossSum is the summed cross-entropy over n trained tokens.
type Model interface {
	// Forward runs in training mode (dropout on) and keeps what Backward needs.
	Forward(tokens, positions, segIDs, labels []int32) (lossSum float64, n int, err error)
	// Backward adds d(lossSum*scale)/dθ of the last Forward to the gradients.
	Backward(scale float32) error
	// Eval runs the forward in inference mode (no dropout, nothing kept).
	Eval(tokens, positions, segIDs, labels []int32) (lossSum float64, n int, err error)
}

// Params are what the trainer updates: parameter slabs and gradient slabs
// of the same layout.
type Params interface {
	Slabs() (params, grads [][]float32)
	ZeroGrads()
	// Save writes the user-facing artefact (a PEFT adapter folder) in dtype
	// ("f32", "bf16", "f16").
	Save(dir, dtype string) error
}

// DropoutStepper is implemented by Params whose dropout masks are a
// function of (seed, step): the trainer numbers every micro-sequence so that
// a resumed run draws the same masks.
type DropoutStepper interface {
	SetDropoutStep(step uint64)
}

// Data is a prepared dataset (data.Dataset).
type Data interface {
	Batches(split string, epoch, batchSize int) func(yield func(data.Batch) bool)
	Sequences(split string) int
	Err() error
}

// Config drives Run; recipes fills it from train.* and output.*.
type Config struct {
	Epochs, MaxSteps     int // MaxSteps > 0 wins, cycling epochs
	BatchSize, GradAccum int
	LR                   float64
	Schedule             string
	WarmupSteps          int
	AdamW                AdamWConfig
	MaxGradNorm          float64 // 0 = off
	Seed                 uint64  // recorded in checkpoints; dropout seed
	EvalEvery            int     // also at step 0 and at the end; 0 = only at the end
	SaveEvery            int     // 0 = only on interrupt
	KeepCheckpoints      int
	Dir                  string // run folder
	DType                string // final adapter dtype
	// Artifact names the saved result's folder, in the run folder and in
	// each checkpoint: "adapter" (default) or "model" (full training).
	Artifact string
	// RecipeYAML, when set, is written to <Dir>/recipe.yaml.
	RecipeYAML    string
	Resume, Force bool
}

func (c Config) artifact() string {
	if c.Artifact == "" {
		return adapterDir
	}
	return c.Artifact
}

// StepMetrics is one line of metrics.jsonl per optimizer step.
type StepMetrics struct {
	Step       int     `json:"step"`
	Epoch      int     `json:"epoch"`
	Loss       float64 `json:"loss"`      // mean CE over the step's trained tokens, before the update
	GradNorm   float64 `json:"grad_norm"` // before clipping
	LR         float64 `json:"lr"`
	Tokens     int     `json:"tokens"` // trained tokens in the step
	TokensPerS float64 `json:"tokens_per_s"`
}

// EvalMetrics is one line of metrics.jsonl per validation pass.
type EvalMetrics struct {
	Step       int     `json:"step"`
	EvalLoss   float64 `json:"eval_loss"`
	EvalPPL    float64 `json:"eval_ppl"`
	EvalTokens int     `json:"eval_tokens"`
}

// Event is what Progress sees: a step, or an eval, or a checkpoint.
type Event struct {
	Step, TotalSteps int
	Train            *StepMetrics
	Eval             *EvalMetrics
	Checkpoint       string
}

// Result summarises a run.
type Result struct {
	Steps, TotalSteps int
	Loss              float64 // last step's
	Eval              *EvalMetrics
	AdapterDir        string // the saved adapter (or model, in full training)
	ResumedFrom       int    // step, 0 when fresh
}

// InterruptedError is returned when the context is cancelled (SIGINT): a
// checkpoint of the last completed step was written.
type InterruptedError struct {
	Step       int
	Checkpoint string
}

func (e *InterruptedError) Error() string {
	return fmt.Sprintf("train: interrupted after step %d; checkpoint saved to %s; resume with --resume", e.Step, e.Checkpoint)
}

// Plan returns the optimizer steps per epoch and in all, as transformers'
// Trainer counts them: an epoch is ceil(sequences/batch) micro-batches and a
// step takes grad_accum of them, the last step of an epoch possibly fewer.
func Plan(trainSeqs, batchSize, gradAccum, epochs, maxSteps int) (perEpoch, total int) {
	batches := (trainSeqs + batchSize - 1) / batchSize
	perEpoch = (batches + gradAccum - 1) / gradAccum
	if maxSteps > 0 {
		return perEpoch, maxSteps
	}
	return perEpoch, perEpoch * epochs
}

// Trainer runs a training loop over Model, Params and Data.
type Trainer struct {
	Cfg    Config
	Model  Model
	Params Params
	Data   Data
	// Progress, when set, is called after each step, eval and checkpoint.
	Progress func(Event)
	// Log receives one-line notes (resuming, checkpoints); nil is silent.
	Log func(format string, args ...any)

	opt      *AdamW
	pos      position
	total    int
	metrics  *metricsFile
	lastCkpt string
}

// position is where the data stream stands: the next step starts at batch
// Batch of epoch Epoch.
type position struct {
	Step  int `json:"step"`
	Epoch int `json:"epoch"`
	Batch int `json:"batch"`
}

func (t *Trainer) logf(format string, args ...any) {
	if t.Log != nil {
		t.Log(format, args...)
	}
}

// Run trains until the planned steps are done, ctx is cancelled (a
// checkpoint is written and *InterruptedError returned), or the loss or
// gradients stop being finite (no checkpoint of the bad state is written).
func (t *Trainer) Run(ctx context.Context) (*Result, error) {
	c := t.Cfg
	if c.BatchSize <= 0 || c.GradAccum <= 0 {
		return nil, fmt.Errorf("train: batch_size %d and grad_accum %d must be positive", c.BatchSize, c.GradAccum)
	}
	if _, err := Schedule(c.Schedule, c.LR, 0, 0, 1); err != nil {
		return nil, err
	}
	nSeq := t.Data.Sequences(data.SplitTrain)
	if nSeq == 0 {
		return nil, errors.New("train: the training split has no sequences")
	}
	perEpoch, total := Plan(nSeq, c.BatchSize, c.GradAccum, c.Epochs, c.MaxSteps)
	if total <= 0 {
		return nil, errors.New("train: nothing to train (epochs and max_steps are 0)")
	}
	t.total = total
	_ = perEpoch

	if err := prepareDir(c.Dir, c.Resume, c.Force); err != nil {
		return nil, err
	}
	if c.RecipeYAML != "" {
		if err := writeSynced(filepath.Join(c.Dir, "recipe.yaml"), []byte(c.RecipeYAML)); err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
	}
	params, grads := t.Params.Slabs()
	n := 0
	for _, p := range params {
		n += len(p)
	}
	t.opt = NewAdamW(n, c.AdamW)
	res := &Result{TotalSteps: total}
	if c.Resume {
		ck, err := latestCheckpoint(c.Dir)
		if err != nil {
			return nil, err
		}
		st, err := loadCheckpoint(ck, params, t.opt)
		if err != nil {
			return nil, err
		}
		if err := st.compatible(c); err != nil {
			return nil, fmt.Errorf("train: resume from %s: %w", ck, err)
		}
		t.pos = st.Position
		t.lastCkpt = ck
		res.ResumedFrom = st.Position.Step
		t.logf("resuming from %s (step %d of %d)", ck, st.Position.Step, total)
	}
	var err error
	t.metrics, err = openMetrics(c.Dir, t.pos.Step)
	if err != nil {
		return nil, err
	}
	defer t.metrics.Close()

	stream := newStream(t.Data, c.BatchSize, t.pos)
	defer stream.stop()

	if !c.Resume && c.EvalEvery > 0 {
		// The baseline, so that the first evals can be compared with it.
		if _, err := t.evaluate(); err != nil {
			return nil, err
		}
	}
	dropout, _ := t.Params.(DropoutStepper)
	for t.pos.Step < total {
		if ctx.Err() != nil {
			return nil, t.interrupt()
		}
		start := time.Now()
		rows, next, err := stream.step(c.GradAccum)
		if err != nil {
			return nil, err
		}
		nTok := 0
		for _, r := range rows {
			nTok += trainedTokens(r)
		}
		if nTok == 0 {
			return nil, fmt.Errorf("train: step %d: no trained tokens in its %d sequences", t.pos.Step+1, len(rows))
		}
		scale := float32(1 / float64(nTok))
		t.Params.ZeroGrads()
		var lossSum float64
		for i, r := range rows {
			if ctx.Err() != nil {
				// The step is incomplete: checkpoint the state before it.
				return nil, t.interrupt()
			}
			if dropout != nil {
				dropout.SetDropoutStep(uint64(t.pos.Step)<<24 | uint64(i))
			}
			ls, n, err := t.Model.Forward(r.ids, r.pos, r.seg, r.labels)
			if err != nil {
				return nil, fmt.Errorf("train: step %d: %w", t.pos.Step+1, err)
			}
			if n != r.n {
				return nil, fmt.Errorf("train: step %d: the model scored %d tokens of a sequence, the labels have %d", t.pos.Step+1, n, r.n)
			}
			if err := t.Model.Backward(scale); err != nil {
				return nil, fmt.Errorf("train: step %d: %w", t.pos.Step+1, err)
			}
			lossSum += ls
		}
		step := t.pos.Step + 1
		loss := lossSum / float64(nTok)
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return nil, t.diverged(step, fmt.Sprintf("loss is %v", loss))
		}
		norm := GradNorm(grads...)
		if math.IsNaN(norm) || math.IsInf(norm, 0) {
			return nil, t.diverged(step, fmt.Sprintf("gradient norm is %v (loss %.4f)", norm, loss))
		}
		ClipGrads(norm, c.MaxGradNorm, grads...)
		lr, _ := Schedule(c.Schedule, c.LR, t.pos.Step, c.WarmupSteps, total)
		t.opt.Update(lr, params, grads)
		t.pos = next
		t.pos.Step = step
		sm := &StepMetrics{Step: step, Epoch: next.Epoch, Loss: loss, GradNorm: norm, LR: lr, Tokens: nTok,
			TokensPerS: float64(nTok) / max(time.Since(start).Seconds(), 1e-9)}
		if err := t.metrics.write(sm); err != nil {
			return nil, err
		}
		res.Steps, res.Loss = step, loss
		t.progress(Event{Train: sm})
		if c.EvalEvery > 0 && step%c.EvalEvery == 0 && step < total {
			em, err := t.evaluate()
			if err != nil {
				return nil, err
			}
			if em != nil {
				res.Eval = em
			}
		}
		if c.SaveEvery > 0 && step%c.SaveEvery == 0 {
			if err := t.checkpoint(); err != nil {
				return nil, err
			}
		}
	}
	em, err := t.evaluate()
	if err != nil {
		return nil, err
	}
	if em != nil {
		res.Eval = em
	}
	dir, err := saveArtifact(t.Params, c.Dir, c.artifact(), c.DType)
	if err != nil {
		return nil, err
	}
	res.AdapterDir = dir
	res.Steps = t.pos.Step
	return res, nil
}

func (t *Trainer) progress(e Event) {
	if t.Progress != nil {
		e.Step, e.TotalSteps = t.pos.Step, t.total
		t.Progress(e)
	}
}

func (t *Trainer) interrupt() error {
	if err := t.checkpoint(); err != nil {
		return fmt.Errorf("train: interrupted after step %d, and the checkpoint failed: %w", t.pos.Step, err)
	}
	return &InterruptedError{Step: t.pos.Step, Checkpoint: t.lastCkpt}
}

func (t *Trainer) diverged(step int, what string) error {
	last := "no checkpoint was written yet"
	if t.lastCkpt != "" {
		last = "the last good checkpoint is " + t.lastCkpt + " (resume with --resume, perhaps with a lower train.lr)"
	}
	return fmt.Errorf("train: step %d: %s; stopped without updating the weights; %s", step, what, last)
}

func (t *Trainer) checkpoint() error {
	if t.lastCkpt != "" && t.lastCkpt == checkpointDir(t.Cfg.Dir, t.pos.Step) {
		return nil // this step is saved already
	}
	params, _ := t.Params.Slabs()
	st := &checkpointState{Position: t.pos, OptimizerStep: t.opt.Step, SchedulerStep: t.pos.Step,
		Seed: t.Cfg.Seed, TotalSteps: t.total, BatchSize: t.Cfg.BatchSize, GradAccum: t.Cfg.GradAccum}
	dir, err := writeCheckpoint(t.Cfg.Dir, t.Cfg.artifact(), st, t.Params, params, t.opt, t.Cfg.KeepCheckpoints)
	if err != nil {
		return err
	}
	t.lastCkpt = dir
	t.logf("checkpoint %s", dir)
	t.progress(Event{Checkpoint: dir})
	return nil
}

// evaluate returns the validation loss, or nil when there is no validation
// split.
func (t *Trainer) evaluate() (*EvalMetrics, error) {
	if t.Data.Sequences(data.SplitValidation) == 0 {
		return nil, nil
	}
	var sum float64
	var n int
	for b := range t.Data.Batches(data.SplitValidation, 0, t.Cfg.BatchSize) {
		for _, r := range splitRows(b) {
			ls, k, err := t.Model.Eval(r.ids, r.pos, r.seg, r.labels)
			if err != nil {
				return nil, fmt.Errorf("train: validation at step %d: %w", t.pos.Step, err)
			}
			sum += ls
			n += k
		}
	}
	if err := t.Data.Err(); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	loss := sum / float64(n)
	// exp overflows past ~709 nats, and JSON has no Inf.
	em := &EvalMetrics{Step: t.pos.Step, EvalLoss: loss, EvalPPL: math.Exp(min(loss, 700)), EvalTokens: n}
	if err := t.metrics.write(em); err != nil {
		return nil, err
	}
	t.progress(Event{Eval: em})
	return em, nil
}

// Evaluate returns the mean validation loss of m over ds's validation split
// (NaN with 0 tokens).
func Evaluate(m Model, ds Data, batchSize int) (loss float64, tokens int, err error) {
	var sum float64
	for b := range ds.Batches(data.SplitValidation, 0, batchSize) {
		for _, r := range splitRows(b) {
			ls, k, err := m.Eval(r.ids, r.pos, r.seg, r.labels)
			if err != nil {
				return 0, 0, err
			}
			sum += ls
			tokens += k
		}
	}
	if err := ds.Err(); err != nil {
		return 0, 0, err
	}
	return sum / float64(tokens), tokens, nil
}

// row is one sequence of a batch with its padding cut off.
type row struct {
	ids, pos, seg, labels []int32
	n                     int // trained tokens
}

// splitRows cuts a batch into its sequences, each trimmed at its first
// padding token (SegID -1): the model wants segIDs non-decreasing and
// positions restarting at 0 per segment, which padding breaks.
func splitRows(b data.Batch) []row {
	out := make([]row, 0, b.B)
	for i := 0; i < b.B; i++ {
		lo, hi := i*b.T, (i+1)*b.T
		end := lo
		for end < hi && b.SegIDs[end] >= 0 {
			end++
		}
		if end == lo {
			continue
		}
		r := row{ids: b.IDs[lo:end], pos: b.Positions[lo:end], seg: b.SegIDs[lo:end], labels: b.Labels[lo:end]}
		r.n = trainedTokens(r)
		out = append(out, r)
	}
	return out
}

// trainedTokens counts the labels the shifted loss uses: token t-1 predicts
// labels[t] when both are in one segment (positions[t] > 0) and labels[t]
// is not -100.
func trainedTokens(r row) int {
	n := 0
	for t := 1; t < len(r.labels); t++ {
		if r.labels[t] != data.IgnoreIndex && r.seg[t] == r.seg[t-1] {
			n++
		}
	}
	return n
}

// stream hands out the micro-batches of each step across epochs, and knows
// where it stands so that a checkpoint can record it.
type stream struct {
	d         Data
	batchSize int
	cur       position
	next      func() (data.Batch, bool)
	stopFn    func()
}

func newStream(d Data, batchSize int, at position) *stream {
	s := &stream{d: d, batchSize: batchSize}
	s.rewind(at)
	return s
}

// rewind positions the stream at (epoch, batch) by reading from the epoch's
// start: batches are cheap to read next to a training step.
func (s *stream) rewind(at position) {
	s.stop()
	s.cur = position{Epoch: at.Epoch}
	s.next, s.stopFn = iter.Pull(s.d.Batches(data.SplitTrain, at.Epoch, s.batchSize))
	for s.cur.Batch < at.Batch {
		if _, ok := s.next(); !ok {
			break
		}
		s.cur.Batch++
	}
}

func (s *stream) stop() {
	if s.stopFn != nil {
		s.stopFn()
		s.stopFn = nil
	}
}

// step returns the rows of up to gradAccum batches and the position after
// them. A step never crosses an epoch's end (transformers flushes the
// accumulation there too).
func (s *stream) step(gradAccum int) ([]row, position, error) {
	var rows []row
	for k := 0; k < gradAccum; k++ {
		b, ok := s.next()
		if !ok {
			if err := s.d.Err(); err != nil {
				return nil, s.cur, err
			}
			if k == 0 {
				// Epoch done: the step starts the next one.
				s.rewind(position{Epoch: s.cur.Epoch + 1})
				b, ok = s.next()
				if !ok {
					if err := s.d.Err(); err != nil {
						return nil, s.cur, err
					}
					return nil, s.cur, errors.New("train: an epoch with no batches")
				}
			} else {
				break
			}
		}
		s.cur.Batch++
		rows = append(rows, splitRows(b)...)
	}
	return rows, s.cur, nil
}
