package export

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/quantize/gguf"
)

// LoRAOptions configure WriteLoRAGGUF.
type LoRAOptions struct {
	Type  string // "f32" (default, as convert_lora_to_gguf.py) or "f16"
	Force bool   // replace an existing output file
}

// LoRAReport summarizes a written adapter file.
type LoRAReport struct {
	Path         string  `json:"path"`
	Architecture string  `json:"architecture"`
	Type         string  `json:"type"`
	Pairs        int     `json:"pairs"`
	Alpha        float64 `json:"alpha"` // adapter.lora.alpha
	Ranks        []int   `json:"ranks"` // distinct ranks
	RSLoRA       bool    `json:"rslora"`
	Patterns     bool    `json:"patterns"` // rank_pattern or alpha_pattern entries were used
	// Folded is true when some lora_b was rescaled so that llama.cpp's
	// alpha/rank equals PEFT's scaling (rsLoRA, per-module alpha).
	Folded bool  `json:"folded"`
	Bytes  int64 `json:"bytes"`
}

// ggufArch is the llama.cpp architecture of a model_type and whether its q/k
// rows are permuted (LlamaModel.permute): convert_hf_to_gguf.py maps
// MistralForCausalLM to the llama architecture too.
func ggufArch(modelType string) (arch string, permute bool, err error) {
	switch modelType {
	case "qwen3", "qwen2":
		return modelType, false, nil
	case "llama", "mistral":
		return "llama", true, nil
	}
	return "", false, fmt.Errorf("model_type %q not supported, want qwen3, qwen2, llama or mistral", modelType)
}

