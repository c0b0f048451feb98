// Package recipes reads the YAML recipes users run (`tune lora --recipe
// legal.yaml`): it parses them with positions, fills defaults, applies
// `--set key=value` overrides, validates, resolves relative paths against the
// recipe's folder, and documents every key (Explain). It is not the trainer:
// it only turns a file into typed configuration for data, lora and train.
//
// Every key is declared once in the table in keys.go; parsing, defaults,
// overrides, validation messages and the help text all come from it.
package recipes

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/tunellm/tune/lora"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Recipe is a parsed, defaulted recipe. Paths are resolved: absolute, or
// relative to the current directory when they came from --set.
type Recipe struct {
	// File is the recipe's path as given ("" for a recipe built in code).
	File string

	Model   ModelSection
	Dataset DatasetSection
	LoRA    LoRASection
	Train   TrainSection
	Output  OutputSection

	Merge    MergeSection
	Quantize []QuantizeOutput
	Checks   ValidateSection // validate:

	// pos holds where each key set by the file was written ("file:line:col"),
	// so that validation errors point at it.
	pos map[string]string
	// set lists the keys given in the file or by --set (the rest are defaults).
	set map[string]bool
}

// ModelSection is `model:`.
type ModelSection struct {
	Path string
	// ID is model.path as written when it is shaped like a Hub id
	// (org/name[@rev]) and no such folder exists: the command resolves it
	// to the cached snapshot (Path) before training, and adapters record it
	// as their base model. "" when model.path is a folder.
	ID string
}

// DatasetSection is `dataset:`.
type DatasetSection struct {
	Path string
	// ID is dataset.path as written when it is a Hub dataset id
	// (org/name[@rev][:split]) naming no local path; see ModelSection.ID.
	ID           string
	Format       string
	Columns      map[string]string
	Validation   Validation
	SystemPrompt string
	AddEOS       bool
	TrainOn      string
	RoleMap      map[string]string
	SkipBadRows  bool
	CacheDir     string
	ChatTemplate string
}

// Validation is dataset.validation: a fraction of the rows held out, or a
// separate file. Zero value: none.
type Validation struct {
	Fraction float64
	Path     string
}

func (v Validation) String() string {
	if v.Path != "" {
		return v.Path
	}
	return strconv.FormatFloat(v.Fraction, 'g', -1, 64)
}

// LoRASection is `lora:`; the names follow PEFT's LoraConfig.
type LoRASection struct {
	R                 int
	Alpha             float64
	Dropout           float64
	TargetModules     []string
	LayersToTransform []int
	UseRSLoRA         bool
	UseDoRA           bool
	InitAdapter       string
	RankPattern       map[string]string // PEFT rank_pattern: module regex -> rank
	AlphaPattern      map[string]string // PEFT alpha_pattern: module regex -> alpha
	BaseQuant         string            // none, nf4, int4, int8, q4_k, q8_0: the frozen base's linears quantized at load (QLoRA)
	BaseQuantGroup    int               // int4/int8: input columns per scale, -1 per channel, 0 tune quantize's default
	BaseQuantSym      bool              // int4/int8: symmetric (no zero points), as tune quantize's default
	BaseFrom          string            // a pre-quantized base (quantized folder or GGUF) trained on as stored
	BaseQuantMaxKLD   float64           // gate: mean KLD of the adapter on the full-precision base from it on the quantized base (NaN: off)
}

// TrainSection is `train:`.
type TrainSection struct {
	Mode                  string
	Epochs                int
	MaxSteps              int
	BatchSize             int
	GradAccum             int
	MaxSeqLen             int
	Packing               bool
	LR                    float64
	Schedule              string
	WarmupSteps           int
	WeightDecay           float64
	AdamBeta1             float64
	AdamBeta2             float64
	AdamEps               float64
	MaxGradNorm           float64
	Seed                  uint64
	Device                string
	ComputeDType          string // f32, bf16: the frozen base's matmuls (kernels/cpu SetComputeBF16)
	EvalEvery             int
	SaveEvery             int
	KeepCheckpoints       int
	GradientCheckpointing bool
	LossChunk             int
}

// OutputSection is `output:`.
type OutputSection struct {
	Dir   string
	DType string
}

// Error is a recipe error with the place it points at ("recipes/legal.yaml:12:3"
// or "--set train.lr=fast").
type Error struct {
	Pos string
	Err error
}

func (e *Error) Error() string {
	if e.Pos == "" {
		return "recipe: " + e.Err.Error()
	}
	return e.Pos + ": " + e.Err.Error()
}
func (e *Error) Unwrap() error { return e.Err }

