package ggufmodel

import (
	"encoding/binary"
	"fmt"
	"math"
	"regexp"
	"strconv"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/gguf"
)

// hfBlockNames is the inverse of the exporter's (and gguf-py's
// tensor_mapping.py) per-block names.
var hfBlockNames = map[string]string{
	"attn_norm":   "input_layernorm",
	"attn_q":      "self_attn.q_proj",
	"attn_k":      "self_attn.k_proj",
	"attn_v":      "self_attn.v_proj",
	"attn_output": "self_attn.o_proj",
	"attn_q_norm": "self_attn.q_norm",
	"attn_k_norm": "self_attn.k_norm",
	"ffn_norm":    "post_attention_layernorm",
	"ffn_gate":    "mlp.gate_proj",
	"ffn_up":      "mlp.up_proj",
	"ffn_down":    "mlp.down_proj",
}

var hfGlobalNames = map[string]string{
	"token_embd":  "model.embed_tokens",
	"output_norm": "model.norm",
	"output":      "lm_head",
}

var blkRe = regexp.MustCompile(`^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$`)

// hfName maps a GGUF tensor name to its Hugging Face name.
func hfName(g string) (string, bool) {
	if m := blkRe.FindStringSubmatch(g); m != nil {
		n, err := strconv.Atoi(m[1])
		if h, ok := hfBlockNames[m[2]]; ok && err == nil {
			return "model.layers." + strconv.Itoa(n) + "." + h + "." + m[3], true
		}
		return "", false
	}
	for _, suffix := range []string{".weight", ".bias"} {
		if len(g) > len(suffix) && g[len(g)-len(suffix):] == suffix {
			if h, ok := hfGlobalNames[g[:len(g)-len(suffix)]]; ok {
				return h + suffix, true
			}
		}
	}
	return "", false
}

// source serves the GGUF's tensors under their HF names (model.QuantSource).
type source struct {
	f         *file
	byHF      map[string]gguf.TensorInfo
	cfg       *model.Config
	ropeFreqs []float32 // rope_freqs.weight, nil when absent
	arch      string
}

var _ model.QuantSource = (*source)(nil)

