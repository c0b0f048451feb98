// Package pipeline runs what follows training in a recipe: merge, each
// quantized output, and the validation of every artifact against its
// reference with the recipe's gates; it keeps a manifest (manifest.json in
// the run folder) of each stage's input and output hashes so that a re-run
// redoes only what changed, and writes report.html and report.md. It does
// no numerics of its own: lora merges, quantize quantizes, eval measures.
//
// Stages and artifacts, in the run folder (output.dir):
//
//	train            adapter/ (or model/ in full training), by the caller's Train
//	validate:adapter adapter/validation.json: adapter vs base
//	merge            merged/
//	validate:merged  merged/validation.json: merged vs base+adapter
//	quantize:NAME    NAME/NAME.gguf, or the folder NAME/ (INT safetensors)
//	validate:NAME    NAME/validation.json: NAME vs merged
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/recipes"
)

// Options configure Run. The loaders and the INT quantizer can be replaced
// (tests do); nil ones are ggufmodel.LoadModel, wq.LoadModel and
// quantize.QuantizeSafetensors.
type Options struct {
	// Force redoes every stage, training included.
	Force bool
	// Train runs the training stage (the caller owns its progress display);
	// force asks it to start over in a folder that holds a run.
	Train func(ctx context.Context, force bool) error
	// Log receives one progress line per stage event (may be nil).
	Log func(format string, args ...any)
	// Progress, when set, gets byte or window counts of the running stage.
	Progress func(stage string, done, total int64)

	// LoadGGUF loads a .gguf for evaluation; nil: ggufmodel.LoadModel.
	LoadGGUF func(path string) (*model.Model, error)
	// LoadQuantized loads an INT safetensors folder; nil: wq.LoadModel.
	LoadQuantized func(dir string) (*model.Model, error)
	// QuantizeInt writes an INT safetensors folder from a model folder
	// (quantize.QuantizeSafetensors); calib holds token windows for GPTQ.
	QuantizeInt func(modelDir, outDir string, q recipes.QuantizeOutput, calib [][]int, progress func(done, total int64)) error
}

// StageResult is one stage of this invocation, for summaries.
type StageResult struct {
	Name    string  `json:"name"`
	Status  string  `json:"status"` // ok, failed, error
	Skipped bool    `json:"skipped"`
	Seconds float64 `json:"seconds"`
	Error   string  `json:"error,omitempty"`
}

// Summary is what Run did.
type Summary struct {
	RunDir    string        `json:"run_dir"`
	Manifest  string        `json:"manifest"`
	Report    string        `json:"report"`
	Stages    []StageResult `json:"stages"`
	Artifacts []*Artifact   `json:"artifacts"`
	Pass      bool          `json:"pass"`
}

// GateError is returned when an artifact failed its gates or a stage
// failed: one line with the numbers.
type GateError struct {
	Failed []string // "gguf-q2_k: max_mean_kld: kld_mean 0.53 > 0.1"
}

func (e *GateError) Error() string {
	return "validation failed: " + strings.Join(e.Failed, "; ")
}

type runner struct {
	ctx  context.Context
	r    *recipes.Recipe
	opts Options
	dir  string
	man  *Manifest
	sum  *Summary
	v    *validator
	fail []string
	// current holds the artifacts this invocation's recipe makes.
	current map[string]bool
}

func (p *runner) logf(format string, args ...any) {
	if p.opts.Log != nil {
		p.opts.Log(format, args...)
	}
}

// Run runs the recipe's pipeline in r.Output.Dir: training (through
// opts.Train), then merge, quantize and validate as the recipe asks. It
// returns a *GateError when an artifact failed a gate or a stage failed
// (the artifacts stay, marked in the manifest), after writing the report.
func Run(ctx context.Context, r *recipes.Recipe, opts Options) (*Summary, error) {
	dir := r.Output.Dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	man, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	man.Recipe = r.File
	p := &runner{ctx: ctx, r: r, opts: opts, dir: dir, man: man, current: map[string]bool{},
		sum: &Summary{RunDir: dir, Manifest: filepath.Join(dir, ManifestName)}}
	p.v = newValidator(r, p)
	defer p.v.close()
	err = p.run()
	// Artifacts of outputs the recipe no longer lists leave the manifest
	// (their files and stage records stay, so listing them again reuses
	// them).
	var cur []*Artifact
	for _, a := range man.Artifacts {
		if p.current[a.Name] {
			cur = append(cur, a)
		}
	}
	man.Artifacts = cur
	if werr := man.Write(dir); err == nil {
		err = werr
	}
	if err != nil {
		return p.sum, err
	}
	if err := p.writeReport(); err != nil {
		return p.sum, err
	}
	if err := p.writeCards(); err != nil {
		return p.sum, err
	}
	p.sum.Artifacts = man.Artifacts
	p.sum.Pass = len(p.fail) == 0
	if len(p.fail) > 0 {
		return p.sum, &GateError{Failed: p.fail}
	}
	return p.sum, nil
}

