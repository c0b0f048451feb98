package wq

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
)

// Config is what a quantized folder's quantization_config says.
type Config struct {
	Layout string // LayoutGPTQ or LayoutCompressed
	Scheme Scheme
	V2     bool // gptq checkpoint_format "gptq_v2": zero points stored as they are
}

// ParseQuantizationConfig reads the quantization_config object of a
// config.json (the whole file's bytes). Only weight-only integer schemes of
// 4 or 8 bits are accepted.
func ParseQuantizationConfig(configJSON []byte) (*Config, error) {
	var top struct {
		QC *json.RawMessage `json:"quantization_config"`
	}
	if err := json.Unmarshal(configJSON, &top); err != nil {
		return nil, fmt.Errorf("wq: config.json: %v", err)
	}
	if top.QC == nil {
		return nil, fmt.Errorf("wq: config.json: no quantization_config")
	}
	var qc struct {
		QuantMethod      string `json:"quant_method"`
		Bits             *int   `json:"bits"`
		GroupSize        *int   `json:"group_size"`
		Sym              *bool  `json:"sym"`
		CheckpointFormat string `json:"checkpoint_format"`
		Format           string `json:"format"`
		ConfigGroups     map[string]struct {
			Weights *struct {
				NumBits   int    `json:"num_bits"`
				Type      string `json:"type"`
				Symmetric bool   `json:"symmetric"`
				Strategy  string `json:"strategy"`
				GroupSize *int   `json:"group_size"`
			} `json:"weights"`
			InputActivations json.RawMessage `json:"input_activations"`
		} `json:"config_groups"`
	}
	if err := json.Unmarshal(*top.QC, &qc); err != nil {
		return nil, fmt.Errorf("wq: config.json: quantization_config: %v", err)
	}
	var c Config
	switch qc.QuantMethod {
	case "gptq":
		c.Layout = LayoutGPTQ
		switch qc.CheckpointFormat {
		case "", "gptq":
		case "gptq_v2":
			c.V2 = true
		default:
			return nil, fmt.Errorf("wq: config.json: quantization_config.checkpoint_format %q, want gptq or gptq_v2", qc.CheckpointFormat)
		}
		if qc.Bits == nil || qc.GroupSize == nil {
			return nil, fmt.Errorf("wq: config.json: quantization_config needs bits and group_size")
		}
		c.Scheme = Scheme{Bits: *qc.Bits, GroupSize: *qc.GroupSize, Sym: qc.Sym == nil || *qc.Sym}
		c.Scheme.V1Zeros = !c.Scheme.Sym && !c.V2
	case "compressed-tensors":
		c.Layout = LayoutCompressed
		if qc.Format != "pack-quantized" {
			return nil, fmt.Errorf("wq: config.json: quantization_config.format %q, want pack-quantized", qc.Format)
		}
		if len(qc.ConfigGroups) != 1 {
			return nil, fmt.Errorf("wq: config.json: quantization_config has %d config_groups, want 1", len(qc.ConfigGroups))
		}
		for name, g := range qc.ConfigGroups {
			w := g.Weights
			if w == nil || w.Type != "int" {
				return nil, fmt.Errorf("wq: config.json: config_groups.%s.weights: want integer weights", name)
			}
			if a := strings.TrimSpace(string(g.InputActivations)); a != "" && a != "null" {
				return nil, fmt.Errorf("wq: config.json: config_groups.%s: input_activations are quantized; only weight-only schemes are supported", name)
			}
			c.Scheme = Scheme{Bits: w.NumBits, Sym: w.Symmetric, GroupSize: -1}
			switch w.Strategy {
			case "channel":
			case "group":
				if w.GroupSize == nil {
					return nil, fmt.Errorf("wq: config.json: config_groups.%s.weights: strategy group without group_size", name)
				}
				c.Scheme.GroupSize = *w.GroupSize
			default:
				return nil, fmt.Errorf("wq: config.json: config_groups.%s.weights.strategy %q, want group or channel", name, w.Strategy)
			}
		}
	default:
		return nil, fmt.Errorf("wq: config.json: quantization_config.quant_method %q, want gptq or compressed-tensors", qc.QuantMethod)
	}
	if err := c.Scheme.Check(0); err != nil {
		return nil, fmt.Errorf("wq: config.json: quantization_config: %w", err)
	}
	return &c, nil
}

// IsQuantizedFolder reports whether dir is a model folder whose config.json
// has a quantization_config this package reads.
func IsQuantizedFolder(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return false
	}
	_, err = ParseQuantizationConfig(b)
	return err == nil
}

// Folder is an open quantized model folder.
type Folder struct {
	Config
	dir string
	r   *safetensors.Reader
}

// OpenFolder opens a quantized folder (either layout).
func OpenFolder(dir string) (*Folder, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("wq: %w", err)
	}
	c, err := ParseQuantizationConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	r, err := safetensors.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("wq: %w", err)
	}
	return &Folder{Config: *c, dir: dir, r: r}, nil
}

// Close releases the mapping; tensors handed out by QTensor stay valid,
// those by Raw do not.
func (f *Folder) Close() error { return f.r.Close() }

// Raw is a stored tensor as it is in the files.
func (f *Folder) Raw(name string) (safetensors.Tensor, error) { return f.r.Tensor(name) }

// Names lists the stored tensors.
func (f *Folder) Names() []string { return f.r.Names() }

// IsQuantized reports whether weightName (<prefix>.weight) is stored quantized.
func (f *Folder) IsQuantized(weightName string) bool {
	p := Prefix(weightName)
	if f.Layout == LayoutGPTQ {
		return f.r.Has(p + ".qweight")
	}
	return f.r.Has(p + ".weight_packed")
}

