package model

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Config is a decoder configuration read from a Hugging Face config.json. The
// differences between families are data here (QKNorm, QKVBias, windows), not
// separate forward code.
type Config struct {
	ModelType     string // "qwen3", "llama", "mistral", "qwen2"
	Hidden        int    // C
	Intermediate  int    // I (MLP width)
	Layers        int    // L
	Heads         int    // NH
	KVHeads       int    // KVH
	HeadDim       int    // HD
	Vocab         int    // V
	MaxPositions  int    // max_position_embeddings
	RMSNormEps    float64
	RopeTheta     float64
	Rope          RopeScaling
	TieEmbeddings bool

	QKVBias bool // q_proj, k_proj, v_proj carry a bias (qwen2; llama/qwen3 attention_bias)
	OBias   bool // o_proj carries a bias (llama/qwen3 attention_bias)
	MLPBias bool // gate/up/down carry a bias (llama mlp_bias)
	QKNorm  bool // per-head RMSNorm on q and k before RoPE (qwen3)

	// Windows[l] is the sliding window of layer l (0 = full causal attention):
	// a query at position p sees keys at positions > p-window.
	Windows []int

	BOS, EOS   []int
	TorchDType string
}

// RopeScaling is the rope_scaling entry of config.json; Type "" means none.
type RopeScaling struct {
	Type                string  // "", "linear", "llama3"
	Factor              float64 // linear, llama3
	LowFreqFactor       float64 // llama3
	HighFreqFactor      float64 // llama3
	OriginalMaxPosition int     // llama3
}

// family holds what differs between architectures: defaults of the HF config
// class, and which tensors exist.
type family struct {
	defaultEps, defaultTheta float64
	defaultHeadDim           int  // 0: hidden/heads
	qkvBiasAlways            bool // qwen2
	qkNorm                   bool // qwen3
	attentionBiasKey         bool // attention_bias adds q/k/v/o biases
	mlpBiasKey               bool // mlp_bias
	// window returns the per-layer sliding windows from the config keys.
	window func(raw *rawConfig, layers int) ([]int, error)
}

var families = map[string]family{}

