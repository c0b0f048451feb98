package quantize

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tunellm/tune/quantize/gguf"
	"github.com/tunellm/tune/quantize/imatrix"
)

// legacyImatrix writes a llama-imatrix legacy .dat file field by field
// (int32 count; per entry name length, name, ncall, nval, values; chunk
// count, dataset) with positive random values for the named tensors.
func legacyImatrix(t *testing.T, path string, ncall int32, cols map[string]int, seed uint64) map[string][]float32 {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	var b bytes.Buffer
	w := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	w(int32(len(cols)))
	want := map[string][]float32{}
	for name, n := range cols {
		vals := make([]float32, n)
		for i := range vals {
			// Spread over orders of magnitude, as real activations are.
			vals[i] = float32(math.Exp(3 * rng.NormFloat64()))
		}
		w(int32(len(name)))
		b.WriteString(name)
		w(ncall)
		w(int32(n))
		w(vals)
		ws := make([]float32, n)
		for i, v := range vals {
			ws[i] = v / float32(ncall) // llama-quantize: v /= ncall
		}
		want[name] = ws
	}
	w(int32(5))
	w(int32(len("calib.txt")))
	b.WriteString("calib.txt")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return want
}

// TestImatrixReachesQuantizer loads an imatrix file from disk and checks
// that exactly the tensors it covers are quantized with its weights: their
// bytes differ from the run without it and equal Quantize called directly
// with those weights; every other tensor is unchanged.
func TestImatrixReachesQuantizer(t *testing.T) {
	dir := k256Model(t)
	tmp := t.TempDir()
	imPath := filepath.Join(tmp, "imatrix.dat")
	covered := map[string]int{"blk.0.attn_q.weight": 256, "blk.1.ffn_down.weight": 512, "blk.2.attn_v.weight": 256}
	weights := legacyImatrix(t, imPath, 3, covered, 1)
	im, err := imatrix.Load(imPath)
	if err != nil {
		t.Fatal(err)
	}
	for name, w := range weights {
		if got := im.Weights(name); !reflect.DeepEqual(got, w) {
			t.Fatalf("%s: loaded weights differ from value/ncall", name)
		}
	}
	for _, mix := range []string{"Q4_K_M", "Q4_0"} {
		t.Run(mix, func(t *testing.T) {
			plain, with := filepath.Join(tmp, mix+"-plain.gguf"), filepath.Join(tmp, mix+"-imatrix.gguf")
			if _, err := QuantizeGGUF(dir, plain, GGUFOptions{Type: mix}); err != nil {
				t.Fatal(err)
			}
			var warns []string
			rep, err := QuantizeGGUF(dir, with, GGUFOptions{Type: mix, Imatrix: im, Warn: func(s string) { warns = append(warns, s) }})
			if err != nil {
				t.Fatal(err)
			}
			if rep.ImatrixTensors != len(covered) {
				t.Errorf("%d tensors used the imatrix, want %d", rep.ImatrixTensors, len(covered))
			}
			// Block tensors without an entry are named in a warning.
			if len(warns) != 8*7-len(covered) || !strings.Contains(strings.Join(warns, "\n"), "blk.0.attn_k.weight: no importance matrix entry") {
				t.Errorf("%d warnings, want %d: %v", len(warns), 8*7-len(covered), warns[:min(3, len(warns))])
			}
			fp, err := gguf.Open(plain)
			if err != nil {
				t.Fatal(err)
			}
			defer fp.Close()
			fw, err := gguf.Open(with)
			if err != nil {
				t.Fatal(err)
			}
			defer fw.Close()
			for _, kv := range []gguf.KV{{Key: "quantize.imatrix.file", Value: imPath}, {Key: "quantize.imatrix.dataset", Value: "calib.txt"},
				{Key: "quantize.imatrix.entries_count", Value: uint32(3)}, {Key: "quantize.imatrix.chunks_count", Value: uint32(5)}} {
				if v, _ := fw.Value(kv.Key); v != kv.Value {
					t.Errorf("%s = %v, want %v", kv.Key, v, kv.Value)
				}
			}
			for _, ti := range fw.Tensors {
				a, _ := fp.TensorData(ti.Name)
				b, _ := fw.TensorData(ti.Name)
				w, ok := weights[ti.Name]
				if !ok {
					if !bytes.Equal(a, b) {
						t.Errorf("%s: not in the imatrix but its bytes changed", ti.Name)
					}
					continue
				}
				if bytes.Equal(a, b) {
					t.Errorf("%s (%s): same bytes with and without the imatrix", ti.Name, ti.Type)
				}
				// The F32 export holds the checkpoint's values exactly.
				src := f32Tensor(t, dir, ti.Name)
				direct := make([]byte, len(b))
				if err := Quantize(ti.Type, direct, src, w); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(b, direct) {
					t.Errorf("%s (%s): bytes differ from Quantize with the file's weights", ti.Name, ti.Type)
				}
			}
		})
	}
}