func (p *runner) run() error {
	r := p.r
	full := r.Train.Mode == "full"
	trained := "adapter"
	if full {
		trained = "model"
	}
	// train
	inputs := map[string]string{"recipe": HashString(r.TrainingYAML())}
	for k, path := range map[string]string{"model": r.Model.Path, "dataset": r.Dataset.Path, "validation": r.Dataset.Validation.Path, "init_adapter": r.LoRA.InitAdapter, "base_from": r.LoRA.BaseFrom} {
		h, err := hashInput(path)
		if err != nil {
			return err
		}
		inputs[k] = h
	}
	p.adoptTraining(inputs, trained)
	err := p.stage("train", inputs, []string{trained}, func() (string, error) {
		if p.opts.Train == nil {
			return "error", errors.New("pipeline: no training function")
		}
		return "ok", p.opts.Train(p.ctx, p.opts.Force)
	})
	if err != nil {
		return err // nothing after training can run
	}
	kind, refModel := "adapter", "merged" // refModel: what quantized outputs are checked against
	if full {
		kind, refModel = "model", "model"
	}
	p.artifact(trained, kind, trained, "")
	if err := p.validate(trained, trained, "base"); err != nil {
		return err
	}
	source := filepath.Join(p.dir, trained) // what quantize starts from
	if !full && (r.Merge.Enabled || len(r.Quantize) > 0) {
		inputs, err := p.inputs(map[string]string{"base": r.Model.Path, "adapter": source}, "dtype="+r.Merge.DType)
		if err != nil {
			return err
		}
		merged := filepath.Join(p.dir, "merged")
		err = p.stage("merge", inputs, []string{"merged"}, func() (string, error) {
			mc, err := model.LoadConfig(r.Model.Path)
			if err != nil {
				return "error", err
			}
			a, err := lora.Load(source, mc)
			if err != nil {
				return "error", err
			}
			return "ok", lora.MergeWith(r.Model.Path, merged, a, lora.MergeOptions{DType: r.Merge.DType, Force: true})
		})
		if err != nil {
			p.artifactError("merged", "model", "merged", err)
			return nil // quantize needs merged; validation of what exists still reports
		}
		p.artifact("merged", "model", "merged", merged)
		if err := p.validate("merged", "merged", "base+adapter"); err != nil {
			return err
		}
		source = merged
	} else if !full {
		return nil
	}
	for _, q := range r.Quantize {
		name := q.Name()
		rel := name
		if q.Format == "gguf" {
			rel = filepath.Join(name, name+".gguf")
		}
		cfg := fmt.Sprintf("%+v", q)
		calibHash, err := hashInput(q.Calib)
		if err != nil {
			return err
		}
		inputs, err := p.inputs(map[string]string{"model": source}, cfg+" calib="+calibHash)
		if err != nil {
			return err
		}
		out := filepath.Join(p.dir, rel)
		err = p.stage("quantize:"+name, inputs, []string{rel}, func() (string, error) {
			return "ok", p.quantize(q, source, out)
		})
		kind := "gguf"
		if q.Format == "safetensors" {
			kind = "safetensors-int"
		}
		if err != nil {
			p.artifactError(name, kind, rel, err)
			continue
		}
		p.artifact(name, kind, rel, source)
		if err := p.validate(name, rel, refModel); err != nil {
			return err
		}
	}
	return nil
}

// adoptTraining records a training that tune lora finished in the run folder
// before there was a manifest: when its recipe.yaml has the same training
// sections as r and the final artifact is there, it stands for the train
// stage instead of training again (or refusing a folder that holds a run).
func (p *runner) adoptTraining(inputs map[string]string, trained string) {
	if p.opts.Force || p.man.Stage("train") != nil {
		return
	}
	b, err := os.ReadFile(filepath.Join(p.dir, "recipe.yaml"))
	if err != nil {
		return
	}
	y := string(b)
	if i := strings.Index(y, "\nmerge:\n"); i >= 0 {
		y = y[:i+1]
	}
	weights := "adapter_model.safetensors"
	if trained == "model" {
		weights = "config.json"
	}
	if y != p.r.TrainingYAML() {
		return
	}
	if _, err := os.Stat(filepath.Join(p.dir, trained, weights)); err != nil {
		return
	}
	h, err := HashPath(filepath.Join(p.dir, trained))
	if err != nil {
		return
	}
	p.man.setStage(&Stage{Name: "train", Status: "ok", Inputs: inputs, Outputs: map[string]string{trained: h}, Finished: time.Now().UTC()})
	p.logf("train: %s holds a finished training of the same recipe: using it", p.dir)
}

// inputs hashes paths and adds a configuration string.
func (p *runner) inputs(paths map[string]string, config string) (map[string]string, error) {
	out := map[string]string{"config": HashString(config)}
	for k, path := range paths {
		h, err := hashInput(path)
		if err != nil {
			return nil, err
		}
		out[k] = h
	}
	return out, nil
}

