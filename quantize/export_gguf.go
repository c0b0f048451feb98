package quantize

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/gguf"
	"github.com/tunellm/tune/quantize/imatrix"
)

// ExportGGUF converts a Hugging Face model folder (config.json,
// tokenizer.json, tokenizer_config.json, *.safetensors) of model_type qwen3,
// qwen2 or llama (Llama 3 byte-level BPE vocab) into a GGUF file that
// llama.cpp loads. typ is "f32" (every tensor F32) or "f16" (matrices F16,
// 1-D tensors and norms F32).
//
// It mirrors llama.cpp's convert_hf_to_gguf.py (TextModel.prepare_tensors,
// set_gguf_parameters, _set_vocab_gpt2, gguf-py SpecialVocab; classes
// Qwen3Model, Qwen2Model, LlamaModel) key for key, so the output can be
// compared with the converter's. Tensors are converted one row at a time from
// the memory-mapped safetensors, so memory stays near one row per tensor.
//
// Differences from the converter, on purpose: an empty merges list is still
// written (llama.cpp refuses a gpt2 vocab without the key); qwen2/qwen3
// "linear" rope scaling is written (the converter drops it, transformers
// applies it). Not done: the pre-tokenizer is chosen by model_type instead
// of by hashing the tokenizer's output on a probe text; added tokens marked
// normalized are not re-normalized through the tokenizer; SentencePiece
// vocabs (tokenizer.model: Llama 2, Mistral) are refused; general.*
// model-card fields beyond the name are omitted.
func ExportGGUF(modelDir, outPath string, typ string) error {
	var mix string
	switch typ {
	case "f32":
		mix = "F32"
	case "f16":
		mix = "F16"
	default:
		return fmt.Errorf("quantize: export gguf: unsupported type %q, want f32 or f16", typ)
	}
	_, err := QuantizeGGUF(modelDir, outPath, GGUFOptions{Type: mix})
	return err
}

// GGUFOptions configure QuantizeGGUF.
type GGUFOptions struct {
	// Type is a mix name (see MixNames): "Q4_K_M", "Q8_0", "F16", ...
	Type string
	// Workers quantize rows in parallel; <= 0 means runtime.NumCPU(). The
	// output does not depend on it.
	Workers int
	// Progress, when set, is called after each chunk with the input
	// (safetensors) bytes converted so far and in all, from the writing
	// goroutine.
	Progress func(done, total int64)
	// Warn, when set, receives one line per fallback (a row that is not a
	// whole number of the chosen type's blocks), as llama-quantize warns,
	// and one per block tensor the importance matrix does not cover.
	Warn func(msg string)
	// Imatrix, when set, is the importance matrix (imatrix.Load) whose
	// per-column weights (Matrix.Weights) every quantized tensor it has an
	// entry for is quantized with, as llama-quantize --imatrix does: an
	// entry whose length is not the tensor's row length is an error, except
	// for token_embd.weight, which is then quantized without (a warning).
	// The file is recorded under quantize.imatrix.* in the output.
	Imatrix *imatrix.Matrix
	// AllowRequantize lets RequantizeGGUF read tensors that are already
	// quantized (llama-quantize --allow-requantize): they are dequantized
	// and quantized again, which loses more than quantizing the original.
	AllowRequantize bool
}

// GGUFReport summarizes a written file.
type GGUFReport struct {
	Mix       string         `json:"type"`
	FileType  uint32         `json:"file_type"`
	Tensors   int            `json:"tensors"`
	InBytes   int64          `json:"input_bytes"`  // safetensors tensor data read
	OutBytes  int64          `json:"output_bytes"` // tensor data written
	Types     map[string]int `json:"tensor_types"` // tensors per ggml type
	Fallbacks []string       `json:"fallbacks,omitempty"`
	// ImatrixTensors counts the tensors quantized with importance weights.
	ImatrixTensors int `json:"imatrix_tensors,omitempty"`
}

