package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/quantize/imatrix"
	"github.com/tunellm/tune/quantize/imatrix/collect"
)

// ImatrixOptions are the inputs of `tune imatrix`.
type ImatrixOptions struct {
	IO            *IOStreams
	ModelDir      string
	Data          string
	Column        string
	Ctx           int
	Chunks        int
	ProcessOutput bool
	Out           string
	Force         bool
	JSON          bool
}

func newCmdImatrix(f *Factory, runF func(*ImatrixOptions) error) *cobra.Command {
	opts := &ImatrixOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "imatrix --model DIR --data FILE --out FILE.gguf",
		Short: "Compute an importance matrix for GGUF quantization from calibration text",
		Long: `Imatrix computes what llama.cpp's llama-imatrix computes: for every weight matrix
of the decoder blocks (attn_q/k/v/output, ffn_gate/up/down), the sum over the calibration
tokens of the squared input activations per input column, and how many tokens were
summed. llama-quantize (and tune quantize --imatrix) divides one by the other and uses
the result to weigh the rounding error of each column, which lowers the error of
low-bit types (Q2_K .. Q4_K, Q4_0 ..) where it matters.

The corpus (plain text; JSONL, a JSON list or Parquet with a text column; rows joined
with a blank line) is tokenized as one stream with the tokenizer's special tokens (BOS
for Llama 3, none for Qwen3) and cut into chunks of --ctx tokens; each chunk runs from
position 0, its first token replaced by BOS when the tokenizer adds one, as
llama-imatrix does. At least 2 × --ctx tokens are needed; a last partial chunk is
dropped. output.weight is collected only with --process-output and an untied head.

The file is llama.cpp's GGUF imatrix format (<tensor>.in_sum2, <tensor>.counts,
imatrix.* keys), or its legacy binary format when --out ends in .dat; both load in
llama-quantize --imatrix.`,
		Example: `  tune imatrix --model ./Qwen3-8B --data wiki.train.raw --out qwen3-8b.imatrix.gguf
  tune imatrix --model ./merged --data calib.jsonl --ctx 512 --chunks 100 --out imatrix.dat --json
  tune quantize --model ./merged --type Q4_K_M --imatrix imatrix.dat --out merged-q4_k_m.gguf`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case opts.ModelDir == "":
				return flagErrorf("--model is required: a Hugging Face model folder")
			case opts.Data == "":
				return flagErrorf("--data is required: a .txt, .jsonl, .json or .parquet file")
			case opts.Out == "":
				return flagErrorf("--out is required: the .gguf (or .dat) file to write")
			case opts.Ctx < 1:
				return flagErrorf("--ctx: want at least 1 token, got %d", opts.Ctx)
			case opts.Chunks < 0:
				return flagErrorf("--chunks: want >= 0 (0 = all), got %d", opts.Chunks)
			}
			if runF != nil {
				return runF(opts)
			}
			return imatrixRun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.ModelDir, "model", "", "Hugging Face model folder")
	fl.StringVar(&opts.Data, "data", "", "calibration corpus: .txt, .jsonl, .json or .parquet")
	fl.StringVar(&opts.Column, "column", "text", "JSON field or Parquet column holding the text")
	fl.IntVar(&opts.Ctx, "ctx", 512, "tokens per chunk (llama-imatrix -c)")
	fl.IntVar(&opts.Chunks, "chunks", 0, "use at most N chunks (0 = all)")
	fl.BoolVar(&opts.ProcessOutput, "process-output", false, "also collect output.weight (untied heads only)")
	fl.StringVar(&opts.Out, "out", "", "output file: GGUF imatrix, or llama.cpp's legacy format if it ends in .dat")
	fl.BoolVar(&opts.Force, "force", false, "replace an existing output file")
	fl.BoolVar(&opts.JSON, "json", false, "print a summary as JSON")
	return cmd
}

func imatrixRun(opts *ImatrixOptions) (err error) {
	if err := resolveModelArgs(context.Background(), opts.IO, &opts.ModelDir); err != nil {
		return err
	}
	if opts.Data, err = resolveDatasetArg(context.Background(), opts.IO, opts.Data); err != nil {
		return err
	}
	if _, err := os.Stat(opts.Out); err == nil && !opts.Force {
		return fmt.Errorf("imatrix: %s exists; use --force to replace it", opts.Out)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("imatrix: %w", err)
	}
	tok, err := loadTokenizer(opts.ModelDir)
	if err != nil {
		return err
	}
	text, err := data.JoinTexts(opts.Data, opts.Column)
	if err != nil {
		return err
	}
	ids := tok.Encode(text, true)
	bos := -1
	if id, ok := tok.BOS(); ok && tok.AddsBOS() {
		bos = id
	}
	m, err := loadModel(opts.ModelDir, "")
	if err != nil {
		return err
	}
	defer m.Close()

	var bar *progressbar.ProgressBar
	co := collect.Options{Ctx: opts.Ctx, Chunks: opts.Chunks, BOS: bos, ProcessOutput: opts.ProcessOutput, Dataset: opts.Data}
	if opts.IO.ErrTTY {
		co.Progress = func(done, total int) {
			if bar == nil {
				bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(opts.IO.ErrOut),
					progressbar.OptionSetDescription("imatrix"), progressbar.OptionShowCount(),
					progressbar.OptionSetItsString("chunk"), progressbar.OptionShowIts(),
					progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionClearOnFinish())
			}
			bar.Set(done)
		}
	}
	start := time.Now()
	mat, err := collect.Run(m, ids, co)
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return fmt.Errorf("%s: %w", opts.Data, err)
	}
	if err := imatrix.Save(opts.Out, mat); err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	format := "gguf"
	if filepath.Ext(opts.Out) == ".dat" {
		format = "dat"
	}
	if opts.JSON {
		return json.NewEncoder(opts.IO.Out).Encode(struct {
			Out     string  `json:"out"`
			Format  string  `json:"format"`
			Entries int     `json:"entries"`
			Chunks  int     `json:"chunks"`
			Ctx     int     `json:"ctx"`
			Tokens  int     `json:"tokens"`
			Corpus  int     `json:"corpus_tokens"`
			Seconds float64 `json:"seconds"`
		}{opts.Out, format, len(mat.Entries), mat.ChunkCount, mat.ChunkSize, mat.ChunkCount * mat.ChunkSize, len(ids), secs})
	}
	fmt.Fprintf(opts.IO.Out, "wrote %s (%s): %d tensors from %d chunks of %d tokens (%d of %d corpus tokens) in %.1fs\n",
		opts.Out, format, len(mat.Entries), mat.ChunkCount, mat.ChunkSize, mat.ChunkCount*mat.ChunkSize, len(ids), secs)
	return nil
}