// hashInput hashes a path, a glob's matches, or "" (none).
func hashInput(path string) (string, error) {
	if strings.ContainsAny(path, "*?[") {
		matches, err := filepath.Glob(path)
		if err != nil {
			return "", fmt.Errorf("pipeline: %s: %w", path, err)
		}
		var sb strings.Builder
		for _, m := range matches {
			h, err := HashPath(m)
			if err != nil {
				return "", err
			}
			sb.WriteString(m + "\x00" + h + "\n")
		}
		return HashString(sb.String()), nil
	}
	if _, err := os.Stat(path); path != "" && errors.Is(err, fs.ErrNotExist) {
		// The stage that reads it says what is wrong, in its own words.
		return "missing", nil
	}
	return HashPath(path)
}

// stage runs do unless the manifest shows the same inputs and intact
// outputs (and not Force); it records the outcome. A gate failure is not an
// error here (status "failed"); do's error is returned.
func (p *runner) stage(name string, inputs map[string]string, outputs []string, do func() (string, error)) error {
	rec := p.man.Stage(name)
	if !p.opts.Force && upToDate(rec, inputs, p.dir) {
		p.logf("%s: up to date, skipped", name)
		p.sum.Stages = append(p.sum.Stages, StageResult{Name: name, Status: rec.Status, Skipped: true})
		return nil
	}
	p.logf("%s: running", name)
	start := time.Now()
	status, err := do()
	s := &Stage{Name: name, Status: status, Inputs: inputs, Outputs: map[string]string{},
		Seconds: time.Since(start).Seconds(), Finished: time.Now().UTC()}
	if err != nil {
		s.Status, s.Error = "error", err.Error()
	} else {
		for _, o := range outputs {
			h, herr := HashPath(filepath.Join(p.dir, o))
			if herr != nil {
				s.Status, s.Error, err = "error", herr.Error(), herr
				break
			}
			s.Outputs[o] = h
		}
	}
	p.man.setStage(s)
	if werr := p.man.Write(p.dir); werr != nil {
		return werr
	}
	p.sum.Stages = append(p.sum.Stages, StageResult{Name: name, Status: s.Status, Seconds: s.Seconds, Error: s.Error})
	if err != nil {
		p.logf("%s: error after %.1fs: %v", name, s.Seconds, err)
		if name != "train" {
			p.fail = append(p.fail, name+": "+err.Error())
		}
		return err
	}
	p.logf("%s: %s in %.1fs", name, status, s.Seconds)
	return nil
}

// artifact records (or refreshes) an artifact's size and bits per weight;
// ref is the folder whose parameter count the bits are over ("" for none).
func (p *runner) artifact(name, kind, rel, ref string) {
	p.current[name] = true
	a := p.man.Artifact(name)
	if a == nil {
		a = &Artifact{Name: name, Status: "unchecked"}
	}
	a.Kind, a.Path, a.Error = kind, rel, ""
	if a.Status == "error" {
		a.Status = "unchecked"
	}
	full := filepath.Join(p.dir, rel)
	a.Bytes = pathBytes(full)
	a.BitsPerWeight = 0
	if ref != "" {
		a.BitsPerWeight = bitsPerWeight(full, kind, ref)
	}
	p.man.setArtifact(a)
}

func (p *runner) artifactError(name, kind, rel string, err error) {
	p.current[name] = true
	p.man.setArtifact(&Artifact{Name: name, Kind: kind, Path: rel, Status: "error", Error: err.Error()})
	p.man.Write(p.dir)
}

// quantize writes one output.
func (p *runner) quantize(q recipes.QuantizeOutput, source, out string) error {
	progress := func(done, total int64) {
		if p.opts.Progress != nil {
			p.opts.Progress("quantize:"+q.Name(), done, total)
		}
	}
	if q.Format == "gguf" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return fmt.Errorf("pipeline: %w", err)
		}
		// Fallbacks (rows that are not whole blocks) are counted here rather
		// than printed one per tensor; the GGUF report lists them.
		rep, err := quantize.QuantizeGGUF(source, out, quantize.GGUFOptions{Type: q.Type, Progress: progress})
		if err != nil {
			return err
		}
		if len(rep.Fallbacks) > 0 {
			p.logf("quantize:%s: %d tensors fell back to another type (rows not whole blocks), e.g. %s", q.Name(), len(rep.Fallbacks), rep.Fallbacks[0])
		}
		return nil
	}
	var calib [][]int
	if q.Method == "gptq" {
		ids, err := p.v.tokens(q.Calib)
		if err != nil {
			return err
		}
		for i := 0; i+p.r.Checks.Ctx <= len(ids) && len(calib) < 128; i += p.r.Checks.Ctx {
			calib = append(calib, ids[i:i+p.r.Checks.Ctx])
		}
		if len(calib) == 0 {
			return fmt.Errorf("pipeline: quantize %s: calib %s has %d tokens, fewer than one window of validate.ctx %d", q.Name(), q.Calib, len(ids), p.r.Checks.Ctx)
		}
	}
	if p.opts.QuantizeInt != nil {
		return p.opts.QuantizeInt(source, out, q, calib, progress)
	}
	_, err := quantize.QuantizeSafetensors(source, out, quantize.IntOptions{Bits: q.Bits, GroupSize: q.GroupSize, Sym: q.Sym,
		Layout: q.Layout, Method: q.Method, Calib: calib, Progress: progress, Warn: func(msg string) { p.logf("warning: %s", msg) }})
	return err
}
