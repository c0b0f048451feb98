package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/tunellm/tune/recipes"
	"github.com/tunellm/tune/train"
)

// LoRAOptions are the inputs of `tune lora`.
type LoRAOptions struct {
	IO     *IOStreams
	Recipe string
	Set    []string
	Resume bool
	Force  bool
	DryRun bool
	JSON   bool
}

func newCmdLoRA(f *Factory, runF func(*LoRAOptions) error) *cobra.Command {
	opts := &LoRAOptions{IO: f.IO}
	dopts := &distOptions{}
	cmd := &cobra.Command{
		Use:   "lora --recipe FILE [--set key=value ...]",
		Short: "Fine-tune a LoRA adapter from a YAML recipe",
		Long: `LoRA trains a low-rank adapter on the linear layers of a Hugging Face model, as PEFT
does, from a recipe: a YAML file of sections model, dataset, lora, train and output.
--set key=value overrides one key (typed by the key; lists as [a,b]).

The run folder (output.dir) receives metrics.jsonl (one JSON line per step and per
validation), checkpoints/step-N/ (every train.save_every steps, and on Ctrl-C), and the
final PEFT adapter in adapter/. An interrupted run continues with --resume, and ends
bit-identical to one that was never interrupted.

A recipe that also has merge:, quantize: or validate: keys runs the whole pipeline
after training, as tune run does: merged/, each quantized output, validation.json
beside every artifact, gates, manifest.json and report.html (see tune run --help).

Recipe keys (relative paths are relative to the recipe's folder):

` + indent(recipes.Explain(), "  "),
		Example: `  tune lora --recipe recipes/legal.yaml
  tune lora --recipe recipes/legal.yaml --dry-run
  tune lora --recipe recipes/legal.yaml --set train.lr=1e-4 --set lora.r=32
  tune lora --recipe recipes/legal.yaml --resume
  tune lora --recipe recipes/micro-base.yaml --nproc-per-node 2      # data parallel on one machine
  mpirun -np 8 tune lora --recipe r.yaml                             # or srun, or torchrun's RANK/WORLD_SIZE`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Recipe == "" {
				return flagErrorf("--recipe is required: a YAML recipe (see recipes/legal.yaml)")
			}
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
			return loraDist(opts, dopts, func() error { return loraRun(opts) })
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Recipe, "recipe", "", "YAML recipe")
	fl.StringArrayVar(&opts.Set, "set", nil, "override a recipe key: --set train.lr=1e-4 (repeatable)")
	fl.BoolVar(&opts.Resume, "resume", false, "continue the run in output.dir from its last checkpoint")
	fl.BoolVar(&opts.Force, "force", false, "start over in an output.dir that holds another run (deletes its checkpoints, metrics and adapter)")
	fl.BoolVar(&opts.DryRun, "dry-run", false, "print the resolved recipe, token and step counts and a memory estimate; train nothing")
	fl.BoolVar(&opts.JSON, "json", false, "print the summary (or the dry run) as JSON")
	dopts.addFlags(fl)
	return cmd
}

func indent(s, pre string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = pre + l
		}
	}
	return strings.Join(lines, "\n")
}

func loraRun(opts *LoRAOptions) error {
	r, err := recipes.Load(opts.Recipe, opts.Set)
	if err != nil {
		return err
	}
	if r.Pipeline() && !opts.DryRun {
		// merge:, quantize: or validate: in the recipe: the whole pipeline.
		return pipelineRun(&RunOptions{IO: opts.IO, Recipe: opts.Recipe, Set: opts.Set, Resume: opts.Resume, Force: opts.Force, JSON: opts.JSON}, r, "lora")
	}
	res, err := trainRecipe(context.Background(), opts.IO, r, trainFlags{recipe: opts.Recipe, set: opts.Set, resume: opts.Resume,
		force: opts.Force, dryRun: opts.DryRun, json: opts.JSON, command: "lora"})
	if err != nil || res == nil {
		return err
	}
	if opts.JSON {
		return json.NewEncoder(opts.IO.Out).Encode(res)
	}
	fmt.Fprintf(opts.IO.Out, "trained %d steps: final loss %.4f", res.Steps, res.Loss)
	if res.Eval != nil {
		fmt.Fprintf(opts.IO.Out, ", validation loss %.4f (ppl %.3f)", res.Eval.EvalLoss, res.Eval.EvalPPL)
	}
	fmt.Fprintf(opts.IO.Out, "\nadapter: %s\n", res.AdapterDir)
	return nil
}