// QuantizeGGUF converts a Hugging Face model folder like ExportGGUF and
// stores each tensor with the type llama.cpp's mix opts.Type gives it
// (Mix.TensorType), quantizing from the checkpoint's own weights (F32, F16
// or BF16 widened to F32) rather than from an F16 GGUF as llama-quantize
// usually does. It streams: one chunk of about 1M elements of one tensor is
// in memory at a time, its rows quantized by opts.Workers goroutines. The
// file is written to a temporary name and renamed, so a failure leaves no
// output. With opts.Imatrix the quantizers get llama-quantize's importance
// weights. Not supported: IQ* types.
func QuantizeGGUF(modelDir, outPath string, opts GGUFOptions) (*GGUFReport, error) {
	mix, err := ParseMix(opts.Type)
	if err != nil {
		return nil, err
	}
	cfg, err := readHFConfig(modelDir)
	if err != nil {
		return nil, err
	}
	st, err := safetensors.Open(modelDir)
	if err != nil {
		return nil, fmt.Errorf("quantize: export gguf: %w", err)
	}
	defer st.Close()
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	plan := &exportPlan{
		mix: mix,
		mm: MixModel{NLayer: *cfg.NumHiddenLayers, NHead: *cfg.NumAttentionHeads, NHeadKV: cfg.kvHeads(),
			Tied: !st.Has("lm_head.weight")},
		workers: workers, warn: opts.Warn, imx: opts.Imatrix,
		report: &GGUFReport{Mix: mix.Name, FileType: mix.FileType, Types: map[string]int{}},
	}
	if opts.Progress != nil {
		var done int64
		// Tensor data is written at Close, after every tensor (and so
		// InBytes) is known.
		plan.progress = func(n int64) {
			done += n
			opts.Progress(done, plan.report.InBytes)
		}
	}

	w := gguf.NewWriter(outPath)
	// Same order as the converter: tensors first (they fix no KV), then
	// general.*, hyperparameters, quantization version, vocab.
	if err := addTensors(w, st, cfg, plan); err != nil {
		w.Abort()
		return nil, err
	}
	kv := &kvList{w: w}
	kv.add("general.architecture", cfg.arch)
	kv.add("general.type", "model")
	kv.add("general.name", filepath.Base(filepath.Clean(modelDir)))
	addHyperparameters(kv, cfg, mix.FileType)
	kv.add("general.quantization_version", uint32(2)) // GGML_QUANT_VERSION
	if kv.err == nil {
		if err := addVocab(kv, modelDir, cfg); err != nil {
			w.Abort()
			return nil, err
		}
	}
	// Last, as llama-quantize's kv overrides land after the copied keys.
	for _, e := range imatrixKVs(opts.Imatrix) {
		kv.add(e.Key, e.Value)
	}
	if kv.err != nil {
		w.Abort()
		return nil, fmt.Errorf("quantize: export gguf: %w", kv.err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("quantize: export gguf: %w", err)
	}
	return plan.report, nil
}

// exportPlan carries the per-file choices into the per-tensor code.
type exportPlan struct {
	mix      Mix
	mm       MixModel
	workers  int
	progress func(int64)
	warn     func(string)
	imx      *imatrix.Matrix
	report   *GGUFReport
}

// imatrixFor returns the importance weights tensor name (rows of cols) is
// quantized with, as llama_model_quantize_impl looks them up: none without
// a matrix or an entry (a warning for block tensors, which a matrix from
// llama-imatrix always covers), an error when the entry's length is not
// cols, except for token_embd.weight (warned and skipped).
func (p *exportPlan) imatrixFor(name string, cols int) ([]float32, error) {
	if p.imx == nil {
		return nil, nil
	}
	w := p.imx.Weights(name)
	switch {
	case w == nil:
		if strings.HasPrefix(name, "blk.") && p.warn != nil {
			p.warn(fmt.Sprintf("%s: no importance matrix entry, quantized without", name))
		}
		return nil, nil
	case len(w) != cols:
		msg := fmt.Sprintf("tensor %q: importance matrix %s has %d values, want %d (one per column)", name, p.imx.Path, len(w), cols)
		if name == "token_embd.weight" {
			if p.warn != nil {
				p.warn(msg + "; quantized without")
			}
			return nil, nil
		}
		return nil, fmt.Errorf("quantize: %s", msg)
	}
	p.report.ImatrixTensors++
	return w, nil
}

// imatrixKVs are the quantize.imatrix.* keys llama-quantize adds when it
// uses an importance matrix (integers as u32, as its kv overrides write
// them).
func imatrixKVs(m *imatrix.Matrix) []gguf.KV {
	if m == nil {
		return nil
	}
	kvs := []gguf.KV{{Key: "quantize.imatrix.file", Value: m.Path}}
	if len(m.Datasets) > 0 {
		kvs = append(kvs, gguf.KV{Key: "quantize.imatrix.dataset", Value: m.Datasets[0]})
	}
	kvs = append(kvs, gguf.KV{Key: "quantize.imatrix.entries_count", Value: uint32(len(m.Entries))})
	if m.ChunkCount > 0 {
		kvs = append(kvs, gguf.KV{Key: "quantize.imatrix.chunks_count", Value: uint32(m.ChunkCount)})
	}
	return kvs
}

// kvList keeps the first AddKV error so the key list reads as a list.
type kvList struct {
	w   *gguf.Writer
	err error
}

func (k *kvList) add(key string, v any) {
	if k.err == nil {
		k.err = k.w.AddKV(key, v)
	}
}

// hfConfig holds the config.json fields the converter reads.
type hfConfig struct {
	path      string
	arch      string // GGUF architecture: qwen3, qwen2, llama
	modelType string
	raw       map[string]json.RawMessage

	ModelType             string          `json:"model_type"`
	HiddenSize            *int            `json:"hidden_size"`
	IntermediateSize      *int            `json:"intermediate_size"`
	NumHiddenLayers       *int            `json:"num_hidden_layers"`
	NumAttentionHeads     *int            `json:"num_attention_heads"`
	NumKeyValueHeads      *int            `json:"num_key_value_heads"`
	HeadDim               *int            `json:"head_dim"`
	MaxPositionEmbeddings *int            `json:"max_position_embeddings"`
	RMSNormEps            *float64        `json:"rms_norm_eps"`
	RopeTheta             *float64        `json:"rope_theta"`
	VocabSize             *int            `json:"vocab_size"`
	RopeScaling           json.RawMessage `json:"rope_scaling"`
}

func readHFConfig(dir string) (*hfConfig, error) {
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("quantize: export gguf: %w", err)
	}
	cfg := &hfConfig{path: path}
	if err := json.Unmarshal(b, cfg); err != nil {
		return nil, fmt.Errorf("quantize: export gguf: %s: %v", path, err)
	}
	if err := json.Unmarshal(b, &cfg.raw); err != nil {
		return nil, fmt.Errorf("quantize: export gguf: %s: %v", path, err)
	}
	switch cfg.ModelType {
	case "qwen3", "qwen2", "llama":
		cfg.arch = cfg.ModelType
	default:
		return nil, fmt.Errorf("quantize: export gguf: %s: model_type %q not supported, want qwen3, qwen2 or llama", path, cfg.ModelType)
	}
	for name, v := range map[string]*int{"num_hidden_layers": cfg.NumHiddenLayers, "hidden_size": cfg.HiddenSize, "num_attention_heads": cfg.NumAttentionHeads} {
		if v == nil || *v <= 0 {
			return nil, fmt.Errorf("quantize: export gguf: %s: %s missing or not positive", path, name)
		}
	}
	if cfg.NumKeyValueHeads != nil && (*cfg.NumKeyValueHeads <= 0 || *cfg.NumAttentionHeads%*cfg.NumKeyValueHeads != 0) {
		return nil, fmt.Errorf("quantize: export gguf: %s: num_key_value_heads %d does not divide num_attention_heads %d", path, *cfg.NumKeyValueHeads, *cfg.NumAttentionHeads)
	}
	return cfg, nil
}

