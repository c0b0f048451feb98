package lora

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/tunellm/tune/model"
)

// Modules are the linear layers of a decoder block that LoRA can adapt, in
// the order of the parameter slab. "all-linear" means all of them: PEFT
// resolves the shorthand to every nn.Linear except the output layer
// (tuners_utils._maybe_include_all_linear_layers), which for the supported
// causal LMs is exactly this list.
var Modules = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// AllLinear is PEFT's INCLUDE_LINEAR_LAYERS_SHORTHAND.
const AllLinear = "all-linear"

// defaultTargets is what PEFT uses for these model types when target_modules
// is None (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING: llama,
// mistral, qwen2, qwen3 all map to q_proj, v_proj).
var defaultTargets = []string{"q_proj", "v_proj"}

// Config is the part of PEFT's LoraConfig that this package implements.
type Config struct {
	R       int     // r: rank
	Alpha   float64 // lora_alpha
	Dropout float64 // lora_dropout, in [0,1)
	// TargetModules are module names or dotted suffixes matched as PEFT
	// matches a list (key == t or key ends with "."+t, key being e.g.
	// "model.layers.3.self_attn.q_proj"), or ["all-linear"]. Empty means
	// PEFT's default for the model type: q_proj, v_proj.
	TargetModules     []string
	LayersToTransform []int  // layers_to_transform; nil: every layer
	UseRSLoRA         bool   // use_rslora: scaling = alpha/√r instead of alpha/r
	UseDoRA           bool   // use_dora: DoRA, a trained magnitude per output row (see dora.go)
	Bias              string // "none" (or ""); PEFT's "all" and "lora_only" are not supported
	BaseModel         string // base_model_name_or_path, written to adapter_config.json
	// RankPattern and AlphaPattern are PEFT's rank_pattern and alpha_pattern:
	// per-module r and lora_alpha overriding R and Alpha. Each Key is a
	// regular expression matched against the module's full name
	// ("model.layers.3.self_attn.q_proj") as re.match(rf"(.*\.)?({key})$",
	// name), and the first matching entry in slice order wins
	// (peft.utils.other.get_pattern_key). Save writes them as JSON objects
	// with sorted keys, as PEFT's sort_keys=True does, so a reloaded adapter
	// tries them in sorted order, exactly as PEFT would after a round trip.
	RankPattern  []Pattern
	AlphaPattern []Pattern
}

// Pattern is one entry of rank_pattern (Value a positive integer) or
// alpha_pattern (Value > 0).
type Pattern struct {
	Key   string
	Value float64
}

// Scaling is PEFT's LoraLayer.scaling for the default r and lora_alpha:
// alpha/r, or alpha/√r with rsLoRA. A module matched by RankPattern or
// AlphaPattern has its own (ModuleScaling).
func (c Config) Scaling() float64 { return scalingOf(c.Alpha, c.R, c.UseRSLoRA) }

func scalingOf(alpha float64, r int, rs bool) float64 {
	if rs {
		return alpha / math.Sqrt(float64(r))
	}
	return alpha / float64(r)
}

// ModuleRank returns the r and lora_alpha PEFT gives the module with full
// name key (e.g. "model.layers.3.self_attn.q_proj"), and the scaling that
// follows; it fails when a pattern is not a valid regular expression.
func (c Config) ModuleRank(key string) (r int, alpha, scaling float64, err error) {
	rp, err := compilePatterns("rank_pattern", c.RankPattern)
	if err != nil {
		return 0, 0, 0, err
	}
	ap, err := compilePatterns("alpha_pattern", c.AlphaPattern)
	if err != nil {
		return 0, 0, 0, err
	}
	r, alpha = int(matchPattern(rp, key, float64(c.R))), matchPattern(ap, key, c.Alpha)
	return r, alpha, scalingOf(alpha, r, c.UseRSLoRA), nil
}

type compiledPattern struct {
	Pattern
	re *regexp.Regexp
}

// compilePatterns builds PEFT's get_pattern_key regular expressions, checking
// each value (what names the config key in errors).
func compilePatterns(what string, ps []Pattern) ([]compiledPattern, error) {
	out := make([]compiledPattern, 0, len(ps))
	for _, p := range ps {
		switch {
		case what == "rank_pattern" && (p.Value != math.Trunc(p.Value) || p.Value <= 0 || p.Value > 1<<20):
			return nil, fmt.Errorf("lora: rank_pattern[%q] = %g, want a positive integer", p.Key, p.Value)
		case !(p.Value > 0) || math.IsInf(p.Value, 0):
			return nil, fmt.Errorf("lora: %s[%q] = %g, want > 0", what, p.Key, p.Value)
		}
		re, err := regexp.Compile(`^(.*\.)?(` + p.Key + `)$`)
		if err != nil {
			return nil, fmt.Errorf("lora: %s: key %q is not a regular expression Go can read (Python-only syntax such as look-arounds is not supported): %v", what, p.Key, err)
		}
		out = append(out, compiledPattern{p, re})
	}
	return out, nil
}