// f32Tensor returns the values of a tensor of dir's F32 GGUF export.
var f32Exports = map[string]string{}

func f32Tensor(t *testing.T, dir, name string) []float32 {
	t.Helper()
	path, ok := f32Exports[dir]
	if !ok {
		path = filepath.Join(t.TempDir(), "f32.gguf")
		if err := ExportGGUF(dir, path, "f32"); err != nil {
			t.Fatal(err)
		}
		f32Exports[dir] = path
		t.Cleanup(func() { delete(f32Exports, dir) })
	}
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := f.TensorData(name)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

func TestImatrixErrors(t *testing.T) {
	dir := testModelDir(t, "qwen3-tied")
	tmp := t.TempDir()
	// A 128-column entry for a 64-column tensor is an error naming it.
	bad := filepath.Join(tmp, "bad.dat")
	legacyImatrix(t, bad, 1, map[string]int{"blk.1.attn_k.weight": 128}, 2)
	im, err := imatrix.Load(bad)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(tmp, "out.gguf")
	_, err = QuantizeGGUF(dir, out, GGUFOptions{Type: "Q4_0", Imatrix: im})
	if err == nil || !strings.Contains(err.Error(), `tensor "blk.1.attn_k.weight": importance matrix `+bad+` has 128 values, want 64`) {
		t.Errorf("error %v", err)
	}
	if _, serr := os.Stat(out); serr == nil {
		t.Error("failed quantization left a file")
	}
	// token_embd is only warned about, as llama-quantize does.
	legacyImatrix(t, bad, 1, map[string]int{"token_embd.weight": 32}, 3)
	if im, err = imatrix.Load(bad); err != nil {
		t.Fatal(err)
	}
	var warns []string
	if _, err := QuantizeGGUF(dir, out, GGUFOptions{Type: "Q4_0", Imatrix: im, Warn: func(s string) { warns = append(warns, s) }}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(warns, "\n"), `tensor "token_embd.weight": importance matrix `+bad+` has 32 values, want 64 (one per column); quantized without`) {
		t.Errorf("warnings %q", warns)
	}
}

// TestRequantizeGGUF re-quantizes the F32 export of each test model and
// compares the whole file with QuantizeGGUF on the Hugging Face folder:
// same metadata, same tensor infos, same bytes (the export holds the
// checkpoint's values exactly, BF16 included).
func TestRequantizeGGUF(t *testing.T) {
	tmp := t.TempDir()
	imPath := filepath.Join(tmp, "k256.dat")
	cols := map[string]int{}
	for l := 0; l < 8; l++ {
		for _, n := range []string{"attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"} {
			cols[fmt.Sprintf("blk.%d.%s.weight", l, n)] = 256
		}
		cols[fmt.Sprintf("blk.%d.attn_output.weight", l)] = 256
		cols[fmt.Sprintf("blk.%d.ffn_down.weight", l)] = 512
	}
	legacyImatrix(t, imPath, 2, cols, 4)
	im, err := imatrix.Load(imPath)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		model string
		dir   func(*testing.T) string
		mixes []string
		im    *imatrix.Matrix
	}{
		{"qwen3-tied", func(t *testing.T) string { return testModelDir(t, "qwen3-tied") }, []string{"Q4_K_M", "Q8_0", "Q2_K", "F16"}, nil},
		{"qwen3-untied-bf16", func(t *testing.T) string { return testModelDir(t, "qwen3-untied-bf16") }, []string{"Q5_K_S", "Q3_K_L"}, nil},
		{"llama3", func(t *testing.T) string { return testModelDir(t, "llama3") }, []string{"Q4_K_M", "Q5_1"}, nil},
		{"k256", k256Model, []string{"Q3_K_S"}, nil},
		{"k256+imatrix", k256Model, []string{"Q4_K_M", "Q2_K"}, im},
	}
	for _, tc := range cases {
		t.Run(tc.model, func(t *testing.T) {
			if testing.Short() && tc.model == "k256" {
				t.Skip("-short")
			}
			dir := tc.dir(t)
			f32 := filepath.Join(t.TempDir(), "f32.gguf")
			if err := ExportGGUF(dir, f32, "f32"); err != nil {
				t.Fatal(err)
			}
			for _, mix := range tc.mixes {
				direct, re := filepath.Join(t.TempDir(), "direct.gguf"), filepath.Join(t.TempDir(), "re.gguf")
				want, err := QuantizeGGUF(dir, direct, GGUFOptions{Type: mix, Imatrix: tc.im})
				if err != nil {
					t.Fatal(err)
				}
				var lastDone, lastTotal int64
				got, err := RequantizeGGUF(f32, re, GGUFOptions{Type: mix, Imatrix: tc.im, Workers: 3,
					Progress: func(d, tot int64) { lastDone, lastTotal = d, tot }})
				if err != nil {
					t.Fatalf("%s: %v", mix, err)
				}
				a, _ := os.ReadFile(direct)
				b, _ := os.ReadFile(re)
				if !bytes.Equal(a, b) {
					t.Errorf("%s: re-quantized file differs from quantizing the folder (%d vs %d bytes)", mix, len(b), len(a))
					diffGGUF(t, direct, re)
				}
				if got.OutBytes != want.OutBytes || got.Tensors != want.Tensors || !reflect.DeepEqual(got.Types, want.Types) ||
					got.ImatrixTensors != want.ImatrixTensors || !reflect.DeepEqual(got.Fallbacks, want.Fallbacks) {
					t.Errorf("%s: report %+v, want %+v", mix, got, want)
				}
				if tc.im != nil && got.ImatrixTensors != 56 {
					t.Errorf("%s: %d tensors used the imatrix, want 56", mix, got.ImatrixTensors)
				}
				if lastDone != got.InBytes || lastTotal != got.InBytes || got.InBytes == 0 {
					t.Errorf("%s: progress ended at %d/%d, want %d", mix, lastDone, lastTotal, got.InBytes)
				}
			}
		})
	}
}