// Default returns a recipe holding every key's default.
func Default() *Recipe {
	r := &Recipe{pos: map[string]string{}, set: map[string]bool{}}
	for _, k := range keys {
		if err := k.setDefault(r); err != nil {
			panic(fmt.Sprintf("recipes: default of %s: %v", k.name, err)) // broken table
		}
	}
	return r
}

// Load reads the recipe at path, applies overrides ("key=value", as --set
// gives them), and validates the result.
func Load(path string, overrides []string) (*Recipe, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("recipe: %w", err)
	}
	r, err := Parse(path, b)
	if err != nil {
		return nil, err
	}
	for _, o := range overrides {
		if err := r.Set(o); err != nil {
			return nil, err
		}
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// Parse reads a recipe's bytes; name is the file's path, used in errors and
// to resolve relative paths. It does not validate (Load does).
func Parse(name string, b []byte) (*Recipe, error) {
	r := Default()
	r.File = name
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return r, nil // an empty recipe: all defaults
		}
		return nil, &Error{Pos: name, Err: fmt.Errorf("%v", strings.TrimPrefix(err.Error(), "yaml: "))}
	}
	if len(doc.Content) == 0 {
		return r, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, &Error{Pos: at(name, root), Err: fmt.Errorf("want a mapping of sections (model, dataset, lora, train, output), found %s", kindName(root))}
	}
	base := filepath.Dir(name)
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := root.Content[i], root.Content[i+1]
		section := kn.Value
		if !isSection(section) {
			return nil, &Error{Pos: at(name, kn), Err: unknownKey(section, sectionNames())}
		}
		if vn.Kind == yaml.ScalarNode && vn.Tag == "!!null" {
			continue
		}
		if k := lookup(section); k != nil { // a section that is one key (quantize: a list)
			if seen[section] {
				return nil, &Error{Pos: at(name, kn), Err: fmt.Errorf("%s is set twice", section)}
			}
			seen[section] = true
			if err := k.set(r, vn, base); err != nil {
				return nil, &Error{Pos: at(name, errNode(err, vn)), Err: fmt.Errorf("%s: %w", section, err)}
			}
			r.pos[section] = at(name, kn)
			r.set[section] = true
			continue
		}
		if vn.Kind != yaml.MappingNode {
			return nil, &Error{Pos: at(name, vn), Err: fmt.Errorf("%s: want a mapping of keys, found %s", section, kindName(vn))}
		}
		for j := 0; j+1 < len(vn.Content); j += 2 {
			kk, kv := vn.Content[j], vn.Content[j+1]
			full := section + "." + kk.Value
			k := lookup(full)
			if k == nil {
				return nil, &Error{Pos: at(name, kk), Err: unknownKey(full, keyNames())}
			}
			if seen[full] {
				return nil, &Error{Pos: at(name, kk), Err: fmt.Errorf("%s is set twice", full)}
			}
			seen[full] = true
			if err := k.set(r, kv, base); err != nil {
				return nil, &Error{Pos: at(name, errNode(err, kv)), Err: fmt.Errorf("%s: %w", full, err)}
			}
			r.pos[full] = at(name, kk)
			r.set[full] = true
		}
	}
	return r, nil
}

// Set applies one override "key=value". The value is read as YAML (so lists
// work: lora.target_modules=[q_proj,v_proj]) and typed by the key. Relative
// paths stay relative to the current directory.
func (r *Recipe) Set(kv string) error {
	pos := "--set " + kv
	key, val, ok := strings.Cut(kv, "=")
	key = strings.TrimSpace(key)
	if !ok {
		return &Error{Pos: pos, Err: fmt.Errorf("want key=value (for example train.lr=1e-4)")}
	}
	k := lookup(key)
	if k == nil {
		return &Error{Pos: pos, Err: unknownKey(key, keyNames())}
	}
	var doc yaml.Node
	var n *yaml.Node
	if k.kind == "string" || k.kind == "path" {
		// Text is text: "a: b" must not turn into a mapping.
		n = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: val}
	} else if err := yaml.Unmarshal([]byte(val), &doc); err != nil || len(doc.Content) == 0 {
		// Not YAML (or empty): take the text as a plain string.
		n = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: val}
	} else {
		n = doc.Content[0]
	}
	if err := k.set(r, n, ""); err != nil {
		return &Error{Pos: pos, Err: fmt.Errorf("%s: %w", key, err)}
	}
	r.pos[key] = pos
	r.set[key] = true
	return nil
}

// IsSet reports whether key was given in the file or by --set.
func (r *Recipe) IsSet(key string) bool { return r.set[key] }