// ParsePatterns turns a recipe's map (module regex -> number as text) into
// rank_pattern (what "rank_pattern") or alpha_pattern ("alpha_pattern")
// entries in sorted key order, the order adapter_config.json stores them in,
// checking every key and value.
func ParsePatterns(what string, m map[string]string) ([]Pattern, error) {
	if what != "rank_pattern" && what != "alpha_pattern" {
		return nil, fmt.Errorf("lora: ParsePatterns: %q is neither rank_pattern nor alpha_pattern", what)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]Pattern, 0, len(keys))
	for _, k := range keys {
		v, err := strconv.ParseFloat(strings.TrimSpace(m[k]), 64)
		if err != nil {
			return nil, fmt.Errorf("lora: %s[%q] = %q, want a number", what, k, m[k])
		}
		out = append(out, Pattern{Key: k, Value: v})
	}
	if _, err := compilePatterns(what, out); err != nil {
		return nil, err
	}
	return out, nil
}

// dedupPatterns copies ps keeping each key once, at its first place with its
// last value, as a Python dict built from the same pairs.
func dedupPatterns(ps []Pattern) []Pattern {
	var out []Pattern
	at := map[string]int{}
	for _, p := range ps {
		if i, ok := at[p.Key]; ok {
			out[i].Value = p.Value
			continue
		}
		at[p.Key] = len(out)
		out = append(out, p)
	}
	return out
}

// checkSortedOrder fails when trying the patterns in sorted key order (how
// PEFT and Save write them) would give some adapted module another r or
// lora_alpha than trying them in the given order: the saved adapter would
// then load as a different one.
func (r *resolved) checkSortedOrder() error {
	for _, f := range []struct {
		what string
		ps   []Pattern
		def  float64
		got  func(l, m int) float64
	}{
		{"rank_pattern", r.cfg.RankPattern, float64(r.cfg.R), func(l, m int) float64 { return float64(r.ranks[l][m]) }},
		{"alpha_pattern", r.cfg.AlphaPattern, r.cfg.Alpha, func(l, m int) float64 { return r.alphas[l][m] }},
	} {
		sorted := append([]Pattern(nil), f.ps...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].Key < sorted[j].Key })
		cp, err := compilePatterns(f.what, sorted)
		if err != nil {
			return err
		}
		for l := range r.targets {
			for m, on := range r.targets[l] {
				if !on {
					continue
				}
				if v := matchPattern(cp, moduleKey(l, m), f.def); v != f.got(l, m) {
					return fmt.Errorf("lora: %s: %s gets %g from the first matching key, but %g with the keys in sorted order, which is how adapter_config.json stores them (PEFT writes sort_keys=True): make the keys match disjoint modules", f.what, moduleKey(l, m), f.got(l, m), v)
				}
			}
		}
	}
	return nil
}

// matchPattern is get_pattern_key followed by dict.get(key, def).
func matchPattern(ps []compiledPattern, key string, def float64) float64 {
	for _, p := range ps {
		if p.re.MatchString(key) {
			return p.Value
		}
	}
	return def
}

func moduleKey(layer, m int) string {
	if m < 4 {
		return fmt.Sprintf("model.layers.%d.self_attn.%s", layer, Modules[m])
	}
	return fmt.Sprintf("model.layers.%d.mlp.%s", layer, Modules[m])
}

func moduleIndex(name string) int {
	switch name {
	case "q_proj":
		return 0
	case "k_proj":
		return 1
	case "v_proj":
		return 2
	case "o_proj":
		return 3
	case "gate_proj":
		return 4
	case "up_proj":
		return 5
	case "down_proj":
		return 6
	}
	return -1
}

// moduleShape is the [out,in] of nn.Linear weight m in a block of mc.
func moduleShape(mc *model.Config, m int) (out, in int) {
	q := mc.Heads * mc.HeadDim
	kv := mc.KVHeads * mc.HeadDim
	switch m {
	case 0:
		return q, mc.Hidden
	case 1, 2:
		return kv, mc.Hidden
	case 3:
		return mc.Hidden, q
	case 4, 5:
		return mc.Intermediate, mc.Hidden
	default:
		return mc.Hidden, mc.Intermediate
	}
}

