package lora

import (
	"fmt"
	"math"
	"sort"
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
}

// Scaling is PEFT's LoraLayer.scaling: alpha/r, or alpha/√r with rsLoRA.
func (c Config) Scaling() float64 {
	if c.UseRSLoRA {
		return c.Alpha / math.Sqrt(float64(c.R))
	}
	return c.Alpha / float64(c.R)
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
	r.cfg = c
	return r, nil
}
