package quantize

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/gptq"
	"github.com/tunellm/tune/quantize/wq"
)

// IntOptions configure QuantizeSafetensors.
type IntOptions struct {
	Bits      int    // 4 or 8
	GroupSize int    // input columns per scale; -1 per output channel
	Sym       bool   // symmetric (zero point 2^(Bits-1)); false: asymmetric min/max
	Layout    string // wq.LayoutGPTQ ("gptq") or wq.LayoutCompressed ("compressed-tensors")
	Method    string // "rtn" (default) or "gptq" (needs Calib)
	Calib     [][]int
	ActOrder  bool    // GPTQ: quantize columns by decreasing Hessian diagonal (desc_act)
	Damp      float64 // GPTQ: damping, fraction of the mean Hessian diagonal (0: 0.01)
	Workers   int     // goroutines; <= 0: runtime.NumCPU(). The output does not depend on it.
	// Comm, when set, splits GPTQ's calibration windows across its ranks
	// (Hessians all-reduced; every rank quantizes identically).
	Comm gptq.Comm
	// MaxShardBytes caps each output shard; 0: wq.DefaultMaxShardBytes (5 GB).
	MaxShardBytes int64
	// Progress, when set, gets the input bytes done so far and in all.
	Progress func(done, total int64)
	// Warn, when set, gets one line per linear kept dense.
	Warn func(string)
}

// IntReport summarizes a written folder.
type IntReport struct {
	Layout    string       `json:"layout"`
	Scheme    string       `json:"scheme"`
	Method    string       `json:"method"`
	Quantized int          `json:"quantized_tensors"`
	Dense     int          `json:"dense_tensors"`
	InBytes   int64        `json:"input_bytes"`
	OutBytes  int64        `json:"output_bytes"`
	Fallbacks []string     `json:"fallbacks,omitempty"` // linears kept dense, with why
	GPTQ      *GPTQSummary `json:"gptq,omitempty"`
}

// GPTQSummary is what gptq.Run reports: the mean relative layer-output
// error of GPTQ's codes and of round-to-nearest on the same calibration.
type GPTQSummary struct {
	Sequences     int     `json:"calib_sequences"`
	Tokens        int     `json:"calib_tokens"`
	MeanGPTQError float64 `json:"mean_gptq_error"`
	MeanRTNError  float64 `json:"mean_rtn_error"`
}

// Scheme is the wq.Scheme the options describe for a layout: the gptq
// layout's asymmetric zero points are at least 1 (see wq.Scheme.V1Zeros).
func (o IntOptions) Scheme() wq.Scheme {
	s := wq.Scheme{Bits: o.Bits, GroupSize: o.GroupSize, Sym: o.Sym}
	if o.Layout == wq.LayoutGPTQ && !o.Sym {
		s.V1Zeros = true
	}
	return s
}

// gptqQuantize runs GPTQ (package quantize/gptq) over the model in
// modelDir, layer by layer, and emits every decoder linear it quantizes.
func gptqQuantize(modelDir string, s wq.Scheme, opts IntOptions, emit func(*wq.QTensor) error) (*gptq.Report, error) {
	m, err := model.Load(modelDir, model.LoadOptions{})
	if err != nil {
		return nil, fmt.Errorf("quantize: %w", err)
	}
	defer m.Close()
	return gptq.Run(m, opts.Calib, gptq.Options{Scheme: s, Damp: opts.Damp, ActOrder: opts.ActOrder, Workers: opts.Workers, Comm: opts.Comm}, emit)
}

