package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
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
	Adapter      map[string]any    `json:"adapter,omitempty"`
	Tensors      []inspectTensor   `json:"tensors"`
}

func inspectRun(opts *InspectOptions) error {
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
	if rep.Adapter != nil {
		for _, k := range []string{"peft_type", "base_model_name_or_path", "r", "lora_alpha", "target_modules"} {
			if v, ok := rep.Adapter[k]; ok {
				fmt.Fprintf(w, "%-14s%v\n", k+":", v)
			}
		}
	}
	fmt.Fprintf(w, "files:        %s\n", strings.Join(rep.Files, ", "))
	if rep.Kind == "gguf" {
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
	return rep, nil
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