func (f *Folder) opt(name string) (*safetensors.Tensor, error) {
	if !f.r.Has(name) {
		return nil, nil
	}
	t, err := f.r.Tensor(name)
	return &t, err
}

func (f *Folder) need(names ...string) ([]safetensors.Tensor, error) {
	out := make([]safetensors.Tensor, len(names))
	for i, n := range names {
		if !f.r.Has(n) {
			return nil, fmt.Errorf("wq: %s: missing tensor %q", f.dir, n)
		}
		t, err := f.r.Tensor(n)
		if err != nil {
			return nil, fmt.Errorf("wq: %w", err)
		}
		out[i] = t
	}
	return out, nil
}

// QTensor decodes the quantized linear weightName (<prefix>.weight).
func (f *Folder) QTensor(weightName string) (*QTensor, error) {
	p := Prefix(weightName)
	if f.Layout == LayoutGPTQ {
		ts, err := f.need(p+".qweight", p+".qzeros", p+".scales")
		if err != nil {
			return nil, err
		}
		g, err := f.opt(p + ".g_idx")
		if err != nil {
			return nil, fmt.Errorf("wq: %w", err)
		}
		return DecodeGPTQ(p, f.Scheme, f.V2, ts[0], ts[1], ts[2], g)
	}
	ts, err := f.need(p+".weight_packed", p+".weight_scale", p+".weight_shape")
	if err != nil {
		return nil, err
	}
	zp, err := f.opt(p + ".weight_zero_point")
	if err != nil {
		return nil, fmt.Errorf("wq: %w", err)
	}
	g, err := f.opt(p + ".weight_g_idx")
	if err != nil {
		return nil, fmt.Errorf("wq: %w", err)
	}
	return DecodeCompressed(p, f.Scheme, ts[0], ts[1], ts[2], zp, g)
}

// Tensor is a model.TensorSource over the folder: a quantized linear's
// weight comes back dequantized to F32 (a new buffer), anything else as
// stored (a view into the mapping).
func (f *Folder) Tensor(name string) (safetensors.Tensor, error) {
	if strings.HasSuffix(name, ".weight") && f.IsQuantized(name) {
		t, err := f.QTensor(name)
		if err != nil {
			return safetensors.Tensor{}, err
		}
		w := t.Dequantize()
		b := make([]byte, 4*len(w))
		for i, v := range w {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
		return safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: []int{t.Rows, t.Cols}, Data: b}, nil
	}
	if !f.r.Has(name) {
		return safetensors.Tensor{}, fmt.Errorf("%s: missing tensor %q", f.dir, name)
	}
	return f.r.Tensor(name)
}

// copySource copies dense tensors out of the mapping so the folder can be
// closed once the model is built.
type copySource struct{ f *Folder }

func (c copySource) Tensor(name string) (safetensors.Tensor, error) {
	t, err := c.f.Tensor(name)
	if err != nil || t.DType == safetensors.F32 && c.f.IsQuantized(name) {
		return t, err
	}
	t.Data = append([]byte(nil), t.Data...)
	return t, nil
}

// LoadModel loads a quantized folder (either layout) for evaluation. Each
// quantized linear stays quantized in memory as the integer blocks of
// kernels/qblock (the stored codes, fp16 scales and zero points: about
// bits/8 bytes per weight, so an INT4 8B model evaluates in ~5 GB), and the
// matmuls dequantize it block by block to exactly what the layout's loaders
// compute (scale*(q-zero)): the logits equal those of the model dequantized
// to F32 beforehand (LoadModelDense), bit for bit in batched passes. A
// linear the blocks cannot hold (act-order g_idx, a group that does not
// tile) is dequantized to F32 instead. Everything else is used as stored,
// from the mapping the model keeps until Close; a tied or untied lm_head
// follows config.json as model.Load does.
func LoadModel(dir string, opts model.LoadOptions) (*model.Model, error) {
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	f, err := OpenFolder(dir)
	if err != nil {
		return nil, err
	}
	m, err := model.New(cfg, blockSource{f}, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	m.SetCloser(f)
	return m, nil
}

// LoadModelDense is LoadModel with every quantized linear dequantized to
// F32 (4 bytes per weight): the reference LoadModel's blocks are checked
// against.
func LoadModelDense(dir string, opts model.LoadOptions) (*model.Model, error) {
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	f, err := OpenFolder(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return model.New(cfg, copySource{f}, opts)
}

// IntLinear is q as model.IntWeight takes it.
func IntLinear(q *QTensor) model.IntLinear {
	return model.IntLinear{Name: q.Name, Rows: q.Rows, Cols: q.Cols, Bits: q.Scheme.Bits, GroupSize: q.Scheme.GroupSize,
		Q: q.Q, Scales: q.Scales, Zeros: q.Zeros, GIdx: q.GIdx}
}

// blockSource serves a folder's quantized linears as integer blocks, and
// as F32 (through Tensor) those the blocks cannot hold.
type blockSource struct{ f *Folder }

var _ model.QuantSource = blockSource{}

func (s blockSource) Tensor(name string) (safetensors.Tensor, error) { return s.f.Tensor(name) }

func (s blockSource) QuantWeight(name string) (kernels.Weight, bool, error) {
	if !strings.HasSuffix(name, ".weight") || !s.f.IsQuantized(name) {
		return kernels.Weight{}, false, nil
	}
	q, err := s.f.QTensor(name)
	if err != nil {
		return kernels.Weight{}, false, err
	}
	w, err := model.IntWeight(IntLinear(q))
	if err != nil {
		return kernels.Weight{}, false, nil // act-order or an odd group: F32 through Tensor
	}
	return w, true, nil
}
