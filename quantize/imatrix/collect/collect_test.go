package collect

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	_ "github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/quantize/gguf"
	"github.com/tunellm/tune/quantize/imatrix"
	"github.com/tunellm/tune/tokenizer"
)

// golden is what testdata/gen/imatrix_reference.py (PyTorch, the forward of
// testdata/gen/reference.py with F.linear hooked) writes.
type golden struct {
	Model         string `json:"model"`
	Ctx           int    `json:"ctx"`
	Chunks        int    `json:"chunks"`
	BOS           int    `json:"bos"`
	ProcessOutput bool   `json:"process_output"`
	Tokens        []int  `json:"tokens"`
	Entries       map[string]struct {
		Sum2  []float64 `json:"sum2"`
		Count int64     `json:"count"`
	} `json:"entries"`
}

// TestRunGolden compares every entry (Σx² per column and the count) with
// the PyTorch reference over the same chunks: qwen3-tied (no BOS, tied head
// not collected although asked) and llama3 (BOS per chunk, untied head
// collected, chunk limit).
func TestRunGolden(t *testing.T) {
	text, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", "golden", "ppl.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"qwen3-tied", "llama3"} {
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("..", "testdata", name+".json"))
			if err != nil {
				t.Fatalf("%v (regenerate with /usr/bin/python3 testdata/gen/imatrix_reference.py)", err)
			}
			var g golden
			if err := json.Unmarshal(b, &g); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join("..", "..", "..", "testdata", "models", name)
			tok, err := tokenizer.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			ids := tok.Encode(string(text), true)
			if !reflect.DeepEqual(ids, g.Tokens) {
				t.Fatalf("tokens differ from the reference's: %d vs %d", len(ids), len(g.Tokens))
			}
			bos := -1
			if id, ok := tok.BOS(); ok && tok.AddsBOS() {
				bos = id
			}
			if bos != g.BOS {
				t.Fatalf("BOS %d, reference %d", bos, g.BOS)
			}
			m, err := model.Load(dir, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			var calls []int
			chunks := 0
			if g.Chunks < len(ids)/g.Ctx {
				chunks = g.Chunks
			}
			mat, err := Run(m, ids, Options{Ctx: g.Ctx, Chunks: chunks, BOS: bos, ProcessOutput: g.ProcessOutput,
				Dataset: "ppl.txt", Progress: func(done, total int) { calls = append(calls, done*100+total) }})
			if err != nil {
				t.Fatal(err)
			}
			if mat.ChunkCount != g.Chunks || mat.ChunkSize != g.Ctx || len(calls) != g.Chunks || calls[len(calls)-1] != g.Chunks*101 {
				t.Errorf("chunks %d of %d, progress %v; want %d of %d", mat.ChunkCount, mat.ChunkSize, calls, g.Chunks, g.Ctx)
			}
			if got, want := sortedKeys(mat.Entries), sortedKeys(g.Entries); !reflect.DeepEqual(got, want) {
				t.Fatalf("entries %v\nwant %v", got, want)
			}
			worst := 0.0
			for name, want := range g.Entries {
				e := mat.Entries[name]
				if len(e.Counts) != 1 || int64(e.Counts[0]) != want.Count || len(e.Sum2) != len(want.Sum2) {
					t.Errorf("%s: counts %v, %d columns; want [%d], %d", name, e.Counts, len(e.Sum2), want.Count, len(want.Sum2))
					continue
				}
				for j, w := range want.Sum2 {
					rel := math.Abs(float64(e.Sum2[j])-w) / math.Max(math.Abs(w), 1e-30)
					worst = max(worst, rel)
					if rel > 1e-5 {
						t.Errorf("%s[%d]: %g, reference %g (rel %.2g)", name, j, e.Sum2[j], w, rel)
						break
					}
				}
			}
			t.Logf("%d entries, worst relative difference %.2g", len(g.Entries), worst)
			if m.Config.TieEmbeddings == (mat.Entries["output.weight"] != nil) {
				t.Errorf("output.weight collected %v for a tied=%v head", mat.Entries["output.weight"] != nil, m.Config.TieEmbeddings)
			}
		})
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestRunErrors(t *testing.T) {
	m, err := model.Load(filepath.Join("..", "..", "..", "testdata", "models", "qwen3-tied"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := Run(m, make([]int, 100), Options{Ctx: 64, BOS: -1}); err == nil || !strings.Contains(err.Error(), "need at least 128") {
		t.Errorf("short stream: %v", err)
	}
	if _, err := Run(m, []int{1, 2, 999, 3}, Options{Ctx: 2, BOS: -1}); err == nil || !strings.Contains(err.Error(), "chunk 2") {
		t.Errorf("bad token: %v", err)
	}
}

// TestImatrixLowersWeightedError runs the whole chain: an importance matrix
// computed here, saved and loaded, steers the quantizers so that the
// rounding error weighted by it (Σ_j w_j·(ŵ_ij − w_ij)², what the _impl
// quantizers minimize in place of the plain squared error) is lower than
// without it, over the covered tensors of qwen3-tied in Q4_0, Q4_1 and
// Q5_1 (its rows of 64 and 128 are too short for K-quant blocks).
func TestImatrixLowersWeightedError(t *testing.T) {
	dir := filepath.Join("..", "..", "..", "testdata", "models", "qwen3-tied")
	text, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", "golden", "ppl.txt"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mat, err := Run(m, tok.Encode(string(text), true), Options{Ctx: 64, BOS: -1})
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	imPath := filepath.Join(tmp, "im.gguf")
	if err := imatrix.Save(imPath, mat); err != nil {
		t.Fatal(err)
	}
	im, err := imatrix.Load(imPath)
	if err != nil {
		t.Fatal(err)
	}
	f32 := filepath.Join(tmp, "f32.gguf")
	if err := quantize.ExportGGUF(dir, f32, "f32"); err != nil {
		t.Fatal(err)
	}
	ref := readGGUF(t, f32)
	for _, mix := range []string{"Q4_0", "Q4_1", "Q5_1"} {
		plain, with := filepath.Join(tmp, mix+".gguf"), filepath.Join(tmp, mix+"-im.gguf")
		if _, err := quantize.QuantizeGGUF(dir, plain, quantize.GGUFOptions{Type: mix}); err != nil {
			t.Fatal(err)
		}
		rep, err := quantize.QuantizeGGUF(dir, with, quantize.GGUFOptions{Type: mix, Imatrix: im})
		if err != nil {
			t.Fatal(err)
		}
		if rep.ImatrixTensors != 14 {
			t.Errorf("%s: %d tensors used the imatrix, want 14", mix, rep.ImatrixTensors)
		}
		p, w := readGGUF(t, plain), readGGUF(t, with)
		var ep, ew float64
		lower := 0
		for name := range mat.Entries {
			imw := im.Weights(name)
			a, b := weightedErr(ref[name], p[name], imw), weightedErr(ref[name], w[name], imw)
			ep += a
			ew += b
			if b < a {
				lower++
			}
		}
		t.Logf("%s: imatrix-weighted error %.4g without, %.4g with (%.1f%%); lower for %d of 14 tensors", mix, ep, ew, 100*(ew/ep-1), lower)
		if !(ew < ep) || lower < 10 {
			t.Errorf("%s: the imatrix did not lower the weighted error: %.4g vs %.4g, %d of 14 tensors lower", mix, ew, ep, lower)
		}
	}
}

func weightedErr(ref, got, w []float32) float64 {
	cols := len(w)
	var s float64
	for i := range ref {
		d := float64(got[i] - ref[i])
		s += float64(w[i%cols]) * d * d
	}
	return s
}

// readGGUF dequantizes every tensor of a GGUF file.
func readGGUF(t *testing.T, path string) map[string][]float32 {
	t.Helper()
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]float32{}
	for _, ti := range f.Tensors {
		b, err := f.TensorData(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		n := 1
		for _, d := range ti.Shape {
			n *= d
		}
		vals := make([]float32, n)
		switch ti.Type {
		case gguf.TypeF32:
			for i := range vals {
				vals[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			}
		case gguf.TypeF16:
			continue
		default:
			if err := quantize.Dequantize(ti.Type, vals, b); err != nil {
				t.Fatal(err)
			}
		}
		out[ti.Name] = vals
	}
	return out
}