// diffGGUF names the first differing key or tensor.
func diffGGUF(t *testing.T, a, b string) {
	t.Helper()
	fa, err := gguf.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := gguf.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	for i := 0; i < max(len(fa.KVs), len(fb.KVs)); i++ {
		if i >= len(fa.KVs) || i >= len(fb.KVs) || fa.KVs[i].Key != fb.KVs[i].Key || !reflect.DeepEqual(fa.KVs[i].Value, fb.KVs[i].Value) {
			t.Errorf("key %d differs", i)
			return
		}
	}
	for i, ta := range fa.Tensors {
		tb := fb.Tensors[i]
		da, _ := fa.TensorData(ta.Name)
		db, _ := fb.TensorData(tb.Name)
		if ta.Name != tb.Name || ta.Type != tb.Type || !reflect.DeepEqual(ta.Shape, tb.Shape) || !bytes.Equal(da, db) {
			t.Errorf("tensor %d: %s %s %v vs %s %s %v (same bytes %v)", i, ta.Name, ta.Type, ta.Shape, tb.Name, tb.Type, tb.Shape, bytes.Equal(da, db))
			return
		}
	}
}

// TestRequantizeGGUFInputs: an F16 file keeps its F16 matrices as they are
// for the F16 mix, and quantized inputs are refused unless allowed.
func TestRequantizeGGUFInputs(t *testing.T) {
	dir := testModelDir(t, "qwen3-tied")
	tmp := t.TempDir()
	f16 := filepath.Join(tmp, "f16.gguf")
	if err := ExportGGUF(dir, f16, "f16"); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(tmp, "out.gguf")
	if _, err := RequantizeGGUF(f16, out, GGUFOptions{Type: "F16"}); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(f16)
	b, _ := os.ReadFile(out)
	if !bytes.Equal(a, b) {
		t.Error("F16 -> F16 changed the file")
	}
	// From F16 values: Q8_0 equals quantizing the F16-rounded weights.
	if _, err := RequantizeGGUF(f16, out, GGUFOptions{Type: "Q8_0"}); err != nil {
		t.Fatal(err)
	}
	fo, _ := gguf.Open(out)
	fi, _ := gguf.Open(f16)
	ti, _ := fo.Tensor("blk.0.ffn_up.weight")
	src, _ := fi.TensorData("blk.0.ffn_up.weight")
	vals := make([]float32, len(src)/2)
	for i := range vals {
		vals[i] = f16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
	}
	want := make([]byte, ti.Size)
	Quantize(gguf.TypeQ8_0, want, vals, nil)
	got, _ := fo.TensorData(ti.Name)
	if ti.Type != gguf.TypeQ8_0 || !bytes.Equal(got, want) {
		t.Errorf("Q8_0 from F16: type %s, bytes equal %v", ti.Type, bytes.Equal(got, want))
	}
	fo.Close()
	fi.Close()

	q8 := filepath.Join(tmp, "q8.gguf")
	os.Rename(out, q8)
	_, err := RequantizeGGUF(q8, out, GGUFOptions{Type: "Q4_K_M"})
	if err == nil || !strings.Contains(err.Error(), `q8.gguf: tensor "token_embd.weight" is already Q8_0; quantize from the F32/F16/BF16 original`) {
		t.Errorf("quantized input: %v", err)
	}
	if _, serr := os.Stat(out); serr == nil {
		t.Error("refused input left an output")
	}
	var warns []string
	if _, err := RequantizeGGUF(q8, out, GGUFOptions{Type: "Q4_0", AllowRequantize: true, Warn: func(s string) { warns = append(warns, s) }}); err != nil {
		t.Fatal(err)
	}
	if len(warns) == 0 || !strings.Contains(warns[0], "re-quantizing from Q8_0") {
		t.Errorf("warnings %q", warns)
	}
	// Not a model: no architecture.
	im := imatrix.New()
	im.Entries["blk.0.attn_q.weight"] = &imatrix.Entry{Sum2: []float32{1}, Counts: []float32{1}}
	imf := filepath.Join(tmp, "im.gguf")
	if err := imatrix.WriteGGUF(imf, im); err != nil {
		t.Fatal(err)
	}
	if _, err := RequantizeGGUF(imf, out, GGUFOptions{Type: "Q4_0"}); err == nil || !strings.Contains(err.Error(), "no general.architecture") {
		t.Errorf("imatrix as model: %v", err)
	}
}

