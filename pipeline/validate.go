package pipeline

import (
	"encoding/json"
	"fmt"
	"github.com/tunellm/tune/export"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/eval"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/ggufmodel"
	"github.com/tunellm/tune/quantize/wq"
	"github.com/tunellm/tune/recipes"
	"github.com/tunellm/tune/tokenizer"
)

// Validation is an artifact's validation.json: its measurements against its
// reference and the gates they were held to.
type Validation struct {
	Artifact  string `json:"artifact"`
	Reference string `json:"reference"` // base, base+adapter or merged
	Data      string `json:"data,omitempty"`
	Ctx       int    `json:"ctx,omitempty"`
	// Perplexity over validate.data (eval.Perplexity windows), of the
	// artifact and of its reference, and the change in percent.
	PPL          float64         `json:"ppl,omitempty"`
	RefPPL       float64         `json:"ref_ppl,omitempty"`
	PPLChangePct float64         `json:"ppl_change_pct,omitempty"`
	Tokens       int             `json:"tokens,omitempty"`
	KLD          *KLDSummary     `json:"kld,omitempty"`    // quantized vs merged
	Logits       *eval.LogitDiff `json:"logits,omitempty"` // merged vs base+adapter
	Bench        []BenchCheck    `json:"bench,omitempty"`
	// QuantBase is the adapter's QLoRA gap (lora.base_quant, lora.base_from).
	QuantBase *QuantBaseGap `json:"quantized_base,omitempty"`
	// Parity is the template parity check of a model folder or GGUF
	// against the base's chat template: "ok", or the first differing token.
	Parity string      `json:"template_parity,omitempty"`
	Gates  []eval.Gate `json:"gates"`
	Pass   bool        `json:"pass"`
}

// KLDSummary is the part of eval.KLDResult a gate and the report use.
type KLDSummary struct {
	Mean    float64 `json:"mean"`
	Unc     float64 `json:"unc"`
	P99     float64 `json:"p99"`
	Max     float64 `json:"max"`
	SameTop float64 `json:"same_top"` // top-1 agreement, a fraction
	Tokens  int     `json:"tokens"`
	Scored  string  `json:"scored"`
}

// QuantBaseGap compares, for an adapter trained on a quantized base
// (QLoRA), the adapter on the full-precision base (what merging gives, up to
// rounding) with the adapter on the quantized base it was trained on.
type QuantBaseGap struct {
	Base    string         `json:"base"`     // what the quantized base holds: nf4, int4 g128 sym, GGUF Q4_K+Q6_K, ...
	PPL     float64        `json:"ppl"`      // the adapter on the quantized base
	FullPPL float64        `json:"full_ppl"` // the adapter on the full-precision base
	KLD     KLDSummary     `json:"kld"`      // KL(quantized || full-precision)
	Logits  eval.LogitDiff `json:"logits"`   // full-precision vs quantized
}

// BenchCheck is one spot-check on the artifact and on its reference.
type BenchCheck struct {
	Task   string  `json:"task"`
	Data   string  `json:"data"`
	Items  int     `json:"items"`
	Metric string  `json:"metric"`
	Acc    float64 `json:"acc"`
	Stderr float64 `json:"stderr"`
	RefAcc float64 `json:"ref_acc"`
	Drop   float64 `json:"drop"` // RefAcc - Acc
}

// validator loads models once and caches the references' measurements.
type validator struct {
	r      *recipes.Recipe
	p      *runner
	tok    *tokenizer.Tokenizer
	ids    []int
	idsErr error
	loaded bool
	models map[string]*model.Model
	ppl    map[string]eval.PPLResult
	bench  map[string]eval.BenchResult // key: model + "\x00" + spec index
	items  map[int][]eval.Item
}

func newValidator(r *recipes.Recipe, p *runner) *validator {
	return &validator{r: r, p: p, models: map[string]*model.Model{}, ppl: map[string]eval.PPLResult{},
		bench: map[string]eval.BenchResult{}, items: map[int][]eval.Item{}}
}

func (v *validator) close() {
	for _, m := range v.models {
		m.Close()
	}
}

func (v *validator) tokenizer() (*tokenizer.Tokenizer, error) {
	if v.tok == nil {
		t, err := tokenizer.Load(v.r.Model.Path)
		if err != nil {
			return nil, err
		}
		v.tok = t
	}
	return v.tok, nil
}

