package lora

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tunellm/tune/internal/fsutil"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
)

// File names of a PEFT adapter folder (peft.utils.constants CONFIG_NAME,
// SAFETENSORS_WEIGHTS_NAME).
const (
	ConfigFile  = "adapter_config.json"
	WeightsFile = "adapter_model.safetensors"
)

// parseDType maps the CLI spellings to a safetensors dtype.
func parseDType(s string) (safetensors.DType, error) {
	switch strings.ToLower(s) {
	case "", "f32", "fp32", "float32":
		return safetensors.F32, nil
	case "bf16", "bfloat16":
		return safetensors.BF16, nil
	case "f16", "fp16", "float16":
		return safetensors.F16, nil
	}
	return "", fmt.Errorf("lora: dtype %q is not supported (supported: f32, bf16, f16)", s)
}

// configDict is adapter_config.json as PEFT 0.20's LoraConfig.to_dict()
// writes it after PeftModel.save_pretrained set inference_mode: every field
// (runtime_config popped), the set of target modules as a list. peft_version
// is left out: it names the writing PEFT release, and PEFT fills its own in
// when the key is missing.
func (a *Adapter) configDict() map[string]any {
	c := a.cfg
	var base any
	if c.BaseModel != "" {
		base = c.BaseModel
	}
	var layers any
	if c.LayersToTransform != nil {
		layers = c.LayersToTransform
	}
	rank, alphas := map[string]any{}, map[string]any{}
	for _, p := range c.RankPattern { // keys are unique after resolve
		rank[p.Key] = int(p.Value)
	}
	for _, p := range c.AlphaPattern {
		alphas[p.Key] = pyNumber(p.Value)
	}
	return map[string]any{
		"alora_invocation_tokens": nil,
		"alpha_pattern":           alphas,
		"arrow_config":            nil,
		"auto_mapping":            nil,
		"base_model_name_or_path": base,
		"bias":                    "none",
		"corda_config":            nil,
		"ensure_weight_tying":     false,
		"eva_config":              nil,
		"exclude_modules":         nil,
		"fan_in_fan_out":          false,
		"inference_mode":          true,
		"init_lora_weights":       true,
		"layer_replication":       nil,
		"layers_pattern":          nil,
		"layers_to_transform":     layers,
		"loftq_config":            map[string]any{},
		"lora_alpha":              pyNumber(c.Alpha),
		"lora_bias":               false,
		"lora_dropout":            c.Dropout,
		"lora_ga_config":          nil,
		"megatron_config":         nil,
		"megatron_core":           "megatron.core",
		"modules_to_save":         nil,
		"monteclora_config":       nil,
		"peft_type":               "LORA",
		"qalora_group_size":       16,
		"r":                       c.R,
		"rank_pattern":            rank,
		"revision":                nil,
		"target_modules":          c.TargetModules,
		"target_parameters":       nil,
		"task_type":               "CAUSAL_LM",
		"trainable_token_indices": nil,
		"use_bdlora":              nil,
		"use_dora":                c.UseDoRA,
		"use_qalora":              false,
		"use_rslora":              c.UseRSLoRA,
		"velora_config":           nil,
	}
}

// pyNumber keeps an integral float an int (lora_alpha is an int field in
// PEFT: 16, not 16.0).
func pyNumber(v float64) any {
	if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
		return int(v)
	}
	return v
}

// Save writes a PEFT adapter folder: adapter_model.safetensors with PEFT's
// tensor names (get_peft_model_state_dict drops the adapter name) in dtype
// ("f32" when empty, "bf16", "f16"; rounding to nearest even), then
// adapter_config.json. Each file is written to a temporary name and renamed.
// target_modules is written sorted (PEFT writes list(set), in hash order).
func (a *Adapter) Save(dir string, dtype string) error {
	dt, err := parseDType(dtype)
	if err != nil {
		return err
	}
	if err := a.checkMagnitudes(); err != nil {
		return fmt.Errorf("lora: save: %w", err)
	}
	ts := make([]safetensors.WriteTensor, len(a.tensors))
	for i, t := range a.tensors {
		t := t
		ts[i] = safetensors.WriteTensor{Name: t.Name, DType: dt, Shape: t.Shape, Write: func(w io.Writer) error {
			buf := make([]byte, len(t.Data)*dt.Size())
			if err := safetensors.FromFloat32(buf, t.Data, dt); err != nil {
				return err
			}
			_, err := w.Write(buf)
			return err
		}}
	}
	if err := safetensors.WriteDir(dir, ts, safetensors.WriteOptions{FileName: WeightsFile}); err != nil {
		return fmt.Errorf("lora: save: %w", err)
	}
	d := a.configDict()
	tm := append([]string(nil), a.cfg.TargetModules...)
	sort.Strings(tm)
	d["target_modules"] = tm
	js, err := pyJSON(d)
	if err != nil {
		return fmt.Errorf("lora: save %s: %w", ConfigFile, err)
	}
	if err := fsutil.WriteFile(filepath.Join(dir, ConfigFile), js); err != nil {
		return fmt.Errorf("lora: %w", err)
	}
	return nil
}