// where is the position of key for an error ("" when it is a default).
func (r *Recipe) where(key string) string {
	if p, ok := r.pos[key]; ok {
		return p
	}
	if r.File != "" {
		return r.File + " (default " + key + ")"
	}
	return ""
}

func (r *Recipe) errorf(key, format string, args ...any) error {
	return &Error{Pos: r.where(key), Err: fmt.Errorf(key+": "+format, args...)}
}

// Validate checks values against each other and their ranges; each error
// names the key and points at where it was set.
func (r *Recipe) Validate() error {
	oneOf := func(key, v string, choices ...string) error {
		if !slices.Contains(choices, v) {
			return r.errorf(key, "%q is not supported (supported: %s)", v, strings.Join(choices, ", "))
		}
		return nil
	}
	positive := func(key string, v int) error {
		if v <= 0 {
			return r.errorf(key, "want a positive integer, found %d", v)
		}
		return nil
	}
	nonNeg := func(key string, v int) error {
		if v < 0 {
			return r.errorf(key, "want >= 0, found %d", v)
		}
		return nil
	}
	t := &r.Train
	checks := []error{
		required(r, "model.path", r.Model.Path),
		required(r, "dataset.path", r.Dataset.Path),
		required(r, "output.dir", r.Output.Dir),
		oneOf("dataset.format", r.Dataset.Format, "chat", "instruction", "completion", "text"),
		oneOf("dataset.train_on", r.Dataset.TrainOn, "assistant", "all"),
		oneOf("train.mode", t.Mode, "lora", "full"),
		oneOf("lora.base_quant", r.LoRA.BaseQuant, "none", "nf4", "int4", "int8", "q4_k", "q8_0"),
		oneOf("train.schedule", t.Schedule, "constant", "linear", "cosine"),
		oneOf("output.dtype", r.Output.DType, "f32", "bf16", "f16"),
		positive("lora.r", r.LoRA.R),
		positive("train.batch_size", t.BatchSize),
		positive("train.grad_accum", t.GradAccum),
		positive("train.max_seq_len", t.MaxSeqLen),
		nonNeg("train.epochs", t.Epochs),
		nonNeg("train.max_steps", t.MaxSteps),
		nonNeg("train.warmup_steps", t.WarmupSteps),
		nonNeg("train.eval_every", t.EvalEvery),
		nonNeg("train.save_every", t.SaveEvery),
		positive("train.keep_checkpoints", t.KeepCheckpoints),
		nonNeg("train.loss_chunk", t.LossChunk),
	}
	for _, err := range checks {
		if err != nil {
			return err
		}
	}
	if _, err := lora.ParsePatterns("rank_pattern", r.LoRA.RankPattern); err != nil {
		return r.errorf("lora.rank_pattern", "%v", err)
	}
	if _, err := lora.ParsePatterns("alpha_pattern", r.LoRA.AlphaPattern); err != nil {
		return r.errorf("lora.alpha_pattern", "%v", err)
	}
	switch t.Device {
	case "cpu", "cuda", "auto":
	default:
		return r.errorf("train.device", "%q is not supported (supported: cpu, cuda, auto)", t.Device)
	}
	switch t.ComputeDType {
	case "f32", "bf16":
	default:
		return r.errorf("train.compute_dtype", "%q is not supported (supported: f32, bf16)", t.ComputeDType)
	}
	if t.Epochs == 0 && t.MaxSteps == 0 {
		return r.errorf("train.epochs", "train.epochs and train.max_steps are both 0: nothing to train")
	}
	floatIn := func(key string, v, lo, hi float64, loOpen, hiOpen bool) error {
		bad := math.IsNaN(v) || v < lo || v > hi || (loOpen && v == lo) || (hiOpen && v == hi)
		if bad {
			l, h := "[", "]"
			if loOpen {
				l = "("
			}
			if hiOpen {
				h = ")"
			}
			return r.errorf(key, "want a value in %s%g, %g%s, found %g", l, lo, hi, h, v)
		}
		return nil
	}
	inf := math.Inf(1)
	for _, err := range []error{
		floatIn("lora.alpha", r.LoRA.Alpha, 0, inf, true, true),
		floatIn("lora.dropout", r.LoRA.Dropout, 0, 1, false, true),
		floatIn("train.lr", t.LR, 0, inf, true, true),
		floatIn("train.weight_decay", t.WeightDecay, 0, inf, false, true),
		floatIn("train.adam_beta1", t.AdamBeta1, 0, 1, false, true),
		floatIn("train.adam_beta2", t.AdamBeta2, 0, 1, false, true),
		floatIn("train.adam_eps", t.AdamEps, 0, inf, true, true),
		floatIn("train.max_grad_norm", t.MaxGradNorm, 0, inf, false, true),
		floatIn("dataset.validation", r.Dataset.Validation.Fraction, 0, 1, false, true),
	} {
		if err != nil {
			return err
		}
	}
	if len(r.LoRA.TargetModules) == 0 {
		return r.errorf("lora.target_modules", "empty: name modules (q_proj, v_proj, ...) or all-linear")
	}
	if r.LoRA.BaseQuant != "none" && t.Mode == "full" {
		return r.errorf("lora.base_quant", "%s with train.mode full: full training updates the base weights, which cannot stay quantized (use train.mode lora)", r.LoRA.BaseQuant)
	}
	if err := r.validateBaseQuant(); err != nil {
		return err
	}
	if r.LoRA.BaseQuant != "none" && r.LoRA.UseDoRA {
		return r.errorf("lora.base_quant", "%s with lora.use_dora: DoRA reads the base weight rows, supported on a bf16/f16/f32 base only", r.LoRA.BaseQuant)
	}
	if t.Mode == "full" && r.LoRA.InitAdapter != "" {
		return r.errorf("lora.init_adapter", "set with train.mode full: an adapter only continues a LoRA run")
	}
	return r.validatePipeline()
}