// tokens reads a corpus as eval ppl does (rows joined by a blank line) and
// tokenizes it with special tokens.
func (v *validator) tokens(path string) ([]int, error) {
	tok, err := v.tokenizer()
	if err != nil {
		return nil, err
	}
	text, err := data.JoinTexts(path, "text")
	if err != nil {
		return nil, err
	}
	return tok.Encode(text, true), nil
}

// model returns the model called key: base, base+adapter, merged, model
// (full training), or an artifact's relative path (.gguf or INT folder).
func (v *validator) model(key string) (*model.Model, error) {
	if m, ok := v.models[key]; ok {
		return m, nil
	}
	dir := v.p.dir
	var m *model.Model
	var err error
	switch {
	case key == "base":
		m, err = model.Load(v.r.Model.Path, model.LoadOptions{})
	case key == "base+adapter":
		m, err = model.Load(v.r.Model.Path, model.LoadOptions{})
		if err == nil {
			var a *lora.Adapter
			if a, err = lora.Load(filepath.Join(dir, "adapter"), m.Config); err == nil {
				m.SetAdapter(a)
			} else {
				m.Close()
			}
		}
	case key == "merged" || key == "model":
		m, err = model.Load(filepath.Join(dir, key), model.LoadOptions{})
	case strings.HasSuffix(key, ".gguf"):
		path := filepath.Join(dir, key)
		if v.p.opts.LoadGGUF != nil {
			m, err = v.p.opts.LoadGGUF(path)
		} else {
			m, err = ggufmodel.LoadModel(path, model.LoadOptions{})
		}
	default:
		if v.p.opts.LoadQuantized != nil {
			m, err = v.p.opts.LoadQuantized(filepath.Join(dir, key))
		} else {
			m, err = wq.LoadModel(filepath.Join(dir, key), model.LoadOptions{})
		}
	}
	if err != nil {
		return nil, err
	}
	v.models[key] = m
	return m, nil
}

// sourceDir is the folder the quantized outputs were made from.
func (v *validator) sourceDir() string {
	if v.r.Train.Mode == "full" {
		return filepath.Join(v.p.dir, "model")
	}
	return filepath.Join(v.p.dir, "merged")
}

// drop closes and forgets a model that will not be used again.
func (v *validator) drop(key string) {
	if m, ok := v.models[key]; ok {
		m.Close()
		delete(v.models, key)
	}
}

// progress forwards a measurement's progress to Options.Progress.
func (v *validator) progress(what string) func(done, total int) {
	if v.p.opts.Progress == nil {
		return nil
	}
	return func(done, total int) { v.p.opts.Progress("validate: "+what, int64(done), int64(total)) }
}

func (v *validator) pplOf(key string, m *model.Model) (eval.PPLResult, error) {
	if r, ok := v.ppl[key]; ok {
		return r, nil
	}
	r, err := eval.Perplexity(m, v.ids, v.r.Checks.Ctx, v.progress("ppl "+key))
	if err != nil {
		return r, fmt.Errorf("%s: %w", v.r.Checks.Data, err)
	}
	v.ppl[key] = r
	return r, nil
}

func (v *validator) benchOf(key string, m *model.Model, i int, spec recipes.BenchSpec) (eval.BenchResult, error) {
	ck := fmt.Sprintf("%s\x00%d", key, i)
	if r, ok := v.bench[ck]; ok {
		return r, nil
	}
	items, ok := v.items[i]
	if !ok {
		var err error
		if items, err = eval.LoadItems(spec.Task, spec.Data); err != nil {
			return eval.BenchResult{}, err
		}
		v.items[i] = items
	}
	tok, err := v.tokenizer()
	if err != nil {
		return eval.BenchResult{}, err
	}
	s := &eval.Scorer{M: m, Cfg: m.Config, Tok: tok}
	r, err := eval.Bench(s, items, eval.BenchOptions{Task: spec.Task, Shots: spec.Shots, Limit: spec.Limit, Seed: 1234,
		Progress: v.progress(spec.Task + " " + key)})
	if err != nil {
		return r, fmt.Errorf("%s: %w", spec.Data, err)
	}
	v.bench[ck] = r
	return r, nil
}

