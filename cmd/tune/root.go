package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// version is set at link time: -ldflags "-X main.version=v0.1.0".
var version = ""

// IOStreams are the command's standard streams; tests swap in buffers.
type IOStreams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// ErrTTY is true when ErrOut is a terminal: progress bars go there only then.
	ErrTTY bool
	// OutTTY is true when Out is a terminal: colour goes there only then.
	OutTTY bool
}

// Factory carries what every command needs; commands get it from the root.
type Factory struct {
	IO *IOStreams
}

func defaultFactory() *Factory {
	return &Factory{IO: &IOStreams{
		In:     os.Stdin,
		Out:    os.Stdout,
		ErrOut: os.Stderr,
		ErrTTY: term.IsTerminal(int(os.Stderr.Fd())),
		OutTTY: term.IsTerminal(int(os.Stdout.Fd())),
	}}
}

// FlagError is a usage mistake: the command's usage line is worth printing with it.
type FlagError struct{ Err error }

func (e *FlagError) Error() string { return e.Err.Error() }
func (e *FlagError) Unwrap() error { return e.Err }

func flagErrorf(format string, args ...any) error {
	return &FlagError{Err: fmt.Errorf(format, args...)}
}

func newRootCmd(f *Factory) *cobra.Command {
	root := &cobra.Command{
		Use:   "tune <command>",
		Short: "Fine-tune, compress and evaluate open LLMs from Hugging Face model folders",
		Long: `tune reads a Hugging Face model folder (config.json, *.safetensors, tokenizer.json),
or a Hub id such as Qwen/Qwen3-8B, and computes what transformers computes from it: tokens,
logits, text, perplexity. It trains LoRA adapters on your dataset (tune lora), folds them in
(tune merge), quantizes to GGUF for llama.cpp and ollama or to INT8/INT4 safetensors for vLLM
(tune quantize), measures every result (tune eval), and runs all of it from one recipe with
validation gates and an HTML report (tune run). One binary, no Python.

Start with the demo, on the model and data shipped in the repository (about 5 minutes on 2 cores):
  tune lora --recipe recipes/legal.yaml      # then open runs/legal-micro/report.html`,
		Example: `  tune inspect ./Qwen3-8B
  echo "Hello" | tune tokenize --model Qwen/Qwen3-8B
  tune generate --model ./Qwen3-8B --chat --prompt "Name three rivers."
  tune eval ppl --model ./Qwen3-8B --data wiki.test.txt --ctx 512
  tune lora --recipe recipes/legal.yaml
  tune quantize --model ./merged --bits 4 --out qwen3-legal-q4_k_m.gguf
  tune quantize --model ./merged --format safetensors --bits 4 --out qwen3-legal-int4
  tune export ollama --model qwen3-legal-q4_k_m.gguf --base ./merged --out ollama/`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(f.IO.Out)
	root.SetErr(f.IO.ErrOut)
	root.SetIn(f.IO.In)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &FlagError{Err: err}
	})
	addDeviceFlag(root)
	addThreadsFlag(root)
	qmatmulDefault()
	root.AddCommand(newCmdEnv(f, nil))
	root.AddCommand(newCmdDownload(f, nil))
	root.AddCommand(newCmdExport(f))
	root.AddCommand(newCmdImatrix(f, nil))
	root.AddCommand(
		newCmdVersion(f),
		newCmdInspect(f, nil),
		newCmdTokenize(f, nil),
		newCmdGenerate(f, nil),
		newCmdEval(f),
		newCmdData(f),
		newCmdLoRA(f, nil), newCmdMerge(f, nil),
		newCmdQuantize(f, nil),
		newCmdRun(f, nil),
	)
	return root
}

func versionString() string {
	v := version
	if v == "" {
		v = "dev"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 12 {
					v = "dev-" + s.Value[:12]
				}
			}
		}
	}
	return v
}

func newCmdVersion(f *Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version of tune",
		Example: "  tune version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintf(f.IO.Out, "tune %s\n", versionString())
			return nil
		},
	}
}

// exitCode maps an error to the process exit status: 2 for usage errors, 1 otherwise.
func exitCode(err error) int {
	var fe *FlagError
	if errors.As(err, &fe) {
		return 2
	}
	return 1
}

// allCommands lists c and its subcommands, depth first (cobra's own help and
// completion commands excluded).
func allCommands(c *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{c}
	for _, s := range c.Commands() {
		if s.Name() == "help" || s.Name() == "completion" {
			continue
		}
		out = append(out, allCommands(s)...)
	}
	return out
}
