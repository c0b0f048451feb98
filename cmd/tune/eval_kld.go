package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/dist"
	"github.com/tunellm/tune/eval"
)

// EvalKLDOptions are the inputs of `tune eval kld`.
type EvalKLDOptions struct {
	IO         *IOStreams
	BaseDir    string
	ModelDir   string
	AdapterDir string
	Data       string
	Column     string
	Ctx        int
	MaxTokens  int
	AllTokens  bool
	JSON       bool
	NProc      int // --nproc-per-node; 0 or 1: one process
}

func newCmdEvalKLD(f *Factory, runF func(*EvalKLDOptions) error) *cobra.Command {
	opts := &EvalKLDOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "kld --base PATH --model PATH --data FILE",
		Short: "KL divergence of a model's next-token distributions from a base model's",
		Long: `Kld runs a base model and a model (quantized, merged, or the base with --adapter)
over the same windows of a corpus and reports, per scored token, KL(P_base || P_model)
of the next-token distributions, with llama.cpp's summary: mean KLD ± its standard
error, percentiles, mean and RMS Δp (p_model(token) - p_base(token)), "same top p"
(how often both argmaxes agree), both perplexities and ln(PPL(model)/PPL(base)).

Tokens are scored as llama-perplexity --kl-divergence does, so the numbers compare
with what llama.cpp users quote: full windows of --ctx tokens only, BOS as the first
token of each window when the tokenizer adds one, and only the second half of each
window scored (positions ctx/2+1 .. ctx-1). --all-tokens scores like eval ppl instead:
every token but the first of each window, the last partial window too.

Base and model are Hugging Face folders, quantized (GPTQ / compressed-tensors) folders
or .gguf files, in any mix; they must have the same vocabulary.

Under mpirun, srun or torchrun, or with --nproc-per-node N, the windows are split
across the ranks, which exchange every scored token's numbers: the summary is bit
for bit one process's.`,
		Example: `  tune eval kld --base ./Qwen3-8B --model ./Qwen3-8B-int4 --data wiki.test.raw
  tune eval kld --base ./Qwen3-8B --model qwen3-8b-q4_k_m.gguf --data wiki.test.raw
  tune eval kld --base ./Qwen3-8B --model ./Qwen3-8B --adapter ./out/adapter --data held.jsonl --json
  tune eval kld --base ./Qwen3-8B --model ./Qwen3-8B-int4 --data wiki.test.raw --nproc-per-node 2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.BaseDir == "" {
				return flagErrorf("--base is required: the reference model folder")
			}
			if opts.ModelDir == "" {
				return flagErrorf("--model is required: the model folder to compare")
			}
			if opts.Data == "" {
				return flagErrorf("--data is required: a .txt, .jsonl, .json or .parquet file")
			}
			if opts.Ctx < 3 {
				return flagErrorf("--ctx: want at least 3 tokens, got %d", opts.Ctx)
			}
			if opts.MaxTokens < 0 {
				return flagErrorf("--max-tokens: want >= 0 (0 = whole corpus), got %d", opts.MaxTokens)
			}
			if runF != nil {
				return runF(opts)
			}
			return evalKLDRun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.BaseDir, "base", "", "reference model (P_base): a Hugging Face folder, a quantized folder or a .gguf file")
	fl.StringVar(&opts.ModelDir, "model", "", "model to compare (P_model): a Hugging Face folder, a quantized folder or a .gguf file")
	fl.StringVar(&opts.AdapterDir, "adapter", "", "PEFT LoRA adapter applied to --model, unmerged")
	fl.StringVar(&opts.Data, "data", "", "corpus: .txt, .jsonl, .json or .parquet")
	fl.StringVar(&opts.Column, "column", "text", "JSON field or Parquet column holding the text")
	fl.IntVar(&opts.Ctx, "ctx", 512, "window length in tokens")
	fl.IntVar(&opts.MaxTokens, "max-tokens", 0, "use only the first N tokens of the stream (0 = all)")
	fl.BoolVar(&opts.AllTokens, "all-tokens", false, "score every token but the first of each window, as eval ppl does, instead of llama.cpp's second half")
	fl.BoolVar(&opts.JSON, "json", false, "print the summary as JSON")
	addNprocFlag(fl, &opts.NProc, "evaluate")
	return cmd
}

// readCorpus joins a corpus' rows with a blank line, as eval ppl does.
func readCorpus(path, column string) (string, error) {
	var sb strings.Builder
	rows := 0
	err := data.ReadTexts(path, column, func(s string) error {
		if rows > 0 {
			sb.WriteString("\n\n")
		}
		sb.WriteString(s)
		rows++
		return nil
	})
	return sb.String(), err
}

func evalKLDRun(opts *EvalKLDOptions) error {
	return distRun(opts.IO, opts.NProc, func(c dist.Comm) error { return evalKLDRank(opts, c) })
}

// evalKLDRank is eval kld as one rank of c (nil: one process).
func evalKLDRank(opts *EvalKLDOptions, c dist.Comm) error {
	if err := sameTokenizer(opts.BaseDir, opts.ModelDir, eval.SameTokenizer); err != nil {
		return err
	}
	tok, err := loadTokenizer(opts.BaseDir)
	if err != nil {
		return err
	}
	text, err := readCorpus(opts.Data, opts.Column)
	if err != nil {
		return err
	}
	ids := tok.Encode(text, true)
	if opts.MaxTokens > 0 && len(ids) > opts.MaxTokens {
		ids = ids[:opts.MaxTokens]
	}
	ko := eval.KLDOptions{Ctx: opts.Ctx, AllTokens: opts.AllTokens, BOS: -1}
	if bos, ok := tok.BOS(); ok && tok.AddsBOS() {
		ko.BOS = bos
	}
	base, err := loadModel(opts.BaseDir, "")
	if err != nil {
		return err
	}
	defer base.Close()
	m, err := loadModel(opts.ModelDir, opts.AdapterDir)
	if err != nil {
		return err
	}
	defer m.Close()
	res, err := eval.KLDivergenceDist(base, m, ids, ko, reducer(c), func(done, total int) {
		if opts.IO.ErrTTY {
			fmt.Fprintf(opts.IO.ErrOut, "\rkld: window %d/%d", done, total)
		}
	})
	if opts.IO.ErrTTY {
		fmt.Fprintln(opts.IO.ErrOut)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", opts.Data, err)
	}
	if opts.JSON {
		return json.NewEncoder(opts.IO.Out).Encode(res)
	}
	printKLD(opts.IO.Out, res)
	return nil
}

// printKLD prints llama.cpp's three summary blocks.
func printKLD(w io.Writer, r eval.KLDResult) {
	fmt.Fprintf(w, "%d tokens scored (%s of %d windows of %d)\n\n", r.Tokens, r.Scored, r.Windows, r.Ctx)
	fmt.Fprintf(w, "====== Perplexity statistics ======\n")
	fmt.Fprintf(w, "Mean PPL(Q)                   : %10.6f ± %10.6f\n", r.PPLModel, r.PPLModelUnc)
	fmt.Fprintf(w, "Mean PPL(base)                : %10.6f ± %10.6f\n", r.PPLBase, r.PPLBaseUnc)
	fmt.Fprintf(w, "Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%\n", 100*r.CorLnPPL)
	fmt.Fprintf(w, "Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", r.LnPPLRatio, r.LnPPLRatioUnc)
	fmt.Fprintf(w, "Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", r.PPLRatio, r.PPLRatioUnc)
	fmt.Fprintf(w, "Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f\n\n", r.PPLDiff, r.PPLDiffUnc)
	fmt.Fprintf(w, "====== KL divergence statistics ======\n")
	fmt.Fprintf(w, "Mean    KLD: %10.6f ± %10.6f\n", r.KLDMean, r.KLDUnc)
	k := r.KLD
	for _, row := range []struct {
		name string
		v    float64
	}{{"Maximum", k.Max}, {"99.9%  ", k.P999}, {"99.0%  ", k.P99}, {"95.0%  ", k.P95}, {"90.0%  ", k.P90},
		{"Median ", k.Median}, {"10.0%  ", k.P10}, {" 5.0%  ", k.P5}, {" 1.0%  ", k.P1}, {" 0.1%  ", k.P01}, {"Minimum", k.Min}} {
		fmt.Fprintf(w, "%s KLD: %10.6f\n", row.name, row.v)
	}
	fmt.Fprintf(w, "\n====== Token probability statistics ======\n")
	fmt.Fprintf(w, "Mean    Δp: %6.3f ± %5.3f %%\n", 100*r.DeltaPMean, 100*r.DeltaPUnc)
	d := r.DeltaP
	for _, row := range []struct {
		name string
		v    float64
	}{{"Maximum", d.Max}, {"99.9%  ", d.P999}, {"99.0%  ", d.P99}, {"95.0%  ", d.P95}, {"90.0%  ", d.P90}, {"75.0%  ", d.P75},
		{"Median ", d.Median}, {"25.0%  ", d.P25}, {"10.0%  ", d.P10}, {" 5.0%  ", d.P5}, {" 1.0%  ", d.P1}, {" 0.1%  ", d.P01}, {"Minimum", d.Min}} {
		fmt.Fprintf(w, "%s Δp: %6.3f%%\n", row.name, 100*row.v)
	}
	fmt.Fprintf(w, "RMS Δp    : %6.3f ± %5.3f %%\n", 100*r.DeltaPRMS, 100*r.DeltaPRMSUnc)
	fmt.Fprintf(w, "Same top p: %6.3f ± %5.3f %%\n", 100*r.SameTop, 100*r.SameTopUnc)
}