// check measures the artifact (model key akey) against ref and applies the
// recipe's gates.
func (v *validator) check(name, akey, ref string) (*Validation, error) {
	c := v.r.Checks
	val := &Validation{Artifact: name, Reference: ref, Gates: []eval.Gate{}}
	if c.Data != "" && !v.loaded {
		v.ids, v.idsErr = v.tokens(c.Data)
		v.loaded = true
	}
	if v.idsErr != nil {
		return nil, v.idsErr
	}
	m, err := v.model(akey)
	if err != nil {
		return nil, err
	}
	rm, err := v.model(ref)
	if err != nil {
		return nil, err
	}
	if c.Data != "" {
		val.Data, val.Ctx = c.Data, c.Ctx
		pr, err := v.pplOf(akey, m)
		if err != nil {
			return nil, err
		}
		rr, err := v.pplOf(ref, rm)
		if err != nil {
			return nil, err
		}
		val.PPL, val.RefPPL, val.Tokens = finite(pr.PPL), finite(rr.PPL), pr.Tokens
		val.PPLChangePct = finite(eval.PctChange(pr.PPL, rr.PPL))
		switch ref {
		case "base":
			val.Gates = eval.Min(val.Gates, "min_ppl_decrease_pct", "ppl decrease %", -val.PPLChangePct, c.MinPPLDecreasePct)
			if name == "adapter" && v.r.QuantizedBase() {
				if err := v.quantBaseGap(val, m); err != nil {
					return nil, err
				}
			}
		case "base+adapter":
			ld, err := eval.CompareLogits(rm, m, v.ids, c.Ctx)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", c.Data, err)
			}
			ld.MaxAbs, ld.MeanAbs = finite(ld.MaxAbs), finite(ld.MeanAbs)
			val.Logits = &ld
			val.Gates = eval.Max(val.Gates, "merge_logit_tol", "max |Δlogit|", ld.MaxAbs, c.MergeLogitTol)
		case "merged", "model":
			kr, err := eval.KLDivergence(rm, m, v.ids, v.kldOptions(), v.progress("kld "+name))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", c.Data, err)
			}
			val.KLD = &KLDSummary{Mean: finite(kr.KLDMean), Unc: finite(kr.KLDUnc), P99: finite(kr.KLD.P99), Max: finite(kr.KLD.Max),
				SameTop: kr.SameTop, Tokens: kr.Tokens, Scored: kr.Scored}
			val.Gates = eval.Max(val.Gates, "max_ppl_increase_pct", "ppl increase %", val.PPLChangePct, c.MaxPPLIncreasePct)
			val.Gates = eval.Max(val.Gates, "max_mean_kld", "mean KLD", val.KLD.Mean, c.MaxMeanKLD)
			val.Gates = eval.Min(val.Gates, "min_top1_agreement", "top-1 agreement", kr.SameTop, c.MinTop1Agreement)
		}
	}
	for i, spec := range c.Bench {
		br, err := v.benchOf(akey, m, i, spec)
		if err != nil {
			return nil, err
		}
		rr, err := v.benchOf(ref, rm, i, spec)
		if err != nil {
			return nil, err
		}
		metric := "acc"
		if spec.Task == "gsm8k" {
			metric = "exact_match,flexible-extract"
		}
		bc := BenchCheck{Task: spec.Task, Data: spec.Data, Items: br.Items, Metric: metric,
			Acc: br.Metrics[metric].Value, Stderr: finite(br.Metrics[metric].Stderr), RefAcc: rr.Metrics[metric].Value}
		bc.Drop = bc.RefAcc - bc.Acc
		val.Bench = append(val.Bench, bc)
		val.Gates = eval.Max(val.Gates, "max_acc_drop", spec.Task+" "+metric+" drop", bc.Drop, c.MaxAccDrop)
	}
	val.Pass = eval.Passed(val.Gates)
	return val, nil
}

// kldOptions are llama-perplexity's KLD conventions on validate.data.
func (v *validator) kldOptions() eval.KLDOptions {
	ko := eval.KLDOptions{Ctx: v.r.Checks.Ctx, BOS: -1, AllTokens: len(v.ids) < v.r.Checks.Ctx}
	if bos, ok := v.tok.BOS(); ok && v.tok.AddsBOS() {
		ko.BOS = bos
	}
	return ko
}

