package wq

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tunellm/tune/internal/fsutil"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/tunellm/tune/model/safetensors"
)

// DefaultMaxShardBytes is save_pretrained's max_shard_size="5GB".
const DefaultMaxShardBytes = 5_000_000_000

// linearRE matches the decoder linears the writers quantize (and that the
// loaders expect quantized): the 7 projections of every layer.
var linearRE = regexp.MustCompile(`^model\.layers\.[0-9]+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$`)

// IsLinear reports whether a checkpoint tensor is one of the decoder's
// quantizable linear weights.
func IsLinear(name string) bool { return linearRE.MatchString(name) }

// filesToCopy are the non-weight files of a model folder kept as they are.
var filesToCopy = []string{
	"generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
	"chat_template.jinja", "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt",
	"tokenizer.model",
}

// Writer streams a quantized model folder. Each Add/AddDense encodes one
// tensor and appends its bytes to a spill file inside a temporary folder
// next to outDir, so only one tensor is in memory at a time; Close writes
// the safetensors files (sharded at MaxShardBytes, with an index) from the
// spill, config.json with quantization_config, copies the tokenizer and
// generation files, and renames the folder to outDir. Nothing appears under
// outDir before Close succeeds; Abort (or a failed Close) removes the
// temporary folder.
type Writer struct {
	// MaxShardBytes caps each shard's tensor bytes; 0 means DefaultMaxShardBytes.
	MaxShardBytes int64
	// Extra keys merged into quantization_config (damp_percent, ...).
	Extra map[string]any

	out, src, layout string
	scheme           Scheme
	tmp              string
	spill            *os.File
	buf              *bufio.Writer
	off              int64
	tensors          []spilled
	seen             map[string]bool
	dense            []string // linear weights kept dense (fallbacks)
	actOrder         bool
	err              error
}

type spilled struct {
	name  string
	dtype safetensors.DType
	shape []int
	off   int64
	size  int64
}

// NewWriter starts a quantized folder outDir from the model folder
// srcModelDir (its config.json and tokenizer files) in layout (LayoutGPTQ or
// LayoutCompressed) with scheme (the one every Add must use).
func NewWriter(outDir, srcModelDir string, layout string, scheme Scheme) (*Writer, error) {
	if layout != LayoutGPTQ && layout != LayoutCompressed {
		return nil, fmt.Errorf("wq: layout %q, want %s or %s", layout, LayoutGPTQ, LayoutCompressed)
	}
	if err := scheme.Check(0); err != nil {
		return nil, err
	}
	if layout == LayoutGPTQ && !scheme.Sym && !scheme.V1Zeros {
		return nil, fmt.Errorf("wq: gptq layout: an asymmetric scheme needs V1Zeros (zero points >= 1)")
	}
	if _, err := os.Stat(filepath.Join(srcModelDir, "config.json")); err != nil {
		return nil, fmt.Errorf("wq: %w", err)
	}
	parent := filepath.Dir(filepath.Clean(outDir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("wq: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(filepath.Clean(outDir))+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("wq: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("wq: %w", err)
	}
	f, err := os.Create(filepath.Join(tmp, ".spill"))
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("wq: %w", err)
	}
	return &Writer{out: outDir, src: srcModelDir, layout: layout, scheme: scheme, tmp: tmp,
		spill: f, buf: bufio.NewWriterSize(f, 1<<20), seen: map[string]bool{}}, nil
}

func (w *Writer) put(t safetensors.Tensor) error {
	if w.seen[t.Name] {
		return fmt.Errorf("wq: tensor %q written twice", t.Name)
	}
	w.seen[t.Name] = true
	n, err := w.buf.Write(t.Data)
	if err != nil {
		return fmt.Errorf("wq: spill %s: %w", t.Name, err)
	}
	w.tensors = append(w.tensors, spilled{t.Name, t.DType, append([]int(nil), t.Shape...), w.off, int64(n)})
	w.off += int64(n)
	return nil
}

func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return err
}

// Add encodes and stores a quantized linear.
func (w *Writer) Add(t *QTensor) error {
	if w.err != nil {
		return w.err
	}
	if t.Scheme != w.scheme {
		return w.fail(fmt.Errorf("wq: %s: scheme %v, the writer's is %v", t.Name, t.Scheme, w.scheme))
	}
	ts, err := Encode(w.layout, t)
	if err != nil {
		return w.fail(err)
	}
	for _, e := range ts {
		if err := w.put(e); err != nil {
			return w.fail(err)
		}
	}
	if t.GIdx != nil {
		w.actOrder = true
	}
	return nil
}

// AddDense stores a tensor as it is (embeddings, norms, lm_head, biases, and
// linears a scheme cannot take; those are listed in quantization_config so
// loaders keep them dense). t.Data is copied before AddDense returns.
func (w *Writer) AddDense(name string, t safetensors.Tensor) error {
	if w.err != nil {
		return w.err
	}
	t.Name = name
	if err := w.put(t); err != nil {
		return w.fail(err)
	}
	if IsLinear(name) {
		w.dense = append(w.dense, Prefix(name))
	}
	return nil
}

// Abort removes everything written so far.
func (w *Writer) Abort() {
	if w.spill != nil {
		w.spill.Close()
		w.spill = nil
	}
	if w.tmp != "" {
		os.RemoveAll(w.tmp)
		w.tmp = ""
	}
}

