package recipes

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/ggufmodel"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/quantize/wq"
)

// QLoRA bases: lora.base_quant (the base quantized at load) and
// lora.base_from (a base quantized beforehand, read as stored).

// validateBaseQuant checks the base_quant_group, base_quant_sym and
// base_from keys against the rest.
func (r *Recipe) validateBaseQuant() error {
	l := &r.LoRA
	if g := l.BaseQuantGroup; g < -1 {
		return r.errorf("lora.base_quant_group", "want -1 (per channel), 0 (the default) or > 0, found %d", g)
	}
	if k := l.BaseQuantMaxKLD; k < 0 {
		return r.errorf("lora.base_quant_max_kld", "want >= 0 or off, found %g", k)
	}
	if l.BaseFrom == "" {
		return nil
	}
	switch {
	case l.BaseQuant != "none":
		return r.errorf("lora.base_from", "set with lora.base_quant %s: a pre-quantized base is trained on as stored (set lora.base_quant: none)", l.BaseQuant)
	case r.Train.Mode == "full":
		return r.errorf("lora.base_from", "set with train.mode full: full training updates the base weights, which cannot stay quantized (use train.mode lora)")
	case l.UseDoRA:
		return r.errorf("lora.base_from", "set with lora.use_dora: DoRA reads the base weight rows, supported on a bf16/f16/f32 base only")
	}
	return nil
}

// QuantizedBase reports whether the run trains on a quantized base
// (lora.base_quant or lora.base_from, or a quantized folder as model.path).
func (r *Recipe) QuantizedBase() bool {
	return r.Train.Mode != "full" && (r.LoRA.BaseQuant != "none" || r.LoRA.BaseFrom != "" || wq.IsQuantizedFolder(r.Model.Path))
}

// baseQuantScheme is the wq scheme of lora.base_quant int4/int8: tune
// quantize --format safetensors' defaults (groups of 128 for 4 bits, one
// scale per channel for 8; symmetric; the layout's zero-point convention:
// gptq for 4 bits, compressed-tensors for 8), so the base trained on is the
// one `tune quantize` with the same flags serves.
func (r *Recipe) baseQuantScheme() wq.Scheme {
	o := quantize.IntOptions{Bits: 4, GroupSize: r.LoRA.BaseQuantGroup, Sym: r.LoRA.BaseQuantSym, Layout: wq.LayoutGPTQ}
	if r.LoRA.BaseQuant == "int8" {
		o.Bits, o.Layout = 8, wq.LayoutCompressed
	}
	if o.GroupSize == 0 {
		o.GroupSize = map[int]int{4: 128, 8: -1}[o.Bits]
	}
	return o.Scheme()
}

// quantizeBaseInt quantizes m's decoder linears with wq's round-to-nearest
// codes in scheme s (a dry run only sizes them) and returns their bytes
// before and after.
func quantizeBaseInt(m *model.Model, mode string, s wq.Scheme, dryRun bool) (dense, quant int64, err error) {
	dense = m.BaseLinearBytes()
	if quant, err = m.BaseLinearBytesInt(s.Bits, s.GroupSize); err != nil {
		return 0, 0, fmt.Errorf("recipes: lora.base_quant %s (%s): %w (set lora.base_quant_group)", mode, s, err)
	}
	if dryRun {
		return dense, quant, nil
	}
	err = m.QuantizeBaseInt(runtime.NumCPU(), func(name string, f []float32, rows, cols int) (model.IntLinear, error) {
		q, err := wq.RTN(name, f, rows, cols, s)
		if err != nil {
			return model.IntLinear{}, err
		}
		return wq.IntLinear(q), nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("recipes: lora.base_quant %s: %w", mode, err)
	}
	return dense, m.BaseLinearBytes(), nil
}

// folderSource serves a quantized folder to model.New: its quantized
// linears as integer blocks of the stored codes (no re-quantization), every
// other tensor as stored (views into the mapping, which the model keeps
// until Close).
type folderSource struct{ f *wq.Folder }

var _ model.QuantSource = folderSource{}

func (s folderSource) Tensor(name string) (safetensors.Tensor, error) { return s.f.Tensor(name) }

func (s folderSource) QuantWeight(name string) (kernels.Weight, bool, error) {
	if !strings.HasSuffix(name, ".weight") || !s.f.IsQuantized(name) {
		return kernels.Weight{}, false, nil
	}
	q, err := s.f.QTensor(name)
	if err != nil {
		return kernels.Weight{}, false, err
	}
	w, err := model.IntWeight(wq.IntLinear(q))
	if err != nil {
		return kernels.Weight{}, false, fmt.Errorf("wq: %w", err)
	}
	return w, true, nil
}

// quantizedBase is a pre-quantized base loaded for training.
type quantizedBase struct {
	m      *model.Model
	desc   string // "int4 g128 sym (gptq)", "GGUF Q4_K_M: Q4_K, Q6_K"
	source string // the full-precision model it was made from, when it says ("" otherwise)
}

// isGGUF reports a .gguf path.
func isGGUF(path string) bool { return strings.HasSuffix(strings.ToLower(path), ".gguf") }

// loadQuantizedBase loads path, a quantized folder or a GGUF, as the frozen
// base of a LoRA run on a model of config mc: its shape must be mc's, every
// decoder linear must be held in a dtype the matmuls dequantize forward and
// backward, and the folder's codes are used as stored.
func loadQuantizedBase(path string, mc *model.Config, be kernels.Backend) (*quantizedBase, error) {
	var qb quantizedBase
	switch {
	case isGGUF(path):
		cfg, err := ggufmodel.LoadConfig(path)
		if err != nil {
			return nil, err
		}
		if err := sameShape(path, cfg, mc); err != nil {
			return nil, err
		}
		if qb.m, err = ggufmodel.LoadModel(path, model.LoadOptions{Backend: be}); err != nil {
			return nil, err
		}
		qb.desc = "GGUF"
	case wq.IsQuantizedFolder(path):
		cfg, err := model.LoadConfig(path)
		if err != nil {
			return nil, err
		}
		if err := sameShape(path, cfg, mc); err != nil {
			return nil, err
		}
		f, err := wq.OpenFolder(path)
		if err != nil {
			return nil, err
		}
		m, err := model.New(cfg, folderSource{f}, model.LoadOptions{Backend: be})
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("recipes: lora.base_from %s: %w", path, err)
		}
		m.SetCloser(f)
		qb.m, qb.desc, qb.source = m, fmt.Sprintf("%s (%s)", f.Scheme, f.Layout), quantizedSourceID(path)
	default:
		return nil, fmt.Errorf("recipes: lora.base_from %s: not a quantized folder (config.json with a gptq or compressed-tensors quantization_config, as tune quantize --format safetensors writes) nor a .gguf file", path)
	}
	types := map[kernels.DType]bool{}
	for l := 0; l < mc.Layers; l++ {
		for _, mod := range model.AdapterModules {
			w, err := qb.m.LinearWeight(l, mod)
			if err == nil {
				err = trainableThrough(w)
			}
			if err != nil {
				qb.m.Close()
				return nil, fmt.Errorf("recipes: lora.base_from %s: layer %d %s: %w", path, l, mod, err)
			}
			types[w.DType] = true
		}
	}
	if qb.desc == "GGUF" {
		var names []string
		for _, dt := range append(append([]kernels.DType{}, kernels.DTypes...), kernels.IntDTypes...) {
			if types[dt] {
				names = append(names, dt.String())
			}
		}
		qb.desc = "GGUF " + strings.Join(names, "+")
	}
	return &qb, nil
}