// LoadConfig reads a PEFT adapter_config.json into a Config, refusing the
// LoraConfig features this package does not implement (each error names the
// key). Keys it does not know are ignored, as PEFT ignores keys of newer
// releases.
func LoadConfig(dir string) (Config, error) {
	path := filepath.Join(dir, ConfigFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("lora: %w", err)
	}
	c, err := parseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("lora: %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig is LoadConfig on the bytes of an adapter_config.json (errors
// name the key, not the file).
func ParseConfig(data []byte) (Config, error) { return parseConfig(data) }

func isNull(m json.RawMessage) bool {
	m = bytes.TrimSpace(m)
	return len(m) == 0 || string(m) == "null"
}

func parseConfig(data []byte) (Config, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return Config{}, err
	}
	get := func(key string, dst any) error {
		m, ok := raw[key]
		if !ok || isNull(m) {
			return nil
		}
		if err := json.Unmarshal(m, dst); err != nil {
			return fmt.Errorf("%s = %s: %v", key, m, err)
		}
		return nil
	}
	var peftType string
	if err := get("peft_type", &peftType); err != nil {
		return Config{}, err
	}
	if peftType != "" && peftType != "LORA" {
		return Config{}, fmt.Errorf("peft_type %q is not supported (supported: LORA)", peftType)
	}
	// PEFT's defaults for absent keys: r=8, lora_alpha=8, lora_dropout=0.
	c := Config{R: 8, Alpha: 8, Bias: "none"}
	var rf float64 = 8
	for _, f := range []struct {
		key string
		dst any
	}{{"r", &rf}, {"lora_alpha", &c.Alpha}, {"lora_dropout", &c.Dropout}, {"use_rslora", &c.UseRSLoRA},
		{"use_dora", &c.UseDoRA}, {"bias", &c.Bias}, {"base_model_name_or_path", &c.BaseModel}} {
		if err := get(f.key, f.dst); err != nil {
			return Config{}, err
		}
	}
	if rf != math.Trunc(rf) {
		return Config{}, fmt.Errorf("r = %g, want an integer", rf)
	}
	c.R = int(rf)
	if m, ok := raw["target_modules"]; ok && !isNull(m) {
		var s string
		if json.Unmarshal(m, &s) == nil {
			if !strings.EqualFold(s, AllLinear) {
				return Config{}, fmt.Errorf("target_modules = %q: a regular expression is not supported (supported: a list of module names, or %q)", s, AllLinear)
			}
			c.TargetModules = []string{AllLinear}
		} else if err := json.Unmarshal(m, &c.TargetModules); err != nil {
			return Config{}, fmt.Errorf("target_modules = %s, want a list of names or %q", m, AllLinear)
		}
	}
	if m, ok := raw["layers_to_transform"]; ok && !isNull(m) {
		var one int
		if json.Unmarshal(m, &one) == nil {
			c.LayersToTransform = []int{one}
		} else if err := json.Unmarshal(m, &c.LayersToTransform); err != nil {
			return Config{}, fmt.Errorf("layers_to_transform = %s, want an int or a list of ints", m)
		}
	}
	if m, ok := raw["layers_pattern"]; ok && !isNull(m) {
		var s string
		var l []string
		if json.Unmarshal(m, &s) == nil {
			l = []string{s}
		} else {
			_ = json.Unmarshal(m, &l)
		}
		if len(l) != 1 || l[0] != "layers" {
			return Config{}, fmt.Errorf("layers_pattern = %s is not supported (supported: null, \"layers\")", m)
		}
	}
	var err error
	if c.RankPattern, err = orderedPattern("rank_pattern", raw["rank_pattern"]); err != nil {
		return Config{}, err
	}
	if c.AlphaPattern, err = orderedPattern("alpha_pattern", raw["alpha_pattern"]); err != nil {
		return Config{}, err
	}
	if _, err := compilePatterns("rank_pattern", c.RankPattern); err != nil {
		return Config{}, errors.New(strings.TrimPrefix(err.Error(), "lora: "))
	}
	if _, err := compilePatterns("alpha_pattern", c.AlphaPattern); err != nil {
		return Config{}, errors.New(strings.TrimPrefix(err.Error(), "lora: "))
	}
	// Features that change the math or the tensors: refuse rather than
	// silently load something else.
	for _, f := range []struct{ key, why string }{
		{"modules_to_save", "fully trained extra modules"},
		{"trainable_token_indices", "trainable token embeddings"},
		{"layer_replication", "layer replication"},
		{"exclude_modules", "exclude_modules"},
		{"target_parameters", "LoRA on parameters"},
		{"alora_invocation_tokens", "activated LoRA"},
		{"use_bdlora", "block-diagonal LoRA"},
		{"arrow_config", "Arrow routing"},
		{"velora_config", "VeLoRA"},
		{"monteclora_config", "MonteCLoRA"},
		{"megatron_config", "Megatron layers"},
	} {
		m, ok := raw[f.key]
		if !ok || isNull(m) {
			continue
		}
		if s := string(bytes.TrimSpace(m)); s == "{}" || s == "[]" {
			continue
		}
		return Config{}, fmt.Errorf("%s = %s: %s are not supported", f.key, m, f.why)
	}
	for _, key := range []string{"fan_in_fan_out", "lora_bias", "use_qalora"} {
		var b bool
		if err := get(key, &b); err != nil {
			return Config{}, err
		}
		if b {
			return Config{}, fmt.Errorf("%s = true is not supported", key)
		}
	}
	if m, ok := raw["init_lora_weights"]; ok && !isNull(m) {
		var s string
		if json.Unmarshal(m, &s) == nil {
			switch s {
			case "gaussian", "eva", "orthogonal":
			default:
				// pissa, olora, corda, loftq, ... change the base weights
				// unless the adapter was converted when saved.
				return Config{}, fmt.Errorf("init_lora_weights = %q: the adapter expects a modified base model (supported: true, false, \"gaussian\", \"eva\", \"orthogonal\")", s)
			}
		}
	}
	return c, nil
}

// orderedPattern parses rank_pattern or alpha_pattern, a JSON object of
// numbers, keeping the file's key order: PEFT tries the keys in the order of
// the dict json.load built, which is the file's. A key repeated in the file
// keeps its first place and takes its last value, as in a Python dict.
func orderedPattern(key string, m json.RawMessage) ([]Pattern, error) {
	if isNull(m) {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(m))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("%s = %.60s, want an object of module pattern -> number", key, m)
	}
	var out []Pattern
	at := map[string]int{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", key, err)
		}
		k, _ := t.(string)
		var v float64
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s[%q]: want a number", key, k)
		}
		if i, ok := at[k]; ok {
			out[i].Value = v
			continue
		}
		at[k] = len(out)
		out = append(out, Pattern{Key: k, Value: v})
	}
	return out, nil
}