// trainFlags are the command-line choices trainRecipe needs.
type trainFlags struct {
	recipe                      string
	set                         []string
	resume, force, dryRun, json bool
	command                     string // lora or run, for the resume hint
}

// trainRecipe prepares and runs the training of r with progress on stderr.
// A dry run prints the plan and returns a nil result.
func trainRecipe(parent context.Context, io *IOStreams, r *recipes.Recipe, fl trainFlags) (*train.Result, error) {
	if err := resolveRecipe(parent, io, r); err != nil {
		return nil, err
	}
	var bar *progressbar.ProgressBar
	dataProgress := func(done, total int64) {}
	if io.ErrTTY && !fl.json {
		dataProgress = func(done, total int64) {
			if bar == nil {
				bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(io.ErrOut),
					progressbar.OptionSetDescription("tokenizing"), progressbar.OptionShowCount(),
					progressbar.OptionThrottle(100_000_000), progressbar.OptionClearOnFinish())
			}
			bar.Set64(done)
		}
	}
	sopts := recipes.SetupOptions{DataProgress: dataProgress, DryRun: fl.dryRun,
		Warn: func(s string) { fmt.Fprintln(io.ErrOut, "warning: "+s) }}
	devDesc := ""
	if !fl.dryRun {
		// --device, else train.device: a missing GPU is an error here, before
		// anything is loaded (auto falls back to the CPU with a notice).
		be, desc, err := trainBackend(r, io.ErrOut)
		if err != nil {
			return nil, err
		}
		if err := setupBackend(&sopts, be); err != nil {
			return nil, err
		}
		devDesc = desc
	}
	job, err := recipes.Setup(r, sopts)
	if bar != nil {
		bar.Finish()
		bar = nil
	}
	if err != nil {
		return nil, err
	}
	defer job.Close()
	plan := job.Plan()
	if fl.dryRun {
		if fl.json {
			return nil, json.NewEncoder(io.Out).Encode(plan)
		}
		fmt.Fprintf(io.Out, "# resolved recipe %s\n%s\n", fl.recipe, r.YAML())
		printPlan(io, plan)
		return nil, nil
	}
	if !fl.json {
		printPlan(io, plan)
		fmt.Fprintf(io.Out, "device    %s\n", devDesc)
	}

	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal the default action returns: a second Ctrl-C
	// ends the process at once (checkpoints are atomic, so that is safe).
	context.AfterFunc(ctx, stop)
	if io.ErrTTY && !fl.json {
		bar = progressbar.NewOptions(plan.TotalSteps,
			progressbar.OptionSetWriter(io.ErrOut),
			progressbar.OptionSetDescription("training"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(200_000_000),
		)
	}
	progress := func(e train.Event) {
		switch {
		case e.Train != nil && bar != nil:
			bar.Describe(fmt.Sprintf("step %d/%d loss %.4f lr %.2e %.0f tok/s%s", e.Step, e.TotalSteps, e.Train.Loss, e.Train.LR, e.Train.TokensPerS, mfuText(e.Train.MFU)))
			bar.Set(e.Step)
		case e.Eval != nil && !fl.json:
			if bar != nil {
				bar.Clear()
			}
			fmt.Fprintf(io.ErrOut, "step %d: validation loss %.4f (ppl %.3f, %d tokens)\n", e.Eval.Step, e.Eval.EvalLoss, e.Eval.EvalPPL, e.Eval.EvalTokens)
		case e.Train != nil && !fl.json && !io.ErrTTY && (e.Step == 1 || e.Step%10 == 0 || e.Step == e.TotalSteps):
			fmt.Fprintf(io.ErrOut, "step %d/%d: loss %.4f, grad norm %.3f, lr %.3g, %.0f tok/s%s\n",
				e.Step, e.TotalSteps, e.Train.Loss, e.Train.GradNorm, e.Train.LR, e.Train.TokensPerS, mfuText(e.Train.MFU))
		}
	}
	res, err := trainCatching(func() (*train.Result, error) {
		return job.Train(ctx, recipes.TrainOptions{Resume: fl.resume, Force: fl.force, Progress: progress,
			Log: func(format string, args ...any) {
				if bar != nil {
					bar.Clear()
				}
				if !fl.json {
					fmt.Fprintf(io.ErrOut, format+"\n", args...)
				}
			}})
	})
	if bar != nil {
		bar.Finish()
		fmt.Fprintln(io.ErrOut)
	}
	if err != nil {
		var ie *train.InterruptedError
		if errors.As(err, &ie) {
			return nil, fmt.Errorf("interrupted after step %d of %d; checkpoint saved to %s\nresume with: tune %s %s%s --resume",
				ie.Step, plan.TotalSteps, ie.Checkpoint, fl.command, recipeArg(fl), setFlags(fl.set))
		}
		return nil, err
	}
	return res, nil
}

