package recipes

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/tunellm/tune/eval"
	"github.com/tunellm/tune/quantize"
	"gopkg.in/yaml.v3"
)

// The sections after training: merge:, quantize: (a list of outputs) and
// validate: (held-out text, spot-checks and the gates every artifact must
// pass). package pipeline runs them; this file only parses and checks them.

// MergeSection is `merge:`.
type MergeSection struct {
	Enabled bool
	DType   string // "" keeps the base's dtype
}

// QuantizeOutput is one item of `quantize:`: a GGUF mix, or an integer
// safetensors folder (GPTQ or compressed-tensors layout).
type QuantizeOutput struct {
	Format    string // gguf or safetensors
	Type      string // gguf: a llama.cpp mix name (canonical case)
	Bits      int    // safetensors: 4 or 8
	GroupSize int    // safetensors: columns per scale, -1 per channel
	Method    string // safetensors: rtn or gptq
	Layout    string // safetensors: gptq or compressed-tensors
	Sym       bool   // safetensors: symmetric codes (no zero point)
	Calib     string // safetensors gptq: calibration text
}

// Name is the output's folder name in the run folder: gguf-q4_k_m,
// int4-g128-gptq, int8-ch-rtn-ct.
func (q QuantizeOutput) Name() string {
	if q.Format == "gguf" {
		return "gguf-" + strings.ToLower(q.Type)
	}
	g := "g" + strconv.Itoa(q.GroupSize)
	if q.GroupSize == -1 {
		g = "ch"
	}
	n := fmt.Sprintf("int%d-%s-%s", q.Bits, g, q.Method)
	if !q.Sym {
		n += "-asym"
	}
	if q.Layout == "compressed-tensors" {
		n += "-ct"
	}
	return n
}

// BenchSpec is one item of validate.bench: a spot-check run on every
// artifact and on its reference.
type BenchSpec struct {
	Task  string
	Data  string
	Limit int
	Shots int
}

// ValidateSection is `validate:`. A threshold of NaN is off (written `off`).
type ValidateSection struct {
	Data  string
	Ctx   int
	Bench []BenchSpec

	MaxPPLIncreasePct float64 // quantized vs merged
	MaxMeanKLD        float64 // quantized vs merged
	MinTop1Agreement  float64 // quantized vs merged, a fraction
	MaxAccDrop        float64 // any artifact vs its reference, a fraction
	MinPPLDecreasePct float64 // adapter vs base
	MergeLogitTol     float64 // merged vs base+adapter: max |Δlogit|
}

// Off is the value of a threshold that is switched off.
var Off = math.NaN()

// Pipeline reports whether the recipe asks for the stages after training:
// a merge:, quantize: or validate: key was given in the file or by --set.
func (r *Recipe) Pipeline() bool {
	for k := range r.set {
		if k == "quantize" || strings.HasPrefix(k, "merge.") || strings.HasPrefix(k, "validate.") {
			return true
		}
	}
	return false
}

// nodeError is an error inside a nested value (a quantize item's key), with
// the node it is about, so that Parse can point at its line.
type nodeError struct {
	n   *yaml.Node
	err error
}

func (e *nodeError) Error() string { return e.err.Error() }
func (e *nodeError) Unwrap() error { return e.err }

// itemKey is one key of a nested mapping (a quantize output, a bench item).
type itemKey struct {
	name string
	set  func(n *yaml.Node) error
}

// setItem fills one mapping item from n with keys; unknown keys get the
// closest known one.
func setItem(n *yaml.Node, i int, keys []itemKey) error {
	if n.Kind != yaml.MappingNode {
		return &nodeError{n, fmt.Errorf("item %d: want a mapping (key: value, ...), found %s", i, kindName(n))}
	}
	var names []string
	for _, k := range keys {
		names = append(names, k.name)
	}
	seen := map[string]bool{}
	for j := 0; j+1 < len(n.Content); j += 2 {
		kn, vn := n.Content[j], n.Content[j+1]
		idx := slices.IndexFunc(keys, func(k itemKey) bool { return k.name == kn.Value })
		if idx < 0 {
			return &nodeError{kn, fmt.Errorf("item %d: %w", i, unknownKey(kn.Value, names))}
		}
		if seen[kn.Value] {
			return &nodeError{kn, fmt.Errorf("item %d: %s is set twice", i, kn.Value)}
		}
		seen[kn.Value] = true
		if vn.Kind == yaml.ScalarNode && vn.Tag == "!!null" {
			continue
		}
		if err := keys[idx].set(vn); err != nil {
			return &nodeError{vn, fmt.Errorf("item %d: %s: %w", i, kn.Value, err)}
		}
	}
	return nil
}