func (c *hfConfig) headDim() int {
	if c.HeadDim != nil {
		return *c.HeadDim
	}
	return *c.HiddenSize / *c.NumAttentionHeads
}

func (c *hfConfig) kvHeads() int {
	if c.NumKeyValueHeads != nil {
		return *c.NumKeyValueHeads
	}
	return *c.NumAttentionHeads
}

// ropeScaling returns config.rope_scaling as a map (nil when absent/null).
func (c *hfConfig) ropeScaling() map[string]any {
	var m map[string]any
	if len(c.RopeScaling) > 0 {
		json.Unmarshal(c.RopeScaling, &m)
	}
	return m
}

// addHyperparameters mirrors TextModel.set_gguf_parameters plus the
// Qwen2Model (yarn) and LlamaModel (vocab_size, rope dims, linear scaling)
// additions. Integers are u32 and floats f32, as gguf-py writes them.
func addHyperparameters(kv *kvList, c *hfConfig, ftype uint32) {
	a := c.arch
	u32 := func(key string, v *int) {
		if v != nil {
			kv.add(a+"."+key, uint32(*v))
		}
	}
	f32 := func(key string, v *float64) {
		if v != nil {
			kv.add(a+"."+key, float32(*v))
		}
	}
	u32("block_count", c.NumHiddenLayers)
	u32("context_length", c.MaxPositionEmbeddings)
	u32("embedding_length", c.HiddenSize)
	u32("feed_forward_length", c.IntermediateSize)
	u32("attention.head_count", c.NumAttentionHeads)
	u32("attention.head_count_kv", c.NumKeyValueHeads)
	f32("rope.freq_base", c.RopeTheta)
	f32("attention.layer_norm_rms_epsilon", c.RMSNormEps)
	u32("attention.key_length", c.HeadDim)
	u32("attention.value_length", c.HeadDim)
	kv.add("general.file_type", ftype)

	rs := c.ropeScaling()
	rsType, _ := rs["rope_type"].(string)
	if rsType == "" {
		rsType, _ = rs["type"].(string)
	}
	factor, hasFactor := rs["factor"].(float64)
	switch a {
	case "qwen2", "qwen3":
		// The converter writes yarn only and silently drops "linear", which
		// transformers applies for these models (and llama.cpp honours if
		// told), so linear is written as LlamaModel writes it.
		if rsType == "linear" && hasFactor {
			kv.add(a+".rope.scaling.type", "linear")
			kv.add(a+".rope.scaling.factor", float32(factor))
		}
		if rsType == "yarn" && hasFactor {
			kv.add(a+".rope.scaling.type", "yarn")
			kv.add(a+".rope.scaling.factor", float32(factor))
			if orig, ok := rs["original_max_position_embeddings"].(float64); ok {
				kv.add(a+".rope.scaling.original_context_length", uint32(orig))
			}
		}
	case "llama":
		u32("vocab_size", c.VocabSize)
		kv.add(a+".rope.dimension_count", uint32(c.headDim()))
		if rsType == "linear" && hasFactor {
			kv.add(a+".rope.scaling.type", "linear")
			kv.add(a+".rope.scaling.factor", float32(factor))
		}
	}
}

// tensorNameMap is gguf-py tensor_mapping.py for the HF names of these
// architectures; a name it does not know is an error, as in the converter.
var (
	globalNames = map[string]string{
		"model.embed_tokens": "token_embd",
		"model.norm":         "output_norm",
		"lm_head":            "output",
	}
	blockNames = map[string]string{
		"input_layernorm":          "attn_norm",
		"self_attn.q_proj":         "attn_q",
		"self_attn.k_proj":         "attn_k",
		"self_attn.v_proj":         "attn_v",
		"self_attn.o_proj":         "attn_output",
		"self_attn.q_norm":         "attn_q_norm",
		"self_attn.k_norm":         "attn_k_norm",
		"post_attention_layernorm": "ffn_norm",
		"mlp.gate_proj":            "ffn_gate",
		"mlp.up_proj":              "ffn_up",
		"mlp.down_proj":            "ffn_down",
	}
	// blockOrder fixes the output order within a block (llama.cpp does not
	// care; a stable order makes files comparable).
	blockOrder = []string{"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"}
	layerRe    = regexp.MustCompile(`^model\.layers\.(\d+)\.(.+)\.(weight|bias)$`)
)