func supportedTypes() string {
	names := make([]string, 0, len(families))
	for n := range families {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

type rawConfig struct {
	ModelType             string          `json:"model_type"`
	HiddenSize            int             `json:"hidden_size"`
	IntermediateSize      int             `json:"intermediate_size"`
	NumHiddenLayers       int             `json:"num_hidden_layers"`
	NumAttentionHeads     int             `json:"num_attention_heads"`
	NumKeyValueHeads      *int            `json:"num_key_value_heads"`
	HeadDim               *int            `json:"head_dim"`
	RMSNormEps            *float64        `json:"rms_norm_eps"`
	RopeTheta             *float64        `json:"rope_theta"`
	RopeScaling           json.RawMessage `json:"rope_scaling"`
	RopeParameters        json.RawMessage `json:"rope_parameters"` // transformers v5 spelling
	MaxPositionEmbeddings int             `json:"max_position_embeddings"`
	TieWordEmbeddings     *bool           `json:"tie_word_embeddings"`
	VocabSize             int             `json:"vocab_size"`
	AttentionBias         bool            `json:"attention_bias"`
	MLPBias               bool            `json:"mlp_bias"`
	SlidingWindow         *int            `json:"sliding_window"`
	UseSlidingWindow      bool            `json:"use_sliding_window"`
	MaxWindowLayers       *int            `json:"max_window_layers"`
	LayerTypes            []string        `json:"layer_types"`
	BOSTokenID            json.RawMessage `json:"bos_token_id"`
	EOSTokenID            json.RawMessage `json:"eos_token_id"`
	TorchDType            string          `json:"torch_dtype"`
	DType                 string          `json:"dtype"`
	HiddenAct             string          `json:"hidden_act"`

	keys map[string]json.RawMessage // every key, to tell null from absent
}

func (r *rawConfig) hasKey(k string) bool { _, ok := r.keys[k]; return ok }

// LoadConfig reads dir/config.json.
func LoadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	cfg, err := parseConfig(data)
	if err != nil {
		// err starts with "config.json: "
		return nil, fmt.Errorf("model: %s%c%w", dir, filepath.Separator, err)
	}
	return cfg, nil
}

// ParseConfig parses the contents of a config.json. Errors name the key.
func ParseConfig(data []byte) (*Config, error) {
	cfg, err := parseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	return cfg, nil
}

func parseConfig(data []byte) (*Config, error) {
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config.json: %v", err)
	}
	if err := json.Unmarshal(data, &raw.keys); err != nil {
		return nil, fmt.Errorf("config.json: %v", err)
	}
	fam, ok := families[raw.ModelType]
	if !ok {
		return nil, fmt.Errorf("config.json: unsupported model_type %q (supported: %s)", raw.ModelType, supportedTypes())
	}
	c := &Config{
		ModelType:    raw.ModelType,
		Hidden:       raw.HiddenSize,
		Intermediate: raw.IntermediateSize,
		Layers:       raw.NumHiddenLayers,
		Heads:        raw.NumAttentionHeads,
		Vocab:        raw.VocabSize,
		MaxPositions: raw.MaxPositionEmbeddings,
		RMSNormEps:   fam.defaultEps,
		RopeTheta:    fam.defaultTheta,
		QKNorm:       fam.qkNorm,
		QKVBias:      fam.qkvBiasAlways,
		TorchDType:   raw.TorchDType,
	}
	if c.TorchDType == "" {
		c.TorchDType = raw.DType
	}
	for _, f := range []struct {
		key string
		v   int
	}{{"hidden_size", c.Hidden}, {"intermediate_size", c.Intermediate}, {"num_hidden_layers", c.Layers},
		{"num_attention_heads", c.Heads}, {"vocab_size", c.Vocab}} {
		if f.v <= 0 {
			return nil, fmt.Errorf("config.json: %s = %d, want > 0", f.key, f.v)
		}
	}
	if raw.HiddenAct != "" && raw.HiddenAct != "silu" {
		return nil, fmt.Errorf("config.json: unsupported hidden_act %q (supported: silu)", raw.HiddenAct)
	}
	c.KVHeads = c.Heads
	if raw.NumKeyValueHeads != nil {
		c.KVHeads = *raw.NumKeyValueHeads
	}
	if c.KVHeads <= 0 || c.Heads%c.KVHeads != 0 {
		return nil, fmt.Errorf("config.json: num_key_value_heads = %d must divide num_attention_heads = %d", c.KVHeads, c.Heads)
	}
	switch {
	case raw.HeadDim != nil:
		c.HeadDim = *raw.HeadDim
	case fam.defaultHeadDim > 0:
		c.HeadDim = fam.defaultHeadDim
	default:
		c.HeadDim = c.Hidden / c.Heads
	}
	if c.HeadDim <= 0 || c.HeadDim%2 != 0 {
		return nil, fmt.Errorf("config.json: head_dim = %d, want a positive even number", c.HeadDim)
	}
	if raw.RMSNormEps != nil {
		c.RMSNormEps = *raw.RMSNormEps
	}
	if raw.TieWordEmbeddings != nil {
		c.TieEmbeddings = *raw.TieWordEmbeddings
	}
	if fam.attentionBiasKey && raw.AttentionBias {
		c.QKVBias, c.OBias = true, true
	}
	if fam.mlpBiasKey {
		c.MLPBias = raw.MLPBias
	}
	if raw.RopeTheta != nil {
		c.RopeTheta = *raw.RopeTheta
	}
	scaling := raw.RopeScaling
	if isNull(scaling) && !isNull(raw.RopeParameters) {
		scaling = raw.RopeParameters
		var p struct {
			Theta *float64 `json:"rope_theta"`
		}
		if err := json.Unmarshal(scaling, &p); err != nil {
			return nil, fmt.Errorf("config.json: rope_parameters: %v", err)
		}
		if p.Theta != nil {
			c.RopeTheta = *p.Theta
		}
	}
	if c.RopeTheta <= 0 {
		return nil, fmt.Errorf("config.json: rope_theta = %g, want > 0", c.RopeTheta)
	}
	var err error
	if c.Rope, err = parseRopeScaling(scaling); err != nil {
		return nil, err
	}
	if c.Windows, err = fam.window(&raw, c.Layers); err != nil {
		return nil, err
	}
	if c.BOS, err = tokenIDs("bos_token_id", raw.BOSTokenID); err != nil {
		return nil, err
	}
	if c.EOS, err = tokenIDs("eos_token_id", raw.EOSTokenID); err != nil {
		return nil, err
	}
	return c, nil
}