// Load reads a PEFT LoRA adapter folder for a base model with config mc:
// adapter_config.json and adapter_model.safetensors (F32, BF16 or F16). Every
// tensor the config implies must be present with its exact shape, and no
// other may be: an adapter trained on another base fails on the first shape
// that differs.
func Load(dir string, mc *model.Config) (*Adapter, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	a, err := newAdapter(cfg, mc)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, filepath.Join(dir, ConfigFile))
	}
	path := filepath.Join(dir, WeightsFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if _, err2 := os.Stat(filepath.Join(dir, "adapter_model.bin")); err2 == nil {
			return nil, fmt.Errorf("lora: %s: only adapter_model.bin (a pickle) is there; save the adapter with safe_serialization=True", dir)
		}
	}
	r, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("lora: %w", err)
	}
	defer r.Close()
	want := map[string]bool{}
	for _, t := range a.tensors {
		want[t.Name] = true
	}
	for _, name := range r.Names() {
		if !want[name] {
			return nil, fmt.Errorf("lora: %s: %s", path, a.explainUnknown(name))
		}
	}
	// Slab order, so the first error names the first layer's first module.
	for _, t := range a.tensors {
		if !r.Has(t.Name) {
			missing := 0
			for _, u := range a.tensors {
				if !r.Has(u.Name) {
					missing++
				}
			}
			return nil, fmt.Errorf("lora: %s: tensor %s is missing (%d of %d missing; target_modules %v, r=%d)",
				path, t.Name, missing, len(a.tensors), a.cfg.TargetModules, a.cfg.R)
		}
		st, err := r.Tensor(t.Name)
		if err != nil {
			return nil, fmt.Errorf("lora: %w", err)
		}
		if !equalShape(st.Shape, t.Shape) {
			return nil, fmt.Errorf("lora: %s: %s: shape %v, want %v (%s)", path, t.Name, st.Shape, t.Shape, a.explainShape(t))
		}
		switch st.DType {
		case safetensors.F32, safetensors.BF16, safetensors.F16:
		default:
			return nil, fmt.Errorf("lora: %s: %s: dtype %s is not supported (supported: F32, BF16, F16)", path, t.Name, st.DType)
		}
		if err := safetensors.ToFloat32(t.Data, st.Data, st.DType); err != nil {
			return nil, fmt.Errorf("lora: %s: %s: %w", path, t.Name, err)
		}
	}
	return a, nil
}

func equalShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// explainShape names the config values behind a wanted shape.
func (a *Adapter) explainShape(t Tensor) string {
	m := moduleIndex(t.Module)
	inName := map[int]string{0: "hidden_size", 1: "hidden_size", 2: "hidden_size", 3: "num_attention_heads*head_dim",
		4: "hidden_size", 5: "hidden_size", 6: "intermediate_size"}[m]
	outName := map[int]string{0: "num_attention_heads*head_dim", 1: "num_key_value_heads*head_dim", 2: "num_key_value_heads*head_dim",
		3: "hidden_size", 4: "intermediate_size", 5: "intermediate_size", 6: "hidden_size"}[m]
	if strings.HasSuffix(t.Name, ".lora_magnitude_vector") {
		return fmt.Sprintf("%s=%d", outName, t.Shape[0])
	}
	r := fmt.Sprintf("r=%d", a.cfg.R)
	if md := a.get(t.Layer, t.Module); md != nil && md.r != a.cfg.R {
		r = fmt.Sprintf("r=%d from rank_pattern", md.r)
	}
	if strings.HasSuffix(t.Name, ".lora_A.weight") {
		return fmt.Sprintf("%s, %s=%d", r, inName, t.Shape[1])
	}
	return fmt.Sprintf("%s=%d, %s", outName, t.Shape[0], r)
}

// explainUnknown says why a tensor name is not one of the adapter's.
func (a *Adapter) explainUnknown(name string) string {
	if strings.Contains(name, "lora_magnitude_vector") && !a.cfg.UseDoRA {
		return fmt.Sprintf("tensor %s: a DoRA magnitude, but adapter_config.json has use_dora false", name)
	}
	var l int
	var mod, ab string
	for _, pat := range []string{"base_model.model.model.layers.%d.self_attn.%s", "base_model.model.model.layers.%d.mlp.%s"} {
		if n, _ := fmt.Sscanf(strings.NewReplacer(".lora_A.weight", " A", ".lora_B.weight", " B").Replace(name), pat+" %s", &l, &mod, &ab); n == 3 {
			if moduleIndex(mod) >= 0 && l >= 0 && l < len(a.mods) {
				return fmt.Sprintf("tensor %s: layer %d %s is not adapted by target_modules %v, layers_to_transform %v", name, l, mod, a.cfg.TargetModules, a.cfg.LayersToTransform)
			}
		}
	}
	return fmt.Sprintf("unknown tensor %s (not a LoRA weight of this %s model with %d layers)", name, a.mc.ModelType, a.mc.Layers)
}

// SameBase reports whether two base model ids (adapter_config.json's
// base_model_name_or_path, a recipe's model.path, a quantized folder's
// recorded source) name the same model: equal strings, the same folder,
// or the same model name, where a Hub id's name is its last element
// ("Qwen/Qwen3-8B": Qwen3-8B), a folder's its base name, and a Hugging Face
// cache snapshot's the repository's (.../models--Qwen--Qwen3-8B/snapshots/REV).
// It is deliberately loose: it only catches adapters and bases that name
// different models.
func SameBase(a, b string) bool {
	if a == b {
		return true
	}
	na, nb := baseName(a), baseName(b)
	return na != "" && strings.EqualFold(na, nb)
}

// baseName is the model name an id or path ends in (see SameBase).
func baseName(id string) string {
	p := filepath.ToSlash(filepath.Clean(strings.TrimRight(id, "/")))
	parts := strings.Split(p, "/")
	for i := len(parts) - 1; i >= 1; i-- {
		if parts[i] == "snapshots" && strings.HasPrefix(parts[i-1], "models--") {
			s := strings.Split(strings.TrimPrefix(parts[i-1], "models--"), "--")
			return s[len(s)-1]
		}
	}
	name := parts[len(parts)-1]
	if i := strings.IndexByte(name, '@'); i > 0 { // org/name@rev
		name = name[:i]
	}
	return name
}

// CheckBase refuses an adapter recorded for another base than id (one line
// naming both); an adapter or an id that records none passes.
func (a *Adapter) CheckBase(id string) error {
	rec := a.cfg.BaseModel
	if rec == "" || id == "" || SameBase(rec, id) {
		return nil
	}
	return fmt.Errorf("lora: adapter was trained on %s (base_model_name_or_path), not on %s", rec, id)
}
