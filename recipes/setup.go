package recipes

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/quantize/wq"
	"github.com/tunellm/tune/tokenizer"
	"github.com/tunellm/tune/train"
)

// LoRAConfig is the recipe's lora section as package lora takes it.
func (r *Recipe) LoRAConfig() lora.Config {
	var layers []int
	if len(r.LoRA.LayersToTransform) > 0 {
		layers = append(layers, r.LoRA.LayersToTransform...)
	}
	// Validate has checked the patterns.
	rp, _ := lora.ParsePatterns("rank_pattern", r.LoRA.RankPattern)
	ap, _ := lora.ParsePatterns("alpha_pattern", r.LoRA.AlphaPattern)
	return lora.Config{R: r.LoRA.R, Alpha: r.LoRA.Alpha, Dropout: r.LoRA.Dropout,
		TargetModules: append([]string(nil), r.LoRA.TargetModules...), LayersToTransform: layers,
		UseRSLoRA: r.LoRA.UseRSLoRA, UseDoRA: r.LoRA.UseDoRA, BaseModel: cmp.Or(r.Model.ID, r.Model.Path),
		RankPattern: rp, AlphaPattern: ap}
}

// TrainConfig is the recipe's train and output sections as train.Run takes
// them.
func (r *Recipe) TrainConfig() train.Config {
	t := r.Train
	c := train.Config{Epochs: t.Epochs, MaxSteps: t.MaxSteps, BatchSize: t.BatchSize, GradAccum: t.GradAccum,
		LR: t.LR, Schedule: t.Schedule, WarmupSteps: t.WarmupSteps,
		AdamW:       train.AdamWConfig{Beta1: t.AdamBeta1, Beta2: t.AdamBeta2, Eps: t.AdamEps, WeightDecay: t.WeightDecay},
		MaxGradNorm: t.MaxGradNorm, Seed: t.Seed, EvalEvery: t.EvalEvery, SaveEvery: t.SaveEvery,
		KeepCheckpoints: t.KeepCheckpoints, Dir: r.Output.Dir, DType: r.Output.DType, RecipeYAML: r.YAML()}
	if t.Mode == "full" {
		c.Artifact = "model"
	}
	return c
}

// SetupOptions control Setup.
type SetupOptions struct {
	// DataProgress is data.Prepare's progress callback (may be nil).
	DataProgress func(done, total int64)
	// DryRun loads no weights and allocates no training buffers: the plan
	// only.
	DryRun bool
	// Warn, when set, gets one line per warning (also in Plan.Warnings).
	Warn func(string)
	// Backend computes the training; nil: the CPU.
	Backend kernels.Backend
}

// Plan is what a run will do, printed by --dry-run.
type Plan struct {
	Recipe           string               `json:"recipe"`
	Model            string               `json:"model"`
	Architecture     string               `json:"architecture"`
	Layers           int                  `json:"layers"`
	Mode             string               `json:"mode"`
	Data             data.Stats           `json:"data"`
	StepsPerEpoch    int                  `json:"steps_per_epoch"`
	TotalSteps       int                  `json:"total_steps"`
	SequencesPerStep int                  `json:"sequences_per_step"`
	TrainableParams  int64                `json:"trainable_params"`
	Memory           train.MemoryEstimate `json:"memory"`
	OutputDir        string               `json:"output_dir"`
	// BaseFrom is the pre-quantized base trained on (lora.base_from, or a
	// quantized model.path), BaseQuantized what it holds.
	BaseFrom      string   `json:"base_from,omitempty"`
	BaseQuantized string   `json:"base_quantized,omitempty"`
	Warnings      []string `json:"warnings,omitempty"`
}

// Job is a recipe made ready to train: data prepared, model mapped, adapter
// made (LoRA), training pass allocated.
type Job struct {
	r    *Recipe
	plan *Plan
	tok  *tokenizer.Tokenizer
	ds   *data.Dataset
	mc   *model.Config
	m    *model.Model
	ad   *lora.Adapter // nil in full training
	run  runner        // nil in a dry run
}

// runner is train.LoRA or train.Full.
type runner interface {
	train.Model
	train.Params
}