// WriteLoRAGGUF writes the PEFT adapter in adapterDir, trained on the base
// model folder baseDir, as a llama.cpp LoRA adapter file, the way llama.cpp's
// convert_lora_to_gguf.py writes it: general.type "adapter", adapter.type
// "lora", adapter.lora.alpha, the base's architecture, and for each adapted
// base tensor W (GGUF name, e.g. blk.3.attn_q.weight) the pair
// "<W>.lora_a" [R,C] and "<W>.lora_b" [OC,R] (numpy order; ggml ne reversed).
// For the llama architecture lora_b's rows get the base's q/k permutation
// (the converter permutes B·A through LoraTorchTensor, which touches B only).
//
// llama.cpp scales each pair by alpha/R with one alpha per file
// (llama_adapter_lora_weight::get_scale, R = lora_b's ne[0]) and knows
// neither rsLoRA nor per-module alphas, so each lora_b is multiplied by
// scaling·R/alpha, scaling being PEFT's for that module (alpha_m/R, or
// alpha_m/√R with use_rslora): llama.cpp's delta then equals PEFT's. Plain
// adapters get a factor of exactly 1.
func WriteLoRAGGUF(adapterDir, baseDir, outPath string, opts LoRAOptions) (*LoRAReport, error) {
	typ := gguf.TypeF32
	switch opts.Type {
	case "", "f32":
		opts.Type = "f32"
	case "f16":
		typ = gguf.TypeF16
	default:
		return nil, fmt.Errorf("export: gguf-lora: type %q not supported, want f32 or f16", opts.Type)
	}
	if !opts.Force {
		if _, err := os.Stat(outPath); err == nil {
			return nil, fmt.Errorf("export: %s exists (use --force to replace it)", outPath)
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("export: %w", err)
		}
	}
	mc, err := model.LoadConfig(baseDir)
	if err != nil {
		return nil, err
	}
	arch, permute, err := ggufArch(mc.ModelType)
	if err != nil {
		return nil, fmt.Errorf("export: %s: %v", filepath.Join(baseDir, "config.json"), err)
	}
	ad, err := ReadAdapter(adapterDir, mc)
	if err != nil {
		return nil, err
	}
	cfg := ad.Config
	rep := &LoRAReport{Path: outPath, Architecture: arch, Type: opts.Type, Pairs: len(ad.Pairs), Alpha: cfg.Alpha,
		RSLoRA: cfg.RSLoRA, Patterns: len(cfg.RankPattern)+len(cfg.AlphaPattern) > 0}
	seenR := map[int]bool{}

	w := gguf.NewWriter(outPath)
	for i := range ad.Pairs {
		p := &ad.Pairs[i]
		if !seenR[p.R] {
			seenR[p.R] = true
			rep.Ranks = append(rep.Ranks, p.R)
		}
		name, _, _, err := quantize.GGUFTensorName(p.HF)
		if err != nil {
			w.Abort()
			return nil, fmt.Errorf("export: %s: %v", adapterDir, err)
		}
		// factor = scaling·R/alpha, written so that a plain adapter gets 1
		// exactly: alpha_m/alpha, times √R with rsLoRA.
		factor := p.Alpha / cfg.Alpha
		if cfg.RSLoRA {
			factor *= math.Sqrt(float64(p.R))
		}
		if factor != 1 {
			rep.Folded = true
		}
		b := p.B
		if factor != 1 || permute {
			b = make([]float32, len(p.B))
			perm := identity
			if permute && (p.Module == "q_proj" || p.Module == "k_proj") {
				nHead := mc.Heads
				if p.Module == "k_proj" {
					nHead = mc.KVHeads
				}
				if perm, err = ropePermutation(p.Out, nHead); err != nil {
					w.Abort()
					return nil, fmt.Errorf("export: %s.lora_B: %v", p.HF, err)
				}
			}
			for r := 0; r < p.Out; r++ {
				src := p.B[perm(r)*p.R : (perm(r)+1)*p.R]
				dst := b[r*p.R : (r+1)*p.R]
				for j, v := range src {
					dst[j] = float32(float64(v) * factor)
				}
			}
		}
		if err := addF(w, name+".lora_a", typ, []int{p.R, p.In}, p.A); err != nil {
			w.Abort()
			return nil, err
		}
		if err := addF(w, name+".lora_b", typ, []int{p.Out, p.R}, b); err != nil {
			w.Abort()
			return nil, err
		}
		n, _ := gguf.TensorBytes(typ, []int{p.R, p.In})
		m, _ := gguf.TensorBytes(typ, []int{p.Out, p.R})
		rep.Bytes += n + m
	}
	ftype := uint32(0) // LlamaFileType.ALL_F32
	if typ == gguf.TypeF16 {
		ftype = 1 // MOSTLY_F16
	}
	name := filepath.Base(filepath.Clean(adapterDir))
	for _, kv := range []struct {
		k string
		v any
	}{
		{"general.architecture", arch},
		{"general.type", "adapter"},
		{"general.name", name},
		{"general.file_type", ftype},
		{"general.quantization_version", uint32(2)},
		{"adapter.type", "lora"},
		{"adapter.lora.alpha", float32(cfg.Alpha)},
	} {
		if err := w.AddKV(kv.k, kv.v); err != nil {
			w.Abort()
			return nil, fmt.Errorf("export: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	return rep, nil
}

func identity(r int) int { return r }

// ropePermutation is LlamaModel.permute on rows: HF keeps the two rotary
// halves of each head apart (rotate_half), ggml's rope pairs adjacent
// elements, so each head's rows go from [2][HD/2] to [HD/2][2]. It returns
// output row -> source row, as quantize/export_gguf.go addTensor does for
// the base weights.
func ropePermutation(rows, nHead int) (func(int) int, error) {
	if nHead <= 0 || rows%(2*nHead) != 0 {
		return nil, fmt.Errorf("%d rows do not split into %d heads of two halves", rows, nHead)
	}
	half := rows / nHead / 2
	return func(r int) int {
		h, rem := r/(2*half), r%(2*half)
		j, i := rem/2, rem%2
		return h*2*half + i*half + j
	}, nil
}

// addF registers a float tensor stored as F32 or F16.
func addF(w *gguf.Writer, name string, typ gguf.Type, shape []int, vals []float32) error {
	nbytes, err := gguf.TensorBytes(typ, shape)
	if err != nil {
		return fmt.Errorf("export: tensor %s: %v", name, err)
	}
	write := func(out io.Writer) error {
		var b []byte
		if typ == gguf.TypeF16 {
			b = make([]byte, 2*len(vals))
			for i, v := range vals {
				h := safetensors.Float32ToF16(v)
				b[2*i], b[2*i+1] = byte(h), byte(h>>8)
			}
		} else {
			b = make([]byte, 4*len(vals))
			for i, v := range vals {
				u := math.Float32bits(v)
				b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
			}
		}
		_, err := out.Write(b)
		return err
	}
	if err := w.AddTensor(name, typ, shape, write, nbytes); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}
