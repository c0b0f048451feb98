package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/dist"
	"github.com/tunellm/tune/export"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/quantize/gptq"
	"github.com/tunellm/tune/quantize/imatrix"
	"github.com/tunellm/tune/quantize/wq"
)

// QuantizeOptions are the inputs of `tune quantize`.
type QuantizeOptions struct {
	IO       *IOStreams
	ModelDir string
	Format   string
	Type     string // a llama.cpp mix name, canonical case; set from --bits when empty (gguf)
	Bits     int
	Out      string
	Force    bool
	JSON     bool
	Workers  int
	Imatrix  string // gguf: llama-imatrix output

	// --format safetensors
	GroupSize    int    // 0: 128 for 4 bits, -1 (per channel) for 8
	Sym          bool   // symmetric
	Layout       string // gptq | compressed-tensors; "": gptq for 4 bits, compressed-tensors for 8
	Method       string // rtn | gptq; "": gptq with --calib, else rtn
	Calib        string // calibration text file (GPTQ)
	CalibSamples int
	CalibLen     int
	ActOrder     bool
	Damp         float64
	NProc        int // --nproc-per-node (GPTQ calibration); 0 or 1: one process
}

// bitsMix is the mix each --bits picks: llama.cpp's usual defaults.
var bitsMix = map[int]string{4: "Q4_K_M", 8: "Q8_0"}