// Setup prepares everything a run needs, and the plan.
func Setup(r *Recipe, opts SetupOptions) (*Job, error) {
	mc, err := model.LoadConfig(r.Model.Path)
	if err != nil {
		return nil, err
	}
	tok, err := tokenizer.Load(r.Model.Path)
	if err != nil {
		return nil, err
	}
	ds, err := data.Prepare(r.DataConfig(), tok, opts.DataProgress)
	if err != nil {
		return nil, err
	}
	j := &Job{r: r, tok: tok, ds: ds, mc: mc}
	fail := func(err error) (*Job, error) {
		j.Close()
		return nil, err
	}
	full := r.Train.Mode == "full"
	var warnings []string
	warn := func(format string, args ...any) {
		w := fmt.Sprintf(format, args...)
		warnings = append(warnings, w)
		if opts.Warn != nil {
			opts.Warn(w)
		}
	}
	// The base the adapter is for (base_model_name_or_path), and the
	// pre-quantized base trained on, if any.
	baseID, from, w := r.baseIDs()
	if w != "" {
		warn("%s", w)
	}
	if !full {
		if r.LoRA.InitAdapter != "" {
			j.ad, err = lora.Load(r.LoRA.InitAdapter, mc)
			if err == nil && (from != "" || r.LoRA.BaseQuant != "none") {
				err = j.ad.CheckBase(baseID)
			}
			if err == nil {
				j.ad.SetSeed(r.Train.Seed)
			}
		} else {
			lc := r.LoRAConfig()
			lc.BaseModel = baseID
			j.ad, err = lora.New(lc, mc, r.Train.Seed)
		}
		if err != nil {
			return fail(err)
		}
	}
	st := ds.Stats()
	perEpoch, total := train.Plan(st.TrainSequences, r.Train.BatchSize, r.Train.GradAccum, r.Train.Epochs, r.Train.MaxSteps)
	weights, params, err := weightBytes(r.Model.Path)
	if err != nil {
		return fail(err)
	}
	trainable := params
	if !full {
		trainable = int64(j.ad.NumParams())
	}
	j.plan = &Plan{Recipe: r.File, Model: r.Model.Path, Architecture: mc.ModelType, Layers: mc.Layers, Mode: r.Train.Mode,
		Data: st, StepsPerEpoch: perEpoch, TotalSteps: total, SequencesPerStep: r.Train.BatchSize * r.Train.GradAccum,
		TrainableParams: trainable, OutputDir: r.Output.Dir}
	lb, err := r.loadBase(mc, baseID, from, opts.DryRun, opts.Backend)
	if err != nil {
		return fail(err)
	}
	j.m = lb.m
	if r.Train.ComputeDType == "bf16" {
		if be := j.m.Backend(); be != nil && be.Name() != "cpu" {
			warn("train.compute_dtype bf16 applies to the CPU backend; on %s, TUNE_CUDA_GEMM=bf16 selects bf16 GEMMs", be.Name())
		} else if !cpu.HasBF16() {
			warn("train.compute_dtype bf16: this CPU has no AVX512_BF16; the matmuls run in f32")
		} else if w, err := j.m.LinearWeight(0, "q_proj"); err == nil && w.DType != kernels.BF16 {
			warn("train.compute_dtype bf16: the base's linears are %v, not BF16; they run in f32", w.DType)
		}
	}
	baseMode, baseDense, baseQuant := lb.mode, lb.dense, lb.quant
	if from != "" {
		j.plan.BaseFrom, j.plan.BaseQuantized = from, lb.mode
	}
	popts := model.TrainOptions{Checkpointing: r.Train.GradientCheckpointing, LossChunk: r.Train.LossChunk}
	var act int64
	switch {
	case opts.DryRun:
		// A pass without adapter or fp32 copies, for its activation size:
		// its slabs are allocated but never touched, so the operating
		// system commits none of it.
		p, err := j.m.NewPass(r.Train.MaxSeqLen, popts)
		if err != nil {
			return fail(err)
		}
		act = p.ActivationBytes()
	case full:
		f, err := train.NewFull(j.m, r.Model.Path, r.Train.MaxSeqLen, popts)
		if err != nil {
			return fail(err)
		}
		j.run, act = f, f.Pass.ActivationBytes()
	default:
		l, err := train.NewLoRA(j.m, j.ad, r.Train.MaxSeqLen, popts)
		if err != nil {
			return fail(err)
		}
		j.run, act = l, l.ActivationBytes() // the device slab when the pass runs on a GPU
	}
	j.plan.Memory = train.EstimateMemory(weights, act, trainable)
	if baseQuant > 0 {
		j.plan.Memory = j.plan.Memory.WithQuantizedBase(baseMode, baseDense, baseQuant)
	}
	j.plan.Warnings = warnings
	if avail, ok := train.AvailableMemory(); ok && !opts.DryRun {
		if err := j.plan.Memory.Check(avail); err != nil {
			return fail(err)
		}
	}
	return j, nil
}

