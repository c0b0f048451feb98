package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/tokenizer"
)

func newCmdData(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "data <command>",
		Short: "Look at a dataset as training will see it",
		Long: `Data shows how a dataset (Parquet, Arrow, JSONL or JSON; a file, a folder of shards or a
glob) becomes training examples: rendered with the model's chat template, tokenized, and
masked so that the loss covers only what the model should learn to write.`,
		Example: `  tune data preview --data train.jsonl --format chat --model ./Qwen3-8B
  tune data stats --data 'data/train-*.parquet' --format chat --model ./Qwen3-8B --max-seq-len 4096`,
	}
	cmd.AddCommand(newCmdDataPreview(f, nil), newCmdDataStats(f, nil))
	return cmd
}

// DataOptions are the dataset flags shared by `tune data` commands; they mirror the
// recipe's dataset section.
type DataOptions struct {
	Data, Format, ModelDir string
	Columns                map[string]string
	System                 string
	TrainOn                string
	NoEOS                  bool
	SkipBadRows            bool
}

func (o *DataOptions) addFlags(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&o.Data, "data", "", "dataset: a .parquet/.arrow/.jsonl/.json file, a folder of shards or a glob")
	fl.StringVar(&o.Format, "format", "chat", "text, instruction, completion or chat (messages or ShareGPT conversations)")
	fl.StringVar(&o.ModelDir, "model", "", "model folder whose tokenizer and chat template are used")
	fl.StringToStringVar(&o.Columns, "column", nil, "map a field to a column: --column messages=dialog --column output=response")
	fl.StringVar(&o.System, "system", "", "system prompt for conversations that have none")
	fl.StringVar(&o.TrainOn, "train-on", "assistant", "assistant (loss on assistant/completion tokens only) or all")
	fl.BoolVar(&o.NoEOS, "no-eos", false, "text format: do not end each row with the tokenizer's eos_token")
	fl.BoolVar(&o.SkipBadRows, "skip-bad-rows", false, "skip and count rows that cannot become examples instead of failing")
}

func (o *DataOptions) validate() error {
	if o.Data == "" {
		return flagErrorf("--data is required")
	}
	if o.ModelDir == "" {
		return flagErrorf("--model is required: the model folder whose tokenizer and chat template to use")
	}
	if !slices.Contains(data.Formats, o.Format) {
		return flagErrorf("--format: unsupported %q (supported: %s)", o.Format, strings.Join(data.Formats, ", "))
	}
	if o.TrainOn != "assistant" && o.TrainOn != "all" {
		return flagErrorf("--train-on: want assistant or all, got %q", o.TrainOn)
	}
	return nil
}

func (o *DataOptions) config() data.Config {
	cfg := data.Config{Path: o.Data, Format: o.Format, Columns: o.Columns, SystemPrompt: o.System,
		TrainOn: o.TrainOn, SkipBadRows: o.SkipBadRows, TokenizerDir: o.ModelDir}
	if o.NoEOS {
		no := false
		cfg.AddEOS = &no
	}
	return cfg
}

// DataPreviewOptions are the inputs of `tune data preview`.
type DataPreviewOptions struct {
	IO *IOStreams
	DataOptions
	N     int
	JSON  bool
	Color string // auto, always, never
}

