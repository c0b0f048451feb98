package main

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/dist"
	"github.com/tunellm/tune/eval"
)

// EvalBenchOptions are the inputs of `tune eval bench`.
type EvalBenchOptions struct {
	IO          *IOStreams
	ModelDir    string
	AdapterDir  string
	Task        string
	Data        string
	FewShotData string
	Shots       int
	Limit       int
	Seed        uint64
	JSON        bool
	NProc       int // --nproc-per-node; 0 or 1: one process
}

func newCmdEvalBench(f *Factory, runF func(*EvalBenchOptions) error) *cobra.Command {
	opts := &EvalBenchOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "bench --model PATH --task TASK --data FILE",
		Short: "Benchmark accuracy as lm-evaluation-harness scores it (mmlu, arc, hellaswag, gsm8k, mcq)",
		Long: `Bench scores a model on a benchmark file (Parquet, Arrow or JSONL with the Hugging
Face Hub's columns) exactly as EleutherAI/lm-evaluation-harness does:

  mmlu       question, subject, choices, answer: "The following are multiple choice
             questions (with answers) about {subject}.\n\n{question}\nA. ..\nAnswer:",
             log-likelihood of " A", " B", ...; acc
  arc        question, choices{text,label}, answerKey: "Question: {q}\nAnswer:" + " {choice}";
             acc, acc_norm (log-likelihood / characters of the choice)
  hellaswag  activity_label, ctx_a, ctx_b, endings, label, with harness's preprocess; acc, acc_norm
  gsm8k      question, answer: greedy generation (stops "Question:", "</s>", "<|im_end|>",
             "\n\n", EOS; 256 tokens at most), exact_match with the "strict-match" and
             "flexible-extract" filters
  mcq        question, choices (list), answer (index): your own spot-checks, scored like arc

Few-shot examples (--shots) are formatted as harness does (" " between question and
answer, "\n\n" between examples) and drawn with --seed from the same file minus the
item, or taken from --fewshot-data (the first K for mmlu and gsm8k, as harness's
first_n sampler; mmlu uses the item's subject only). Metrics come with harness's
standard error sqrt(p(1-p)/(n-1)). Under mpirun, srun or torchrun, or with
--nproc-per-node N, the items are split across the ranks (same metrics).`,
		Example: `  tune eval bench --model ./Qwen3-8B --task mmlu --data mmlu/test.parquet --fewshot-data mmlu/dev.parquet --shots 5
  tune eval bench --model ./Qwen3-8B --task arc --data ARC-Easy/test.parquet --limit 200 --json
  tune eval bench --model qwen3-8b-q4_k_m.gguf --task arc --data ARC-Easy/test.parquet --limit 200
  tune eval bench --model ./Qwen3-8B --adapter ./out/adapter --task mcq --data legal-mcq.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.ModelDir == "" {
				return flagErrorf("--model is required: a Hugging Face model folder, a quantized folder or a .gguf file")
			}
			if !slices.Contains(eval.BenchTasks, opts.Task) {
				return flagErrorf("--task %q: want one of %s", opts.Task, strings.Join(eval.BenchTasks, ", "))
			}
			if opts.Data == "" {
				return flagErrorf("--data is required: a .parquet, .arrow or .jsonl file")
			}
			if opts.Shots < 0 {
				return flagErrorf("--shots: want >= 0, got %d", opts.Shots)
			}
			if opts.Limit < 0 {
				return flagErrorf("--limit: want >= 0 (0 = all), got %d", opts.Limit)
			}
			if runF != nil {
				return runF(opts)
			}
			return evalBenchRun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.ModelDir, "model", "", modelPathHelp)
	fl.StringVar(&opts.AdapterDir, "adapter", "", "PEFT LoRA adapter folder to apply, unmerged")
	fl.StringVar(&opts.Task, "task", "", "task: "+strings.Join(eval.BenchTasks, ", "))
	fl.StringVar(&opts.Data, "data", "", "benchmark file: .parquet, .arrow or .jsonl")
	fl.StringVar(&opts.FewShotData, "fewshot-data", "", "file to draw few-shot examples from (default: --data minus the item)")
	fl.IntVar(&opts.Shots, "shots", 0, "few-shot examples per item")
	fl.IntVar(&opts.Limit, "limit", 0, "score only the first N items (0 = all)")
	fl.Uint64Var(&opts.Seed, "seed", 1234, "seed of the few-shot draw")
	fl.BoolVar(&opts.JSON, "json", false, "print the metrics as JSON")
	addNprocFlag(fl, &opts.NProc, "evaluate")
	return cmd
}

func evalBenchRun(opts *EvalBenchOptions) error {
	return distRun(opts.IO, opts.NProc, func(c dist.Comm) error { return evalBenchRank(opts, c) })
}

// evalBenchRank is eval bench as one rank of c (nil: one process).
func evalBenchRank(opts *EvalBenchOptions, c dist.Comm) error {
	items, err := eval.LoadItems(opts.Task, opts.Data)
	if err != nil {
		return err
	}
	var shots []eval.Item
	if opts.FewShotData != "" {
		if shots, err = eval.LoadItems(opts.Task, opts.FewShotData); err != nil {
			return err
		}
	}
	tok, err := loadTokenizer(opts.ModelDir)
	if err != nil {
		return err
	}
	m, err := loadModel(opts.ModelDir, opts.AdapterDir)
	if err != nil {
		return err
	}
	defer m.Close()
	s := &eval.Scorer{M: m, Cfg: m.Config, Tok: tok}
	res, err := eval.BenchDist(s, items, eval.BenchOptions{
		Task: opts.Task, Shots: opts.Shots, Limit: opts.Limit, Seed: opts.Seed, FewShot: shots,
		Progress: func(done, total int) {
			if opts.IO.ErrTTY {
				fmt.Fprintf(opts.IO.ErrOut, "\r%s: %d/%d", opts.Task, done, total)
			}
		},
	}, reducer(c))
	if opts.IO.ErrTTY {
		fmt.Fprintln(opts.IO.ErrOut)
	}
	if err != nil {
		return err
	}
	if opts.JSON {
		for k, v := range res.Metrics { // JSON has no NaN
			if math.IsNaN(v.Stderr) {
				v.Stderr = 0
				res.Metrics[k] = v
			}
		}
		return json.NewEncoder(opts.IO.Out).Encode(res)
	}
	fmt.Fprintf(opts.IO.Out, "%s: %d items, %d-shot\n", res.Task, res.Items, res.Shots)
	names := make([]string, 0, len(res.Metrics))
	for k := range res.Metrics {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		v := res.Metrics[k]
		fmt.Fprintf(opts.IO.Out, "  %-28s %.4f ± %.4f\n", k, v.Value, v.Stderr)
	}
	return nil
}