func isNull(m json.RawMessage) bool {
	m = bytes.TrimSpace(m)
	return len(m) == 0 || string(m) == "null"
}

// tokenIDs accepts null, an int or a list of ints (HF allows all three).
func tokenIDs(key string, m json.RawMessage) ([]int, error) {
	if isNull(m) {
		return nil, nil
	}
	var one int
	if err := json.Unmarshal(m, &one); err == nil {
		return []int{one}, nil
	}
	var many []int
	if err := json.Unmarshal(m, &many); err != nil {
		return nil, fmt.Errorf("config.json: %s = %s, want an int or a list of ints", key, m)
	}
	return many, nil
}

func parseRopeScaling(m json.RawMessage) (RopeScaling, error) {
	if isNull(m) {
		return RopeScaling{}, nil
	}
	var r struct {
		RopeType       string   `json:"rope_type"`
		Type           string   `json:"type"`
		Factor         *float64 `json:"factor"`
		LowFreqFactor  *float64 `json:"low_freq_factor"`
		HighFreqFactor *float64 `json:"high_freq_factor"`
		OriginalMax    *int     `json:"original_max_position_embeddings"`
	}
	if err := json.Unmarshal(m, &r); err != nil {
		return RopeScaling{}, fmt.Errorf("config.json: rope_scaling: %v", err)
	}
	typ := r.RopeType
	if typ == "" {
		typ = r.Type
	}
	missing := func(key string) error {
		return fmt.Errorf("config.json: rope_scaling: rope_type %q needs %s", typ, key)
	}
	switch typ {
	case "", "default":
		return RopeScaling{}, nil
	case "linear":
		if r.Factor == nil {
			return RopeScaling{}, missing("factor")
		}
		return RopeScaling{Type: typ, Factor: *r.Factor}, nil
	case "llama3":
		switch {
		case r.Factor == nil:
			return RopeScaling{}, missing("factor")
		case r.LowFreqFactor == nil:
			return RopeScaling{}, missing("low_freq_factor")
		case r.HighFreqFactor == nil:
			return RopeScaling{}, missing("high_freq_factor")
		case r.OriginalMax == nil:
			return RopeScaling{}, missing("original_max_position_embeddings")
		}
		if *r.HighFreqFactor == *r.LowFreqFactor {
			return RopeScaling{}, fmt.Errorf("config.json: rope_scaling: high_freq_factor = low_freq_factor = %g", *r.LowFreqFactor)
		}
		return RopeScaling{Type: typ, Factor: *r.Factor, LowFreqFactor: *r.LowFreqFactor,
			HighFreqFactor: *r.HighFreqFactor, OriginalMaxPosition: *r.OriginalMax}, nil
	}
	return RopeScaling{}, fmt.Errorf("config.json: rope_scaling: unsupported rope_type %q (supported: default, linear, llama3)", typ)
}

// InvFreq returns the RoPE inverse frequencies [HD/2] as transformers builds
// its float32 buffer: 1/theta^(2i/HD), then the rope_scaling adjustment
// (_compute_default_rope_parameters, _compute_linear_scaling_rope_parameters,
// _compute_llama3_parameters).
func (c *Config) InvFreq() []float32 {
	half := c.HeadDim / 2
	inv := make([]float32, half)
	for i := range inv {
		// torch: arange(0, dim, 2).float() / dim in fp32, base ** that in fp32.
		e := float32(2*i) / float32(c.HeadDim)
		inv[i] = float32(1 / float64(float32(math.Pow(c.RopeTheta, float64(e)))))
	}
	switch c.Rope.Type {
	case "linear":
		for i := range inv {
			inv[i] = float32(float64(inv[i]) / c.Rope.Factor)
		}
	case "llama3":
		r := c.Rope
		oldCtx := float64(r.OriginalMaxPosition)
		lowWavelen := oldCtx / r.LowFreqFactor
		highWavelen := oldCtx / r.HighFreqFactor
		for i, f32 := range inv {
			f := float64(f32)
			wavelen := 2 * math.Pi / f
			switch {
			case wavelen < highWavelen: // high frequency: kept
			case wavelen > lowWavelen: // low frequency: divided by factor
				inv[i] = float32(f / r.Factor)
			default: // in between: smooth interpolation
				smooth := (oldCtx/wavelen - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor)
				inv[i] = float32((1-smooth)*f/r.Factor + smooth*f)
			}
		}
	}
	return inv
}