func required(r *Recipe, key, v string) error {
	if v == "" {
		return &Error{Pos: r.File, Err: fmt.Errorf("%s is required", key)}
	}
	return nil
}

// YAML writes the resolved recipe (every key, defaults included) as YAML
// that Parse reads back to the same values.
func (r *Recipe) YAML() string {
	var sb strings.Builder
	section := ""
	for _, k := range keys {
		s, name, _ := strings.Cut(k.name, ".")
		if s != section && name != "" {
			fmt.Fprintf(&sb, "%s:\n", s)
		}
		section = s
		if name == "" { // a section that is one key
			fmt.Fprintf(&sb, "%s: %s\n", s, k.format(r))
			continue
		}
		v := k.format(r)
		// An unresolved Hub id stays an id, not a missing folder.
		if k.name == "model.path" && r.Model.ID != "" && !exists(r.Model.Path) {
			v = yamlScalar(r.Model.ID)
		} else if k.name == "dataset.path" && r.Dataset.ID != "" && !exists(r.Dataset.Path) {
			v = yamlScalar(r.Dataset.ID)
		}
		fmt.Fprintf(&sb, "  %s: %s\n", name, v)
	}
	return sb.String()
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Explain documents every key: type, default and what it does, by section.
func Explain() string {
	var sb strings.Builder
	section := ""
	width := 0
	for _, k := range keys {
		width = max(width, len(k.name))
	}
	d := Default()
	for _, k := range keys {
		s, _, _ := strings.Cut(k.name, ".")
		if s != section {
			if section != "" {
				sb.WriteByte('\n')
			}
			fmt.Fprintf(&sb, "%s:\n", s)
			section = s
		}
		def := k.format(d)
		if k.def == "" {
			def = "(none)"
		}
		fmt.Fprintf(&sb, "  %-*s  %-13s default %s\n      %s\n", width, k.name, k.kind, def, k.doc)
	}
	return sb.String()
}

// Keys returns every recipe key, in table order.
func Keys() []string { return keyNames() }

func isSection(s string) bool { return slices.Contains(sectionNames(), s) }

func sectionNames() []string {
	var out []string
	for _, k := range keys {
		s, _, _ := strings.Cut(k.name, ".")
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func keyNames() []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.name
	}
	return out
}

func lookup(name string) *key {
	for i := range keys {
		if keys[i].name == name {
			return &keys[i]
		}
	}
	return nil
}

// unknownKey names the closest known key when one is close enough to be a
// typo (edit distance at most a third of the name, and at least 2).
func unknownKey(name string, known []string) error {
	best, bestD := "", math.MaxInt
	for _, k := range known {
		if d := editDistance(name, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" && bestD <= max(2, len(name)/3) {
		return fmt.Errorf("unknown key %q (did you mean %q?)", name, best)
	}
	sorted := slices.Clone(known)
	sort.Strings(sorted)
	return fmt.Errorf("unknown key %q (known: %s)", name, strings.Join(sorted, ", "))
}

// editDistance is the Levenshtein distance over bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// errNode is the node a nested error points at, else n.
func errNode(err error, n *yaml.Node) *yaml.Node {
	var ne *nodeError
	if errors.As(err, &ne) {
		return ne.n
	}
	return n
}

func at(name string, n *yaml.Node) string {
	return fmt.Sprintf("%s:%d:%d", name, n.Line, n.Column)
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	if n.Tag == "!!null" {
		return "nothing"
	}
	return strconv.Quote(n.Value)
}
