package quantize

import (
	"fmt"
	"io"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/gguf"
)

// RequantizeGGUF quantizes a GGUF file of F32, F16 or BF16 tensors (as
// convert_hf_to_gguf.py or ExportGGUF write) to the mix opts.Type, as
// llama-quantize does: every metadata key is kept in order (general.file_type
// and general.quantization_version updated, split.* dropped, quantize.imatrix.*
// added with opts.Imatrix); each tensor gets the type Mix.TensorType gives it,
// with the same rules as QuantizeGGUF, and is copied unchanged when that is
// its current type or when it is not quantizable (1-D tensors, norms, non
// weights). Tensors stream in file order, one chunk of about 1M elements at
// a time, rows quantized by opts.Workers goroutines; the output is written
// under a temporary name and renamed.
//
// From the same F32 values the tensor bytes equal QuantizeGGUF's on the
// Hugging Face folder, and an F32 export of a BF16/F32 checkpoint holds
// exactly its values. Already-quantized tensors are refused unless
// opts.AllowRequantize (llama-quantize --allow-requantize), which
// dequantizes them first (with a warning).
func RequantizeGGUF(inPath, outPath string, opts GGUFOptions) (*GGUFReport, error) {
	mix, err := ParseMix(opts.Type)
	if err != nil {
		return nil, err
	}
	f, err := gguf.Open(inPath)
	if err != nil {
		return nil, fmt.Errorf("quantize: %w", err)
	}
	defer f.Close()
	mm, err := ggufMixModel(f, inPath)
	if err != nil {
		return nil, err
	}
	for _, t := range f.Tensors {
		switch t.Type {
		case gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16:
			continue
		}
		if _, ok := TypeTraits(t.Type); !ok {
			return nil, fmt.Errorf("quantize: %s: tensor %q: type %s not supported, want F32, F16, BF16 or one of %s", inPath, t.Name, t.Type, validQuantTypes())
		}
		if !opts.AllowRequantize {
			return nil, fmt.Errorf("quantize: %s: tensor %q is already %s; quantize from the F32/F16/BF16 original (re-quantizing loses precision; llama-quantize needs --allow-requantize)", inPath, t.Name, t.Type)
		}
		if opts.Warn != nil {
			opts.Warn(fmt.Sprintf("%s: re-quantizing from %s tensors: quality is lower than quantizing the original", inPath, t.Type))
		}
		break
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	plan := &exportPlan{
		mix: mix, mm: mm, workers: workers, warn: opts.Warn, imx: opts.Imatrix,
		report: &GGUFReport{Mix: mix.Name, FileType: mix.FileType, Types: map[string]int{}},
	}
	if opts.Progress != nil {
		var done int64
		plan.progress = func(n int64) {
			done += n
			opts.Progress(done, plan.report.InBytes)
		}
	}

	w := gguf.NewWriter(outPath)
	if err := requantKVs(w, f, mix, opts); err != nil {
		w.Abort()
		return nil, fmt.Errorf("quantize: %s: %w", outPath, err)
	}
	for _, t := range f.Tensors {
		if err := requantTensor(w, f, t, plan); err != nil {
			w.Abort()
			return nil, fmt.Errorf("quantize: %s: %w", inPath, err)
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("quantize: %w", err)
	}
	return plan.report, nil
}

// ggufMixModel reads what the mix rules need from the file's metadata, as
// llama.cpp's loader does: <arch>.block_count, .attention.head_count and
// .head_count_kv (default: head_count); tied when there is no output.weight.
func ggufMixModel(f *gguf.File, path string) (MixModel, error) {
	v, _ := f.Value("general.architecture")
	arch, ok := v.(string)
	if !ok || arch == "" {
		return MixModel{}, fmt.Errorf("quantize: %s: no general.architecture string (not a model file?)", path)
	}
	num := func(key string) (int, bool) {
		v, ok := f.Value(arch + "." + key)
		if !ok {
			return 0, false
		}
		switch n := v.(type) {
		case uint32:
			return int(n), true
		case int32:
			return int(n), true
		case uint64:
			return int(n), true
		case int64:
			return int(n), true
		case uint16:
			return int(n), true
		}
		return 0, false
	}
	var mm MixModel
	for _, k := range []struct {
		key string
		dst *int
	}{{"block_count", &mm.NLayer}, {"attention.head_count", &mm.NHead}} {
		n, ok := num(k.key)
		if !ok || n <= 0 {
			return MixModel{}, fmt.Errorf("quantize: %s: %s.%s missing or not a positive integer", path, arch, k.key)
		}
		*k.dst = n
	}
	mm.NHeadKV = mm.NHead
	if n, ok := num("attention.head_count_kv"); ok && n > 0 {
		mm.NHeadKV = n
	}
	_, hasOutput := f.Tensor("output.weight")
	mm.Tied = !hasOutput
	return mm, nil
}

// requantKVs copies the metadata: general.file_type and
// general.quantization_version take the new values in place (appended when
// absent), split.* keys are dropped, and quantize.imatrix.* are replaced by
// opts.Imatrix's when it is set.
func requantKVs(w *gguf.Writer, f *gguf.File, mix Mix, opts GGUFOptions) error {
	set := map[string]any{"general.file_type": mix.FileType, "general.quantization_version": uint32(2)}
	done := map[string]bool{}
	for _, kv := range f.KVs {
		if strings.HasPrefix(kv.Key, "split.") || (opts.Imatrix != nil && strings.HasPrefix(kv.Key, "quantize.imatrix.")) {
			continue
		}
		v := kv.Value
		if nv, ok := set[kv.Key]; ok {
			v, done[kv.Key] = nv, true
		}
		if err := w.AddKV(kv.Key, v); err != nil {
			return err
		}
	}
	for _, key := range []string{"general.quantization_version", "general.file_type"} {
		if !done[key] {
			if err := w.AddKV(key, set[key]); err != nil {
				return err
			}
		}
	}
	for _, kv := range imatrixKVs(opts.Imatrix) {
		if err := w.AddKV(kv.Key, kv.Value); err != nil {
			return err
		}
	}
	return nil
}

var blkRe = regexp.MustCompile(`^blk\.(\d+)\.`)

// requantTensor registers one tensor: copied as is, or converted row by row
// from its stored type to the type the mix gives it.
func requantTensor(w *gguf.Writer, f *gguf.File, t gguf.TensorInfo, plan *exportPlan) error {
	layer := -1
	if m := blkRe.FindStringSubmatch(t.Name); m != nil {
		if n, err := strconv.Atoi(m[1]); err == nil && n < plan.mm.NLayer {
			layer = n
		}
	}
	typ := t.Type
	// llama_model_quantize_impl's quantize test; TensorType applies the
	// same one and answers F32 for the rest, which here keep their type.
	quantizable := len(t.Shape) >= 2 && strings.HasSuffix(t.Name, "weight") && !strings.Contains(t.Name, "_norm.weight")
	if quantizable {
		choice := plan.mix.TensorType(t.Name, t.Shape, layer, plan.mm)
		typ = choice.Type
		if choice.Fallback != "" {
			plan.report.Fallbacks = append(plan.report.Fallbacks, choice.Fallback)
			if plan.warn != nil {
				plan.warn(choice.Fallback)
			}
		}
	}
	plan.report.Tensors++
	plan.report.Types[typ.String()]++
	plan.report.InBytes += t.Size
	if typ == t.Type {
		plan.report.OutBytes += t.Size
		return w.AddTensor(t.Name, typ, t.Shape, func(out io.Writer) error {
			sr, err := f.TensorReader(t.Name)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, sr); err != nil {
				return err
			}
			if plan.progress != nil {
				plan.progress(t.Size)
			}
			return nil
		}, t.Size)
	}
	if len(t.Shape) > 2 {
		return fmt.Errorf("tensor %q: shape %v: only 2-D tensors can be quantized (no MoE expert stacks)", t.Name, t.Shape)
	}
	cols := t.Shape[len(t.Shape)-1]
	rows := 1
	if len(t.Shape) == 2 {
		rows = t.Shape[0]
	}
	var qt Traits
	if typ != gguf.TypeF32 && typ != gguf.TypeF16 {
		var ok bool
		if qt, ok = TypeTraits(typ); !ok || cols%qt.BlockElems != 0 {
			return fmt.Errorf("tensor %q: shape %v can not be stored as %s", t.Name, t.Shape, typ)
		}
	}
	nbytes, err := gguf.TensorBytes(typ, t.Shape)
	if err != nil {
		return fmt.Errorf("tensor %q: %v", t.Name, err)
	}
	plan.report.OutBytes += nbytes
	srcRowBytes := int(t.Size) / max(rows, 1)
	convert, err := rowConverter(f, t, cols, srcRowBytes)
	if err != nil {
		return err
	}
	var write func(io.Writer) error
	if qt.QuantizeRow == nil {
		write = func(out io.Writer) error {
			return convertRows(out, typ, rows, cols, srcRowBytes, plan, convert)
		}
	} else {
		imx, err := plan.imatrixFor(t.Name, cols)
		if err != nil {
			return err
		}
		write = func(out io.Writer) error {
			return quantizeRows(out, qt, t.Name, rows, cols, srcRowBytes, imx, plan, convert)
		}
	}
	return w.AddTensor(t.Name, typ, t.Shape, write, nbytes)
}

// rowConverter returns a function that widens rows [r0, r0+n) of t into
// vals; it reads the file itself, so workers may call it concurrently.
func rowConverter(f *gguf.File, t gguf.TensorInfo, cols, srcRowBytes int) (func([]float32, int, int) error, error) {
	var widen func(dst []float32, src []byte) error
	switch t.Type {
	case gguf.TypeF32:
		widen = func(dst []float32, src []byte) error { return safetensors.ToFloat32(dst, src, safetensors.F32) }
	case gguf.TypeF16:
		widen = func(dst []float32, src []byte) error { return safetensors.ToFloat32(dst, src, safetensors.F16) }
	case gguf.TypeBF16:
		widen = func(dst []float32, src []byte) error { return safetensors.ToFloat32(dst, src, safetensors.BF16) }
	default:
		tr, ok := TypeTraits(t.Type)
		if !ok || cols%tr.BlockElems != 0 {
			return nil, fmt.Errorf("tensor %q: can not read type %s", t.Name, t.Type)
		}
		widen = func(dst []float32, src []byte) error {
			rb := cols / tr.BlockElems * tr.BlockBytes
			for r := 0; r < len(dst)/cols; r++ {
				tr.DequantizeRow(dst[r*cols:(r+1)*cols], src[r*rb:(r+1)*rb])
			}
			return nil
		}
	}
	return func(vals []float32, r0, n int) error {
		sr, err := f.TensorReader(t.Name)
		if err != nil {
			return err
		}
		buf := make([]byte, n*srcRowBytes)
		if k, err := sr.ReadAt(buf, int64(r0*srcRowBytes)); k != len(buf) {
			return fmt.Errorf("tensor %q: rows %d..%d: %w", t.Name, r0, r0+n, err)
		}
		return widen(vals[:n*cols], buf)
	}, nil
}