// Plan returns what the job will do.
func (j *Job) Plan() *Plan { return j.plan }

// TrainOptions control Job.Train.
type TrainOptions struct {
	Resume, Force bool
	Progress      func(train.Event)
	Log           func(format string, args ...any)
}

// Train runs the training loop (see train.Trainer.Run).
func (j *Job) Train(ctx context.Context, opts TrainOptions) (*train.Result, error) {
	if j.run == nil {
		return nil, errors.New("recipes: Train on a dry-run job")
	}
	cfg := j.r.TrainConfig()
	cfg.Resume, cfg.Force = opts.Resume, opts.Force
	if j.r.Train.ComputeDType == "bf16" {
		// The frozen base's matmuls in bf16 compute while training only:
		// the validations after it stay exact.
		defer cpu.SetComputeBF16(cpu.SetComputeBF16(true))
	}
	// A quantized base's forward must be the function backward
	// differentiates (dequantize, then fp32), not llama.cpp's 8-bit one.
	defer cpu.SetQMatMulMode(cpu.SetQMatMulMode(cpu.QExact))
	peak, _ := train.PeakFLOPS(j.m.Backend())
	t := &train.Trainer{Cfg: cfg, Model: j.run, Params: j.run, Data: j.ds, Progress: opts.Progress, Log: opts.Log,
		FLOPs: train.NewFLOPCount(j.mc, j.ad), PeakFLOPS: peak}
	return t.Run(ctx)
}

// Close releases the dataset and the model mapping.
func (j *Job) Close() error {
	var errs []error
	if j.ds != nil {
		errs = append(errs, j.ds.Close())
	}
	if j.m != nil {
		errs = append(errs, j.m.Close())
	}
	return errors.Join(errs...)
}

// weightBytes sums the safetensors files of a model folder (what the
// mapping will page in) and counts the weights' elements.
func weightBytes(dir string) (bytes, params int64, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, fmt.Errorf("recipes: model.path: %w", err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".safetensors") {
			if fi, err := e.Info(); err == nil {
				bytes += fi.Size()
			}
		}
	}
	r, err := safetensors.Open(dir)
	if err != nil {
		return 0, 0, err
	}
	defer r.Close()
	for _, n := range r.Names() {
		t, err := r.Tensor(n)
		if err != nil {
			return 0, 0, err
		}
		params += int64(t.NumElements())
	}
	return bytes, params, nil
}

// baseIDs are the base the adapter is for (its base_model_name_or_path)
// and the pre-quantized base trained on ("" when none): lora.base_from, or
// model.path when it is a quantized folder (then the adapter is for the
// model the folder says it was made from, or the folder, with a warning).
func (r *Recipe) baseIDs() (baseID, from, warning string) {
	baseID, from = cmp.Or(r.Model.ID, r.Model.Path), r.LoRA.BaseFrom
	if r.Train.Mode != "full" && from == "" && wq.IsQuantizedFolder(r.Model.Path) {
		from = r.Model.Path
		if src := quantizedSourceID(from); src != "" {
			baseID = src
		} else {
			warning = fmt.Sprintf("model.path %s is a quantized folder that does not name the model it was made from: the adapter's base_model_name_or_path will be this folder; set model.path to the full-precision model and lora.base_from to this folder to merge into it", from)
		}
	}
	return baseID, from, warning
}