// f16ToF32 widens an IEEE half (test helper, written from the format).
func f16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := int(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0:
		return math.Float32frombits(sign) + float32(math.Copysign(float64(man)*math.Pow(2, -24), float64(int32(sign)|1)))
	case exp == 31:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	}
	return math.Float32frombits(sign | uint32(exp-15+127)<<23 | man<<13)
}

// TestRequantizeGGUFLlamaCpp has llama.cpp load a re-quantized file (with
// an importance matrix) of the hidden-256 model.
func TestRequantizeGGUFLlamaCpp(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := llamaCppAvailable(t)
	model := k256Model(t)
	tmp := t.TempDir()
	f32 := filepath.Join(tmp, "f32.gguf")
	if err := ExportGGUF(model, f32, "f32"); err != nil {
		t.Fatal(err)
	}
	imPath := filepath.Join(tmp, "im.dat")
	legacyImatrix(t, imPath, 1, map[string]int{"blk.0.attn_q.weight": 256, "blk.7.ffn_down.weight": 512}, 5)
	im, err := imatrix.Load(imPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, mix := range []string{"Q4_K_M", "Q8_0"} {
		out := filepath.Join(tmp, mix+".gguf")
		if _, err := RequantizeGGUF(f32, out, GGUFOptions{Type: mix, Imatrix: im}); err != nil {
			t.Fatal(err)
		}
		checkLlamaCppLoad(t, dir, out, exportCase{arch: "qwen3", vocab: 261}, 256)
	}
}

// TestRequantizeGGUFBF16 rewrites the matrices of qwen3-untied-bf16's F32
// export as BF16 (exact: the checkpoint is BF16), as convert_hf_to_gguf.py
// --outtype bf16 stores them, and checks that re-quantizing that file gives
// the bytes of quantizing the folder.
func TestRequantizeGGUFBF16(t *testing.T) {
	dir := testModelDir(t, "qwen3-untied-bf16")
	tmp := t.TempDir()
	f32 := filepath.Join(tmp, "f32.gguf")
	if err := ExportGGUF(dir, f32, "f32"); err != nil {
		t.Fatal(err)
	}
	src, err := gguf.Open(f32)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bf16 := filepath.Join(tmp, "bf16.gguf")
	w := gguf.NewWriter(bf16)
	for _, kv := range src.KVs {
		if err := w.AddKV(kv.Key, kv.Value); err != nil {
			t.Fatal(err)
		}
	}
	nbf := 0
	for _, ti := range src.Tensors {
		data, _ := src.TensorData(ti.Name)
		typ := ti.Type
		if len(ti.Shape) == 2 {
			typ = gguf.TypeBF16
			nbf++
			out := make([]byte, len(data)/2)
			for i := 0; i < len(out)/2; i++ {
				u := binary.LittleEndian.Uint32(data[4*i:])
				if u&0xffff != 0 {
					t.Fatalf("%s: value %d is not BF16-exact", ti.Name, i)
				}
				binary.LittleEndian.PutUint16(out[2*i:], uint16(u>>16))
			}
			data = out
		}
		d := data
		if err := w.AddTensor(ti.Name, typ, ti.Shape, func(o io.Writer) error { _, err := o.Write(d); return err }, int64(len(d))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, mix := range []string{"Q4_K_M", "Q8_0"} {
		direct, re := filepath.Join(tmp, mix+"-direct.gguf"), filepath.Join(tmp, mix+"-re.gguf")
		if _, err := QuantizeGGUF(dir, direct, GGUFOptions{Type: mix}); err != nil {
			t.Fatal(err)
		}
		if _, err := RequantizeGGUF(bf16, re, GGUFOptions{Type: mix}); err != nil {
			t.Fatal(err)
		}
		a, _ := os.ReadFile(direct)
		b, _ := os.ReadFile(re)
		if !bytes.Equal(a, b) {
			t.Errorf("%s from BF16 (%d matrices): file differs from quantizing the folder", mix, nbf)
			diffGGUF(t, direct, re)
		}
	}
}
