package main

import (
	"fmt"
	"slices"

	"github.com/spf13/cobra"
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
	mc, err := model.LoadConfig(opts.Base)
	if err != nil {
		return err
	}
	a, err := lora.Load(opts.Adapter, mc)
	if err != nil {
		return err
	}
	if err := lora.MergeWith(opts.Base, opts.Out, a, lora.MergeOptions{DType: opts.DType, Force: opts.Force}); err != nil {
		return err
	}
	fmt.Fprintf(opts.IO.Out, "merged %s into %s: %s\n", opts.Adapter, opts.Base, opts.Out)
	return nil
}
