package model

import (
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model/safetensors"
)

// TensorSource yields checkpoint tensors by Hugging Face name. A
// *safetensors.Reader is one; tests and benchmarks build in-memory ones.
type TensorSource interface {
	Tensor(name string) (safetensors.Tensor, error)
}

// QuantSource is a TensorSource that also holds block-quantized matrices
// (GGUF Q8_0 … Q6_K), which a safetensors.Tensor can not describe. The
// binder asks it first for every matrix; ok false means the matrix is not
// quantized and is read through Tensor.
type QuantSource interface {
	TensorSource
	QuantWeight(name string) (w kernels.Weight, ok bool, err error)
}

// LoadOptions tunes loading.
type LoadOptions struct {
	// Backend computes the forward pass; nil picks kernels.Get("").
	Backend kernels.Backend
	// RopeFreqFactors, when set ([HD/2]), divide the inverse frequencies
	// the config implies, as llama.cpp applies a GGUF's rope_freqs tensor
	// (used for a Llama 3 GGUF whose rope_scaling parameters could not be
	// recovered from that tensor).
	RopeFreqFactors []float32
}

// Load opens dir/config.json and the safetensors checkpoint in dir (single file
// or sharded index, mmapped), binds and validates every tensor the config
// implies, and returns the model. Close releases the mapping.
func Load(dir string, opts LoadOptions) (*Model, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	r, err := safetensors.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	m, err := New(cfg, dirSource{r, dir}, opts)
	if err != nil {
		r.Close()
		return nil, err
	}
	m.closer = r
	return m, nil
}

type dirSource struct {
	r   *safetensors.Reader
	dir string
}

func (d dirSource) Tensor(name string) (safetensors.Tensor, error) {
	if !d.r.Has(name) {
		return safetensors.Tensor{}, fmt.Errorf("%s: missing tensor %q", d.dir, name)
	}
	return d.r.Tensor(name)
}

var weightDTypes = map[safetensors.DType]kernels.DType{
	safetensors.F32:  kernels.F32,
	safetensors.F16:  kernels.F16,
	safetensors.BF16: kernels.BF16,
}

// New builds a model from cfg and tensors from src. The returned model keeps
// views into the tensors' Data.
func New(cfg *Config, src TensorSource, opts LoadOptions) (*Model, error) {
	be := opts.Backend
	if be == nil {
		var err error
		if be, err = kernels.Get(""); err != nil {
			return nil, fmt.Errorf("model: %w", err)
		}
	}
	for _, op := range []kernels.Op{kernels.OpEmbedding, kernels.OpMatMul, kernels.OpRMSNorm, kernels.OpRoPE,
		kernels.OpAttention, kernels.OpSwiGLU, kernels.OpAdd, kernels.OpLogSoftmaxNLL} {
		if !be.Supports()[op] {
			return nil, fmt.Errorf("model: backend %s does not support op %v", be.Name(), op)
		}
	}
	c := cfg
	if len(c.Windows) != c.Layers {
		return nil, fmt.Errorf("model: config has %d layer windows for %d layers", len(c.Windows), c.Layers)
	}
	b := binder{src: src, cfg: c}
	C, I, V := c.Hidden, c.Intermediate, c.Vocab
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	why := func(keys ...string) string { return "from config.json " + c.explain(keys...) }

	m := &Model{Config: c, be: be, inv: c.InvFreq()}
	if f := opts.RopeFreqFactors; f != nil {
		if len(f) != len(m.inv) {
			return nil, fmt.Errorf("model: rope_freqs has %d factors, want head_dim/2 = %d", len(f), len(m.inv))
		}
		for i, v := range f {
			m.inv[i] /= v
		}
	}
	m.embed = b.matrix("model.embed_tokens.weight", V, C, why("vocab_size", "hidden_size"))
	m.norm = b.vector("model.norm.weight", C, why("hidden_size"))
	if c.TieEmbeddings {
		m.lmHead = m.embed
	} else {
		m.lmHead = b.matrix("lm_head.weight", V, C, why("vocab_size", "hidden_size"))
	}
	m.layers = make([]layer, c.Layers)
	for i := range m.layers {
		p := "model.layers." + strconv.Itoa(i) + "."
		l := &m.layers[i]
		l.window = c.Windows[i]
		l.inputNorm = b.vector(p+"input_layernorm.weight", C, why("hidden_size"))
		l.postNorm = b.vector(p+"post_attention_layernorm.weight", C, why("hidden_size"))
		l.q = b.matrix(p+"self_attn.q_proj.weight", qd, C, why("num_attention_heads", "head_dim", "hidden_size"))
		l.k = b.matrix(p+"self_attn.k_proj.weight", kvd, C, why("num_key_value_heads", "head_dim", "hidden_size"))
		l.v = b.matrix(p+"self_attn.v_proj.weight", kvd, C, why("num_key_value_heads", "head_dim", "hidden_size"))
		l.o = b.matrix(p+"self_attn.o_proj.weight", C, qd, why("hidden_size", "num_attention_heads", "head_dim"))
		if c.QKVBias {
			l.qBias = b.vector(p+"self_attn.q_proj.bias", qd, why("num_attention_heads", "head_dim"))
			l.kBias = b.vector(p+"self_attn.k_proj.bias", kvd, why("num_key_value_heads", "head_dim"))
			l.vBias = b.vector(p+"self_attn.v_proj.bias", kvd, why("num_key_value_heads", "head_dim"))
		}
		if c.OBias {
			l.oBias = b.vector(p+"self_attn.o_proj.bias", C, why("hidden_size"))
		}
		if c.QKNorm {
			l.qNorm = b.vector(p+"self_attn.q_norm.weight", c.HeadDim, why("head_dim"))
			l.kNorm = b.vector(p+"self_attn.k_norm.weight", c.HeadDim, why("head_dim"))
		}
		l.gate = b.matrix(p+"mlp.gate_proj.weight", I, C, why("intermediate_size", "hidden_size"))
		l.up = b.matrix(p+"mlp.up_proj.weight", I, C, why("intermediate_size", "hidden_size"))
		l.down = b.matrix(p+"mlp.down_proj.weight", C, I, why("hidden_size", "intermediate_size"))
		if c.MLPBias {
			l.gateBias = b.vector(p+"mlp.gate_proj.bias", I, why("intermediate_size"))
			l.upBias = b.vector(p+"mlp.up_proj.bias", I, why("intermediate_size"))
			l.downBias = b.vector(p+"mlp.down_proj.bias", C, why("hidden_size"))
		}
		if b.err != nil {
			break
		}
	}
	if b.err != nil {
		return nil, b.err
	}
	return m, nil
}