func newCmdDataPreview(f *Factory, runF func(*DataPreviewOptions) error) *cobra.Command {
	opts := &DataPreviewOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "preview --data FILE --model DIR",
		Short: "Show the first rows rendered, with the trained tokens highlighted",
		Long: `Preview renders the first N rows in file order exactly as training will (chat template,
tokenizer, label mask), unpacked and untruncated. Tokens the loss covers are shown in
green on a terminal, and between [[ and ]] when the output is piped (--color always|never
overrides). --json prints {"examples":[{"row":..., "ids":[...], "labels":[...]}]} with -100
where no loss is taken, as transformers does.`,
		Example: `  tune data preview --data train.jsonl --model ./Qwen3-8B
  tune data preview --data sharegpt.parquet --model ./Qwen3-8B --column messages=conversations -n 1
  tune data preview --data alpaca.json --format instruction --model ./Qwen3-8B --json | jq '.examples[0].labels'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			if opts.N < 1 {
				return flagErrorf("-n: want at least 1, got %d", opts.N)
			}
			if opts.Color != "auto" && opts.Color != "always" && opts.Color != "never" {
				return flagErrorf("--color: want auto, always or never, got %q", opts.Color)
			}
			if runF != nil {
				return runF(opts)
			}
			return dataPreviewRun(opts)
		},
	}
	opts.addFlags(cmd)
	cmd.Flags().IntVarP(&opts.N, "rows", "n", 3, "how many rows")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print ids and labels as JSON")
	cmd.Flags().StringVar(&opts.Color, "color", "auto", "highlight trained tokens with colour: auto, always or never")
	return cmd
}

func dataPreviewRun(opts *DataPreviewOptions) (err error) {
	if err := resolveModelArgs(context.Background(), opts.IO, &opts.ModelDir); err != nil {
		return err
	}
	if opts.Data, err = resolveDatasetArg(context.Background(), opts.IO, opts.Data); err != nil {
		return err
	}
	tok, err := loadTokenizer(opts.ModelDir)
	if err != nil {
		return err
	}
	exs, err := data.Preview(opts.config(), tok, opts.N)
	if err != nil {
		return err
	}
	if opts.JSON {
		type jex struct {
			Row    string  `json:"row"`
			IDs    []int32 `json:"ids"`
			Labels []int32 `json:"labels"`
		}
		out := struct {
			Examples []jex `json:"examples"`
		}{Examples: []jex{}}
		for _, e := range exs {
			out.Examples = append(out.Examples, jex{Row: e.Ref.String(), IDs: e.IDs, Labels: e.Labels})
		}
		return json.NewEncoder(opts.IO.Out).Encode(out)
	}
	color := opts.Color == "always" || (opts.Color == "auto" && opts.IO.OutTTY)
	for i, e := range exs {
		trained := 0
		for _, l := range e.Labels {
			if l != data.IgnoreIndex {
				trained++
			}
		}
		if i > 0 {
			fmt.Fprintln(opts.IO.Out)
		}
		fmt.Fprintf(opts.IO.Out, "── %s: %d tokens, %d trained ──\n", e.Ref, len(e.IDs), trained)
		writeHighlighted(opts.IO.Out, tok, e, color)
		fmt.Fprintln(opts.IO.Out)
	}
	return nil
}

// writeHighlighted prints an example's text, decoding runs of tokens that share a
// trained/untrained state, and marks the trained runs.
func writeHighlighted(w io.Writer, tok *tokenizer.Tokenizer, e data.Example, color bool) {
	open, close := "[[", "]]"
	if color {
		open, close = "\x1b[32m", "\x1b[0m"
	}
	ids := make([]int, 0, len(e.IDs))
	for i := 0; i < len(e.IDs); {
		on := e.Labels[i] != data.IgnoreIndex
		j := i
		ids = ids[:0]
		for ; j < len(e.IDs) && (e.Labels[j] != data.IgnoreIndex) == on; j++ {
			ids = append(ids, int(e.IDs[j]))
		}
		text := tok.Decode(ids, false)
		if on {
			fmt.Fprint(w, open+text+close)
		} else {
			fmt.Fprint(w, text)
		}
		i = j
	}
}

// DataStatsOptions are the inputs of `tune data stats`.
type DataStatsOptions struct {
	IO *IOStreams
	DataOptions
	MaxSeqLen  int
	NoPacking  bool
	Validation float64
	Seed       uint64
	CacheDir   string
	JSON       bool
}

func newCmdDataStats(f *Factory, runF func(*DataStatsOptions) error) *cobra.Command {
	opts := &DataStatsOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "stats --data FILE --model DIR",
		Short: "Token counts, length histogram, truncation and packing efficiency",
		Long: `Stats prepares the dataset as training does (tokenize, mask, truncate to --max-seq-len,
pack) and reports rows, examples, tokens, trained tokens, how many examples were
truncated, a histogram of example lengths and the packing efficiency (tokens /
(sequences x max_seq_len)). The tokenized dataset is cached (keyed by the data files,
tokenizer, template and settings), so a training run with the same settings starts at once.`,
		Example: `  tune data stats --data train.jsonl --model ./Qwen3-8B
  tune data stats --data 'data/train-*.parquet' --model ./Qwen3-8B --max-seq-len 4096 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			if opts.MaxSeqLen < 2 {
				return flagErrorf("--max-seq-len: want at least 2, got %d", opts.MaxSeqLen)
			}
			if opts.Validation < 0 || opts.Validation >= 1 {
				return flagErrorf("--validation: want a fraction in [0, 1), got %g", opts.Validation)
			}
			if runF != nil {
				return runF(opts)
			}
			return dataStatsRun(opts)
		},
	}
	opts.addFlags(cmd)
	fl := cmd.Flags()
	fl.IntVar(&opts.MaxSeqLen, "max-seq-len", 2048, "truncate examples to this many tokens and pack sequences of this length")
	fl.BoolVar(&opts.NoPacking, "no-packing", false, "one example per sequence (length-grouped batches) instead of packing")
	fl.Float64Var(&opts.Validation, "validation", 0, "fraction of rows held out for validation")
	fl.Uint64Var(&opts.Seed, "seed", 0, "seed of the validation split and shuffling")
	fl.StringVar(&opts.CacheDir, "cache-dir", "", "tokenized-dataset cache (default: $XDG_CACHE_HOME/tune/data)")
	fl.BoolVar(&opts.JSON, "json", false, "print the statistics as JSON")
	return cmd
}