// ggufTensorName maps an HF tensor name; skip reports tensors the converter
// drops.
func ggufTensorName(name string) (gname string, block int, skip bool, err error) {
	if strings.HasSuffix(name, ".rotary_emb.inv_freq") || strings.HasSuffix(name, ".attention.masked_bias") || strings.HasSuffix(name, ".attention.bias") {
		return "", -1, true, nil
	}
	if m := layerRe.FindStringSubmatch(name); m != nil {
		n, err := strconv.Atoi(m[1])
		if g, ok := blockNames[m[2]]; ok && err == nil {
			return fmt.Sprintf("blk.%d.%s.%s", n, g, m[3]), n, false, nil
		}
	} else if i := strings.LastIndexByte(name, '.'); i > 0 {
		suffix := name[i+1:]
		if g, ok := globalNames[name[:i]]; ok && (suffix == "weight" || suffix == "bias") {
			return g + "." + suffix, -1, false, nil
		}
	}
	return "", 0, false, fmt.Errorf("can not map tensor %q", name)
}

type exportTensor struct {
	hf, gguf string
	block    int
	rank     int // position for sorting within its group
}

func addTensors(w *gguf.Writer, st *safetensors.Reader, c *hfConfig, plan *exportPlan) error {
	var list []exportTensor
	rankOf := map[string]int{}
	for i, n := range blockOrder {
		rankOf[n] = i
	}
	for _, name := range st.Names() {
		g, block, skip, err := ggufTensorName(name)
		if err != nil {
			return fmt.Errorf("quantize: export gguf: %s: %v", c.path, err)
		}
		if skip {
			continue
		}
		if block >= *c.NumHiddenLayers {
			return fmt.Errorf("quantize: export gguf: tensor %q: layer %d, but num_hidden_layers is %d", name, block, *c.NumHiddenLayers)
		}
		r := 0
		parts := strings.Split(g, ".")
		if block >= 0 {
			r = rankOf[parts[2]]*2 + map[string]int{"weight": 0, "bias": 1}[parts[3]]
		} else {
			r = map[string]int{"token_embd": 0, "output_norm": 1, "output": 2}[parts[0]]
			if r > 0 {
				block = math.MaxInt // after the blocks
			}
		}
		list = append(list, exportTensor{name, g, block, r})
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].block != list[j].block {
			return list[i].block < list[j].block
		}
		return list[i].rank < list[j].rank
	})

	if c.arch == "llama" {
		if err := addRopeFreqs(w, c, plan.report); err != nil {
			return err
		}
	}
	for _, e := range list {
		t, err := st.Tensor(e.hf)
		if err != nil {
			return fmt.Errorf("quantize: export gguf: %w", err)
		}
		if err := addTensor(w, t, e.gguf, e.block, c, plan); err != nil {
			return err
		}
	}
	return nil
}