func newCmdQuantize(f *Factory, runF func(*QuantizeOptions) error) *cobra.Command {
	opts := &QuantizeOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "quantize --model PATH [--format gguf|safetensors] --out PATH",
		Short: "Quantize a model to a GGUF file (llama.cpp) or INT4/INT8 safetensors (vLLM, transformers)",
		Long: `Quantize converts a Hugging Face model folder (qwen3, qwen2, llama; safetensors also mistral) into
  --format gguf         a GGUF file with llama.cpp's quantization types, bit-exact with
                        llama.cpp's reference quantizers (llama.cpp, ollama, LM Studio);
  --format safetensors  a Hugging Face folder with weight-only INT4/INT8 linears that
                        GPU servers load as-is.

GGUF: --type names a llama-quantize mix: ` + strings.Join(quantize.MixNames(), ", ") + `.
A mix keeps some tensors at higher precision as llama.cpp does (output.weight in Q6_K,
attn_v and ffn_down bumped in some layers for Q4_K_M and Q5_K_M, norms in F32). Rows
that are not a whole number of a type's blocks fall back as llama.cpp does, with a
warning. --bits 4 means Q4_K_M and --bits 8 Q8_0 (the default is --bits 4). --imatrix
FILE uses a llama-imatrix importance matrix (.dat or .gguf) as llama-quantize does.
--model may also be an F32/F16/BF16 .gguf file, re-quantized as llama-quantize does.

Safetensors: the 7 linears of every decoder layer become INT4 (--bits 4, default: groups
of 128 input columns) or INT8 (--bits 8, default: one scale per output channel),
symmetric unless --sym=false; embeddings, norms and lm_head stay as they are. Two layouts:
  --layout gptq                qweight/qzeros/scales/g_idx, quant_method "gptq" (v1):
                               vLLM (gptq_marlin for symmetric 4/8-bit, gptq otherwise),
                               transformers with gptqmodel (or optimum + auto-gptq), TGI,
                               SGLang. Default for --bits 4.
  --layout compressed-tensors  weight_packed/weight_scale/weight_zero_point, format
                               "pack-quantized" (llm-compressor's W4A16/W8A16): vLLM
                               (CompressedTensorsWNA16), transformers with the
                               compressed-tensors package. Default for --bits 8.
--method rtn rounds to nearest (GPTQ's min/max parameters, fp16 scales); --method gptq
(the default when --calib is given) runs GPTQ layer by layer on --calib-samples windows
of --calib-len tokens of the --calib text (.txt, .jsonl, .json, .parquet "text").
A linear whose input size is not a multiple of --group-size stays dense, with a warning,
and is listed in quantization_config so loaders keep it dense too. config.json gets
torch_dtype float16 (the scales are fp16). See docs/QUANT_FORMATS.md.

GPTQ calibration runs data parallel under mpirun, srun or torchrun, or with
--nproc-per-node N: each rank runs its share of the windows, the Hessians are summed
across ranks, every rank quantizes the same way and rank 0 writes --out
(docs/SCALING.md). Other methods and GGUF run on one process.`,
		Example: `  tune quantize --model ./Qwen3-8B --out qwen3-8b-q4_k_m.gguf
  tune quantize --model ./Qwen3-8B --format gguf --bits 8 --out qwen3-8b-q8_0.gguf
  tune quantize --model ./merged --type Q4_K_M --imatrix imatrix.dat --out merged.gguf --force --json
  tune quantize --model qwen3-8b-f16.gguf --type Q5_K_M --out qwen3-8b-q5_k_m.gguf
  tune quantize --model ./Qwen3-8B --format safetensors --bits 4 --out Qwen3-8B-W4A16     # vllm serve Qwen3-8B-W4A16
  tune quantize --model ./Qwen3-8B --format safetensors --bits 4 --calib wiki.train.txt --act-order --out Qwen3-8B-GPTQ
  tune quantize --model ./Qwen3-8B --format safetensors --bits 8 --out Qwen3-8B-W8A16
  tune quantize --model ./Qwen3-8B --format safetensors --calib wiki.train.txt --nproc-per-node 4 --out Qwen3-8B-GPTQ`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case opts.ModelDir == "":
				return flagErrorf("--model is required: a Hugging Face model folder (or an F32/F16/BF16 .gguf for --format gguf)")
			case opts.Out == "":
				return flagErrorf("--out is required: the .gguf file or safetensors folder to write")
			case opts.Format != "gguf" && opts.Format != "safetensors":
				return flagErrorf("--format: want gguf or safetensors, got %q", opts.Format)
			}
			if opts.Workers < 0 {
				return flagErrorf("--workers: want >= 0, got %d", opts.Workers)
			}
			fl := cmd.Flags()
			if opts.Format == "safetensors" {
				return quantizeSafetensorsFlags(cmd, opts, runF)
			}
			for _, n := range []string{"group-size", "sym", "layout", "method", "calib", "calib-samples", "calib-len", "act-order", "damp", "nproc-per-node"} {
				if fl.Changed(n) {
					return flagErrorf("--%s applies to --format safetensors", n)
				}
			}
			bitsSet := fl.Changed("bits")
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
			if runF != nil {
				return runF(opts)
			}
			return quantizeRun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.ModelDir, "model", "", "Hugging Face model folder (gguf: or an F32/F16/BF16 .gguf file)")
	fl.StringVar(&opts.Format, "format", "gguf", "output format: gguf or safetensors")
	fl.StringVar(&opts.Type, "type", "", "gguf: llama.cpp mix: "+strings.Join(quantize.MixNames(), ", "))
	fl.IntVar(&opts.Bits, "bits", 4, "4 or 8 (gguf: Q4_K_M or Q8_0, ignored with --type; safetensors: INT4 or INT8)")
	fl.StringVar(&opts.Out, "out", "", "output .gguf file (gguf) or folder (safetensors)")
	fl.BoolVar(&opts.Force, "force", false, "replace an existing output")
	fl.BoolVar(&opts.JSON, "json", false, "print a summary as JSON")
	fl.IntVar(&opts.Workers, "workers", 0, "quantization goroutines (0: one per CPU)")
	fl.StringVar(&opts.Imatrix, "imatrix", "", "gguf: importance matrix from llama-imatrix or tune imatrix (.dat or .gguf)")
	fl.IntVar(&opts.GroupSize, "group-size", 0, "safetensors: input columns per scale, -1 per output channel (default 128 for 4 bits, -1 for 8)")
	fl.BoolVar(&opts.Sym, "sym", true, "safetensors: symmetric quantization; --sym=false stores zero points")
	fl.StringVar(&opts.Layout, "layout", "", "safetensors: gptq or compressed-tensors (default gptq for 4 bits, compressed-tensors for 8)")
	fl.StringVar(&opts.Method, "method", "", "safetensors: rtn or gptq (default gptq with --calib, else rtn)")
	fl.StringVar(&opts.Calib, "calib", "", "safetensors: calibration text for GPTQ (.txt, .jsonl, .json, .parquet)")
	fl.IntVar(&opts.CalibSamples, "calib-samples", 128, "safetensors: GPTQ calibration windows")
	fl.IntVar(&opts.CalibLen, "calib-len", 2048, "safetensors: tokens per calibration window")
	fl.BoolVar(&opts.ActOrder, "act-order", false, "safetensors: GPTQ act-order (desc_act): columns by decreasing Hessian diagonal")
	fl.Float64Var(&opts.Damp, "damp", 0.01, "safetensors: GPTQ damping, fraction of the mean Hessian diagonal")
	addNprocFlag(fl, &opts.NProc, "safetensors: run GPTQ calibration")
	return cmd
}