// TrainingBase loads the frozen base a LoRA run of r trains on, as Setup
// does: model.path quantized as lora.base_quant says, or the pre-quantized
// base (lora.base_from, a quantized model.path); and what its linears hold
// ("nf4", "int4 g128 sym", "GGUF Q4_K+Q6_K"; "none" for a plain base).
// The pipeline compares the adapter on it with the adapter on the
// full-precision base (what merging gives).
func (r *Recipe) TrainingBase() (*model.Model, string, error) {
	mc, err := model.LoadConfig(r.Model.Path)
	if err != nil {
		return nil, "", err
	}
	baseID, from, _ := r.baseIDs()
	tb, err := r.loadBase(mc, baseID, from, false, nil)
	if err != nil {
		return nil, "", err
	}
	return tb.m, tb.mode, nil
}

// trainingBase is the frozen base a run trains on, and what its linears
// take (dense: as model.path maps them; quant: as held).
type trainingBase struct {
	m            *model.Model
	mode         string // lora.base_quant, with the scheme for int4/int8, or what a pre-quantized base holds
	dense, quant int64  // 0 for an unquantized base
}

// loadBase loads model.path, quantized as lora.base_quant says (a dry run
// only sizes it), or the pre-quantized base from (checked against model.path
// and the adapter's base id baseID).
func (r *Recipe) loadBase(mc *model.Config, baseID, from string, dryRun bool, be kernels.Backend) (*trainingBase, error) {
	tb := &trainingBase{mode: r.LoRA.BaseQuant}
	var err error
	if from != "" {
		if from != r.Model.Path {
			if err := checkBaseID(from, quantizedSourceID(from), baseID); err != nil {
				return nil, err
			}
		}
		qb, err := loadQuantizedBase(from, mc, be)
		if err != nil {
			return nil, err
		}
		// The linears as model.path maps them in bf16, and as held now.
		tb.m, tb.mode, tb.dense, tb.quant = qb.m, qb.desc, 2*linearElements(mc), qb.m.BaseLinearBytes()
		return tb, nil
	}
	if tb.m, err = model.Load(r.Model.Path, model.LoadOptions{Backend: be}); err != nil {
		return nil, err
	}
	switch bq := r.LoRA.BaseQuant; {
	case bq == "none" || r.Train.Mode == "full":
		return tb, nil
	case bq == "int4" || bq == "int8":
		s := r.baseQuantScheme()
		tb.mode = bq + " " + strings.TrimPrefix(s.String(), bq+" ")
		tb.dense, tb.quant, err = quantizeBaseInt(tb.m, bq, s, dryRun)
	default:
		tb.dense, tb.quant, err = quantizeBase(tb.m, bq, dryRun)
	}
	if err != nil {
		tb.m.Close()
		return nil, err
	}
	return tb, nil
}

// linearElements counts the decoder linears' weights a config implies.
func linearElements(c *model.Config) int64 {
	C, I := int64(c.Hidden), int64(c.Intermediate)
	qd, kvd := int64(c.Heads*c.HeadDim), int64(c.KVHeads*c.HeadDim)
	return int64(c.Layers) * (2*C*qd + 2*C*kvd + 3*C*I)
}

// baseQuantDTypes maps lora.base_quant to the in-memory dtype of the base's
// linear layers.
var baseQuantDTypes = map[string]kernels.DType{"nf4": kernels.NF4, "q4_k": kernels.Q4_K, "q8_0": kernels.Q8_0}

// quantizeBase quantizes m's decoder linears as mode (QLoRA; a dry run only
// sizes them) and returns their bytes before and after.
func quantizeBase(m *model.Model, mode string, dryRun bool) (dense, quant int64, err error) {
	dt := baseQuantDTypes[mode]
	dense, quant = m.BaseLinearBytes(), m.BaseLinearBytesAs(dt)
	if quant < 0 {
		e, _, _ := dt.Block()
		return 0, 0, fmt.Errorf("recipes: lora.base_quant %s: the model's linear layers have a width that is not a multiple of the %v block size %d (use nf4 or q8_0)", mode, dt, e)
	}
	if dryRun {
		return dense, quant, nil
	}
	q := func(dt kernels.DType, dst []byte, src []float32, rows, cols int) error {
		gt, err := quantize.ParseType(dt.String())
		if err != nil {
			return err
		}
		return quantize.Quantize(gt, dst, src, nil)
	}
	if err := m.QuantizeBase(dt, runtime.NumCPU(), q); err != nil {
		return 0, 0, fmt.Errorf("recipes: lora.base_quant %s: %w", mode, err)
	}
	return dense, m.BaseLinearBytes(), nil
}
