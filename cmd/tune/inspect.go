package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/model/safetensors"
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
		Short: "Show what a model folder, safetensors file or adapter folder holds",
		Long: `Inspect reads a Hugging Face model folder (config.json plus model.safetensors or a
sharded model.safetensors.index.json), a single .safetensors file, or a PEFT adapter
folder (adapter_config.json plus adapter_model.safetensors), and prints the
architecture, dtypes, parameter count, every tensor (name, dtype, shape, bytes) and the
total size. Nothing is loaded beyond the headers: it is instant even for 8B models.`,
		Example: `  tune inspect ./Qwen3-8B
  tune inspect ./Qwen3-8B/model-00001-of-00005.safetensors
  tune inspect ./out/legal-adapter --json | jq .parameters`,
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
	if rep.Architecture != "" || rep.ModelType != "" {
		fmt.Fprintf(w, "architecture: %s (model_type %s)\n", rep.Architecture, rep.ModelType)
	}
	if rep.Adapter != nil {
		for _, k := range []string{"peft_type", "base_model_name_or_path", "r", "lora_alpha", "target_modules"} {
			if v, ok := rep.Adapter[k]; ok {
				fmt.Fprintf(w, "%-14s%v\n", k+":", v)
			}
		}
	}
	fmt.Fprintf(w, "files:        %s\n", strings.Join(rep.Files, ", "))
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