// explain renders the config values a shape derives from.
func (c *Config) explain(keys ...string) string {
	s := ""
	for i, k := range keys {
		var v int
		switch k {
		case "hidden_size":
			v = c.Hidden
		case "intermediate_size":
			v = c.Intermediate
		case "num_attention_heads":
			v = c.Heads
		case "num_key_value_heads":
			v = c.KVHeads
		case "head_dim":
			v = c.HeadDim
		case "vocab_size":
			v = c.Vocab
		}
		if i > 0 {
			s += ", "
		}
		s += k + "=" + strconv.Itoa(v)
	}
	return s
}

// binder fetches tensors and keeps the first error, so New reads as a list.
type binder struct {
	src TensorSource
	cfg *Config
	err error
}

func (b *binder) get(name string, shape []int, why string) (safetensors.Tensor, kernels.DType, bool) {
	if b.err != nil {
		return safetensors.Tensor{}, 0, false
	}
	t, err := b.src.Tensor(name)
	if err != nil {
		b.err = fmt.Errorf("model: %w", err)
		return t, 0, false
	}
	dt, ok := weightDTypes[t.DType]
	if !ok {
		b.err = fmt.Errorf("model: %s: dtype %s unsupported (supported: BF16, F16, F32)", name, t.DType)
		return t, 0, false
	}
	if !slices.Equal(t.Shape, shape) {
		b.err = fmt.Errorf("model: %s: shape %v, want %v (%s)", name, t.Shape, shape, why)
		return t, 0, false
	}
	if len(t.Data) != t.NumElements()*t.DType.Size() {
		b.err = fmt.Errorf("model: %s: %d data bytes, want %d for %s %v", name, len(t.Data), t.NumElements()*t.DType.Size(), t.DType, t.Shape)
		return t, 0, false
	}
	return t, dt, true
}

func (b *binder) matrix(name string, rows, cols int, why string) kernels.Weight {
	if qs, isQ := b.src.(QuantSource); isQ && b.err == nil {
		w, ok, err := qs.QuantWeight(name)
		switch {
		case err != nil:
			b.err = fmt.Errorf("model: %w", err)
			return kernels.Weight{}
		case ok && (w.Rows != rows || w.Cols != cols):
			b.err = fmt.Errorf("model: %s: shape [%d %d], want [%d %d] (%s)", name, w.Rows, w.Cols, rows, cols, why)
			return kernels.Weight{}
		case ok:
			if err := w.Check(); err != nil {
				b.err = fmt.Errorf("model: %s: %w", name, err)
				return kernels.Weight{}
			}
			return w
		}
	}
	t, dt, ok := b.get(name, []int{rows, cols}, why)
	if !ok {
		return kernels.Weight{}
	}
	return kernels.Weight{DType: dt, Data: t.Data, Rows: rows, Cols: cols}
}

func (b *binder) vector(name string, n int, why string) []float32 {
	t, _, ok := b.get(name, []int{n}, why)
	if !ok {
		return nil
	}
	v := make([]float32, n)
	if err := safetensors.ToFloat32(v, t.Data, t.DType); err != nil {
		b.err = fmt.Errorf("model: %s: %w", name, err)
		return nil
	}
	return v
}

// SetCloser hands the model what Close must release: the mapping of a
// checkpoint that a loader outside this package (GGUF, quantized folders)
// opened and bound through New.
func (m *Model) SetCloser(c io.Closer) { m.closer = c }