// addTensor registers one converted tensor with the type plan.mix gives
// it. For F32/F16 mixes this is prepare_tensors' choice: 1-D tensors,
// *_norm.weight and anything that is not a .weight stay F32.
func addTensor(w *gguf.Writer, t safetensors.Tensor, name string, block int, c *hfConfig, plan *exportPlan) error {
	switch t.DType {
	case safetensors.F32, safetensors.F16, safetensors.BF16:
	default:
		return fmt.Errorf("quantize: export gguf: tensor %q: dtype %s, want F32, F16 or BF16", t.Name, t.DType)
	}
	if len(t.Shape) == 0 || len(t.Shape) > gguf.MaxDims {
		return fmt.Errorf("quantize: export gguf: tensor %q: shape %v, want 1..%d dims", t.Name, t.Shape, gguf.MaxDims)
	}
	if block < 0 || block >= plan.mm.NLayer {
		block = -1
	}
	choice := plan.mix.TensorType(name, t.Shape, block, plan.mm)
	typ := choice.Type
	if choice.Fallback != "" {
		plan.report.Fallbacks = append(plan.report.Fallbacks, choice.Fallback)
		if plan.warn != nil {
			plan.warn(choice.Fallback)
		}
	}
	rows := t.Shape[0]
	cols := t.NumElements() / max(rows, 1)
	if len(t.Shape) == 1 {
		rows, cols = 1, t.Shape[0]
	}
	var qt Traits
	if typ != gguf.TypeF32 && typ != gguf.TypeF16 {
		qt, _ = TypeTraits(typ)
		if len(t.Shape) != 2 || cols%qt.BlockElems != 0 {
			return fmt.Errorf("quantize: export gguf: tensor %q: shape %v can not be stored as %s", t.Name, t.Shape, typ)
		}
	}
	if t.NumElements()*t.DType.Size() != len(t.Data) {
		return fmt.Errorf("quantize: export gguf: tensor %q: %d bytes, want %d for %s %v", t.Name, len(t.Data), t.NumElements()*t.DType.Size(), t.DType, t.Shape)
	}
	// LlamaModel.permute: HF stores q/k with the two rotary halves of each
	// head apart (rotate_half); ggml's rope pairs adjacent elements, so the
	// rows of each head go from [2][HD/2] to [HD/2][2].
	var perm func(int) int
	if c.arch == "llama" && (strings.Contains(name, ".attn_q.") || strings.Contains(name, ".attn_k.")) {
		nHead := *c.NumAttentionHeads
		if strings.Contains(name, ".attn_k.") {
			nHead = c.kvHeads()
		}
		n := t.Shape[0]
		if n%(2*nHead) != 0 {
			return fmt.Errorf("quantize: export gguf: tensor %q: %d rows do not split into %d heads of two halves", t.Name, n, nHead)
		}
		half := n / nHead / 2
		if len(t.Shape) == 1 { // a bias: permute elements, one "row" of n
			rows, cols = n, 1
		}
		perm = func(r int) int { // output row -> source row
			h, rem := r/(2*half), r%(2*half)
			j, i := rem/2, rem%2
			return h*2*half + i*half + j
		}
	}
	nbytes, err := gguf.TensorBytes(typ, t.Shape)
	if err != nil {
		return fmt.Errorf("quantize: export gguf: tensor %q: %v", t.Name, err)
	}
	plan.report.Tensors++
	plan.report.Types[typ.String()]++
	plan.report.InBytes += int64(len(t.Data))
	plan.report.OutBytes += nbytes
	src, dt, es := t.Data, t.DType, t.DType.Size()
	// convert widens source rows [r0, r0+n) (permuted) into vals.
	convert := func(vals []float32, r0, n int) error {
		for k := 0; k < n; k++ {
			sr := r0 + k
			if perm != nil {
				sr = perm(sr)
			}
			if err := safetensors.ToFloat32(vals[k*cols:(k+1)*cols], src[sr*cols*es:(sr+1)*cols*es], dt); err != nil {
				return err
			}
		}
		return nil
	}
	var write func(out io.Writer) error
	if qt.QuantizeRow == nil {
		write = func(out io.Writer) error {
			return convertRows(out, typ, rows, cols, cols*es, plan, convert)
		}
	} else {
		imx, err := plan.imatrixFor(name, cols)
		if err != nil {
			return err
		}
		write = func(out io.Writer) error {
			return quantizeRows(out, qt, t.Name, rows, cols, cols*es, imx, plan, convert)
		}
	}
	if err := w.AddTensor(name, typ, t.Shape, write, nbytes); err != nil {
		return fmt.Errorf("quantize: export gguf: %w", err)
	}
	return nil
}

// convertRows streams a [rows, cols] tensor as F32 or F16 (typ), about 64K
// elements per conversion and write; srcRowBytes is the input size of a row,
// for progress.
func convertRows(out io.Writer, typ gguf.Type, rows, cols, srcRowBytes int, plan *exportPlan, convert func([]float32, int, int) error) error {
	batch := max(1, (1<<16)/max(cols, 1))
	f32 := make([]float32, min(batch, rows)*cols)
	buf := make([]byte, len(f32)*4)
	for r0 := 0; r0 < rows; r0 += batch {
		nr := min(batch, rows-r0)
		vals := f32[:nr*cols]
		if err := convert(vals, r0, nr); err != nil {
			return err
		}
		var b []byte
		if typ == gguf.TypeF16 {
			b = buf[:len(vals)*2]
			for i, v := range vals {
				h := safetensors.Float32ToF16(v)
				b[2*i], b[2*i+1] = byte(h), byte(h>>8)
			}
		} else {
			b = buf[:len(vals)*4]
			for i, v := range vals {
				u := math.Float32bits(v)
				b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
			}
		}
		if _, err := out.Write(b); err != nil {
			return err
		}
		if plan.progress != nil {
			plan.progress(int64(nr * srcRowBytes))
		}
	}
	return nil
}

// quantizeRows streams a [rows, cols] tensor through qt in chunks of about
// 1M elements; within a chunk each worker widens and quantizes its own run
// of rows, each with the importance weights imx (nil for none; ignored by
// types that take none). Rows are independent in every ggml type, so the
// bytes do not depend on the worker count.
func quantizeRows(out io.Writer, qt Traits, tensor string, rows, cols, srcRowBytes int, imx []float32, plan *exportPlan, convert func([]float32, int, int) error) error {
	if !qt.Imatrix {
		imx = nil
	}
	rowBytes := cols / qt.BlockElems * qt.BlockBytes
	chunk := max(plan.workers, (1<<20)/cols)
	chunk = min(chunk, rows)
	f32 := make([]float32, chunk*cols)
	q := make([]byte, chunk*rowBytes)
	errs := make([]error, plan.workers)
	var wg sync.WaitGroup
	for r0 := 0; r0 < rows; r0 += chunk {
		nr := min(chunk, rows-r0)
		per := (nr + plan.workers - 1) / plan.workers
		for wi := 0; wi < plan.workers; wi++ {
			a, b := wi*per, min((wi+1)*per, nr)
			if a >= b {
				break
			}
			wg.Add(1)
			go func(wi, a, b int) {
				defer wg.Done()
				vals := f32[a*cols : b*cols]
				if err := convert(vals, r0+a, b-a); err != nil {
					errs[wi] = err
					return
				}
				for i, v := range vals {
					if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
						r := r0 + a + i/cols
						errs[wi] = fmt.Errorf("quantize: tensor %q: non-finite value %v at row %d, column %d (index %d)", tensor, v, r, i%cols, r*cols+i%cols)
						return
					}
				}
				for r := a; r < b; r++ {
					qt.QuantizeRow(q[r*rowBytes:(r+1)*rowBytes], f32[r*cols:(r+1)*cols], imx)
				}
			}(wi, a, b)
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		if _, err := out.Write(q[:nr*rowBytes]); err != nil {
			return err
		}
		if plan.progress != nil {
			plan.progress(int64(nr * srcRowBytes))
		}
	}
	return nil
}

