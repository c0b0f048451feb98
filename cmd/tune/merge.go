package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/export"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// MergeOptions are the inputs of `tune merge`.
type MergeOptions struct {
	IO      *IOStreams
	Base    string
	Adapter string
	Out     string
	DType   string
	Force   bool
}

func newCmdMerge(f *Factory, runF func(*MergeOptions) error) *cobra.Command {
	opts := &MergeOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "merge --base DIR --adapter DIR --out DIR",
		Short: "Merge a LoRA adapter into its base model",
		Long: `Merge writes a complete Hugging Face model folder whose weights are the base's with
each adapted layer's update folded in, W' = W + scaling·B·A (PEFT's merge_and_unload):
the result runs anywhere a model folder runs, without the adapter.

The adapter is a PEFT folder (adapter_config.json, adapter_model.safetensors), from
tune lora or from PEFT. --dtype picks the output dtype (default: the base's).`,
		Example: `  tune merge --base ./Qwen3-8B --adapter runs/legal-qwen3-lora/adapter --out ./Qwen3-8B-legal
  tune merge --base ./Qwen3-8B --adapter ./adapter --out ./merged --dtype f32 --force`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case opts.Base == "":
				return flagErrorf("--base is required: the Hugging Face model folder the adapter was trained on")
			case opts.Adapter == "":
				return flagErrorf("--adapter is required: a PEFT adapter folder")
			case opts.Out == "":
				return flagErrorf("--out is required: the folder to write the merged model to")
			}
			if opts.DType != "" && !slices.Contains([]string{"bf16", "f16", "f32"}, opts.DType) {
				return flagErrorf("--dtype: want bf16, f16 or f32, got %q", opts.DType)
			}
			if runF != nil {
				return runF(opts)
			}
			return mergeRun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Base, "base", "", "base model folder")
	fl.StringVar(&opts.Adapter, "adapter", "", "PEFT adapter folder")
	fl.StringVar(&opts.Out, "out", "", "output model folder")
	fl.StringVar(&opts.DType, "dtype", "", "output dtype: bf16, f16 or f32 (default: the base's)")
	fl.BoolVar(&opts.Force, "force", false, "replace an existing output folder")
	return cmd
}

func mergeRun(opts *MergeOptions) error {
	// Hub ids become their cached snapshot folders; the card keeps the id.
	baseDir, adapterDir := opts.Base, opts.Adapter
	if err := resolveModelArgs(context.Background(), opts.IO, &baseDir, &adapterDir); err != nil {
		return err
	}
	mc, err := model.LoadConfig(baseDir)
	if err != nil {
		return err
	}
	a, err := lora.Load(adapterDir, mc)
	if err != nil {
		return err
	}
	// Same shapes, another name: a fine-tune of the base, or a mistake.
	if err := a.CheckBase(opts.Base); err != nil {
		fmt.Fprintf(opts.IO.ErrOut, "warning: %v: merging anyway (the shapes match)\n", err)
	}
	if err := lora.MergeWith(baseDir, opts.Out, a, lora.MergeOptions{DType: opts.DType, Force: opts.Force}); err != nil {
		return err
	}
	// The merged folder's chat template must render what training rendered.
	if err := export.CheckFolderParity(baseDir, opts.Out); err != nil {
		return err
	}
	if err := export.WriteModelCard(opts.Out, mergeCard(opts, baseDir, a.Config())); err != nil {
		return err
	}
	fmt.Fprintf(opts.IO.Out, "merged %s into %s: %s\n", opts.Adapter, opts.Base, opts.Out)
	return nil
}

// mergeCard is the model card of a merged folder: the base, the adapter's
// LoRA settings, how to load and serve it, the base's licence.
func mergeCard(opts *MergeOptions, baseDir string, c lora.Config) export.Card {
	base := c.BaseModel
	if base == "" {
		base = opts.Base
	}
	license, link := export.BaseLicense(baseDir)
	targets := strings.Join(c.TargetModules, ", ")
	if targets == "" {
		targets = "q_proj, v_proj (PEFT's default)"
	}
	params := [][2]string{{"r", fmt.Sprint(c.R)}, {"lora_alpha", fmt.Sprint(c.Alpha)}, {"target_modules", targets},
		{"use_rslora", fmt.Sprint(c.UseRSLoRA)}, {"use_dora", fmt.Sprint(c.UseDoRA)}}
	if c.LayersToTransform != nil {
		params = append(params, [2]string{"layers_to_transform", fmt.Sprint(c.LayersToTransform)})
	}
	dtype := opts.DType
	if dtype == "" {
		dtype = "the base's"
	}
	params = append(params, [2]string{"merged dtype", dtype})
	cmd := fmt.Sprintf("tune merge --base %s --adapter %s --out %s", opts.Base, opts.Adapter, opts.Out)
	if opts.DType != "" {
		cmd += " --dtype " + opts.DType
	}
	return export.Card{
		Title:     filepath.Base(filepath.Clean(opts.Out)),
		Kind:      "model",
		BaseModel: base, License: license, LicenseLink: link,
		Description: fmt.Sprintf("The base model with the LoRA adapter `%s` merged into its weights (W' = W + scaling·B·A, PEFT's merge_and_unload): a complete model folder that runs without the adapter.",
			opts.Adapter),
		Params:  params,
		Command: cmd,
	}
}
