package train

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"iter"
	"math"
	"path/filepath"
	"time"

	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/dist"
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
	// MFU is the step's model FLOPs per second over the device's peak
	// (flops.go); absent when the trainer has no FLOPs or peak.
	MFU float64 `json:"mfu,omitempty"`
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
	// Comm makes this process one rank of a data-parallel run; nil takes
	// dist.World() (the launcher's group, nil for a single process). Every
	// rank computes its share of each step's sequences, the gradients are
	// summed across ranks, and every rank takes the same optimizer step;
	// rank 0 alone writes the run folder. Progress and Log are called on
	// rank 0 only.
	Comm dist.Comm
	// FLOPs and PeakFLOPS, when both are set, give each step's MFU
	// (StepMetrics.MFU): FLOPs counts the model FLOPs of a sequence,
	// PeakFLOPS is the device's (PeakFLOPS(backend)).
	FLOPs     *FLOPCount
	PeakFLOPS float64
	// OpenDevice, in a data-parallel run, opens the communicator that sums
	// gradients in device memory (NCCL, bootstrapped over the Comm). When
	// every rank's Params keep their gradients on a device
	// (DeviceGradReducer), the run sums them there with it and keeps the
	// optimizer on the device, as one process does: a step moves no
	// gradients or parameters over PCIe. Otherwise (nil, or a rank on the
	// host path) the host Comm sums them, with a notice when OpenDevice was
	// set. nil with a nil Comm takes dist.WorldDevice().
	OpenDevice dist.DeviceOpener

	comm     dist.Comm         // resolved; nil for a single process
	devComm  dist.DeviceComm   // open while the gradients are summed on the device
	devRed   DeviceGradReducer // with devComm: the Params that sum their device gradients
	opt      *AdamW
	dev      DeviceOptimizer // the optimizer runs on the device holding the gradients (nil: on the host)
	synced   int             // with dev: the step the host slabs hold (syncHost)
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
	if t.Log != nil && t.rank() == 0 {
		t.Log(format, args...)
	}
}

// Run trains until the planned steps are done, ctx is cancelled (a
// checkpoint is written and *InterruptedError returned), or the loss or
// gradients stop being finite (no checkpoint of the bad state is written).
func (t *Trainer) Run(ctx context.Context) (*Result, error) {
	res, err := t.run(ctx)
	if dc := t.devComm; dc != nil {
		t.devComm, t.devRed = nil, nil
		var ie *InterruptedError
		if err == nil || errors.As(err, &ie) {
			// Every rank got here together (the end, or a stop agreed at a
			// step boundary).
			if cerr := dc.Close(); cerr != nil && err == nil {
				return nil, fmt.Errorf("train: closing the device communicator: %w", cerr)
			}
		} else {
			dc.Abort() // a peer may be gone: do not wait for it
		}
	}
	return res, err
}