// addRopeFreqs mirrors LlamaModel.generate_extra_tensors: Llama 3.1's
// "llama3" rope scaling becomes a rope_freqs.weight tensor of per-frequency
// divisors.
func addRopeFreqs(w *gguf.Writer, c *hfConfig, report *GGUFReport) error {
	rs := c.ropeScaling()
	if t, _ := rs["rope_type"].(string); strings.ToLower(t) != "llama3" {
		return nil
	}
	num := func(key string, def float64) float64 {
		if v, ok := rs[key].(float64); ok {
			return v
		}
		return def
	}
	base := 10000.0
	if c.RopeTheta != nil {
		base = *c.RopeTheta
	}
	dim := c.headDim()
	factor := num("factor", 8)
	lowFF, highFF := num("low_freq_factor", 1), num("high_freq_factor", 4)
	// transformers (_compute_llama3_parameters) and the converter up to
	// 2024 read original_max_position_embeddings from rope_scaling; today's
	// converter reads the top level. Real Llama 3.x configs only have it in
	// rope_scaling, equal to the 8192 default, so rope_scaling first, then
	// the top level, then 8192 agrees with all of them.
	oldCtx := 8192.0
	if v, ok := rs["original_max_position_embeddings"].(float64); ok {
		oldCtx = v
	} else if v, ok := c.raw["original_max_position_embeddings"]; ok {
		json.Unmarshal(v, &oldCtx)
	}
	lowWL, highWL := oldCtx/lowFF, oldCtx/highFF
	factors := make([]float32, 0, dim/2)
	for i := 0; i < dim; i += 2 {
		// torch computes freqs in float32: 1 / base ** (arange/dim).
		freq := float32(1.0 / math.Pow(base, float64(float32(i)/float32(dim))))
		wl := 2 * math.Pi / float64(freq)
		switch {
		case wl < highWL:
			factors = append(factors, 1)
		case wl > lowWL:
			factors = append(factors, float32(factor))
		default:
			smooth := (oldCtx/wl - lowFF) / (highFF - lowFF)
			factors = append(factors, float32(1/((1-smooth)/factor+smooth)))
		}
	}
	b := make([]byte, 4*len(factors))
	for i, f := range factors {
		u := math.Float32bits(f)
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	}
	if err := w.AddTensor("rope_freqs.weight", gguf.TypeF32, []int{len(factors)}, func(o io.Writer) error {
		_, err := o.Write(b)
		return err
	}, int64(len(b))); err != nil {
		return fmt.Errorf("quantize: export gguf: %w", err)
	}
	report.Tensors++
	report.Types[gguf.TypeF32.String()]++
	report.OutBytes += int64(len(b))
	return nil
}

// GGUF token types (gguf-py constants.TokenType).
const (
	tokNormal      int32 = 1
	tokControl     int32 = 3
	tokUserDefined int32 = 4
	tokUnused      int32 = 5
)

type hfAddedToken struct {
	ID      int    `json:"id"`
	Content string `json:"content"`
	Special bool   `json:"special"`
}

type hfTokenizer struct {
	Model struct {
		Type   string          `json:"type"`
		Vocab  map[string]int  `json:"vocab"`
		Merges json.RawMessage `json:"merges"`
	} `json:"model"`
	AddedTokens   []hfAddedToken  `json:"added_tokens"`
	PostProcessor json.RawMessage `json:"post_processor"`
}

