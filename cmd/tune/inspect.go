package main

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/tunellm/tune/quantize/wq"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/export"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/gguf"
)

// InspectOptions are the inputs of `tune inspect`.
type InspectOptions struct {
	IO   *IOStreams
	Path string
	JSON bool
}

func newCmdInspect(f *Factory, runF func(*InspectOptions) error) *cobra.Command {
	opts := &InspectOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "inspect PATH",
		Short: "Show what a model folder, safetensors or GGUF file, or adapter folder holds",
		Long: `Inspect reads a Hugging Face model folder (config.json plus model.safetensors or a
sharded model.safetensors.index.json), a single .safetensors file, a PEFT adapter
folder (adapter_config.json plus adapter_model.safetensors) or a GGUF file (its
metadata too), and prints the
architecture, dtypes, parameter count, every tensor (name, dtype, shape, bytes) and the
total size. Nothing is loaded beyond the headers: it is instant even for 8B models.`,
		Example: `  tune inspect ./Qwen3-8B
  tune inspect ./Qwen3-8B/model-00001-of-00005.safetensors
  tune inspect ./out/legal-adapter --json | jq .parameters
  tune inspect ./qwen3-8b-q4_k_m.gguf`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Path = args[0]
			if runF != nil {
				return runF(opts)
			}
			return inspectRun(opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print a JSON object instead of a table")
	return cmd
}

type inspectTensor struct {
	Name  string `json:"name"`
	DType string `json:"dtype"`
	Shape []int  `json:"shape"`
	Bytes int64  `json:"bytes"`
}

type inspectReport struct {
	Path         string            `json:"path"`
	Kind         string            `json:"kind"` // model, adapter or safetensors
	Architecture string            `json:"architecture,omitempty"`
	ModelType    string            `json:"model_type,omitempty"`
	Files        []string          `json:"files"`
	DTypes       map[string]int64  `json:"dtypes"` // parameters per dtype
	Parameters   int64             `json:"parameters"`
	TotalBytes   int64             `json:"total_bytes"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	Quantization string            `json:"quantization,omitempty"` // a GPTQ / compressed-tensors folder's scheme
	Adapter      map[string]any    `json:"adapter,omitempty"`
	Modelfile    *inspectModelfile `json:"modelfile,omitempty"`
	Tensors      []inspectTensor   `json:"tensors"`
}

// inspectModelfile is what an ollama Modelfile declares.
type inspectModelfile struct {
	From       string            `json:"from"`
	FromKind   string            `json:"from_kind,omitempty"` // gguf model, gguf-lora, missing, ...
	Adapter    string            `json:"adapter,omitempty"`
	AdapterOK  string            `json:"adapter_kind,omitempty"`
	Family     string            `json:"template_family,omitempty"`
	Template   string            `json:"template,omitempty"`
	System     string            `json:"system,omitempty"`
	Stop       []string          `json:"stop,omitempty"`
	Parameters map[string]string `json:"parameters,omitempty"`
}

func inspectRun(opts *InspectOptions) error {
	if err := resolveModelArgs(context.Background(), opts.IO, &opts.Path); err != nil {
		return err
	}
	rep, err := inspectPath(opts.Path)
	if err != nil {
		return err
	}
	if opts.JSON {
		enc := json.NewEncoder(opts.IO.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	w := opts.IO.Out
	fmt.Fprintf(w, "path:         %s (%s)\n", rep.Path, rep.Kind)
	switch {
	case rep.ModelType != "":
		fmt.Fprintf(w, "architecture: %s (model_type %s)\n", rep.Architecture, rep.ModelType)
	case rep.Architecture != "":
		fmt.Fprintf(w, "architecture: %s\n", rep.Architecture)
	}
	if rep.Quantization != "" {
		fmt.Fprintf(w, "quantization: %s\n", rep.Quantization)
	}
	if rep.Modelfile != nil {
		return printModelfile(w, rep)
	}
	if rep.Adapter != nil {
		for _, k := range []string{"peft_type", "adapter.type", "base_model_name_or_path", "r", "ranks", "lora_alpha", "pairs", "target_modules", "targets"} {
			if v, ok := rep.Adapter[k]; ok {
				fmt.Fprintf(w, "%-14s%v\n", k+":", v)
			}
		}
	}
	fmt.Fprintf(w, "files:        %s\n", strings.Join(rep.Files, ", "))
	if rep.Kind == "gguf" || rep.Kind == "gguf-lora" {
		keys := make([]string, 0, len(rep.Metadata))
		for k := range rep.Metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintln(w, "metadata:")
		for _, k := range keys {
			v := rep.Metadata[k]
			if strings.ContainsAny(v, "\n\r\t") {
				v = strconv.Quote(v)
			}
			fmt.Fprintf(w, "  %s = %s\n", k, v)
		}
	}
	var dts []string
	for dt, n := range rep.DTypes {
		dts = append(dts, fmt.Sprintf("%s %s", dt, humanCount(n)))
	}
	sort.Strings(dts)
	fmt.Fprintf(w, "dtypes:       %s\n", strings.Join(dts, ", "))
	fmt.Fprintf(w, "parameters:   %s (%d)\n", humanCount(rep.Parameters), rep.Parameters)
	fmt.Fprintf(w, "size:         %s (%d bytes)\n", humanBytes(rep.TotalBytes), rep.TotalBytes)
	fmt.Fprintf(w, "tensors:      %d\n\n", len(rep.Tensors))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tDTYPE\tSHAPE\tBYTES")
	for _, t := range rep.Tensors {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\n", t.Name, t.DType, t.Shape, t.Bytes)
	}
	return tw.Flush()
}

func inspectPath(path string) (*inspectReport, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	if !st.IsDir() && strings.EqualFold(filepath.Ext(path), ".gguf") {
		return inspectGGUF(path)
	}
	if isModelfile(path, st) {
		if st.IsDir() {
			path = filepath.Join(path, "Modelfile")
		}
		return inspectModelfilePath(path)
	}
	rep := &inspectReport{Path: path, Kind: "safetensors", DTypes: map[string]int64{}}
	weights := path
	if st.IsDir() {
		rep.Kind = "model"
		if b, err := os.ReadFile(filepath.Join(path, "adapter_config.json")); err == nil {
			rep.Kind = "adapter"
			if err := json.Unmarshal(b, &rep.Adapter); err != nil {
				return nil, fmt.Errorf("inspect: %s: %v", filepath.Join(path, "adapter_config.json"), err)
			}
			weights = filepath.Join(path, "adapter_model.safetensors")
			if _, err := os.Stat(weights); err != nil {
				return nil, fmt.Errorf("inspect: %s: adapter folder has adapter_config.json but no adapter_model.safetensors", path)
			}
		} else if b, err := os.ReadFile(filepath.Join(path, "config.json")); err == nil {
			var cfg struct {
				ModelType     string   `json:"model_type"`
				Architectures []string `json:"architectures"`
			}
			if err := json.Unmarshal(b, &cfg); err != nil {
				return nil, fmt.Errorf("inspect: %s: %v", filepath.Join(path, "config.json"), err)
			}
			rep.ModelType = cfg.ModelType
			rep.Architecture = strings.Join(cfg.Architectures, ",")
			if wq.IsQuantizedFolder(path) {
				qc, err := wq.ParseQuantizationConfig(b)
				if err != nil {
					return nil, fmt.Errorf("inspect: %s: %v", filepath.Join(path, "config.json"), err)
				}
				rep.Quantization = fmt.Sprintf("%s, %s layout (the I32 tensors pack the codes: parameters below count packed words)", qc.Scheme, qc.Layout)
			}
		}
	}
	r, err := safetensors.Open(weights)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	for _, f := range r.Files() {
		rep.Files = append(rep.Files, filepath.Base(f))
	}
	rep.Metadata = r.Metadata()
	for _, name := range r.Names() {
		t, err := r.Tensor(name)
		if err != nil {
			return nil, err
		}
		n := int64(t.NumElements())
		rep.Tensors = append(rep.Tensors, inspectTensor{Name: name, DType: string(t.DType), Shape: t.Shape, Bytes: int64(len(t.Data))})
		rep.DTypes[string(t.DType)] += n
		rep.Parameters += n
		rep.TotalBytes += int64(len(t.Data))
	}
	if rep.Tensors == nil {
		rep.Tensors = []inspectTensor{}
	}
	return rep, nil
}

// inspectGGUF reports a GGUF file: its metadata (arrays summarised by length) and
// tensor table, with llama.cpp's tensor type names.
func inspectGGUF(path string) (*inspectReport, error) {
	f, err := gguf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rep := &inspectReport{Path: path, Kind: "gguf", Files: []string{filepath.Base(path)}, DTypes: map[string]int64{}, Metadata: map[string]string{}}
	for _, kv := range f.KVs {
		rep.Metadata[kv.Key] = ggufValueString(kv.Value)
	}
	if a, ok := f.Value("general.architecture"); ok {
		rep.Architecture = fmt.Sprint(a)
	}
	for _, t := range f.Tensors {
		n := int64(1)
		for _, d := range t.Shape {
			n *= int64(d)
		}
		rep.Tensors = append(rep.Tensors, inspectTensor{Name: t.Name, DType: t.Type.String(), Shape: t.Shape, Bytes: t.Size})
		rep.DTypes[t.Type.String()] += n
		rep.Parameters += n
		rep.TotalBytes += t.Size
	}
	if rep.Tensors == nil {
		rep.Tensors = []inspectTensor{}
	}
	if t, _ := f.Value("general.type"); t == "adapter" {
		rep.Kind = "gguf-lora"
		rep.Adapter = ggufLoRASummary(f)
	}
	return rep, nil
}

// ggufLoRASummary describes a llama.cpp LoRA adapter file: its alpha, the
// lora_a/lora_b pairs, their ranks and the base tensors they adapt.
func ggufLoRASummary(f *gguf.File) map[string]any {
	out := map[string]any{}
	if v, ok := f.Value("adapter.type"); ok {
		out["adapter.type"] = v
	}
	if v, ok := f.Value("adapter.lora.alpha"); ok {
		if a, ok := v.(float32); ok {
			out["lora_alpha"] = float64(a)
		}
	}
	pairs, unpaired := 0, 0
	ranks := map[int]bool{}
	targets := map[string]int{}
	for _, t := range f.Tensors {
		base, ok := strings.CutSuffix(t.Name, ".lora_a")
		if !ok {
			continue
		}
		b, ok := f.Tensor(base + ".lora_b")
		if !ok {
			unpaired++
			continue
		}
		pairs++
		if len(b.Shape) == 2 {
			ranks[b.Shape[1]] = true
		}
		parts := strings.Split(base, ".")
		if len(parts) >= 3 && parts[0] == "blk" {
			targets[parts[2]]++
		} else {
			targets[parts[0]]++
		}
	}
	out["pairs"] = pairs
	if unpaired > 0 {
		out["unpaired_lora_a"] = unpaired
	}
	var rs []int
	for r := range ranks {
		rs = append(rs, r)
	}
	sort.Ints(rs)
	out["ranks"] = rs
	var ts []string
	for name, n := range targets {
		ts = append(ts, fmt.Sprintf("%s x%d", name, n))
	}
	sort.Strings(ts)
	out["targets"] = ts
	return out
}

// isModelfile: a file named Modelfile (or *.modelfile), or a folder holding
// one and no model or adapter (what tune export ollama writes).
func isModelfile(path string, st os.FileInfo) bool {
	if !st.IsDir() {
		base := filepath.Base(path)
		return base == "Modelfile" || strings.EqualFold(filepath.Ext(base), ".modelfile")
	}
	for _, f := range []string{"config.json", "adapter_config.json"} {
		if _, err := os.Stat(filepath.Join(path, f)); err == nil {
			return false
		}
	}
	_, err := os.Stat(filepath.Join(path, "Modelfile"))
	return err == nil
}

func inspectModelfilePath(path string) (*inspectReport, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	cmds, err := export.ParseModelfile(b)
	if err != nil {
		return nil, fmt.Errorf("inspect: %s: %v", path, err)
	}
	mf := &inspectModelfile{Parameters: map[string]string{}}
	for _, c := range cmds {
		switch c.Name {
		case "FROM":
			mf.From = c.Args
		case "ADAPTER":
			mf.Adapter = c.Args
		case "TEMPLATE":
			mf.Template = c.Args
		case "SYSTEM":
			mf.System = c.Args
		case "PARAMETER":
			k, v, _ := strings.Cut(c.Args, " ")
			if k == "stop" {
				mf.Stop = append(mf.Stop, v)
			} else {
				mf.Parameters[k] = v
			}
		}
	}
	if mf.From == "" {
		return nil, fmt.Errorf("inspect: %s: no FROM instruction", path)
	}
	resolve := func(p string) string {
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(path), p)
		}
		st, err := os.Stat(p)
		switch {
		case err != nil:
			return "not a local file (an ollama model name, or missing)"
		case st.IsDir():
			return "folder"
		case !strings.EqualFold(filepath.Ext(p), ".gguf"):
			return "file"
		}
		f, err := gguf.Open(p)
		if err != nil {
			return "unreadable gguf: " + err.Error()
		}
		defer f.Close()
		if t, _ := f.Value("general.type"); t == "adapter" {
			return "gguf-lora"
		}
		return "gguf model"
	}
	mf.FromKind = resolve(mf.From)
	if mf.Adapter != "" {
		mf.AdapterOK = resolve(mf.Adapter)
	}
	if mf.Template != "" {
		if fam, err := export.DetectFamily(mf.Template); err == nil {
			mf.Family = fam.Name
		}
	}
	if len(mf.Parameters) == 0 {
		mf.Parameters = nil
	}
	return &inspectReport{Path: path, Kind: "modelfile", Files: []string{filepath.Base(path)}, DTypes: map[string]int64{},
		Modelfile: mf, Tensors: []inspectTensor{}}, nil
}

func printModelfile(w io.Writer, rep *inspectReport) error {
	mf := rep.Modelfile
	fmt.Fprintf(w, "from:         %s (%s)\n", mf.From, mf.FromKind)
	if mf.Adapter != "" {
		fmt.Fprintf(w, "adapter:      %s (%s)\n", mf.Adapter, mf.AdapterOK)
	}
	if mf.Template != "" {
		fam := mf.Family
		if fam == "" {
			fam = "unrecognized family"
		}
		fmt.Fprintf(w, "template:     %d bytes (%s)\n", len(mf.Template), fam)
	}
	if len(mf.Stop) > 0 {
		q := make([]string, len(mf.Stop))
		for i, s := range mf.Stop {
			q[i] = strconv.Quote(s)
		}
		fmt.Fprintf(w, "stop:         %s\n", strings.Join(q, ", "))
	}
	keys := make([]string, 0, len(mf.Parameters))
	for k := range mf.Parameters {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "parameter:    %s %s\n", k, mf.Parameters[k])
	}
	if mf.System != "" {
		fmt.Fprintf(w, "system:       %s\n", strconv.Quote(mf.System))
	}
	return nil
}

func ggufValueString(v any) string {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Slice {
		if rv.Len() <= 8 {
			return fmt.Sprint(v)
		}
		return fmt.Sprintf("[%d items: %v %v %v ...]", rv.Len(), rv.Index(0), rv.Index(1), rv.Index(2))
	}
	if s, ok := v.(string); ok && len(s) > 120 {
		return fmt.Sprintf("%s... (%d bytes)", s[:120], len(s))
	}
	return fmt.Sprint(v)
}

func humanCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.2fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.2f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