// mfuText is " MFU 12.3%" for the progress line (nothing when the
// trainer reports no MFU).
func mfuText(mfu float64) string {
	switch {
	case mfu <= 0:
		return ""
	case mfu < 0.001:
		return fmt.Sprintf(" MFU %.3f%%", 100*mfu)
	}
	return fmt.Sprintf(" MFU %.1f%%", 100*mfu)
}

func recipeArg(fl trainFlags) string {
	if fl.command == "run" {
		return fl.recipe
	}
	return "--recipe " + fl.recipe
}

func setFlags(sets []string) string {
	var sb strings.Builder
	for _, s := range sets {
		sb.WriteString(" --set '" + strings.ReplaceAll(s, "'", `'\''`) + "'")
	}
	return sb.String()
}

func printPlan(io *IOStreams, p *recipes.Plan) {
	w := io.Out
	fmt.Fprintf(w, "model     %s (%s, %d layers)\n", p.Model, p.Architecture, p.Layers)
	fmt.Fprintf(w, "data      %d examples (%d train, %d validation), %d tokens, %d trained; %d train sequences of up to %d tokens",
		p.Data.Examples, p.Data.TrainExamples, p.Data.ValExamples, p.Data.Tokens, p.Data.TrainedTokens, p.Data.TrainSequences, p.Data.MaxSeqLen)
	if p.Data.Packed {
		fmt.Fprintf(w, " (packed, %.0f%% full)", 100*p.Data.PackingEfficiency)
	}
	fmt.Fprintln(w)
	if p.Data.Truncated > 0 || p.Data.Dropped > 0 {
		fmt.Fprintf(w, "          %d examples cut to max_seq_len, %d dropped (no trained token left)\n", p.Data.Truncated, p.Data.Dropped)
	}
	fmt.Fprintf(w, "training  %s: %d trainable parameters; %d steps (%d per epoch) of %d sequences\n",
		p.Mode, p.TrainableParams, p.TotalSteps, p.StepsPerEpoch, p.SequencesPerStep)
	m := p.Memory
	base := ""
	if m.BaseQuantized > 0 {
		base = fmt.Sprintf(", %s base %s (in memory, was %s mapped)", m.BaseQuant, human(m.BaseQuantized), human(m.BaseDense))
	}
	fmt.Fprintf(w, "memory    ~%s: weights %s (mapped)%s, activations %s, trainable+grads+AdamW %s\n",
		human(m.Total), human(m.Weights), base, human(m.Activations), human(m.Trainable))
	fmt.Fprintf(w, "output    %s\n", p.OutputDir)
}

func human(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