// quantizeSafetensorsFlags validates and defaults the --format safetensors flags.
func quantizeSafetensorsFlags(cmd *cobra.Command, opts *QuantizeOptions, runF func(*QuantizeOptions) error) error {
	fl := cmd.Flags()
	switch {
	case opts.Type != "":
		return flagErrorf("--type names a GGUF mix; with --format safetensors use --bits 4|8 and --group-size")
	case opts.Imatrix != "":
		return flagErrorf("--imatrix applies to --format gguf; --format safetensors calibrates with --calib (GPTQ)")
	case opts.Bits != 4 && opts.Bits != 8:
		return flagErrorf("--bits: want 4 or 8, got %d", opts.Bits)
	case opts.GroupSize < -1 || fl.Changed("group-size") && opts.GroupSize == 0:
		return flagErrorf("--group-size: want -1 (per channel) or > 0, got %d", opts.GroupSize)
	}
	if opts.GroupSize == 0 {
		opts.GroupSize = 128
		if opts.Bits == 8 {
			opts.GroupSize = -1
		}
	}
	switch opts.Layout {
	case "":
		opts.Layout = wq.LayoutGPTQ
		if opts.Bits == 8 {
			opts.Layout = wq.LayoutCompressed
		}
	case wq.LayoutGPTQ, wq.LayoutCompressed:
	default:
		return flagErrorf("--layout: want gptq or compressed-tensors, got %q", opts.Layout)
	}
	switch opts.Method {
	case "":
		opts.Method = "rtn"
		if opts.Calib != "" {
			opts.Method = "gptq"
		}
	case "rtn":
		if opts.Calib != "" {
			return flagErrorf("--calib is for --method gptq; --method rtn needs no calibration")
		}
	case "gptq":
		if opts.Calib == "" {
			return flagErrorf("--method gptq needs --calib FILE (calibration text)")
		}
	default:
		return flagErrorf("--method: want rtn or gptq, got %q", opts.Method)
	}
	if opts.Method == "rtn" {
		for _, n := range []string{"act-order", "damp", "calib-samples", "calib-len", "nproc-per-node"} {
			if fl.Changed(n) {
				return flagErrorf("--%s applies to --method gptq", n)
			}
		}
	}
	switch {
	case opts.CalibSamples < 1:
		return flagErrorf("--calib-samples: want >= 1, got %d", opts.CalibSamples)
	case opts.CalibLen < 2:
		return flagErrorf("--calib-len: want >= 2, got %d", opts.CalibLen)
	case !(opts.Damp > 0 && opts.Damp < 1):
		return flagErrorf("--damp: want a fraction in (0, 1), got %g", opts.Damp)
	case opts.NProc < 0:
		return flagErrorf("--nproc-per-node: want >= 1, got %d", opts.NProc)
	}
	if runF != nil {
		return runF(opts)
	}
	return quantizeSafetensorsRun(opts)
}

func checkOut(opts *QuantizeOptions) error {
	if _, err := os.Stat(opts.Out); err == nil && !opts.Force {
		return fmt.Errorf("quantize: %s exists; use --force to replace it", opts.Out)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("quantize: %w", err)
	}
	return nil
}

// progressFunc returns a Progress callback drawing a byte bar with MB/s on a
// terminal (nil otherwise), and the bar's finisher.
func progressFunc(opts *QuantizeOptions, desc string) (func(done, total int64), func()) {
	if !opts.IO.ErrTTY {
		return nil, func() {}
	}
	var bar *progressbar.ProgressBar
	return func(done, total int64) {
			if bar == nil {
				bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(opts.IO.ErrOut),
					progressbar.OptionSetDescription(desc), progressbar.OptionShowBytes(true),
					progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
			}
			bar.Set64(done)
		}, func() {
			if bar != nil {
				bar.Finish()
			}
		}
}