// resolved is a Config checked against a model: which (layer, module) pairs
// are adapted, and the target list as PEFT would save it.
type resolved struct {
	cfg     Config // TargetModules resolved, LayersToTransform sorted and unique, Bias "none"
	targets [][]bool
	ranks   [][]int     // [L][len(Modules)]: r of each adapted module (rank_pattern applied)
	alphas  [][]float64 // lora_alpha of each adapted module (alpha_pattern applied)
}

// resolve validates c against mc the way PEFT's inject_adapter would find
// (or fail to find) the modules.
func resolve(c Config, mc *model.Config) (*resolved, error) {
	if mc == nil {
		return nil, fmt.Errorf("lora: no model config")
	}
	if c.R <= 0 {
		return nil, fmt.Errorf("lora: r = %d, want > 0", c.R)
	}
	if !(c.Alpha > 0) || math.IsInf(c.Alpha, 0) {
		return nil, fmt.Errorf("lora: lora_alpha = %g, want > 0", c.Alpha)
	}
	if !(c.Dropout >= 0 && c.Dropout < 1) {
		return nil, fmt.Errorf("lora: lora_dropout = %g, want 0 <= p < 1", c.Dropout)
	}
	switch c.Bias {
	case "", "none":
		c.Bias = "none"
	default:
		return nil, fmt.Errorf("lora: bias %q is not supported (supported: none)", c.Bias)
	}
	L := mc.Layers
	if c.LayersToTransform != nil {
		seen := map[int]bool{}
		var layers []int
		for _, l := range c.LayersToTransform {
			if l < 0 || l >= L {
				return nil, fmt.Errorf("lora: layers_to_transform: layer %d out of range (the model has %d layers: 0..%d)", l, L, L-1)
			}
			if !seen[l] {
				seen[l] = true
				layers = append(layers, l)
			}
		}
		if len(layers) == 0 {
			return nil, fmt.Errorf("lora: layers_to_transform is empty (omit it to adapt every layer)")
		}
		sort.Ints(layers)
		c.LayersToTransform = layers
	}
	targets := c.TargetModules
	switch {
	case len(targets) == 0:
		targets = defaultTargets
	case len(targets) == 1 && strings.EqualFold(targets[0], AllLinear):
		targets = Modules
	}
	c.TargetModules = append([]string(nil), targets...)
	r := &resolved{targets: make([][]bool, L)}
	inLayer := func(l int) bool {
		if c.LayersToTransform == nil {
			return true
		}
		i := sort.SearchInts(c.LayersToTransform, l)
		return i < len(c.LayersToTransform) && c.LayersToTransform[i] == l
	}
	for l := range r.targets {
		r.targets[l] = make([]bool, len(Modules))
	}
	any := false
	for _, t := range targets {
		found := false
		for l := 0; l < L; l++ {
			for m := range Modules {
				key := moduleKey(l, m)
				if key != t && !strings.HasSuffix(key, "."+t) {
					continue
				}
				found = true
				if inLayer(l) {
					r.targets[l][m] = true
					any = true
				}
			}
		}
		if !found {
			hint := ""
			if strings.Contains(t, "embed") || strings.Contains(t, "lm_head") {
				hint = "; LoRA on embeddings and lm_head is not supported"
			}
			return nil, fmt.Errorf("lora: target_modules: %q matches no module (the model has: %s)%s", t, strings.Join(Modules, ", "), hint)
		}
	}
	if !any {
		return nil, fmt.Errorf("lora: target_modules %v with layers_to_transform %v adapt no module", targets, c.LayersToTransform)
	}
	rp, err := compilePatterns("rank_pattern", c.RankPattern)
	if err != nil {
		return nil, err
	}
	ap, err := compilePatterns("alpha_pattern", c.AlphaPattern)
	if err != nil {
		return nil, err
	}
	c.RankPattern, c.AlphaPattern = dedupPatterns(c.RankPattern), dedupPatterns(c.AlphaPattern)
	r.ranks, r.alphas = make([][]int, L), make([][]float64, L)
	for l := range r.targets {
		r.ranks[l], r.alphas[l] = make([]int, len(Modules)), make([]float64, len(Modules))
		for m, on := range r.targets[l] {
			if on {
				key := moduleKey(l, m)
				r.ranks[l][m] = int(matchPattern(rp, key, float64(c.R)))
				r.alphas[l][m] = matchPattern(ap, key, c.Alpha)
			}
		}
	}
	r.cfg = c
	return r, nil
}
