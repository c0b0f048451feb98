package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tunellm/tune/dist"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/ggufmodel"
	"github.com/tunellm/tune/pipeline"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/quantize/wq"
	"github.com/tunellm/tune/recipes"
)

// RunOptions are the inputs of `tune run`.
type RunOptions struct {
	IO     *IOStreams
	Recipe string
	Set    []string
	Resume bool
	Force  bool
	JSON   bool
}

func newCmdRun(f *Factory, runF func(*RunOptions) error) *cobra.Command {
	opts := &RunOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "run RECIPE.yaml [--set key=value ...]",
		Short: "Run a recipe's whole pipeline: train, merge, quantize, validate, report",
		Long: `Run trains the recipe's adapter (as tune lora does), folds it into the base (merge:),
writes each quantized output (quantize:), and validates every artifact against its
reference with the recipe's gates (validate:):

  adapter     vs the base: perplexity on validate.data, spot-checks
  merged      vs base+adapter: logits on validate.data within validate.merge_logit_tol
  quantized   vs merged: perplexity, KL divergence, top-1 agreement, spot-checks

Each artifact gets validation.json beside it; the run folder gets manifest.json (every
stage's input and output hashes and outcome), report.html (loss and learning-rate
curves, tokens/s, the artifacts table; self-contained) and report.md.

A re-run skips the stages whose inputs did not change, so a failed quantization is
retried without retraining; --force redoes every stage, training included. A failed
gate leaves the artifact in place, marked failed, and makes the command exit 1 with
the numbers.`,
		Example: `  tune run recipes/legal.yaml
  tune run recipes/legal.yaml --set 'quantize=[{format: gguf, type: Q8_0}]'
  tune run recipes/tiny-pipeline.yaml --force --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Recipe = args[0]
			if opts.Resume && opts.Force {
				return flagErrorf("--resume and --force exclude each other: continue the run, or start over")
			}
			for _, s := range opts.Set {
				if !strings.Contains(s, "=") {
					return flagErrorf("--set %s: want key=value (for example train.lr=1e-4)", s)
				}
			}
			if runF != nil {
				return runF(opts)
			}
			r, err := recipes.Load(opts.Recipe, opts.Set)
			if err != nil {
				return err
			}
			return pipelineRun(opts, r, "run")
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&opts.Set, "set", nil, "override a recipe key: --set train.lr=1e-4 (repeatable)")
	fl.BoolVar(&opts.Resume, "resume", false, "continue an interrupted training from its last checkpoint")
	fl.BoolVar(&opts.Force, "force", false, "redo every stage, training included (deletes the run's checkpoints, metrics and adapter)")
	fl.BoolVar(&opts.JSON, "json", false, "print the summary as JSON")
	return cmd
}

// pipelineRun runs r's pipeline; command (lora or run) is for hints.
func pipelineRun(opts *RunOptions, r *recipes.Recipe, command string) error {
	io := opts.IO
	if l, err := dist.Detect(os.Getenv); err == nil && l.Distributed() {
		// Merging and quantizing would run on every rank, into the same folders.
		return fmt.Errorf("%s: rank %d of %d (%s): the merge, quantize and validate stages run on one process; train under the launcher with `tune lora` and a recipe without merge:, quantize: and validate:, then run `tune run %s` once", r.File, l.Rank, l.Size, l.Launcher, r.File)
	}
	if err := resolveRecipe(context.Background(), io, r); err != nil {
		return err
	}
	var bar *progressbar.ProgressBar
	barStage := ""
	po := pipeline.Options{
		Force: opts.Force,
		Train: func(ctx context.Context, force bool) error {
			_, err := trainRecipe(ctx, io, r, trainFlags{recipe: opts.Recipe, set: opts.Set, resume: opts.Resume,
				force: force, json: opts.JSON, command: command})
			return err
		},
		Log: func(format string, args ...any) {
			if bar != nil {
				bar.Finish()
				bar = nil
			}
			if !opts.JSON {
				fmt.Fprintf(io.ErrOut, format+"\n", args...)
			}
		},
		LoadGGUF: func(path string) (*model.Model, error) { return ggufmodel.LoadModel(path, model.LoadOptions{}) },
		LoadQuantized: func(dir string) (*model.Model, error) {
			return wq.LoadModel(dir, model.LoadOptions{})
		},
		QuantizeInt: func(modelDir, outDir string, q recipes.QuantizeOutput, calib [][]int, progress func(done, total int64)) error {
			_, err := quantize.QuantizeSafetensors(modelDir, outDir, quantize.IntOptions{Bits: q.Bits, GroupSize: q.GroupSize, Sym: q.Sym,
				Layout: q.Layout, Method: q.Method, Calib: calib, Progress: progress,
				Warn: func(msg string) {
					if !opts.JSON {
						fmt.Fprintln(io.ErrOut, "warning:", msg)
					}
				}})
			return err
		},
	}
	if io.ErrTTY && !opts.JSON {
		po.Progress = func(stage string, done, total int64) {
			if bar == nil || barStage != stage {
				bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(io.ErrOut),
					progressbar.OptionSetDescription(stage), progressbar.OptionShowBytes(strings.HasPrefix(stage, "quantize")),
					progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
				barStage = stage
			}
			bar.Set64(done)
		}
	}
	sum, err := pipeline.Run(context.Background(), r, po)
	if bar != nil {
		bar.Finish()
	}
	var ge *pipeline.GateError
	if err != nil && !errors.As(err, &ge) {
		return err
	}
	if opts.JSON {
		if jerr := json.NewEncoder(io.Out).Encode(sum); jerr != nil {
			return jerr
		}
	} else {
		printSummary(io, sum)
	}
	return err
}

func printSummary(io *IOStreams, s *pipeline.Summary) {
	w := io.Out
	for _, a := range s.Artifacts {
		line := fmt.Sprintf("%-18s %-9s %10s", a.Name, a.Status, human(a.Bytes))
		if a.BitsPerWeight > 0 {
			line += fmt.Sprintf("  %.2f bpw", a.BitsPerWeight)
		}
		if v := a.Validation; v != nil {
			if v.Data != "" {
				line += fmt.Sprintf("  ppl %.4f (%+.2f%% vs %s)", v.PPL, v.PPLChangePct, v.Reference)
			}
			if v.KLD != nil {
				line += fmt.Sprintf("  KLD %.5f  top-1 %.2f%%", v.KLD.Mean, 100*v.KLD.SameTop)
			}
			if v.Logits != nil {
				line += fmt.Sprintf("  max |Δlogit| %.2e", v.Logits.MaxAbs)
			}
			for _, b := range v.Bench {
				line += fmt.Sprintf("  %s %.3f (ref %.3f)", b.Task, b.Acc, b.RefAcc)
			}
		}
		if a.Error != "" {
			line += "  " + a.Error
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	fmt.Fprintf(w, "report: %s\n", s.Report)
}