// quantBaseGap measures the adapter on the full-precision base (full) against
// the adapter on the quantized base it was trained on (loaded and quantized
// again as training did), and gates the mean KLD (lora.base_quant_max_kld).
func (v *validator) quantBaseGap(val *Validation, full *model.Model) error {
	qm, desc, err := v.r.TrainingBase()
	if err != nil {
		return err
	}
	defer qm.Close()
	a, err := lora.Load(filepath.Join(v.p.dir, "adapter"), qm.Config)
	if err != nil {
		return err
	}
	qm.SetAdapter(a)
	c := v.r.Checks
	qp, err := eval.Perplexity(qm, v.ids, c.Ctx, v.progress("ppl adapter on the "+desc+" base"))
	if err != nil {
		return fmt.Errorf("%s: %w", c.Data, err)
	}
	fp, err := v.pplOf("base+adapter", full)
	if err != nil {
		return err
	}
	kr, err := eval.KLDivergence(qm, full, v.ids, v.kldOptions(), v.progress("kld adapter on the "+desc+" base"))
	if err != nil {
		return fmt.Errorf("%s: %w", c.Data, err)
	}
	ld, err := eval.CompareLogits(full, qm, v.ids, c.Ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", c.Data, err)
	}
	ld.MaxAbs, ld.MeanAbs = finite(ld.MaxAbs), finite(ld.MeanAbs)
	g := &QuantBaseGap{Base: desc, PPL: finite(qp.PPL), FullPPL: finite(fp.PPL), Logits: ld,
		KLD: KLDSummary{Mean: finite(kr.KLDMean), Unc: finite(kr.KLDUnc), P99: finite(kr.KLD.P99), Max: finite(kr.KLD.Max),
			SameTop: kr.SameTop, Tokens: kr.Tokens, Scored: kr.Scored}}
	val.QuantBase = g
	val.Gates = eval.Max(val.Gates, "base_quant_max_kld", "mean KLD, full-precision vs "+desc+" base", g.KLD.Mean, v.r.LoRA.BaseQuantMaxKLD)
	return nil
}

// finite keeps JSON encodable: NaN and ±Inf become ±MaxFloat64 (NaN as +).
func finite(x float64) float64 {
	switch {
	case math.IsNaN(x), math.IsInf(x, 1):
		return math.MaxFloat64
	case math.IsInf(x, -1):
		return -math.MaxFloat64
	}
	return x
}

// validate is the validate:NAME stage of the artifact at rel (relative to
// the run folder) against ref.
func (p *runner) validate(name, rel, ref string) error {
	c := p.r.Checks
	if c.Data == "" && len(c.Bench) == 0 {
		return nil
	}
	a := p.man.Artifact(name)
	inputs := map[string]string{"config": HashString(validateConfig(p.r))}
	if name == "adapter" && p.r.QuantizedBase() {
		l := p.r.LoRA
		inputs["quantized_base"] = HashString(fmt.Sprintf("%s %d %v %s %g", l.BaseQuant, l.BaseQuantGroup, l.BaseQuantSym, l.BaseFrom, l.BaseQuantMaxKLD))
	}
	refPaths := map[string]string{"base": p.r.Model.Path, "base+adapter": filepath.Join(p.dir, "adapter"),
		"merged": filepath.Join(p.dir, "merged"), "model": filepath.Join(p.dir, "model")}
	paths := map[string]string{"artifact": filepath.Join(p.dir, rel), "reference": refPaths[ref], "data": c.Data}
	if ref == "base+adapter" {
		paths["base"] = p.r.Model.Path
	}
	for i, b := range c.Bench {
		paths[fmt.Sprintf("bench%d", i)] = b.Data
	}
	for k, path := range paths {
		h, err := hashInput(path)
		if err != nil {
			return err
		}
		inputs[k] = h
	}
	vdir := rel
	if strings.HasSuffix(rel, ".gguf") {
		vdir = filepath.Dir(rel)
	}
	vjson := filepath.Join(vdir, "validation.json")
	akey := rel
	switch name {
	case "adapter":
		akey = "base+adapter"
	case "merged", "model":
		akey = name
	}
	var val *Validation
	err := p.stage("validate:"+name, inputs, []string{vjson}, func() (string, error) {
		var err error
		if val, err = p.v.check(name, akey, ref); err != nil {
			return "error", err
		}
		p.checkParity(val, name, filepath.Join(p.dir, rel))
		if err := writeJSON(filepath.Join(p.dir, vjson), val); err != nil {
			return "error", err
		}
		if !val.Pass {
			return "failed", nil
		}
		return "ok", nil
	})
	if akey != "base+adapter" && akey != "merged" && akey != "model" {
		p.v.drop(akey)
	}
	if err != nil {
		a.Status, a.Error = "error", err.Error()
		p.man.Write(p.dir)
		return nil // recorded; other artifacts still validate
	}
	if val == nil { // skipped: validation.json is a checked output of the stage
		if b, err := os.ReadFile(filepath.Join(p.dir, vjson)); err == nil {
			var v Validation
			if json.Unmarshal(b, &v) == nil {
				val = &v
			}
		}
	}
	if val != nil {
		a.Validation = val
	}
	a.Status = "unchecked"
	if a.Validation != nil {
		a.Status = "pass"
		if !a.Validation.Pass {
			a.Status = "fail"
			p.fail = append(p.fail, name+": "+eval.Failures(a.Validation.Gates))
		}
		p.logf("validate:%s: %s", name, oneLine(a.Validation))
	}
	return p.man.Write(p.dir)
}