func dataStatsRun(opts *DataStatsOptions) (err error) {
	if err := resolveModelArgs(context.Background(), opts.IO, &opts.ModelDir); err != nil {
		return err
	}
	if opts.Data, err = resolveDatasetArg(context.Background(), opts.IO, opts.Data); err != nil {
		return err
	}
	tok, err := loadTokenizer(opts.ModelDir)
	if err != nil {
		return err
	}
	cfg := opts.config()
	cfg.MaxSeqLen, cfg.Packing, cfg.ValFraction, cfg.Seed, cfg.CacheDir = opts.MaxSeqLen, !opts.NoPacking, opts.Validation, opts.Seed, opts.CacheDir
	var bar *progressbar.ProgressBar
	ds, err := data.Prepare(cfg, tok, func(done, total int64) {
		if !opts.IO.ErrTTY {
			return
		}
		if bar == nil {
			bar = progressbar.NewOptions64(max(total, -1), progressbar.OptionSetWriter(opts.IO.ErrOut),
				progressbar.OptionSetDescription("tokenizing"), progressbar.OptionShowCount(), progressbar.OptionShowIts(),
				progressbar.OptionSetItsString("rows"), progressbar.OptionThrottle(100_000_000), progressbar.OptionClearOnFinish())
		}
		bar.Set64(done)
	})
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return err
	}
	defer ds.Close()
	st := ds.Stats()
	if opts.JSON {
		return json.NewEncoder(opts.IO.Out).Encode(st)
	}
	w := tabwriter.NewWriter(opts.IO.Out, 0, 0, 2, ' ', 0)
	pct := func(a, b int64) string {
		if b == 0 {
			return ""
		}
		return fmt.Sprintf("(%.1f%%)", 100*float64(a)/float64(b))
	}
	fmt.Fprintf(w, "rows\t%d\n", st.Rows)
	if st.BadRows > 0 {
		fmt.Fprintf(w, "bad rows skipped\t%d\t%s\n", st.BadRows, strings.Join(st.BadRowErrors, "; "))
	}
	fmt.Fprintf(w, "examples\t%d\ttrain %d, validation %d\n", st.Examples, st.TrainExamples, st.ValExamples)
	fmt.Fprintf(w, "tokens\t%d\n", st.Tokens)
	fmt.Fprintf(w, "trained tokens\t%d\t%s\n", st.TrainedTokens, pct(st.TrainedTokens, st.Tokens))
	fmt.Fprintf(w, "truncated to %d\t%d\t%s\n", st.MaxSeqLen, st.Truncated, pct(st.Truncated, st.Examples))
	if st.Dropped > 0 {
		fmt.Fprintf(w, "dropped (nothing to train)\t%d\n", st.Dropped)
	}
	fmt.Fprintf(w, "sequences\t%d\ttrain %d, validation %d\n", st.TrainSequences+st.ValSequences, st.TrainSequences, st.ValSequences)
	if st.Packed {
		fmt.Fprintf(w, "packing efficiency\t%.1f%%\n", 100*st.PackingEfficiency)
	}
	if st.FromCache {
		fmt.Fprintf(w, "cache\t%s\t(reused)\n", st.CacheDir)
	}
	w.Flush()
	fmt.Fprintln(opts.IO.Out, "\nexample length (tokens)")
	var most int64
	for _, b := range st.Lengths {
		most = max(most, b.Count)
	}
	lo := 0
	for _, b := range st.Lengths {
		bar := 0
		if most > 0 {
			bar = int(40 * b.Count / most)
		}
		fmt.Fprintf(opts.IO.Out, "  %6d-%-6d %8d %s\n", lo+1, b.UpTo, b.Count, strings.Repeat("█", bar))
		lo = b.UpTo
	}
	return nil
}
