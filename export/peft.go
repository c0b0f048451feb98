package export

import (
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// peftConfig is the part of adapter_config.json that decides what each LoRA
// pair computes, as package lora reads it (lora.ParseConfig: one PEFT
// reader for training, merging and export).
type peftConfig struct {
	path      string
	R         int
	Alpha     float64
	RSLoRA    bool
	DoRA      bool
	BaseModel string
	// Patterns in file order: PEFT tries them in insertion order and the
	// first match wins (peft.utils.other.get_pattern_key).
	RankPattern  []lora.Pattern
	AlphaPattern []lora.Pattern
	lc           lora.Config
}

// parsePEFTConfig reads adapter_config.json bytes with lora.ParseConfig.
// path only names the file in errors.
func parsePEFTConfig(path string, data []byte) (*peftConfig, error) {
	lc, err := lora.ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("export: %s: %v", path, err)
	}
	if lc.R <= 0 || lc.R > 1<<20 {
		return nil, fmt.Errorf("export: %s: r = %d, want a positive integer", path, lc.R)
	}
	if !(lc.Alpha > 0) || math.IsInf(lc.Alpha, 0) {
		return nil, fmt.Errorf("export: %s: lora_alpha = %g, want > 0 (llama.cpp reads alpha 0 as no scaling)", path, lc.Alpha)
	}
	return &peftConfig{path: path, R: lc.R, Alpha: lc.Alpha, RSLoRA: lc.UseRSLoRA, DoRA: lc.UseDoRA, BaseModel: lc.BaseModel,
		RankPattern: lc.RankPattern, AlphaPattern: lc.AlphaPattern, lc: lc}, nil
}

// Pair is one adapted linear layer: A [R,C] and B [OC,R] in fp32, and the
// scaling PEFT applies to B·A (lora_alpha/r, /√r with rsLoRA, with the
// module's rank_pattern and alpha_pattern entries).
type Pair struct {
	Layer   int
	Module  string // "q_proj", ...
	HF      string // model.layers.3.self_attn.q_proj.weight: the base weight it adapts
	R       int
	Alpha   float64
	Scaling float64
	A, B    []float32
	Out, In int
}

// Adapter is a PEFT LoRA adapter read for export.
type Adapter struct {
	Dir    string
	Config *peftConfig
	Pairs  []Pair // by layer, then lora.Modules order
}

// ReadAdapter reads a PEFT LoRA adapter folder (adapter_config.json,
// adapter_model.safetensors) for a base model of config mc with lora.Load,
// per-module ranks and alphas included, so every pair's shapes are checked
// against mc and the config. DoRA adapters are refused, since llama.cpp
// could not apply them.
func ReadAdapter(dir string, mc *model.Config) (*Adapter, error) {
	cfgPath := filepath.Join(dir, lora.ConfigFile)
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	cfg, err := parsePEFTConfig(cfgPath, data)
	if err != nil {
		return nil, err
	}
	if cfg.DoRA {
		return nil, fmt.Errorf("export: %s: use_dora is true: llama.cpp has no DoRA, so the adapter can not be applied unmerged; merge it (tune merge) and export the merged model (tune quantize --format gguf)", cfgPath)
	}
	la, err := lora.Load(dir, mc)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	ad := &Adapter{Dir: dir, Config: cfg}
	ts := la.Tensors() // per module: lora_A then lora_B, by layer then lora.Modules order
	for i := 0; i+1 < len(ts); i += 2 {
		ta, tb := ts[i], ts[i+1]
		if ta.Layer != tb.Layer || ta.Module != tb.Module || len(ta.Shape) != 2 || len(tb.Shape) != 2 {
			return nil, fmt.Errorf("export: %s: tensor order %s, %s is not a lora_A, lora_B pair", dir, ta.Name, tb.Name)
		}
		r, alpha, scaling, ok := la.ModuleRank(ta.Layer, ta.Module)
		if !ok || r != ta.Shape[0] {
			return nil, fmt.Errorf("export: %s: %s: shape %v, rank %d", dir, ta.Name, ta.Shape, r)
		}
		mi := moduleIndex(ta.Module)
		out, in := moduleShape(mc, mi)
		if tb.Shape[0] != out || ta.Shape[1] != in || tb.Shape[1] != r {
			return nil, fmt.Errorf("export: %s: %s %v and %s %v, want [%d %d] and [%d %d]", dir, ta.Name, ta.Shape, tb.Name, tb.Shape, r, in, out, r)
		}
		prefix := "self_attn"
		if mi >= 4 {
			prefix = "mlp"
		}
		ad.Pairs = append(ad.Pairs, Pair{Layer: ta.Layer, Module: ta.Module,
			HF: fmt.Sprintf("model.layers.%d.%s.%s.weight", ta.Layer, prefix, ta.Module),
			R:  r, Alpha: alpha, Scaling: scaling, Out: tb.Shape[0], In: ta.Shape[1],
			A: ta.Data, B: tb.Data})
	}
	if len(ad.Pairs) == 0 {
		return nil, fmt.Errorf("export: %s: no LoRA pairs", dir)
	}
	return ad, nil
}

func moduleIndex(name string) int {
	for i, m := range lora.Modules {
		if m == name {
			return i
		}
	}
	return -1
}

// moduleShape is the [out,in] of nn.Linear weight m (lora.Modules order).
func moduleShape(mc *model.Config, m int) (out, in int) {
	q, kv := mc.Heads*mc.HeadDim, mc.KVHeads*mc.HeadDim
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