func strSetter(p *string) func(*yaml.Node) error {
	return func(n *yaml.Node) error {
		if n.Kind != yaml.ScalarNode {
			return fmt.Errorf("want a string, found %s", kindName(n))
		}
		*p = n.Value
		return nil
	}
}

func intSetter(p *int) func(*yaml.Node) error {
	return func(n *yaml.Node) error {
		v, err := intValue(n)
		if err != nil {
			return err
		}
		if v < math.MinInt32 || v > math.MaxInt32 {
			return fmt.Errorf("%d is out of range", v)
		}
		*p = int(v)
		return nil
	}
}

func pathSetter(p *string, base string) func(*yaml.Node) error {
	return func(n *yaml.Node) error {
		if err := strSetter(p)(n); err != nil {
			return err
		}
		if *p != "" && base != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
		return nil
	}
}

// items returns a list's items; one mapping alone is a list of one.
func items(n *yaml.Node, what string) ([]*yaml.Node, error) {
	switch n.Kind {
	case yaml.SequenceNode:
		return n.Content, nil
	case yaml.MappingNode:
		return []*yaml.Node{n}, nil
	}
	return nil, fmt.Errorf("want a list of mappings (see tune lora --help), found %s", kindName(n))
}

// DefaultQuantizeOutput is an item's values before its keys apply.
func DefaultQuantizeOutput() QuantizeOutput {
	return QuantizeOutput{Format: "gguf", Type: "Q4_K_M", Bits: 4, GroupSize: 128, Method: "rtn", Layout: "gptq", Sym: true}
}

func setQuantize(p *[]QuantizeOutput, n *yaml.Node, base string) error {
	list, err := items(n, "quantize")
	if err != nil {
		return err
	}
	out := make([]QuantizeOutput, 0, len(list))
	for i, it := range list {
		q := DefaultQuantizeOutput()
		err := setItem(it, i, []itemKey{
			{"format", strSetter(&q.Format)},
			{"type", strSetter(&q.Type)},
			{"bits", intSetter(&q.Bits)},
			{"group_size", intSetter(&q.GroupSize)},
			{"method", strSetter(&q.Method)},
			{"layout", strSetter(&q.Layout)},
			{"sym", func(n *yaml.Node) error { return setBool(&q.Sym, n) }},
			{"calib", pathSetter(&q.Calib, base)},
		})
		if err != nil {
			return err
		}
		out = append(out, q)
	}
	*p = out
	return nil
}

func setBench(p *[]BenchSpec, n *yaml.Node, base string) error {
	list, err := items(n, "validate.bench")
	if err != nil {
		return err
	}
	out := make([]BenchSpec, 0, len(list))
	for i, it := range list {
		b := BenchSpec{Limit: 50}
		if err := setItem(it, i, []itemKey{
			{"task", strSetter(&b.Task)},
			{"data", pathSetter(&b.Data, base)},
			{"limit", intSetter(&b.Limit)},
			{"shots", intSetter(&b.Shots)},
		}); err != nil {
			return err
		}
		out = append(out, b)
	}
	*p = out
	return nil
}

// setThreshold reads a number or `off`.
func setThreshold(p *float64, n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && strings.EqualFold(n.Value, "off") {
		*p = Off
		return nil
	}
	v, err := floatValue(n)
	if err != nil {
		return errors.New(strings.Replace(err.Error(), "want a number", "want a number or off", 1))
	}
	*p = v
	return nil
}

