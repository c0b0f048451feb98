package quantize

import (
	"fmt"
	"strings"

	"github.com/tunellm/tune/quantize/gguf"
)

// Mix is one of llama.cpp's named file types (llama-quantize's "Q4_K_M",
// ...): a default tensor type plus per-tensor exceptions. FileType is the
// LLAMA_FTYPE_* value written to general.file_type.
type Mix struct {
	Name     string
	FileType uint32
	Default  gguf.Type
}

// mixes are llama.h's llama_ftype values with llama-quant.cpp's
// llama_ftype_get_default_type.
var mixes = []Mix{
	{"F32", 0, gguf.TypeF32},
	{"F16", 1, gguf.TypeF16},
	{"Q4_0", 2, gguf.TypeQ4_0},
	{"Q4_1", 3, gguf.TypeQ4_1},
	{"Q8_0", 7, gguf.TypeQ8_0},
	{"Q5_0", 8, gguf.TypeQ5_0},
	{"Q5_1", 9, gguf.TypeQ5_1},
	{"Q2_K", 10, gguf.TypeQ2_K},
	{"Q3_K_S", 11, gguf.TypeQ3_K},
	{"Q3_K_M", 12, gguf.TypeQ3_K},
	{"Q3_K_L", 13, gguf.TypeQ3_K},
	{"Q4_K_S", 14, gguf.TypeQ4_K},
	{"Q4_K_M", 15, gguf.TypeQ4_K},
	{"Q5_K_S", 16, gguf.TypeQ5_K},
	{"Q5_K_M", 17, gguf.TypeQ5_K},
	{"Q6_K", 18, gguf.TypeQ6_K},
}

// MixNames lists the accepted mix names.
func MixNames() []string {
	out := make([]string, len(mixes))
	for i, m := range mixes {
		out[i] = m.Name
	}
	return out
}

// ParseMix maps a name ("q4_k_m", "Q8_0", "f16") to its mix.
func ParseMix(name string) (Mix, error) {
	for _, m := range mixes {
		if strings.EqualFold(m.Name, name) {
			return m, nil
		}
	}
	return Mix{}, fmt.Errorf("quantize: unknown type %q, want one of %s", name, strings.Join(MixNames(), ", "))
}

// MixModel is what the per-tensor rules read from the model.
type MixModel struct {
	NLayer  int
	NHead   int
	NHeadKV int
	Tied    bool // no output.weight: token_embd doubles as the output matrix
}

// TensorChoice is the type picked for one tensor; Fallback, when not empty,
// says why the mix's choice was replaced (a row length that is not a whole
// number of blocks), as llama.cpp warns.
type TensorChoice struct {
	Type     gguf.Type
	Fallback string
}

// TensorType mirrors llama-quant.cpp (tensor_allows_quantization,
// llama_tensor_get_type_impl, tensor_type_fallback) for dense decoder models
// without an importance matrix: name is the GGUF tensor name, shape the HF
// shape (the last dimension is ggml's ne[0], the row), layer its block or -1.
// src is the type the tensor would have unquantized (F32, or F16 for
// matrices of an F16 file). Not mirrored: the 70B-only attn_v bump, MoE,
// Falcon and the IQ mixes.
func (m Mix) TensorType(name string, shape []int, layer int, mm MixModel) TensorChoice {
	src := gguf.TypeF32
	quantizable := len(shape) >= 2 && strings.HasSuffix(name, "weight") && !strings.Contains(name, "_norm.weight")
	if !quantizable {
		return TensorChoice{Type: src}
	}
	if m.Default == gguf.TypeF32 || m.Default == gguf.TypeF16 {
		return TensorChoice{Type: m.Default}
	}
	ne0 := shape[len(shape)-1]
	blk := func(t gguf.Type) int {
		tr, _ := TypeTraits(t)
		return tr.BlockElems
	}
	// use_more_bits: the first and last eighth of the layers and every
	// third one between get more bits.
	moreBits := func(i, n int) bool { return i < n/8 || i >= 7*n/8 || (i-n/8)%3 == 2 }
	gqa := 1
	if mm.NHeadKV > 0 {
		gqa = mm.NHead / mm.NHeadKV
	}
	t := m.Default
	cat := tensorCategory(name)
	switch {
	case cat == "output" || (mm.Tied && cat == "token_embd"):
		if m.Default == gguf.TypeQ8_0 || ne0%blk(m.Default) != 0 {
			t = gguf.TypeQ8_0
		} else {
			t = gguf.TypeQ6_K
		}
	case cat == "token_embd":
	case cat == "attn_v":
		switch m.Name {
		case "Q2_K":
			t = gguf.TypeQ3_K
			if gqa >= 4 {
				t = gguf.TypeQ4_K
			}
		case "Q3_K_M":
			t = gguf.TypeQ4_K
			if layer < 2 {
				t = gguf.TypeQ5_K
			}
		case "Q3_K_L":
			t = gguf.TypeQ5_K
		case "Q4_K_M", "Q5_K_M":
			if moreBits(layer, mm.NLayer) {
				t = gguf.TypeQ6_K
			}
		case "Q4_K_S":
			if layer < 4 {
				t = gguf.TypeQ5_K
			}
		}
	case cat == "ffn_down":
		n := mm.NLayer
		switch m.Name {
		case "Q2_K":
			t = gguf.TypeQ3_K
		case "Q3_K_M":
			t = gguf.TypeQ4_K // non-Falcon: Q4_K whether or not use_more_bits
			if layer < n/16 {
				t = gguf.TypeQ5_K
			}
		case "Q3_K_L":
			t = gguf.TypeQ5_K
		case "Q4_K_M", "Q5_K_M":
			if moreBits(layer, n) {
				t = gguf.TypeQ6_K
			}
		case "Q4_K_S":
			if layer < n/8 {
				t = gguf.TypeQ5_K
			}
		}
	case cat == "attn_output":
		switch m.Name {
		case "Q2_K":
			t = gguf.TypeQ3_K
		case "Q3_K_M":
			t = gguf.TypeQ4_K
		case "Q3_K_L":
			t = gguf.TypeQ5_K
		}
	}
	if ne0%blk(t) == 0 {
		return TensorChoice{Type: t}
	}
	fb := gguf.TypeF16
	switch t {
	case gguf.TypeQ2_K, gguf.TypeQ3_K:
		fb = gguf.TypeQ4_0
	case gguf.TypeQ4_K:
		fb = gguf.TypeQ5_0
	case gguf.TypeQ5_K:
		fb = gguf.TypeQ5_1
	case gguf.TypeQ6_K:
		fb = gguf.TypeQ8_0
	}
	if fb != gguf.TypeF16 && ne0%blk(fb) != 0 {
		fb = gguf.TypeF16
	}
	return TensorChoice{Type: fb, Fallback: fmt.Sprintf("%s: row of %d not divisible by %d (required for %s), falling back to %s", name, ne0, blk(t), t, fb)}
}

// tensorCategory is llama-quant.cpp's tensor_get_category for the names
// ExportGGUF writes.
func tensorCategory(name string) string {
	switch {
	case name == "output.weight":
		return "output"
	case name == "token_embd.weight":
		return "token_embd"
	}
	for _, c := range []string{"attn_v", "attn_k", "attn_q", "attn_output"} {
		if strings.Contains(name, c+".weight") {
			return c
		}
	}
	for _, c := range []string{"ffn_up", "ffn_gate", "ffn_down"} {
		if strings.Contains(name, c) {
			return c
		}
	}
	return "other"
}
