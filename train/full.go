package train

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
)

// Full is full-parameter training: the pass's fp32 copies of every weight
// are the trained slabs, and Save writes a complete Hugging Face model folder.
type Full struct {
	Pass    *model.Pass
	baseDir string
	shapes  map[string][]int
}

// NewFull allocates a Full-mode pass of m (loaded from baseDir, whose
// config, tokenizer and tensor shapes Save reuses).
func NewFull(m *model.Model, baseDir string, maxT int, opts model.TrainOptions) (*Full, error) {
	opts.Full, opts.Adapter = true, nil
	r, err := safetensors.Open(baseDir)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	shapes := map[string][]int{}
	for _, name := range r.Names() {
		t, err := r.Tensor(name)
		if err != nil {
			return nil, err
		}
		shapes[name] = t.Shape
	}
	p, err := m.NewPass(maxT, opts)
	if err != nil {
		return nil, err
	}
	names, _, _ := p.Params()
	for _, n := range names {
		if _, ok := shapes[n]; !ok {
			return nil, fmt.Errorf("train: full: the pass trains %q, which %s does not hold", n, baseDir)
		}
	}
	return &Full{Pass: p, baseDir: baseDir, shapes: shapes}, nil
}

func (f *Full) Forward(tokens, positions, segIDs, labels []int32) (float64, int, error) {
	return f.Pass.Forward(tokens, positions, segIDs, labels)
}
func (f *Full) Backward(scale float32) error { return f.Pass.Backward(scale) }

// Eval is a forward whose state no Backward uses (Full mode has no dropout).
func (f *Full) Eval(tokens, positions, segIDs, labels []int32) (float64, int, error) {
	return f.Pass.Forward(tokens, positions, segIDs, labels)
}

func (f *Full) Slabs() ([][]float32, [][]float32) {
	_, p, g := f.Pass.Params()
	return p, g
}
func (f *Full) ZeroGrads() { f.Pass.ZeroGrads() }

// fullCopyFiles are the base folder's files a trained model folder keeps
// (config.json is rewritten with the new dtype).
var fullCopyFiles = []string{"generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
	"chat_template.jinja", "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model"}

// Save writes a Hugging Face model folder: the trained tensors in dtype
// (sharded at 5 GB as save_pretrained does), config.json with torch_dtype
// set, and the tokenizer files copied.
func (f *Full) Save(dir, dtype string) error {
	dt, name := safetensors.F32, "float32"
	switch strings.ToLower(dtype) {
	case "", "f32":
	case "bf16":
		dt, name = safetensors.BF16, "bfloat16"
	case "f16":
		dt, name = safetensors.F16, "float16"
	default:
		return fmt.Errorf("train: dtype %q is not supported (supported: f32, bf16, f16)", dtype)
	}
	names, params, _ := f.Pass.Params()
	ts := make([]safetensors.WriteTensor, len(names))
	for i, n := range names {
		data := params[i]
		ts[i] = safetensors.WriteTensor{Name: n, DType: dt, Shape: f.shapes[n], Write: func(w io.Writer) error {
			buf := make([]byte, len(data)*dt.Size())
			if err := safetensors.FromFloat32(buf, data, dt); err != nil {
				return err
			}
			_, err := w.Write(buf)
			return err
		}}
	}
	if err := safetensors.WriteDir(dir, ts, safetensors.WriteOptions{MaxShardBytes: 5_000_000_000}); err != nil {
		return fmt.Errorf("train: save model: %w", err)
	}
	cfg, err := os.ReadFile(filepath.Join(f.baseDir, "config.json"))
	if err != nil {
		return fmt.Errorf("train: save model: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(cfg, &raw); err != nil {
		return fmt.Errorf("train: save model: config.json: %v", err)
	}
	raw["torch_dtype"] = json.RawMessage(`"` + name + `"`)
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(raw); err != nil {
		return fmt.Errorf("train: save model: config.json: %v", err)
	}
	if err := writeSynced(filepath.Join(dir, "config.json"), b.Bytes()); err != nil {
		return fmt.Errorf("train: save model: %w", err)
	}
	for _, n := range fullCopyFiles {
		src, err := os.ReadFile(filepath.Join(f.baseDir, n))
		if err != nil {
			continue // optional files
		}
		if err := writeSynced(filepath.Join(dir, n), src); err != nil {
			return fmt.Errorf("train: save model: %w", err)
		}
	}
	return nil
}

var (
	_ Model  = (*Full)(nil)
	_ Params = (*Full)(nil)
)