// addVocab mirrors TextModel._set_vocab_gpt2 (get_vocab_base) and
// gguf-py SpecialVocab(load_merges=True).
func addVocab(kv *kvList, dir string, c *hfConfig) error {
	path := filepath.Join(dir, "tokenizer.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("quantize: export gguf: %w", err)
	}
	var tok hfTokenizer
	if err := json.Unmarshal(b, &tok); err != nil {
		return fmt.Errorf("quantize: export gguf: %s: %v", path, err)
	}
	if tok.Model.Type != "BPE" {
		return fmt.Errorf("quantize: export gguf: %s: model.type %q, want BPE (SentencePiece vocabs are not supported)", path, tok.Model.Type)
	}
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.model")); err == nil {
		// The converter would take the SentencePiece path for these.
		return fmt.Errorf("quantize: export gguf: %s: has tokenizer.model; SentencePiece vocabs are not supported", dir)
	}
	// tokenizer.vocab in transformers includes the added tokens.
	byID := map[int]string{}
	maxID := -1
	for s, id := range tok.Model.Vocab {
		byID[id] = s
		maxID = max(maxID, id)
	}
	added := map[int]hfAddedToken{}
	for _, a := range tok.AddedTokens {
		byID[a.ID] = a.Content
		added[a.ID] = a
		maxID = max(maxID, a.ID)
	}
	vocabSize := len(byID)
	if c.VocabSize != nil {
		vocabSize = *c.VocabSize
	}
	if maxID >= vocabSize {
		return fmt.Errorf("quantize: export gguf: %s: token id %d >= vocab_size %d", path, maxID, vocabSize)
	}
	tokens := make([]string, vocabSize)
	types := make([]int32, vocabSize)
	for i := range tokens {
		s, ok := byID[i]
		switch {
		case !ok:
			tokens[i], types[i] = fmt.Sprintf("[PAD%d]", i), tokUnused
		case isAdded(added, i):
			if added[i].Special || looksSpecial(s) {
				types[i] = tokControl
			} else {
				s = strings.ReplaceAll(s, "\u2581", " ") // pre-normalized user-defined spaces
				types[i] = tokUserDefined
			}
			tokens[i] = s
		default:
			tokens[i], types[i] = s, tokNormal
		}
	}
	merges, err := readMerges(tok.Model.Merges)
	if err != nil {
		return fmt.Errorf("quantize: export gguf: %s: %v", path, err)
	}

	pre := "qwen2"
	if c.arch == "llama" {
		pre = "llama-bpe"
	}
	kv.add("tokenizer.ggml.model", "gpt2")
	kv.add("tokenizer.ggml.pre", pre)
	kv.add("tokenizer.ggml.tokens", tokens)
	kv.add("tokenizer.ggml.token_type", types)
	// gguf-py drops empty arrays, but llama.cpp refuses a gpt2 vocab without
	// the merges key, so a merge-free (pure byte) vocab keeps an empty list.
	if merges == nil {
		merges = []string{}
	}
	kv.add("tokenizer.ggml.merges", merges)
	return addSpecialVocab(kv, dir, &tok, c)
}

func isAdded(added map[int]hfAddedToken, id int) bool {
	_, ok := added[id]
	return ok
}

// looksSpecial is TextModel.does_token_look_special.
func looksSpecial(s string) bool {
	switch s {
	case "<pad>", "<mask>", "<2mass>", "[@BOS@]":
		return true
	}
	return (strings.HasPrefix(s, "<|") && strings.HasSuffix(s, "|>")) ||
		(strings.HasPrefix(s, "<｜") && strings.HasSuffix(s, "｜>")) ||
		(strings.HasPrefix(s, "<unused") && strings.HasSuffix(s, ">"))
}

// readMerges accepts both tokenizer.json merge formats: "a b" strings, and
// ["a","b"] pairs (transformers >= 4.45), where a space inside a part is
// written as U+0120 as the converter does.
func readMerges(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil {
		return strs, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, errors.New("model.merges: want a list of strings or of string pairs")
	}
	out := make([]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("model.merges[%d]: %d parts, want 2", i, len(p))
		}
		out[i] = strings.ReplaceAll(p[0], " ", "\u0120") + " " + strings.ReplaceAll(p[1], " ", "\u0120")
	}
	return out, nil
}

// specialTypes is SpecialVocab.special_token_types in order, with the GGUF
// key of each (cls has no key in gguf-py and is dropped with a warning).
var specialTypes = []struct{ typ, key string }{
	{"bos", "tokenizer.ggml.bos_token_id"},
	{"eos", "tokenizer.ggml.eos_token_id"},
	{"unk", "tokenizer.ggml.unknown_token_id"},
	{"sep", "tokenizer.ggml.seperator_token_id"}, // sic, as in gguf-py
	{"pad", "tokenizer.ggml.padding_token_id"},
	{"cls", ""},
	{"mask", "tokenizer.ggml.mask_token_id"},
}