func formatQuantize(qs []QuantizeOutput) string {
	d := DefaultQuantizeOutput()
	var parts []string
	for _, q := range qs {
		f := []string{"format: " + yamlScalar(q.Format)}
		if q.Format == "gguf" {
			f = append(f, "type: "+yamlScalar(q.Type))
		} else {
			f = append(f, "bits: "+strconv.Itoa(q.Bits), "group_size: "+strconv.Itoa(q.GroupSize),
				"method: "+yamlScalar(q.Method), "layout: "+yamlScalar(q.Layout))
			if q.Sym != d.Sym {
				f = append(f, "sym: "+strconv.FormatBool(q.Sym))
			}
			if q.Calib != "" {
				f = append(f, "calib: "+yamlScalar(q.Calib))
			}
		}
		parts = append(parts, "{"+strings.Join(f, ", ")+"}")
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func formatBench(bs []BenchSpec) string {
	var parts []string
	for _, b := range bs {
		parts = append(parts, fmt.Sprintf("{task: %s, data: %s, limit: %d, shots: %d}", yamlScalar(b.Task), yamlScalar(b.Data), b.Limit, b.Shots))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// benchTasks are eval.LoadItems' tasks.
var benchTasks = eval.BenchTasks

// validatePipeline checks merge:, quantize: and validate:.
func (r *Recipe) validatePipeline() error {
	if r.Merge.DType != "" && !slices.Contains([]string{"bf16", "f16", "f32"}, r.Merge.DType) {
		return r.errorf("merge.dtype", "%q is not supported (supported: bf16, f16, f32, or empty for the base's)", r.Merge.DType)
	}
	names := map[string]int{}
	for i := range r.Quantize {
		q := &r.Quantize[i]
		bad := func(format string, args ...any) error {
			return r.errorf("quantize", "item %d: "+format, append([]any{i}, args...)...)
		}
		switch q.Format {
		case "gguf":
			m, err := quantize.ParseMix(q.Type)
			if err != nil {
				return bad("type %q is not a llama.cpp mix (supported: %s)", q.Type, strings.Join(quantize.MixNames(), ", "))
			}
			q.Type = m.Name
		case "safetensors":
			if q.Bits != 4 && q.Bits != 8 {
				return bad("bits: want 4 or 8, found %d", q.Bits)
			}
			if q.GroupSize != -1 && q.GroupSize <= 0 {
				return bad("group_size: want a positive number of columns or -1 (per channel), found %d", q.GroupSize)
			}
			if !slices.Contains([]string{"rtn", "gptq"}, q.Method) {
				return bad("method %q is not supported (supported: rtn, gptq)", q.Method)
			}
			if !slices.Contains([]string{"gptq", "compressed-tensors"}, q.Layout) {
				return bad("layout %q is not supported (supported: gptq, compressed-tensors)", q.Layout)
			}
			if q.Method == "gptq" && q.Calib == "" {
				return bad("method gptq needs calib: a text file to calibrate on")
			}
		default:
			return bad("format %q is not supported (supported: gguf, safetensors)", q.Format)
		}
		if j, ok := names[q.Name()]; ok {
			return bad("same output as item %d (%s)", j, q.Name())
		}
		names[q.Name()] = i
	}
	if len(r.Quantize) > 0 && r.Train.Mode == "lora" && !r.Merge.Enabled {
		return r.errorf("merge.enabled", "false with quantize: outputs: quantization starts from the merged model")
	}
	v := &r.Checks
	if v.Ctx < 3 {
		return r.errorf("validate.ctx", "want at least 3 tokens, found %d", v.Ctx)
	}
	for i, b := range v.Bench {
		if !slices.Contains(benchTasks, b.Task) {
			return r.errorf("validate.bench", "item %d: task %q is not supported (supported: %s)", i, b.Task, strings.Join(benchTasks, ", "))
		}
		if b.Data == "" {
			return r.errorf("validate.bench", "item %d: data is required (the task's .parquet/.jsonl file)", i)
		}
		if b.Limit < 0 || b.Shots < 0 {
			return r.errorf("validate.bench", "item %d: limit and shots want >= 0, found %d and %d", i, b.Limit, b.Shots)
		}
	}
	thr := func(key string, v, lo, hi float64) error {
		if math.IsNaN(v) {
			return nil
		}
		if v < lo || v > hi {
			return r.errorf(key, "want a value in [%g, %g] or off, found %g", lo, hi, v)
		}
		return nil
	}
	inf := math.Inf(1)
	for _, err := range []error{
		thr("validate.max_ppl_increase_pct", v.MaxPPLIncreasePct, 0, inf),
		thr("validate.max_mean_kld", v.MaxMeanKLD, 0, inf),
		thr("validate.min_top1_agreement", v.MinTop1Agreement, 0, 1),
		thr("validate.max_acc_drop", v.MaxAccDrop, 0, 1),
		thr("validate.min_ppl_decrease_pct", v.MinPPLDecreasePct, -inf, 100),
		thr("validate.merge_logit_tol", v.MergeLogitTol, 0, inf),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

// TrainingYAML is YAML() without the stages after training: what the
// adapter depends on, hashed by the pipeline's manifest.
func (r *Recipe) TrainingYAML() string {
	var sb strings.Builder
	for _, line := range strings.SplitAfter(r.YAML(), "\n") {
		sb.WriteString(line)
	}
	y := sb.String()
	if i := strings.Index(y, "\nmerge:\n"); i >= 0 {
		y = y[:i+1]
	}
	return y
}
