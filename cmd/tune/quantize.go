package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/tunellm/tune/quantize"
)

// QuantizeOptions are the inputs of `tune quantize`.
type QuantizeOptions struct {
	IO       *IOStreams
	ModelDir string
	Format   string
	Type     string // a llama.cpp mix name, canonical case; set from --bits when empty
	Bits     int
	Out      string
	Force    bool
	JSON     bool
	Workers  int
}

// bitsMix is the mix each --bits picks: llama.cpp's usual defaults.
var bitsMix = map[int]string{4: "Q4_K_M", 8: "Q8_0"}

func newCmdQuantize(f *Factory, runF func(*QuantizeOptions) error) *cobra.Command {
	opts := &QuantizeOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "quantize --model DIR --format gguf --out FILE.gguf",
		Short: "Quantize a model folder to a GGUF file llama.cpp runs",
		Long: `Quantize converts a Hugging Face model folder (qwen3, qwen2, llama) into a GGUF file
with llama.cpp's quantization types, bit-exact with llama.cpp's reference quantizers.

--type names a llama-quantize mix: ` + strings.Join(quantize.MixNames(), ", ") + `.
A mix keeps some tensors at higher precision as llama.cpp does (output.weight in Q6_K,
attn_v and ffn_down bumped in some layers for Q4_K_M and Q5_K_M, norms in F32). Rows
that are not a whole number of a type's blocks fall back as llama.cpp does, with a
warning. --bits 4 means Q4_K_M and --bits 8 Q8_0 (the default is --bits 4).
Importance matrices (imatrix) are not supported yet.`,
		Example: `  tune quantize --model ./Qwen3-8B --format gguf --out qwen3-8b-q4_k_m.gguf
  tune quantize --model ./Qwen3-8B --format gguf --bits 8 --out qwen3-8b-q8_0.gguf
  tune quantize --model ./merged --format gguf --type Q5_K_M --out merged.gguf --force --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case opts.ModelDir == "":
				return flagErrorf("--model is required: a Hugging Face model folder")
			case opts.Out == "":
				return flagErrorf("--out is required: the .gguf file to write")
			case opts.Format != "gguf":
				return flagErrorf("--format: want gguf, got %q", opts.Format)
			}
			bitsSet := cmd.Flags().Changed("bits")
			if bitsSet && opts.Type != "" {
				return flagErrorf("--bits and --type are exclusive: --bits 4 is --type Q4_K_M, --bits 8 is --type Q8_0")
			}
			if opts.Type == "" {
				m, ok := bitsMix[opts.Bits]
				if !ok {
					return flagErrorf("--bits: want 4 or 8, got %d", opts.Bits)
				}
				opts.Type = m
			}
			m, err := quantize.ParseMix(opts.Type)
			if err != nil {
				return flagErrorf("--type: unknown type %q, want one of %s", opts.Type, strings.Join(quantize.MixNames(), ", "))
			}
			opts.Type = m.Name
			if opts.Workers < 0 {
				return flagErrorf("--workers: want >= 0, got %d", opts.Workers)
			}
			if runF != nil {
				return runF(opts)
			}
			return quantizeRun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.ModelDir, "model", "", "Hugging Face model folder")
	fl.StringVar(&opts.Format, "format", "gguf", "output format: gguf")
	fl.StringVar(&opts.Type, "type", "", "llama.cpp mix: "+strings.Join(quantize.MixNames(), ", "))
	fl.IntVar(&opts.Bits, "bits", 4, "4 (Q4_K_M) or 8 (Q8_0); ignored with --type")
	fl.StringVar(&opts.Out, "out", "", "output .gguf file")
	fl.BoolVar(&opts.Force, "force", false, "replace an existing output file")
	fl.BoolVar(&opts.JSON, "json", false, "print a summary as JSON")
	fl.IntVar(&opts.Workers, "workers", 0, "quantization goroutines (0: one per CPU)")
	return cmd
}

func quantizeRun(opts *QuantizeOptions) error {
	if _, err := os.Stat(opts.Out); err == nil && !opts.Force {
		return fmt.Errorf("quantize: %s exists; use --force to replace it", opts.Out)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("quantize: %w", err)
	}
	workers := opts.Workers
	if workers == 0 {
		workers = runtime.NumCPU()
	}
	var bar *progressbar.ProgressBar
	qo := quantize.GGUFOptions{
		Type:    opts.Type,
		Workers: workers,
		Warn:    func(msg string) { fmt.Fprintln(opts.IO.ErrOut, "warning:", msg) },
	}
	if opts.IO.ErrTTY {
		qo.Progress = func(done, total int64) {
			if bar == nil {
				bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(opts.IO.ErrOut),
					progressbar.OptionSetDescription("quantizing "+opts.Type), progressbar.OptionShowBytes(true),
					progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
			}
			bar.Set64(done)
		}
	}
	start := time.Now()
	rep, err := quantize.QuantizeGGUF(opts.ModelDir, opts.Out, qo)
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	mbps := float64(rep.InBytes) / 1e6 / max(secs, 1e-9)
	if opts.JSON {
		return json.NewEncoder(opts.IO.Out).Encode(struct {
			*quantize.GGUFReport
			Out     string  `json:"out"`
			Seconds float64 `json:"seconds"`
			MBps    float64 `json:"input_mb_per_s"`
			Workers int     `json:"workers"`
		}{rep, opts.Out, secs, mbps, workers})
	}
	var types []string
	for _, t := range []string{"F32", "F16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K"} {
		if n := rep.Types[t]; n > 0 {
			types = append(types, fmt.Sprintf("%d %s", n, t))
		}
	}
	fmt.Fprintf(opts.IO.Out, "wrote %s: %s (file type %d), %d tensors (%s), %.1f MB -> %.1f MB in %.1fs (%.0f MB/s)\n",
		opts.Out, rep.Mix, rep.FileType, rep.Tensors, strings.Join(types, ", "),
		float64(rep.InBytes)/1e6, float64(rep.OutBytes)/1e6, secs, mbps)
	return nil
}