// addSpecialVocab mirrors SpecialVocab._try_load_from_tokenizer_json and
// _try_load_from_config_json: special ids from tokenizer_config.json
// (*_token looked up among added_tokens), then config.json (*_token_id) for
// the ones still unset; add_*_token flags from a TemplateProcessing
// post-processor and tokenizer_config.json; the chat template.
func addSpecialVocab(kv *kvList, dir string, tok *hfTokenizer, c *hfConfig) error {
	var tc map[string]json.RawMessage
	tcPath := filepath.Join(dir, "tokenizer_config.json")
	if b, err := os.ReadFile(tcPath); err == nil {
		if err := json.Unmarshal(b, &tc); err != nil {
			return fmt.Errorf("quantize: export gguf: %s: %v", tcPath, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("quantize: export gguf: %w", err)
	}
	tokenString := func(typ string) string {
		var s string
		if json.Unmarshal(tc[typ+"_token"], &s) == nil {
			return s
		}
		var d struct {
			Content *string `json:"content"`
		}
		if json.Unmarshal(tc[typ+"_token"], &d) == nil && d.Content != nil {
			return *d.Content
		}
		return ""
	}
	type kvPair struct {
		key string
		val any
	}
	var ids []kvPair // insertion order, as the converter's dict
	idSet := map[string]bool{}
	setID := func(typ string, id int) {
		if idSet[typ] || id < 0 {
			return
		}
		idSet[typ] = true
		for _, s := range specialTypes {
			if s.typ == typ && s.key != "" {
				ids = append(ids, kvPair{s.key, uint32(id)})
			}
		}
	}
	var addFlags []kvPair
	addSet := map[string]int{}
	setAdd := func(typ string, v bool) {
		key := "tokenizer.ggml.add_" + typ + "_token"
		if typ != "bos" && typ != "eos" && typ != "sep" {
			return // no gguf-py handler
		}
		if i, ok := addSet[typ]; ok {
			addFlags[i].val = v
			return
		}
		addSet[typ] = len(addFlags)
		addFlags = append(addFlags, kvPair{key, v})
	}

	specialBos, specialEos := tokenString("bos"), tokenString("eos")
	if specialBos == "" {
		specialBos = tokenString("cls")
	}
	if specialEos == "" {
		specialEos = tokenString("sep")
	}
	// Crude TemplateProcessing parse, as the converter: a leading special
	// token of the single template means add_bos, a trailing one add_eos.
	if len(tok.PostProcessor) > 0 && string(tok.PostProcessor) != "null" {
		type piece struct {
			SpecialToken *struct {
				ID string `json:"id"`
			} `json:"SpecialToken"`
		}
		type proc struct {
			Type       string  `json:"type"`
			Single     []piece `json:"single"`
			Processors []proc  `json:"processors"`
		}
		var pp proc
		if err := json.Unmarshal(tok.PostProcessor, &pp); err != nil {
			return fmt.Errorf("quantize: export gguf: tokenizer.json: post_processor: %v", err)
		}
		procs := pp.Processors
		if procs == nil {
			procs = []proc{pp}
		}
		for _, p := range procs {
			if p.Type != "TemplateProcessing" || len(p.Single) <= 1 {
				continue
			}
			if first := p.Single[0].SpecialToken; first != nil && first.ID != "" {
				if tc == nil {
					specialBos = first.ID
				}
				setAdd("bos", first.ID == specialBos || first.ID == tokenString("cls"))
			}
			if last := p.Single[len(p.Single)-1].SpecialToken; last != nil && last.ID != "" {
				if tc == nil {
					specialEos = last.ID
				}
				// The converter also rewires eos/eot when these differ; our
				// architectures never have a trailing special token.
				setAdd("eos", last.ID == specialEos)
			}
		}
	}
	if tc != nil {
		for _, s := range specialTypes {
			var b bool
			if v, ok := tc["add_"+s.typ+"_token"]; ok && json.Unmarshal(v, &b) == nil {
				setAdd(s.typ, b)
			}
			content := tokenString(s.typ)
			if s.typ == "bos" {
				content = specialBos
			} else if s.typ == "eos" {
				content = specialEos
			}
			if content == "" {
				continue
			}
			for _, a := range tok.AddedTokens {
				if a.Content == content {
					setID(s.typ, a.ID)
					break
				}
			}
		}
	}
	for _, s := range specialTypes {
		var id int
		if v, ok := c.raw[s.typ+"_token_id"]; ok && string(v) != "null" && json.Unmarshal(v, &id) == nil {
			setID(s.typ, id) // lists (Llama 3.1 eos) do not unmarshal into int: skipped, as in the converter
		}
	}
	for _, p := range ids {
		kv.add(p.key, p.val)
	}
	for _, p := range addFlags {
		kv.add(p.key, p.val)
	}
	if tc == nil {
		return nil
	}
	return addChatTemplate(kv, dir, tc)
}

func addChatTemplate(kv *kvList, dir string, tc map[string]json.RawMessage) error {
	var tmpl string
	if raw, ok := tc["chat_template"]; ok {
		if string(raw) == "null" {
			return nil
		}
		if json.Unmarshal(raw, &tmpl) == nil {
			kv.add("tokenizer.chat_template", tmpl)
			return nil
		}
		var list []struct {
			Name     string  `json:"name"`
			Template *string `json:"template"`
		}
		if json.Unmarshal(raw, &list) != nil {
			return nil // the converter warns and ignores a bad type
		}
		var names []string
		def := ""
		hasDef := false
		for _, e := range list {
			name := strings.Map(func(r rune) rune {
				if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
					return r
				}
				return '_'
			}, e.Name)
			if name == "" || e.Template == nil {
				continue
			}
			if name == "default" {
				def, hasDef = *e.Template, true
				continue
			}
			names = append(names, name)
			kv.add("tokenizer.chat_template."+name, *e.Template)
		}
		if len(names) > 0 {
			kv.add("tokenizer.chat_templates", names)
		}
		if hasDef {
			kv.add("tokenizer.chat_template", def)
		}
		return nil
	}
	// Newer transformers save the template beside the config.
	if b, err := os.ReadFile(filepath.Join(dir, "chat_template.jinja")); err == nil {
		kv.add("tokenizer.chat_template", string(b))
	} else if b, err := os.ReadFile(filepath.Join(dir, "chat_template.json")); err == nil {
		var ct struct {
			ChatTemplate *string `json:"chat_template"`
		}
		if json.Unmarshal(b, &ct) == nil && ct.ChatTemplate != nil {
			kv.add("tokenizer.chat_template", *ct.ChatTemplate)
		}
	}
	return nil
}