// Close finishes the folder and publishes it under outDir (an existing
// outDir is replaced).
func (w *Writer) Close() (err error) {
	defer func() {
		if err != nil {
			w.Abort()
		}
	}()
	if w.err != nil {
		return w.err
	}
	if w.tmp == "" {
		return errors.New("wq: writer already closed")
	}
	if err := w.buf.Flush(); err != nil {
		return fmt.Errorf("wq: spill: %w", err)
	}
	ws := make([]safetensors.WriteTensor, len(w.tensors))
	for i, t := range w.tensors {
		ws[i] = safetensors.WriteTensor{Name: t.name, DType: t.dtype, Shape: t.shape,
			Write: func(dst io.Writer) error {
				_, err := io.Copy(dst, io.NewSectionReader(w.spill, t.off, t.size))
				return err
			}}
	}
	maxShard := w.MaxShardBytes
	if maxShard == 0 {
		maxShard = DefaultMaxShardBytes
	}
	if err := safetensors.WriteDir(w.tmp, ws, safetensors.WriteOptions{MaxShardBytes: maxShard}); err != nil {
		return fmt.Errorf("wq: %w", err)
	}
	w.spill.Close()
	w.spill = nil
	if err := os.Remove(filepath.Join(w.tmp, ".spill")); err != nil {
		return fmt.Errorf("wq: %w", err)
	}
	if err := w.writeConfig(); err != nil {
		return err
	}
	for _, f := range filesToCopy {
		if err := fsutil.CopyFile(filepath.Join(w.src, f), filepath.Join(w.tmp, f)); err != nil {
			return fmt.Errorf("wq: %w", err)
		}
	}
	if err := fsutil.PublishDir(w.tmp, w.out); err != nil {
		return fmt.Errorf("wq: %w", err)
	}
	w.tmp = ""
	return nil
}

// QuantizationConfig is the quantization_config config.json gets, as
// GPTQModel (gptq) or llm-compressor (compressed-tensors) write it.
// dense lists linear modules kept unquantized.
func QuantizationConfig(layout string, s Scheme, actOrder bool, dense []string) map[string]any {
	gs := s.GroupSize
	if layout == LayoutGPTQ {
		qc := map[string]any{
			"quant_method":      "gptq",
			"checkpoint_format": "gptq",
			"bits":              s.Bits,
			"group_size":        gs,
			"desc_act":          actOrder,
			"sym":               s.Sym,
			"lm_head":           false,
			"static_groups":     false,
			"true_sequential":   true,
			"pack_dtype":        "int32",
			"meta":              map[string]any{"quantizer": []string{"tune"}},
		}
		// GPTQModel's per-module override: "-:<regex>" skips a module. vLLM
		// matches it against its own (fused) layer names, so the fused
		// qkv_proj / gate_up_proj are listed when all their parts are.
		if names := skipNames(dense); len(names) > 0 {
			dyn := map[string]any{}
			for _, n := range names {
				dyn["-:"+regexp.QuoteMeta(n)+"$"] = map[string]any{}
			}
			qc["dynamic"] = dyn
		}
		return qc
	}
	weights := map[string]any{
		"num_bits": s.Bits, "type": "int", "symmetric": s.Sym, "dynamic": false,
		"observer": "minmax", "observer_kwargs": map[string]any{}, "block_structure": nil,
		"actorder": nil, "strategy": "group", "group_size": gs,
	}
	if gs <= 0 {
		weights["strategy"], weights["group_size"] = "channel", nil
	}
	if actOrder {
		weights["actorder"] = "group"
	}
	ignore := append([]string{"lm_head"}, skipNames(dense)...)
	return map[string]any{
		"quant_method": "compressed-tensors",
		"format":       "pack-quantized",
		"config_groups": map[string]any{"group_0": map[string]any{
			"targets": []string{"Linear"}, "weights": weights,
			"input_activations": nil, "output_activations": nil, "format": "pack-quantized",
		}},
		"ignore":                   ignore,
		"quantization_status":      "compressed",
		"kv_cache_scheme":          nil,
		"global_compression_ratio": nil,
		"sparsity_config":          map[string]any{},
	}
}

// skipNames is dense plus the fused names (vLLM's qkv_proj, gate_up_proj)
// whose parts are all dense, sorted.
func skipNames(dense []string) []string {
	set := map[string]bool{}
	for _, d := range dense {
		set[d] = true
	}
	out := append([]string(nil), dense...)
	for _, d := range dense {
		if p, ok := strings.CutSuffix(d, ".self_attn.q_proj"); ok &&
			set[p+".self_attn.k_proj"] && set[p+".self_attn.v_proj"] {
			out = append(out, p+".self_attn.qkv_proj")
		}
		if p, ok := strings.CutSuffix(d, ".mlp.gate_proj"); ok && set[p+".mlp.up_proj"] {
			out = append(out, p+".mlp.gate_up_proj")
		}
	}
	sort.Strings(out)
	return out
}

// writeConfig writes config.json: the source's with quantization_config
// and torch_dtype float16 (the scales are fp16 values; serving in bf16
// would round them, as vLLM casts scales to the activation dtype).
func (w *Writer) writeConfig() error {
	path := filepath.Join(w.src, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("wq: %w", err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("wq: %s: %v", path, err)
	}
	qc := QuantizationConfig(w.layout, w.scheme, w.actOrder, w.dense)
	for k, v := range w.Extra {
		qc[k] = v
	}
	raw["quantization_config"] = qc
	raw["torch_dtype"] = "float16"
	if _, ok := raw["dtype"]; ok {
		raw["dtype"] = "float16"
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(raw); err != nil {
		return fmt.Errorf("wq: config.json: %v", err)
	}
	return os.WriteFile(filepath.Join(w.tmp, "config.json"), buf.Bytes(), 0o644)
}
