package lora

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tunellm/tune/internal/fsutil"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
)

// DefaultMaxShardBytes is save_pretrained's max_shard_size="5GB" (decimal).
const DefaultMaxShardBytes = 5_000_000_000

// MergeOptions controls MergeWith.
type MergeOptions struct {
	// DType of the output weights: "bf16", "f16" or "f32"; empty keeps the
	// base's torch_dtype (bf16 when that is none of the three).
	DType string
	// Force replaces an existing non-empty outDir.
	Force bool
	// MaxShardBytes caps each shard's tensor bytes; 0 means
	// DefaultMaxShardBytes.
	MaxShardBytes int64
}

// filesToCopy are the non-weight files of a HF model folder that a merged
// folder keeps unchanged (config.json is rewritten).
var filesToCopy = []string{
	"generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
	"chat_template.jinja", "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt",
	"tokenizer.model",
}

// Merge is MergeWith with only the dtype set.
func Merge(baseDir, outDir string, a *Adapter, dtype string) error {
	return MergeWith(baseDir, outDir, a, MergeOptions{DType: dtype})
}

// MergeWith writes outDir, a complete Hugging Face model folder: the base's
// tensors with W' = W + scaling·B·A on every adapted module (PEFT's
// merge_and_unload; with DoRA W' = (m/‖W + scaling·B·A‖)·(W + scaling·B·A)
// per row), everything in the output dtype as save_pretrained
// writes a model loaded in that dtype (norms included), sharded at
// MaxShardBytes with model.safetensors.index.json, config.json with
// torch_dtype updated, and the generation config, tokenizer and chat
// template files copied.
//
// Tensors stream one at a time, in blocks of rows, so memory stays bounded
// whatever the model size. W' is summed in float64, rounded to float32, then
// to the output dtype with round-to-nearest-even; PEFT instead adds a delta
// already rounded to the weight dtype, so bf16 results may differ from
// PEFT's in the last bit. Tensors whose dtype already matches are copied
// byte for byte.
//
// The folder is built under a temporary name next to outDir and renamed into
// place, so a failure leaves nothing at outDir.
func MergeWith(baseDir, outDir string, a *Adapter, opts MergeOptions) error {
	mc, err := model.LoadConfig(baseDir)
	if err != nil {
		return fmt.Errorf("lora: merge: %w", err)
	}
	if err := a.checkBase(mc); err != nil {
		return fmt.Errorf("lora: merge %s: %w", baseDir, err)
	}
	if err := a.checkMagnitudes(); err != nil {
		return fmt.Errorf("lora: merge: %w", err)
	}
	dtName := opts.DType
	if dtName == "" {
		switch mc.TorchDType {
		case "float32", "float16", "bfloat16":
			dtName = mc.TorchDType
		default:
			dtName = "bf16"
		}
	}
	dt, err := parseDType(dtName)
	if err != nil {
		return err
	}
	maxShard := opts.MaxShardBytes
	if maxShard == 0 {
		maxShard = DefaultMaxShardBytes
	}
	if same, _ := sameDir(baseDir, outDir); same {
		return fmt.Errorf("lora: merge: output folder %s is the base folder", outDir)
	}
	if entries, err := os.ReadDir(outDir); err == nil && len(entries) > 0 && !opts.Force {
		return fmt.Errorf("lora: merge: %s exists and is not empty (use force to replace it)", outDir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lora: merge: %w", err)
	}

	r, err := safetensors.Open(baseDir)
	if err != nil {
		return fmt.Errorf("lora: merge: %w", err)
	}
	defer r.Close()
	adapted := map[string]*module{}
	for _, row := range a.mods {
		for _, md := range row {
			if md != nil {
				adapted[moduleKey(md.layer, md.m)+".weight"] = md
			}
		}
	}
	for name, md := range adapted {
		t, err := r.Tensor(name)
		if err != nil {
			return fmt.Errorf("lora: merge: base has no %s for the adapter", name)
		}
		if !equalShape(t.Shape, []int{md.out, md.in}) {
			return fmt.Errorf("lora: merge: %s: base shape %v, adapter wants [%d %d]", name, t.Shape, md.out, md.in)
		}
		if !isFloat(t.DType) {
			return fmt.Errorf("lora: merge: %s: cannot merge into dtype %s (supported: F32, BF16, F16)", name, t.DType)
		}
	}
	names := r.Names()
	sort.Slice(names, func(i, j int) bool { return naturalLess(names[i], names[j]) })
	ts := make([]safetensors.WriteTensor, 0, len(names))
	for _, name := range names {
		t, err := r.Tensor(name)
		if err != nil {
			return fmt.Errorf("lora: merge: %w", err)
		}
		out := t.DType
		if isFloat(t.DType) {
			out = dt
		}
		md := adapted[name]
		ts = append(ts, safetensors.WriteTensor{Name: name, DType: out, Shape: t.Shape,
			Write: func(w io.Writer) error { return a.writeMerged(w, t, out, md) }})
	}

	parent := filepath.Dir(filepath.Clean(outDir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("lora: merge: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(filepath.Clean(outDir))+".tmp-")
	if err != nil {
		return fmt.Errorf("lora: merge: %w", err)
	}
	published := false
	defer func() {
		if !published {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("lora: merge: %w", err)
	}
	if err := safetensors.WriteDir(tmp, ts, safetensors.WriteOptions{MaxShardBytes: maxShard}); err != nil {
		return fmt.Errorf("lora: merge: %w", err)
	}
	if err := writeMergedConfig(baseDir, tmp, dt); err != nil {
		return err
	}
	for _, f := range filesToCopy {
		if err := fsutil.CopyFile(filepath.Join(baseDir, f), filepath.Join(tmp, f)); err != nil {
			return fmt.Errorf("lora: merge: %w", err)
		}
	}
	if err := fsutil.PublishDir(tmp, outDir); err != nil {
		return fmt.Errorf("lora: merge: %w", err)
	}
	published = true
	return nil
}

// checkBase compares the dimensions the adapter was built for with mc.
func (a *Adapter) checkBase(mc *model.Config) error {
	b := &a.mc
	for _, f := range []struct {
		key       string
		have, got int
	}{{"hidden_size", b.Hidden, mc.Hidden}, {"intermediate_size", b.Intermediate, mc.Intermediate},
		{"num_hidden_layers", b.Layers, mc.Layers}, {"num_attention_heads", b.Heads, mc.Heads},
		{"num_key_value_heads", b.KVHeads, mc.KVHeads}, {"head_dim", b.HeadDim, mc.HeadDim}} {
		if f.have != f.got {
			return fmt.Errorf("the adapter was made for %s = %d, the base has %d", f.key, f.have, f.got)
		}
	}
	return nil
}

func isFloat(d safetensors.DType) bool {
	return d == safetensors.F32 || d == safetensors.BF16 || d == safetensors.F16
}

// writeMerged streams one tensor in blocks of rows: converted to dtype out,
// with the LoRA delta added when md is not nil.
func (a *Adapter) writeMerged(w io.Writer, t safetensors.Tensor, out safetensors.DType, md *module) error {
	if md == nil && t.DType == out {
		_, err := w.Write(t.Data)
		return err
	}
	n := t.NumElements()
	cols := n
	if len(t.Shape) >= 2 {
		cols = t.Shape[len(t.Shape)-1]
	}
	if cols == 0 || n == 0 {
		return nil
	}
	rows := n / cols
	block := max(1, (1<<20)/cols)
	src := make([]float32, min(rows, block)*cols)
	dst := make([]float32, len(src))
	buf := make([]byte, len(src)*out.Size())
	in := t.DType.Size()
	for r0 := 0; r0 < rows; r0 += block {
		nr := min(block, rows-r0)
		s, d := src[:nr*cols], dst[:nr*cols]
		if err := safetensors.ToFloat32(s, t.Data[r0*cols*in:(r0+nr)*cols*in], t.DType); err != nil {
			return err
		}
		if md != nil {
			a.mergeBlock(md, d, s, r0, nr)
		} else {
			d = s
		}
		b := buf[:len(d)*out.Size()]
		if err := safetensors.FromFloat32(b, d, out); err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// mergeBlock runs mergeRows over nr rows starting at o0 on every core.
func (a *Adapter) mergeBlock(md *module, dst, w []float32, o0, nr int) {
	workers := runtime.GOMAXPROCS(0)
	per := (nr + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < nr; lo += per {
		hi := min(nr, lo+per)
		wg.Add(1)
		go func() {
			defer wg.Done()
			C := md.in
			a.mergeRows(md, dst[lo*C:hi*C], w[lo*C:hi*C], o0+lo, hi-lo)
		}()
	}
	wg.Wait()
}

// writeMergedConfig copies config.json with torch_dtype (and transformers
// v5's dtype, when present) set to dt, as save_pretrained writes it:
// json.dumps(indent=2, sort_keys=True) plus a newline.
func writeMergedConfig(baseDir, outDir string, dt safetensors.DType) error {
	path := filepath.Join(baseDir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("lora: merge: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("lora: merge: %s: %v", path, err)
	}
	name := map[safetensors.DType]string{safetensors.F32: `"float32"`, safetensors.F16: `"float16"`, safetensors.BF16: `"bfloat16"`}[dt]
	raw["torch_dtype"] = json.RawMessage(name)
	if _, ok := raw["dtype"]; ok {
		raw["dtype"] = json.RawMessage(name)
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(raw); err != nil {
		return fmt.Errorf("lora: merge: config.json: %v", err)
	}
	if err := fsutil.WriteFile(filepath.Join(outDir, "config.json"), b.Bytes()); err != nil {
		return fmt.Errorf("lora: merge: %w", err)
	}
	return nil
}

func sameDir(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}

// naturalLess orders names with digit runs compared as numbers, so layer 2
// comes before layer 10 and each layer's tensors stay together in shards, as
// they do in the state_dict order transformers saves.
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])
		if da && db {
			i, j := digitRun(a), digitRun(b)
			na, nb := strings.TrimLeft(a[:i], "0"), strings.TrimLeft(b[:j], "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[i:], b[j:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func digitRun(s string) int {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return i
}