// validateConfig is the validate: section as YAML (what a validation's
// outcome depends on besides the files).
func validateConfig(r *recipes.Recipe) string {
	y := r.YAML()
	if i := strings.Index(y, "\nvalidate:\n"); i >= 0 {
		return y[i:]
	}
	return y
}

// oneLine summarises a validation for a progress line.
func oneLine(v *Validation) string {
	var parts []string
	if v.Data != "" {
		parts = append(parts, fmt.Sprintf("ppl %.4g (%+.2f%% vs %s)", v.PPL, v.PPLChangePct, v.Reference))
	}
	if v.KLD != nil {
		parts = append(parts, fmt.Sprintf("mean KLD %.4g, top-1 %.2f%%", v.KLD.Mean, 100*v.KLD.SameTop))
	}
	if v.Logits != nil {
		parts = append(parts, fmt.Sprintf("max |Δlogit| %.3g", v.Logits.MaxAbs))
	}
	if q := v.QuantBase; q != nil {
		parts = append(parts, fmt.Sprintf("full-precision vs %s base: ppl %.4g vs %.4g, mean KLD %.4g, max |Δlogit| %.3g", q.Base, q.FullPPL, q.PPL, q.KLD.Mean, q.Logits.MaxAbs))
	}
	for _, b := range v.Bench {
		parts = append(parts, fmt.Sprintf("%s %.3f (ref %.3f)", b.Task, b.Acc, b.RefAcc))
	}
	verdict := "pass"
	if !v.Pass {
		verdict = "FAIL: " + eval.Failures(v.Gates)
	}
	return strings.Join(parts, ", ") + ": " + verdict
}

// checkParity adds the template parity gate to a model folder's or GGUF's
// validation: the chat template it carries (tokenizer_config.json for
// transformers and vLLM, tokenizer.chat_template for llama.cpp) must give
// the training template's token ids on every parity conversation. Adapters
// carry no template; a base without one has nothing to check.
func (p *runner) checkParity(val *Validation, name, path string) {
	var err error
	switch {
	case name == "adapter":
		return
	case strings.HasSuffix(path, ".gguf"):
		err = ggufParity(p.r.Model.Path, path)
	default:
		err = export.CheckFolderParity(p.r.Model.Path, path)
	}
	g := eval.Gate{Name: "template_parity", Metric: "chat template renders the training token ids", Op: "==", Limit: 1, Value: 1, Pass: true}
	val.Parity = "ok"
	if err != nil {
		g.Value, g.Pass, val.Parity = 0, false, err.Error()
		val.Pass = false
	}
	val.Gates = append(val.Gates, g)
}

func ggufParity(baseDir, path string) error {
	tok, err := tokenizer.Load(baseDir)
	if err != nil {
		return err
	}
	if tok.Config().ChatTemplate == "" {
		return nil
	}
	g, err := export.ReadGGUFChat(path)
	if err != nil {
		return err
	}
	return export.CheckParity(tok, []export.Side{export.TrainingSide(tok, tok.Config().ChatTemplate), export.GGUFSide(tok, g)}, export.ParityConversations)
}