// trainableThrough refuses a weight whose dtype the matmuls cannot
// dequantize (forward and din both read Format().Dequantize).
func trainableThrough(w kernels.Weight) error {
	if w.DType.Size() > 0 {
		return nil
	}
	if !w.DType.Quantized() || w.DType.Format().Dequantize == nil {
		return fmt.Errorf("weight type %v cannot be trained through (supported: F32, F16, BF16, %v, %v)", w.DType, kernels.DTypes[3:], kernels.IntDTypes)
	}
	return nil
}

// sameShape compares a quantized base's config with model.path's.
func sameShape(path string, got, want *model.Config) error {
	for _, f := range []struct {
		key  string
		g, w any
	}{
		{"model_type", got.ModelType, want.ModelType}, {"num_hidden_layers", got.Layers, want.Layers},
		{"hidden_size", got.Hidden, want.Hidden}, {"intermediate_size", got.Intermediate, want.Intermediate},
		{"num_attention_heads", got.Heads, want.Heads}, {"num_key_value_heads", got.KVHeads, want.KVHeads},
		{"head_dim", got.HeadDim, want.HeadDim}, {"vocab_size", got.Vocab, want.Vocab},
	} {
		if f.g != f.w {
			return fmt.Errorf("recipes: lora.base_from %s: %s %v, but model.path's is %v (a quantized copy of another model)", path, f.key, f.g, f.w)
		}
	}
	return nil
}

// quantizedSourceID is the model a quantized folder was made from, as it
// records it: its model card's base_model (tune quantize writes the Hub id
// it quantized), else config.json's _name_or_path; "" when neither says.
func quantizedSourceID(dir string) string {
	if f, err := os.Open(filepath.Join(dir, "README.md")); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for i := 0; sc.Scan() && i < 64; i++ {
			line := sc.Text()
			if i > 0 && line == "---" {
				break
			}
			if v, ok := strings.CutPrefix(line, "base_model:"); ok {
				return strings.Trim(strings.TrimSpace(v), `"'`)
			}
		}
	}
	var c struct {
		Name string `json:"_name_or_path"`
	}
	if b, err := os.ReadFile(filepath.Join(dir, "config.json")); err == nil && json.Unmarshal(b, &c) == nil {
		return c.Name
	}
	return ""
}

// checkBaseID refuses a quantized base made from another model than the
// one the adapter is for (as each records it; nothing to compare when one
// of them says nothing).
func checkBaseID(from, source, base string) error {
	if source == "" || base == "" || lora.SameBase(source, base) {
		return nil
	}
	return fmt.Errorf("recipes: lora.base_from %s was quantized from %s, but the adapter is for %s (model.path)", from, source, base)
}