func newSource(f *file) (*source, error) {
	s := &source{f: f, byHF: map[string]gguf.TensorInfo{}}
	s.arch, _, _ = meta{f.gf, f.path}.str("general.architecture")
	for _, t := range f.gf.Tensors {
		if t.Name == "rope_freqs.weight" {
			if t.Type != gguf.TypeF32 || len(t.Shape) != 1 {
				return nil, fmt.Errorf("ggufmodel: %s: rope_freqs.weight: %s %v, want 1-D F32", f.path, t.Type, t.Shape)
			}
			b, err := f.tensorData(t)
			if err != nil {
				return nil, err
			}
			s.ropeFreqs = make([]float32, t.Shape[0])
			for i := range s.ropeFreqs {
				s.ropeFreqs[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			}
			continue
		}
		h, ok := hfName(t.Name)
		if !ok {
			return nil, fmt.Errorf("ggufmodel: %s: tensor %q has no Hugging Face name (supported: token_embd, output_norm, output, rope_freqs, blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,attn_q_norm,attn_k_norm,ffn_norm,ffn_gate,ffn_up,ffn_down})", f.path, t.Name)
		}
		s.byHF[h] = t
	}
	return s, nil
}

var floatTypes = map[gguf.Type]safetensors.DType{gguf.TypeF32: safetensors.F32, gguf.TypeF16: safetensors.F16, gguf.TypeBF16: safetensors.BF16}

func (s *source) info(name string) (gguf.TensorInfo, error) {
	t, ok := s.byHF[name]
	if !ok {
		g := name
		return t, fmt.Errorf("%s: missing tensor for %q", s.f.path, g)
	}
	return t, nil
}

// Tensor returns an F32/F16/BF16 tensor (the norms, biases and unquantized
// matrices).
func (s *source) Tensor(name string) (safetensors.Tensor, error) {
	t, err := s.info(name)
	if err != nil {
		return safetensors.Tensor{}, err
	}
	dt, ok := floatTypes[t.Type]
	if !ok {
		return safetensors.Tensor{}, fmt.Errorf("%s: tensor %q (%s): type %s where a float tensor is needed", s.f.path, t.Name, name, t.Type)
	}
	data, err := s.f.tensorData(t)
	if err != nil {
		return safetensors.Tensor{}, err
	}
	if len(t.Shape) == 0 {
		return safetensors.Tensor{}, fmt.Errorf("%s: tensor %q: no shape", s.f.path, t.Name)
	}
	if data, err = s.unpermute(t, data, dt.Size()*t.Shape[len(t.Shape)-1]); err != nil {
		return safetensors.Tensor{}, err
	}
	return safetensors.Tensor{Name: name, DType: dt, Shape: t.Shape, Data: data}, nil
}

// QuantWeight returns a block-quantized matrix as a kernels.Weight viewing
// the mapping (ok false for the float types).
func (s *source) QuantWeight(name string) (kernels.Weight, bool, error) {
	t, err := s.info(name)
	if err != nil {
		return kernels.Weight{}, false, err
	}
	if _, isFloat := floatTypes[t.Type]; isFloat {
		return kernels.Weight{}, false, nil
	}
	dt, ok := kernels.DTypeByName(t.Type.String())
	if !ok || !dt.Quantized() {
		return kernels.Weight{}, false, fmt.Errorf("%s: tensor %q: type %s not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)", s.f.path, t.Name, t.Type)
	}
	if len(t.Shape) != 2 {
		return kernels.Weight{}, false, fmt.Errorf("%s: tensor %q: %s shape %v, want 2-D", s.f.path, t.Name, t.Type, t.Shape)
	}
	w := kernels.Weight{DType: dt, Rows: t.Shape[0], Cols: t.Shape[1]}
	rb := dt.RowBytes(w.Cols)
	if rb < 0 {
		return kernels.Weight{}, false, fmt.Errorf("%s: tensor %q: %d columns is not a whole number of %s blocks", s.f.path, t.Name, w.Cols, dt)
	}
	data, err := s.f.tensorData(t)
	if err != nil {
		return kernels.Weight{}, false, err
	}
	if len(data) != rb*w.Rows {
		return kernels.Weight{}, false, fmt.Errorf("%s: tensor %q: %d bytes, want %d for %s %v", s.f.path, t.Name, len(data), rb*w.Rows, dt, t.Shape)
	}
	if w.Data, err = s.unpermute(t, data, rb); err != nil {
		return kernels.Weight{}, false, err
	}
	return w, true, nil
}

// unpermute undoes, for a llama file's attn_q/attn_k, the converter's
// LlamaModel.permute: within each head, GGUF row r holds HF row
// h*2*half + (r%2)*half + (r%(2*half))/2. Rows move whole (rowBytes each,
// blocks included), so this is exact for every type. A 1-D tensor (a bias)
// moves elements. Other tensors are returned as they are.
func (s *source) unpermute(t gguf.TensorInfo, data []byte, rowBytes int) ([]byte, error) {
	if s.arch != "llama" || s.cfg == nil {
		return data, nil
	}
	m := blkRe.FindStringSubmatch(t.Name)
	if m == nil || (m[2] != "attn_q" && m[2] != "attn_k") {
		return data, nil
	}
	nHead := s.cfg.Heads
	if m[2] == "attn_k" {
		nHead = s.cfg.KVHeads
	}
	n := t.Shape[0]
	if len(t.Shape) == 1 {
		rowBytes = len(data) / max(n, 1)
	}
	if n%(2*nHead) != 0 || rowBytes*n != len(data) {
		return nil, fmt.Errorf("%s: tensor %q: %d rows do not split into %d heads of two halves", s.f.path, t.Name, n, nHead)
	}
	half := n / nHead / 2
	out := make([]byte, len(data))
	for r := 0; r < n; r++ {
		h, rem := r/(2*half), r%(2*half)
		src := h*2*half + rem%2*half + rem/2
		copy(out[src*rowBytes:(src+1)*rowBytes], data[r*rowBytes:(r+1)*rowBytes])
	}
	return out, nil
}