func quantizeRun(opts *QuantizeOptions) error {
	if err := oneProcess("--format gguf"); err != nil {
		return err
	}
	if err := resolveModelArgs(context.Background(), opts.IO, &opts.ModelDir); err != nil {
		return err
	}
	if err := checkOut(opts); err != nil {
		return err
	}
	workers := opts.Workers
	if workers == 0 {
		workers = runtime.NumCPU()
	}
	qo := quantize.GGUFOptions{
		Type:    opts.Type,
		Workers: workers,
		Warn:    func(msg string) { fmt.Fprintln(opts.IO.ErrOut, "warning:", msg) },
	}
	if opts.Imatrix != "" {
		im, err := imatrix.Load(opts.Imatrix)
		if err != nil {
			return err
		}
		qo.Imatrix = im
	}
	var finish func()
	qo.Progress, finish = progressFunc(opts, "quantizing "+opts.Type)
	start := time.Now()
	var rep *quantize.GGUFReport
	var err error
	if isGGUF(opts.ModelDir) {
		rep, err = quantize.RequantizeGGUF(opts.ModelDir, opts.Out, qo)
	} else {
		rep, err = quantize.QuantizeGGUF(opts.ModelDir, opts.Out, qo)
	}
	finish()
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

// layoutServers says who loads each layout, for the summary line.
var layoutServers = map[string]string{
	wq.LayoutGPTQ:       "vLLM gptq/gptq_marlin, transformers+gptqmodel, TGI",
	wq.LayoutCompressed: "vLLM compressed-tensors, transformers+compressed-tensors",
}

// calibSequences tokenizes the calibration text (documents joined by a blank
// line, as eval ppl does) and cuts it into up to n windows of length tokens.
func calibSequences(opts *QuantizeOptions) ([][]int, error) {
	tok, err := loadTokenizer(opts.ModelDir)
	if err != nil {
		return nil, err
	}
	text, err := data.JoinTexts(opts.Calib, "text")
	if err != nil {
		return nil, err
	}
	ids := tok.Encode(text, true)
	var seqs [][]int
	for i := 0; i+opts.CalibLen <= len(ids) && len(seqs) < opts.CalibSamples; i += opts.CalibLen {
		seqs = append(seqs, ids[i:i+opts.CalibLen])
	}
	if len(seqs) == 0 {
		return nil, fmt.Errorf("quantize: %s: %d tokens, fewer than one --calib-len window of %d", opts.Calib, len(ids), opts.CalibLen)
	}
	if len(seqs) < opts.CalibSamples {
		fmt.Fprintf(opts.IO.ErrOut, "warning: %s has %d tokens: %d calibration windows of %d instead of %d\n",
			opts.Calib, len(ids), len(seqs), opts.CalibLen, opts.CalibSamples)
	}
	return seqs, nil
}

func quantizeSafetensorsRun(opts *QuantizeOptions) error {
	if opts.Method != "gptq" {
		if err := oneProcess("--method " + opts.Method); err != nil {
			return err
		}
		return quantizeSafetensorsRank(opts, nil)
	}
	return distRun(opts.IO, opts.NProc, func(c dist.Comm) error { return quantizeSafetensorsRank(opts, c) })
}

// oneProcess refuses a launch of several ranks for what runs on one process
// (every rank would write the same output).
func oneProcess(what string) error {
	l, err := dist.Detect(os.Getenv)
	if err != nil {
		return err
	}
	if l.Distributed() && os.Getenv("TUNE_DIST") != "none" {
		return fmt.Errorf("quantize: %s runs on one process, and this is rank %d of %d (%s): run it without the launcher; only --method gptq splits its calibration across ranks", what, l.Rank, l.Size, l.Launcher)
	}
	return nil
}

// quantizeSafetensorsRank is --format safetensors as one rank of c (nil:
// one process). Under a group every rank runs GPTQ on its share of the
// calibration windows; rank 0 alone writes the folder.
func quantizeSafetensorsRank(opts *QuantizeOptions, c dist.Comm) error {
	baseID := opts.ModelDir // the model card names what the user named
	if err := resolveModelArgs(context.Background(), opts.IO, &opts.ModelDir); err != nil {
		return err
	}
	if isGGUF(opts.ModelDir) {
		return fmt.Errorf("quantize: %s is a GGUF file; --format safetensors needs a Hugging Face model folder", opts.ModelDir)
	}
	if c == nil || c.Rank() == 0 {
		if err := checkOut(opts); err != nil {
			return err
		}
	}
	workers := opts.Workers
	if workers == 0 {
		workers = runtime.NumCPU()
	}
	qo := quantize.IntOptions{Bits: opts.Bits, GroupSize: opts.GroupSize, Sym: opts.Sym, Layout: opts.Layout,
		Method: opts.Method, ActOrder: opts.ActOrder, Damp: opts.Damp, Workers: workers,
		Warn: func(msg string) { fmt.Fprintln(opts.IO.ErrOut, "warning:", msg) }}
	if opts.Method == "gptq" {
		seqs, err := calibSequences(opts)
		if err != nil {
			return err
		}
		qo.Calib = seqs
	}
	if c != nil && c.Rank() != 0 {
		return gptqRank(opts.ModelDir, qo, c)
	}
	var finish func()
	qo.Progress, finish = progressFunc(opts, fmt.Sprintf("quantizing %s (%s, %s)", qo.Scheme(), opts.Method, opts.Layout))
	start := time.Now()
	rep, err := quantizeSafetensors(opts.ModelDir, opts.Out, qo, c)
	finish()
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	mbps := float64(rep.InBytes) / 1e6 / max(secs, 1e-9)
	if err := export.WriteModelCard(opts.Out, quantizedCard(opts, baseID, rep)); err != nil {
		return err
	}
	if opts.JSON {
		return json.NewEncoder(opts.IO.Out).Encode(struct {
			*quantize.IntReport
			Out     string  `json:"out"`
			Seconds float64 `json:"seconds"`
			MBps    float64 `json:"input_mb_per_s"`
			Workers int     `json:"workers"`
		}{rep, opts.Out, secs, mbps, workers})
	}
	fmt.Fprintf(opts.IO.Out, "wrote %s: %s by %s in the %s layout (%s), %d linears quantized, %d tensors dense, %.1f MB -> %.1f MB in %.1fs (%.0f MB/s)\n",
		opts.Out, rep.Scheme, rep.Method, rep.Layout, layoutServers[rep.Layout], rep.Quantized, rep.Dense,
		float64(rep.InBytes)/1e6, float64(rep.OutBytes)/1e6, secs, mbps)
	if rep.GPTQ != nil {
		fmt.Fprintf(opts.IO.Out, "gptq: %d windows, %d tokens; mean relative layer-output error %.4g (round-to-nearest: %.4g)\n",
			rep.GPTQ.Sequences, rep.GPTQ.Tokens, rep.GPTQ.MeanGPTQError, rep.GPTQ.MeanRTNError)
	}
	return nil
}

// quantizedCard is the model card of an INT8/INT4 folder: what it came from,
// the scheme and layout, which servers load it, the base's licence.
func quantizedCard(opts *QuantizeOptions, baseID string, rep *quantize.IntReport) export.Card {
	license, link := export.BaseLicense(opts.ModelDir)
	cmd := fmt.Sprintf("tune quantize --model %s --format safetensors --bits %d --group-size %d --layout %s --method %s --out %s",
		baseID, opts.Bits, opts.GroupSize, rep.Layout, rep.Method, opts.Out)
	if !opts.Sym {
		cmd += " --sym=false"
	}
	return export.Card{
		Title: filepath.Base(filepath.Clean(opts.Out)), Kind: "quantized",
		BaseModel: baseID, License: license, LicenseLink: link,
		Description: fmt.Sprintf("%s quantized to %s by %s, in the %s layout (%s).", baseID, rep.Scheme, rep.Method, rep.Layout, layoutServers[rep.Layout]),
		Params: [][2]string{{"scheme", rep.Scheme}, {"method", rep.Method}, {"layout", rep.Layout},
			{"linears quantized", fmt.Sprint(rep.Quantized)}, {"tensors kept dense", fmt.Sprint(rep.Dense)}},
		Command: cmd,
	}
}

// gptqRank is a rank other than 0 of a GPTQ run split over c: it runs
// gptq.Run with the options quantize.QuantizeSafetensors gives it on rank 0
// (same scheme, damping, act-order, calibration) and writes nothing; the
// Hessian all-reduces keep it in step with rank 0.
func gptqRank(modelDir string, qo quantize.IntOptions, c dist.Comm) error {
	m, err := model.Load(modelDir, model.LoadOptions{})
	if err != nil {
		return fmt.Errorf("quantize: %w", err)
	}
	defer m.Close()
	_, err = gptq.Run(m, qo.Calib, gptq.Options{Scheme: qo.Scheme(), Damp: qo.Damp, ActOrder: qo.ActOrder, Workers: qo.Workers, Comm: c}, nil)
	return err
}

// quantizeSafetensors is quantize.QuantizeSafetensors with GPTQ's
// calibration split over c (rank 0's part).
func quantizeSafetensors(modelDir, outDir string, qo quantize.IntOptions, c dist.Comm) (*quantize.IntReport, error) {
	if c != nil {
		qo.Comm = c
	}
	return quantize.QuantizeSafetensors(modelDir, outDir, qo)
}