func (t *Trainer) run(ctx context.Context) (*Result, error) {
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

	params, grads := t.Params.Slabs()
	n := 0
	for _, p := range params {
		n += len(p)
	}
	t.comm = t.Comm
	if t.comm == nil {
		w, err := dist.World()
		if err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
		t.comm = w
	}
	if t.comm != nil && t.comm.Size() == 1 {
		t.comm = nil
	}
	open := t.OpenDevice
	if open == nil && t.Comm == nil {
		open = dist.WorldDevice()
	}
	red, _ := t.Params.(DeviceGradReducer)
	onDevice := red != nil && red.DeviceGrads()
	devSum := false
	if t.comm != nil {
		var err error
		if devSum, err = t.checkGroup(nSeq, n, open != nil && onDevice); err != nil {
			return nil, err
		}
		switch {
		case open != nil && !onDevice:
			t.logf("notice: gradients are summed on the host over %s, not on the GPUs: NCCL needs the device-resident LoRA pass, and this run trains op by op (TUNE_CUDA_PASS=host, full training, or an adapter or base the device pass does not take)", t.comm.Backend())
		case open != nil && !devSum:
			t.logf("notice: gradients are summed on the host over %s, not on the GPUs: some ranks compute op by op or have no NCCL (every rank must use the device-resident LoRA pass)", t.comm.Backend())
		}
	}
	t.opt = NewAdamW(n, c.AdamW)
	res := &Result{TotalSteps: total}
	if t.rank() == 0 {
		err := t.setup(res, params)
		if t.comm == nil && err != nil {
			return nil, err
		}
		if err := t.shareErr("start-up", err); err != nil {
			return nil, err
		}
	} else if err := t.shareErr("start-up", nil); err != nil {
		return nil, err
	}
	if t.comm != nil {
		if err := t.shareState(res, params); err != nil {
			return nil, err
		}
	}
	// Data parallel with every rank's gradients on its GPU: the device
	// communicator sums them there (opened by every rank, after the host
	// group agreed).
	if devSum {
		dc, err := open(t.comm)
		if err != nil {
			return nil, fmt.Errorf("train: rank %d: opening the device communicator for the gradients: %w", t.rank(), err)
		}
		t.devComm, t.devRed = dc, red
	}
	// With a device pass (CUDA) the optimizer runs on the device: a step
	// brings back only the loss and the gradient norm, and the host slabs
	// are synced before anything reads them (checkpoints, the adapter).
	// Data parallel, only when the gradients are summed on the device too.
	if d, ok := t.Params.(DeviceOptimizer); ok && (t.comm == nil || devSum) && d.EnableDeviceOptimizer() {
		if err := d.LoadFromHost(t.opt); err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
		t.dev, t.synced = d, t.pos.Step
	}
	if devSum && t.dev == nil {
		return nil, fmt.Errorf("train: rank %d: the gradients are on the device but its optimizer could not be enabled", t.rank())
	}
	if t.metrics != nil {
		defer t.metrics.Close()
	}

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
		stop := ctx.Err() != nil
		if t.comm != nil {
			// The ranks stop together, at a step boundary.
			var err error
			if stop, err = t.anyRank(stop); err != nil {
				return nil, err
			}
		}
		if stop {
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
		var flops float64
		if t.FLOPs != nil && t.PeakFLOPS > 0 {
			for _, r := range rows {
				flops += t.FLOPs.Sequence(r.pos, r.seg, r.labels)
			}
		}
		scale := float32(1 / float64(nTok))
		t.Params.ZeroGrads()
		var lossSum float64
		if t.comm != nil {
			if lossSum, err = t.stepShare(rows, scale, dropout, grads); err != nil {
				return nil, err
			}
			rows = nil // done
		}
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
		lr, _ := Schedule(c.Schedule, c.LR, t.pos.Step, c.WarmupSteps, total)
		var norm float64
		if t.dev != nil {
			// Clipping and AdamW on the device; a NaN or Inf norm updates nothing.
			if norm, err = t.dev.StepDevice(lr, c.MaxGradNorm, c.AdamW); err != nil {
				return nil, fmt.Errorf("train: step %d: %w", step, err)
			}
			if math.IsNaN(norm) || math.IsInf(norm, 0) {
				return nil, t.diverged(step, fmt.Sprintf("gradient norm is %v (loss %.4f)", norm, loss))
			}
		} else {
			norm = GradNorm(grads...)
			if math.IsNaN(norm) || math.IsInf(norm, 0) {
				return nil, t.diverged(step, fmt.Sprintf("gradient norm is %v (loss %.4f)", norm, loss))
			}
			ClipGrads(norm, c.MaxGradNorm, grads...)
			t.opt.Update(lr, params, grads)
		}
		t.pos = next
		t.pos.Step = step
		sec := max(time.Since(start).Seconds(), 1e-9)
		sm := &StepMetrics{Step: step, Epoch: next.Epoch, Loss: loss, GradNorm: norm, LR: lr, Tokens: nTok,
			TokensPerS: float64(nTok) / sec}
		if flops > 0 {
			ranks := 1
			if t.comm != nil {
				ranks = t.comm.Size()
			}
			sm.MFU = flops / sec / (t.PeakFLOPS * float64(ranks))
		}
		if err := t.writeMetrics(sm); err != nil {
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
	dir := filepath.Join(c.Dir, c.artifact())
	if err := t.syncHost(); err != nil {
		return nil, err
	}
	if t.rank() == 0 {
		dir, err = saveArtifact(t.Params, c.Dir, c.artifact(), c.DType)
		if t.comm == nil && err != nil {
			return nil, err
		}
		if err := t.shareErr("saving the "+c.artifact(), err); err != nil {
			return nil, err
		}
	} else if err := t.shareErr("saving the "+c.artifact(), nil); err != nil {
		return nil, err
	}
	res.AdapterDir = dir
	res.Steps = t.pos.Step
	return res, nil
}

func (t *Trainer) progress(e Event) {
	if t.Progress != nil && t.rank() == 0 {
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
	if t.rank() != 0 {
		t.lastCkpt = checkpointDir(t.Cfg.Dir, t.pos.Step) // rank 0 writes it
		return nil
	}
	if err := t.syncHost(); err != nil {
		return err
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
	if t.comm != nil {
		return t.evaluateShare()
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
	return t.evalMetrics(sum, n)
}

func (t *Trainer) evalMetrics(sum float64, n int) (*EvalMetrics, error) {
	loss := sum / float64(n)
	// exp overflows past ~709 nats, and JSON has no Inf.
	em := &EvalMetrics{Step: t.pos.Step, EvalLoss: loss, EvalPPL: math.Exp(min(loss, 700)), EvalTokens: n}
	if err := t.writeMetrics(em); err != nil {
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

// rank is this process's rank, 0 for a single process.
func (t *Trainer) rank() int {
	if t.comm == nil {
		return 0
	}
	return t.comm.Rank()
}

// setup prepares the run folder, restores a checkpoint when resuming and
// opens the metrics: rank 0's part of the start (the others receive the
// state from it).
func (t *Trainer) setup(res *Result, params [][]float32) error {
	c := t.Cfg
	if err := prepareDir(c.Dir, c.Resume, c.Force); err != nil {
		return err
	}
	if c.RecipeYAML != "" {
		if err := writeSynced(filepath.Join(c.Dir, "recipe.yaml"), []byte(c.RecipeYAML)); err != nil {
			return fmt.Errorf("train: %w", err)
		}
	}
	if c.Resume {
		ck, err := latestCheckpoint(c.Dir)
		if err != nil {
			return err
		}
		st, err := loadCheckpoint(ck, params, t.opt)
		if err != nil {
			return err
		}
		if err := st.compatible(c); err != nil {
			return fmt.Errorf("train: resume from %s: %w", ck, err)
		}
		t.pos = st.Position
		t.lastCkpt = ck
		res.ResumedFrom = st.Position.Step
		t.logf("resuming from %s (step %d of %d)", ck, st.Position.Step, t.total)
	}
	m, err := openMetrics(c.Dir, t.pos.Step)
	if err != nil {
		return err
	}
	t.metrics = m
	return nil
}

// The data-parallel run. Each step's sequences (the single process's global
// batch, in the same order) are dealt round-robin: rank r computes
// sequences r, r+W, r+2W, ... with the dropout masks of their global index,
// accumulating its gradients as one process would. The gradient slabs are
// then summed over ranks (all-reduce; the TCP path adds in rank order, and
// MPI's sum of two ranks is order-free), the loss of each sequence is
// gathered exactly (one rank writes each entry, the others add 0) and
// summed in sequence order, and every rank takes the identical clip and
// AdamW step. The normalisation is the single process's: every rank knows
// all the step's trained tokens. The results equal one process's to fp32
// summation-order rounding of the gradients (bit for bit with one rank, and
// for a fixed world size run after run); losses and validation numbers of
// equal weights are bit-identical.

// checkGroup refuses a group whose ranks disagree on the run (a hash of
// the configuration and recipe, the sequences and the parameter count), or
// whose size does not divide the global batch. It also tells whether every
// rank can sum its gradients on the device (devSum on every rank), so that
// all ranks take the same path.
func (t *Trainer) checkGroup(nSeq, nParams int, devSum bool) (bool, error) {
	W, r := t.comm.Size(), t.comm.Rank()
	c := t.Cfg
	h := fnv.New64a()
	fmt.Fprintf(h, "%#v", c)
	sum := h.Sum64() >> 12 // 52 bits: exact in a float64 sum with zeros
	const k = 4
	v := make([]float64, k*W)
	v[k*r], v[k*r+1], v[k*r+2] = float64(sum), float64(nSeq), float64(nParams)
	if devSum {
		v[k*r+3] = 1
	}
	if err := t.comm.AllReduceF64(v); err != nil {
		return false, fmt.Errorf("train: exchanging the recipe hash: %w", err)
	}
	var bad []string
	all := true
	for q := 0; q < W; q++ {
		all = all && v[k*q+3] == 1
		if q == 0 {
			continue
		}
		switch {
		case v[k*q] != v[0]:
			bad = append(bad, fmt.Sprintf("rank %d's recipe or flags differ from rank 0's (hash %013x, rank 0 %013x)", q, uint64(v[k*q]), uint64(v[0])))
		case v[k*q+1] != v[1]:
			bad = append(bad, fmt.Sprintf("rank %d has %d training sequences, rank 0 has %d", q, int(v[k*q+1]), int(v[1])))
		case v[k*q+2] != v[2]:
			bad = append(bad, fmt.Sprintf("rank %d trains %d parameters, rank 0 %d", q, int(v[k*q+2]), int(v[2])))
		}
	}
	if len(bad) > 0 {
		return false, fmt.Errorf("train: the %d ranks do not run the same job: %s; start every rank with the same recipe, --set overrides, data and --resume/--force", W, joinSemi(bad))
	}
	if per := c.BatchSize * c.GradAccum; per%W != 0 {
		var fit []int
		for k := 1; k <= per; k++ {
			if per%k == 0 {
				fit = append(fit, k)
			}
		}
		return false, fmt.Errorf("train: %d ranks do not divide a step's %d sequences (train.batch_size %d x train.grad_accum %d): run %v ranks, or change batch_size or grad_accum", W, per, c.BatchSize, c.GradAccum, fit)
	}
	return all, nil
}

func joinSemi(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += "; "
		}
		out += x
	}
	return out
}

// shareErr makes rank 0's outcome of a rank-0-only action (start-up,
// saving) every rank's: rank 0 returns err, the others an error saying that
// rank 0 failed, or nil.
func (t *Trainer) shareErr(what string, err error) error {
	if t.comm == nil {
		return err
	}
	var msg []byte
	if t.rank() == 0 && err != nil {
		msg = []byte(err.Error())
	}
	msg, cerr := t.broadcastBytes(msg)
	if cerr != nil {
		return fmt.Errorf("train: %s: %w", what, cerr)
	}
	if t.rank() == 0 {
		return err
	}
	if len(msg) > 0 {
		return fmt.Errorf("train: rank %d: rank 0 failed at %s: %s", t.rank(), what, msg)
	}
	return nil
}

// broadcastBytes sends rank 0's b (any length) to every rank.
func (t *Trainer) broadcastBytes(b []byte) ([]byte, error) {
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(b)))
	if err := t.comm.Broadcast(n[:], 0); err != nil {
		return nil, err
	}
	if t.rank() != 0 {
		b = make([]byte, binary.LittleEndian.Uint64(n[:]))
	}
	if len(b) == 0 {
		return b, nil
	}
	return b, t.comm.Broadcast(b, 0)
}

// shareState gives every rank rank 0's start: the data position, the
// optimizer step, the parameters and AdamW moments (so that a resumed run,
// with any number of ranks, and a fresh one start from identical state).
func (t *Trainer) shareState(res *Result, params [][]float32) error {
	var hdr [5 * 8]byte
	if t.rank() == 0 {
		for i, v := range []int64{int64(t.pos.Step), int64(t.pos.Epoch), int64(t.pos.Batch), t.opt.Step, int64(res.ResumedFrom)} {
			binary.LittleEndian.PutUint64(hdr[8*i:], uint64(v))
		}
	}
	if err := t.comm.Broadcast(hdr[:], 0); err != nil {
		return fmt.Errorf("train: sharing the start state: %w", err)
	}
	ck, err := t.broadcastBytes([]byte(t.lastCkpt))
	if err != nil {
		return fmt.Errorf("train: sharing the start state: %w", err)
	}
	slabs := append(append([][]float32(nil), params...), t.opt.M, t.opt.V)
	if err := dist.BroadcastF32(t.comm, 0, slabs...); err != nil {
		return fmt.Errorf("train: sharing the parameters: %w", err)
	}
	if t.rank() != 0 {
		get := func(i int) int64 { return int64(binary.LittleEndian.Uint64(hdr[8*i:])) }
		t.pos = position{Step: int(get(0)), Epoch: int(get(1)), Batch: int(get(2))}
		t.opt.Step = get(3)
		res.ResumedFrom = int(get(4))
		t.lastCkpt = string(ck)
	}
	return nil
}

// anyRank is true on every rank when flag is true on one.
func (t *Trainer) anyRank(flag bool) (bool, error) {
	v := []float64{0}
	if flag {
		v[0] = 1
	}
	if err := t.comm.AllReduceF64(v); err != nil {
		return false, fmt.Errorf("train: step %d: %w", t.pos.Step+1, err)
	}
	return v[0] > 0, nil
}

// stepShare computes this rank's sequences of a step and sums gradients
// and losses over the ranks; it returns the step's loss sum.
func (t *Trainer) stepShare(rows []row, scale float32, dropout DropoutStepper, grads [][]float32) (float64, error) {
	W, r := t.comm.Size(), t.comm.Rank()
	step := t.pos.Step + 1
	losses := make([]float64, len(rows))
	for i := r; i < len(rows); i += W {
		rw := rows[i]
		if dropout != nil {
			dropout.SetDropoutStep(uint64(t.pos.Step)<<24 | uint64(i))
		}
		ls, n, err := t.Model.Forward(rw.ids, rw.pos, rw.seg, rw.labels)
		if err != nil {
			return 0, fmt.Errorf("train: rank %d: step %d: %w", r, step, err)
		}
		if n != rw.n {
			return 0, fmt.Errorf("train: rank %d: step %d: the model scored %d tokens of a sequence, the labels have %d", r, step, n, rw.n)
		}
		if err := t.Model.Backward(scale); err != nil {
			return 0, fmt.Errorf("train: rank %d: step %d: %w", r, step, err)
		}
		losses[i] = ls
	}
	// The losses first, on the host Comm: a rank that failed in its
	// forward or backward has left the group (TCP: its connections closed;
	// MPI: the job aborted), which this reports, rather than leaving the
	// others waiting in a device all-reduce (NCCL does not notice a peer
	// that never joins a collective).
	if err := t.comm.AllReduceF64(losses); err != nil {
		return 0, fmt.Errorf("train: step %d: loss all-reduce: %w", step, err)
	}
	// The sum of the ranks' gradients, each scaled by 1/(the step's trained
	// tokens on all ranks) in Backward: the single process's normalisation,
	// on the device (in place, before StepDevice's norm and clip) or on the
	// host slabs (before GradNorm).
	if t.devRed != nil {
		if err := t.devRed.AllReduceGrads(t.devComm.AllReduceF32); err != nil {
			return 0, fmt.Errorf("train: step %d: gradient all-reduce on the device: %w", step, err)
		}
	} else {
		for _, g := range grads {
			if err := t.comm.AllReduceF32(g); err != nil {
				return 0, fmt.Errorf("train: step %d: gradient all-reduce: %w", step, err)
			}
		}
	}
	var sum float64
	for _, ls := range losses {
		sum += ls
	}
	return sum, nil
}

// evaluateShare is evaluate over the ranks: rank r scores validation
// sequences r, r+W, ...; the sums run in sequence order as in one process.
func (t *Trainer) evaluateShare() (*EvalMetrics, error) {
	var rows []row
	for b := range t.Data.Batches(data.SplitValidation, 0, t.Cfg.BatchSize) {
		rows = append(rows, splitRows(b)...)
	}
	if err := t.Data.Err(); err != nil {
		return nil, err
	}
	W, r := t.comm.Size(), t.comm.Rank()
	v := make([]float64, 2*len(rows))
	for i := r; i < len(rows); i += W {
		rw := rows[i]
		ls, k, err := t.Model.Eval(rw.ids, rw.pos, rw.seg, rw.labels)
		if err != nil {
			return nil, fmt.Errorf("train: rank %d: validation at step %d: %w", r, t.pos.Step, err)
		}
		v[2*i], v[2*i+1] = ls, float64(k)
	}
	if err := t.comm.AllReduceF64(v); err != nil {
		return nil, fmt.Errorf("train: validation at step %d: %w", t.pos.Step, err)
	}
	var sum float64
	var n int
	for i := range rows {
		sum += v[2*i]
		n += int(v[2*i+1])
	}
	if n == 0 {
		return nil, nil
	}
	return t.evalMetrics(sum, n)
}

// writeMetrics appends to metrics.jsonl (rank 0; the others have none).
func (t *Trainer) writeMetrics(v any) error {
	if t.metrics == nil {
		return nil
	}
	return t.metrics.write(v)
}

// syncHost brings the device optimizer's parameters and moments to the
// host slabs, once per step: a checkpoint at the last step and the saved
// adapter after it share one copy.
func (t *Trainer) syncHost() error {
	if t.dev == nil || t.synced == t.pos.Step {
		return nil
	}
	if err := t.dev.SyncToHost(t.opt); err != nil {
		return fmt.Errorf("train: %w", err)
	}
	t.synced = t.pos.Step
	return nil
}