// QuantizeSafetensors writes outDir, a weight-only INT8/INT4 copy of the
// Hugging Face model folder modelDir that vLLM and transformers load as-is
// (see docs/QUANT_FORMATS.md): the 7 linears of every decoder layer
// quantized in opts.Layout, everything else (embeddings, norms, lm_head,
// biases) copied as stored, config.json with quantization_config, tokenizer
// and generation files copied. With Method "rtn" it streams tensor by
// tensor (one tensor in fp32 plus its codes in memory), rows quantized by
// opts.Workers goroutines. A linear whose input columns are not a multiple
// of the group size (or, in the gptq layout, whose dims are not a multiple
// of 32/Bits) is kept dense with a warning and listed in
// quantization_config (ignore / dynamic) so loaders keep it dense too. NaN
// or Inf weights are an error naming the tensor and the first bad index.
// The folder appears under outDir only when complete (an existing outDir
// is replaced).
func QuantizeSafetensors(modelDir, outDir string, opts IntOptions) (*IntReport, error) {
	switch opts.Layout {
	case wq.LayoutGPTQ, wq.LayoutCompressed:
	default:
		return nil, fmt.Errorf("quantize: layout %q, want %s or %s", opts.Layout, wq.LayoutGPTQ, wq.LayoutCompressed)
	}
	method := opts.Method
	if method == "" {
		method = "rtn"
	}
	if method != "rtn" && method != "gptq" {
		return nil, fmt.Errorf("quantize: method %q, want rtn or gptq", opts.Method)
	}
	s := opts.Scheme()
	if err := s.Check(0); err != nil {
		return nil, fmt.Errorf("quantize: %w", err)
	}
	if method == "gptq" {
		if len(opts.Calib) == 0 {
			return nil, errors.New("quantize: method gptq needs calibration sequences (--calib)")
		}
	}
	if abs, err := filepath.Abs(outDir); err == nil {
		if src, err := filepath.Abs(modelDir); err == nil && abs == src {
			return nil, fmt.Errorf("quantize: output %s is the input folder", outDir)
		}
	}
	if wq.IsQuantizedFolder(modelDir) {
		return nil, fmt.Errorf("quantize: %s is already quantized (config.json has a quantization_config); quantize from the F32/F16/BF16 original", modelDir)
	}
	if _, err := model.LoadConfig(modelDir); err != nil {
		return nil, fmt.Errorf("quantize: %w", err)
	}
	st, err := safetensors.Open(modelDir)
	if err != nil {
		return nil, fmt.Errorf("quantize: %w", err)
	}
	defer st.Close()
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	w, err := wq.NewWriter(outDir, modelDir, opts.Layout, s)
	if err != nil {
		return nil, fmt.Errorf("quantize: %w", err)
	}
	w.MaxShardBytes = opts.MaxShardBytes
	if method == "gptq" {
		damp := opts.Damp
		if damp == 0 {
			damp = 0.01
		}
		w.Extra = map[string]any{"damp_percent": damp}
	}
	rep := &IntReport{Layout: opts.Layout, Scheme: s.String(), Method: method}
	ok := false
	defer func() {
		if !ok {
			w.Abort()
		}
	}()

	names := st.Names()
	var total, done int64
	for _, n := range names {
		t, err := st.Tensor(n)
		if err != nil {
			return nil, fmt.Errorf("quantize: %w", err)
		}
		total += int64(len(t.Data))
	}
	rep.InBytes = total
	progress := func(n int64) {
		done += n
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}

	// Which linears the layout takes; the rest stay dense.
	quant := map[string]bool{}
	for _, n := range names {
		if !wq.IsLinear(n) {
			continue
		}
		t, err := st.Tensor(n)
		if err != nil {
			return nil, fmt.Errorf("quantize: %w", err)
		}
		if len(t.Shape) != 2 {
			return nil, fmt.Errorf("quantize: %s: shape %v, want 2 dims", n, t.Shape)
		}
		if err := wq.CheckLayout(opts.Layout, s, t.Shape[0], t.Shape[1]); err != nil {
			msg := fmt.Sprintf("%s: shape %v: %v; kept dense (%s)", n, t.Shape, err, t.DType)
			rep.Fallbacks = append(rep.Fallbacks, msg)
			if opts.Warn != nil {
				opts.Warn(msg)
			}
			continue
		}
		quant[n] = true
	}

	if method == "gptq" {
		if len(rep.Fallbacks) > 0 {
			return nil, fmt.Errorf("quantize: method gptq: %s (gptq quantizes every decoder linear; use --method rtn, which keeps such linears dense, or another --group-size)", rep.Fallbacks[0])
		}
		grep, err := gptqQuantize(modelDir, s, opts, func(t *wq.QTensor) error {
			if !quant[t.Name] {
				return fmt.Errorf("quantize: gptq emitted %s, which is not a quantizable linear of %s", t.Name, modelDir)
			}
			if err := w.Add(t); err != nil {
				return err
			}
			delete(quant, t.Name)
			rep.Quantized++
			src, _ := st.Tensor(t.Name)
			progress(int64(len(src.Data)))
			return nil
		})
		if err != nil {
			return nil, err
		}
		for n := range quant {
			return nil, fmt.Errorf("quantize: gptq did not quantize %s", n)
		}
		rep.GPTQ = &GPTQSummary{Sequences: grep.Sequences, Tokens: grep.Tokens,
			MeanGPTQError: grep.MeanGPTQError, MeanRTNError: grep.MeanRTNError}
	}

	for _, n := range names {
		t, err := st.Tensor(n)
		if err != nil {
			return nil, fmt.Errorf("quantize: %w", err)
		}
		if !quant[n] {
			if method == "gptq" && wq.IsLinear(n) {
				continue // written from gptq's emit above
			}
			if err := w.AddDense(n, t); err != nil {
				return nil, fmt.Errorf("quantize: %w", err)
			}
			rep.Dense++
			progress(int64(len(t.Data)))
			continue
		}
		q, err := rtnParallel(t, s, workers)
		if err != nil {
			return nil, fmt.Errorf("quantize: %w", err)
		}
		if err := w.Add(q); err != nil {
			return nil, fmt.Errorf("quantize: %w", err)
		}
		rep.Quantized++
		progress(int64(len(t.Data)))
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("quantize: %w", err)
	}
	ok = true
	rep.OutBytes = dirTensorBytes(outDir)
	return rep, nil
}

// rtnParallel is wq.RTN over row blocks on workers goroutines.
func rtnParallel(t safetensors.Tensor, s wq.Scheme, workers int) (*wq.QTensor, error) {
	rows, cols := t.Shape[0], t.Shape[1]
	x, err := t.Float32()
	if err != nil {
		return nil, err
	}
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("wq: %s: weight [%d,%d] is %v", t.Name, i/cols, i%cols, v)
		}
	}
	G := s.Groups(cols)
	out := &wq.QTensor{Name: t.Name, Rows: rows, Cols: cols, Scheme: s,
		Q: make([]uint8, rows*cols), Scales: make([]float32, rows*G), Zeros: make([]uint8, rows*G)}
	block := max(1, (rows+workers*4-1)/(workers*4))
	var wg sync.WaitGroup
	errs := make([]error, (rows+block-1)/block)
	sem := make(chan struct{}, workers)
	for b := 0; b*block < rows; b++ {
		r0, r1 := b*block, min(rows, (b+1)*block)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			q, err := wq.RTN(t.Name, x[r0*cols:r1*cols], r1-r0, cols, s)
			if err != nil {
				errs[b] = err
				return
			}
			copy(out.Q[r0*cols:], q.Q)
			copy(out.Scales[r0*G:], q.Scales)
			copy(out.Zeros[r0*G:], q.Zeros)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// dirTensorBytes sums the safetensors files written.
func dirTensorBytes(dir string) int64 {
	m, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	var n int64
	for _, f := range m {
		if fi, err := os.Stat(f); err == nil {
			n += fi.Size()
		}
	}
	return n
}
