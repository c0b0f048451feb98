package main

import (
	"encoding/json"
	"fmt"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/dist"
	"github.com/tunellm/tune/eval"
)

func newCmdEval(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "eval <measure>",
		Short: "Measure a model: perplexity, KL divergence from a base, benchmark tasks",
		Long:  "Eval measures a model (a Hugging Face folder, a quantized GPTQ/compressed-tensors folder or a .gguf file;\nwith --adapter, a PEFT adapter on it) on a corpus or a benchmark file.\nEvery measure prints a summary, or JSON with --json.",
		Example: `  tune eval ppl --model ./Qwen3-8B --data wiki.test.txt
  tune eval ppl --model ./Qwen3-8B --data test.parquet --ctx 1024 --json
  tune eval ppl --model qwen3-8b-q4_k_m.gguf --data wiki.test.txt`,
	}
	cmd.AddCommand(newCmdEvalPPL(f, nil), newCmdEvalKLD(f, nil), newCmdEvalBench(f, nil))
	return cmd
}

// EvalPPLOptions are the inputs of `tune eval ppl`.
type EvalPPLOptions struct {
	IO         *IOStreams
	ModelDir   string
	AdapterDir string
	Data       string
	Column     string
	Ctx        int
	MaxTokens  int
	JSON       bool
	NProc      int // --nproc-per-node; 0 or 1: one process
}

func newCmdEvalPPL(f *Factory, runF func(*EvalPPLOptions) error) *cobra.Command {
	opts := &EvalPPLOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "ppl --model PATH --data FILE",
		Short: "Perplexity of a model on a text corpus",
		Long: `Perplexity reads a corpus (plain text; JSONL, a JSON list or Parquet with a text
column; rows are joined with a blank line "\n\n"), tokenizes it as one stream (the
tokenizer's BOS is prepended once if it adds one: Llama 3 does, Qwen3 does not), cuts
it into non-overlapping windows of --ctx tokens (the last, shorter one too), runs each
window from position 0, and scores every token except the first of each window.

  ppl = exp(sum of -log p(token | tokens before it in its window) / tokens scored)

This is the non-overlapping (stride = ctx) perplexity of the transformers guide; it
is lower with a longer --ctx, so compare models at the same --ctx.

Under mpirun, srun or torchrun, or with --nproc-per-node N, the windows are split
across the ranks and their NLL sums and token counts added in window order: the
result is bit for bit one process's (docs/SCALING.md).

On a GPU (--device cuda or auto) the windows run through the device-resident pass
(weights uploaded once; per window only the token ids go up and the NLL sum comes
back); quantized and DoRA models, and TUNE_CUDA_PASS=host, run op by op instead.`,
		Example: `  tune eval ppl --model ./Qwen3-8B --data wiki.test.raw
  tune eval ppl --model ./Qwen3-8B --data data/test-00000-of-00001.parquet --column text --json
  tune eval ppl --model ./merged --data legal-heldout.jsonl --ctx 2048 --max-tokens 100000
  tune eval ppl --model ./Qwen3-8B --adapter ./out/legal/adapter --data legal-heldout.jsonl
  tune eval ppl --model qwen3-8b-q4_k_m.gguf --data wiki.test.raw   # a GGUF: its own tokenizer, quantized matmuls
  tune eval ppl --model ./Qwen3-8B --data wiki.test.raw --nproc-per-node 4   # windows split over 4 local processes
  mpirun -np 16 --hostfile hosts tune eval ppl --model ./Qwen3-8B --data wiki.test.raw`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.ModelDir == "" {
				return flagErrorf("--model is required: a Hugging Face model folder, a quantized folder or a .gguf file")
			}
			if opts.Data == "" {
				return flagErrorf("--data is required: a .txt, .jsonl, .json or .parquet file")
			}
			if opts.Ctx < 2 {
				return flagErrorf("--ctx: want at least 2 tokens, got %d", opts.Ctx)
			}
			if opts.MaxTokens < 0 {
				return flagErrorf("--max-tokens: want >= 0 (0 = whole corpus), got %d", opts.MaxTokens)
			}
			if runF != nil {
				return runF(opts)
			}
			return evalPPLRun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.ModelDir, "model", "", modelPathHelp)
	fl.StringVar(&opts.AdapterDir, "adapter", "", "PEFT LoRA adapter folder to apply, unmerged")
	fl.StringVar(&opts.Data, "data", "", "corpus: .txt, .jsonl, .json or .parquet")
	fl.StringVar(&opts.Column, "column", "text", "JSON field or Parquet column holding the text")
	fl.IntVar(&opts.Ctx, "ctx", 512, "window length in tokens")
	fl.IntVar(&opts.MaxTokens, "max-tokens", 0, "score only the first N tokens of the stream (0 = all)")
	fl.BoolVar(&opts.JSON, "json", false, `print {"ppl":..., "nll":..., "tokens":...}`)
	addNprocFlag(fl, &opts.NProc, "evaluate")
	return cmd
}

func evalPPLRun(opts *EvalPPLOptions) error {
	return distRun(opts.IO, opts.NProc, func(c dist.Comm) error { return evalPPLRank(opts, c) })
}

// evalPPLRank is eval ppl as one rank of c (nil: one process).
func evalPPLRank(opts *EvalPPLOptions, c dist.Comm) error {
	tok, err := loadTokenizer(opts.ModelDir)
	if err != nil {
		return err
	}
	text, err := data.JoinTexts(opts.Data, opts.Column)
	if err != nil {
		return err
	}
	ids := tok.Encode(text, true)
	if opts.MaxTokens > 0 && len(ids) > opts.MaxTokens {
		ids = ids[:opts.MaxTokens]
	}
	m, err := loadModel(opts.ModelDir, opts.AdapterDir)
	if err != nil {
		return err
	}
	defer m.Close()

	var bar *progressbar.ProgressBar
	if opts.IO.ErrTTY {
		bar = progressbar.NewOptions(len(ids),
			progressbar.OptionSetWriter(opts.IO.ErrOut),
			progressbar.OptionSetDescription("perplexity"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("tok"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100_000_000),
			progressbar.OptionClearOnFinish(),
		)
	}
	res, err := eval.PerplexityDist(m, ids, opts.Ctx, reducer(c), func(done, total int) {
		if bar != nil {
			bar.Set(done)
		}
	})
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return fmt.Errorf("%s: %w", opts.Data, err)
	}
	if opts.JSON {
		return json.NewEncoder(opts.IO.Out).Encode(res)
	}
	fmt.Fprintf(opts.IO.Out, "perplexity %.4f  (mean NLL %.5f nats over %d tokens, %d windows of %d)\n",
		res.PPL, res.NLL, res.Tokens, res.Windows, res.Ctx)
	return nil
}
