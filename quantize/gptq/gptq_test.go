package gptq

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	_ "github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/wq"
)

// The golden files come from testdata/gen/gptq_reference.py, an independent
// PyTorch implementation of fasterquant. Regenerate with
// /usr/bin/python3 testdata/gen/gptq_reference.py.

type goldenCase struct {
	Bits        int       `json:"bits"`
	GroupSize   int       `json:"group_size"`
	Sym         bool      `json:"sym"`
	ActOrder    bool      `json:"act_order"`
	BlockSize   int       `json:"block_size"`
	CodesOffset int       `json:"codes_offset"`
	Scales      []float32 `json:"scales"`
	Zeros       []int     `json:"zeros"`
	GIdx        []int     `json:"g_idx"`
	Error       float64   `json:"error"`
}

type goldenFile struct {
	Rows, Cols, Tokens int
	Dead               []int
	Cases              []goldenCase
	codes              []byte
	x, w               []float32
}

func loadGoldenGPTQ(t *testing.T) *goldenFile {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatalf("%v (regenerate with /usr/bin/python3 testdata/gen/gptq_reference.py)", err)
		}
		return b
	}
	var g goldenFile
	if err := json.Unmarshal(read("golden.json"), &g); err != nil {
		t.Fatal(err)
	}
	g.codes = read("codes.bin")
	xb, wb := read("x.f16.bin"), read("w.f32.bin")
	if len(xb) != 2*g.Tokens*g.Cols || len(wb) != 4*g.Rows*g.Cols {
		t.Fatalf("testdata: x %d bytes, w %d bytes, want %d and %d", len(xb), len(wb), 2*g.Tokens*g.Cols, 4*g.Rows*g.Cols)
	}
	g.x = make([]float32, g.Tokens*g.Cols)
	for i := range g.x {
		g.x[i] = safetensors.F16ToFloat32(binary.LittleEndian.Uint16(xb[2*i:]))
	}
	g.w = make([]float32, g.Rows*g.Cols)
	for i := range g.w {
		g.w[i] = math.Float32frombits(binary.LittleEndian.Uint32(wb[4*i:]))
	}
	return &g
}

// hessianF64 is the script's H: 2/T Σ xxᵀ in float64, rounded to fp32. The
// products of fp16 values and their sums here are exact in float64, so the
// summation order does not matter.
func hessianF64(x []float32, T, C int) []float64 {
	h := make([]float64, C*C)
	for t := range T {
		row := x[t*C : (t+1)*C]
		for i, a := range row {
			for j, b := range row {
				h[i*C+j] += float64(a) * float64(b)
			}
		}
	}
	for i := range h {
		h[i] = float64(float32(2 / float64(T) * h[i]))
	}
	return h
}

func backend(t testing.TB) kernels.Backend {
	be, err := kernels.Get("")
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func TestMatchesReference(t *testing.T) {
	g := loadGoldenGPTQ(t)
	be := backend(t)
	H := hessianF64(g.x, g.Tokens, g.Cols)
	var total, same int
	for _, c := range g.Cases {
		name := fmt.Sprintf("int%d_g%d_sym=%v_act=%v_bs%d", c.Bits, c.GroupSize, c.Sym, c.ActOrder, c.BlockSize)
		t.Run(name, func(t *testing.T) {
			s := wq.Scheme{Bits: c.Bits, GroupSize: c.GroupSize, Sym: c.Sym}
			res, err := QuantizeMatrix("w", g.w, g.Rows, g.Cols, H, Options{Scheme: s, ActOrder: c.ActOrder, BlockSize: c.BlockSize, Workers: 3, Backend: be})
			if err != nil {
				t.Fatal(err)
			}
			q := res.QTensor
			if err := q.Check(); err != nil {
				t.Fatal(err)
			}
			if res.Dead != len(g.Dead) || res.Damp != 0.01 {
				t.Errorf("dead %d, damp %v; want %d, 0.01", res.Dead, res.Damp, len(g.Dead))
			}
			if !slices.Equal(q.Scales, c.Scales) {
				for i := range q.Scales {
					if q.Scales[i] != c.Scales[i] {
						t.Fatalf("scale[%d] (row %d) = %v, reference %v", i, i/s.Groups(g.Cols), q.Scales[i], c.Scales[i])
					}
				}
			}
			for i, z := range q.Zeros {
				if int(z) != c.Zeros[i] {
					t.Fatalf("zero[%d] = %d, reference %d", i, z, c.Zeros[i])
				}
			}
			for col := range g.Cols {
				if q.Group(col) != c.GIdx[col] {
					t.Fatalf("g_idx[%d] = %d, reference %d", col, q.Group(col), c.GIdx[col])
				}
			}
			want := g.codes[c.CodesOffset : c.CodesOffset+g.Rows*g.Cols]
			n := 0
			for i := range want {
				if q.Q[i] == want[i] {
					n++
				}
			}
			total += len(want)
			same += n
			if rate := float64(n) / float64(len(want)); rate < 0.999 {
				t.Errorf("codes equal on %.4f%% of entries, want >= 99.9%%", 100*rate)
			}
			e := OutputErrors(be, g.w, [][]float32{q.Dequantize()}, g.Rows, g.Cols, H)[0]
			if math.Abs(e-c.Error) > 1e-4*c.Error {
				t.Errorf("relative output error %.8g, reference %.8g", e, c.Error)
			}
		})
	}
	t.Logf("codes equal to the reference on %d of %d entries (%.4f%%)", same, total, 100*float64(same)/float64(total))
}

func TestHessianAccumulation(t *testing.T) {
	g := loadGoldenGPTQ(t)
	want := hessianF64(g.x, g.Tokens, g.Cols)
	h := NewHessian(g.Cols, backend(t))
	// Uneven pieces, one longer than a chunk.
	for _, r := range [][2]int{{0, 7}, {7, 8}, {8, g.Tokens}} {
		h.Add(g.x[r[0]*g.Cols:r[1]*g.Cols], r[1]-r[0])
	}
	if h.Tokens() != g.Tokens {
		t.Fatalf("tokens %d, want %d", h.Tokens(), g.Tokens)
	}
	got := h.Matrix()
	var maxDiag float64
	for i := range g.Cols {
		maxDiag = max(maxDiag, want[i*g.Cols+i])
	}
	for i := range got {
		if d := math.Abs(got[i] - want[i]); d > 1e-6*maxDiag || got[i] != got[(i%g.Cols)*g.Cols+i/g.Cols] {
			t.Fatalf("H[%d,%d] = %v, want %v (and symmetric)", i/g.Cols, i%g.Cols, got[i], want[i])
		}
	}
	if z := NewHessian(3, backend(t)).Matrix(); slices.ContainsFunc(z, func(v float64) bool { return v != 0 }) {
		t.Fatal("empty Hessian is not zero")
	}
}

// TestWorkersDeterministic: the output does not depend on Workers.
func TestWorkersDeterministic(t *testing.T) {
	g := loadGoldenGPTQ(t)
	H := hessianF64(g.x, g.Tokens, g.Cols)
	var ref *Result
	for _, workers := range []int{1, 2, 5, 16} {
		res, err := QuantizeMatrix("w", g.w, g.Rows, g.Cols, H, Options{Scheme: wq.Scheme{Bits: 4, GroupSize: 32}, ActOrder: true, Workers: workers, Backend: backend(t)})
		if err != nil {
			t.Fatal(err)
		}
		if ref == nil {
			ref = res
			continue
		}
		if !slices.Equal(res.Q, ref.Q) || !slices.Equal(res.Scales, ref.Scales) || !slices.Equal(res.Zeros, ref.Zeros) || !slices.Equal(res.GIdx, ref.GIdx) {
			t.Fatalf("Workers=%d differs from Workers=1", workers)
		}
	}
}

// TestBeatsRTNOnMatrix: on the reference matrix GPTQ's output error is below
// round-to-nearest's for every scheme.
func TestBeatsRTNOnMatrix(t *testing.T) {
	g := loadGoldenGPTQ(t)
	be := backend(t)
	H := hessianF64(g.x, g.Tokens, g.Cols)
	for _, s := range []wq.Scheme{{Bits: 4, GroupSize: 32}, {Bits: 4, GroupSize: 128, Sym: true}, {Bits: 8, GroupSize: -1, Sym: true}} {
		res, err := QuantizeMatrix("w", g.w, g.Rows, g.Cols, H, Options{Scheme: s, Backend: be})
		if err != nil {
			t.Fatal(err)
		}
		rtn, err := wq.RTN("w", g.w, g.Rows, g.Cols, s)
		if err != nil {
			t.Fatal(err)
		}
		e := OutputErrors(be, g.w, [][]float32{res.Dequantize(), rtn.Dequantize()}, g.Rows, g.Cols, H)
		if !(e[0] < e[1]/2) {
			t.Errorf("%v: GPTQ error %.4g, RTN %.4g: want less than half", s, e[0], e[1])
		}
	}
}

func TestQuantizeMatrixErrors(t *testing.T) {
	s4 := wq.Scheme{Bits: 4, GroupSize: 4}
	eye := func(n int) []float64 {
		h := make([]float64, n*n)
		for i := range n {
			h[i*n+i] = 1
		}
		return h
	}
	w := []float32{1, 2, 3, 4, 5, 6, 7, 8}
	nan := slices.Clone(w)
	nan[6] = float32(math.NaN())
	hnan := eye(4)
	hnan[5] = math.Inf(1)
	neg := eye(4)
	neg[0] = -1e6 // not positive definite at any damping
	for _, tc := range []struct {
		name string
		w    []float32
		h    []float64
		o    Options
		want string
	}{
		{"nan weight", nan, eye(4), Options{Scheme: s4}, "weight [1,2] is NaN"},
		{"inf hessian", w, hnan, Options{Scheme: s4}, "Hessian [1,1] is +Inf"},
		{"short hessian", w, eye(3), Options{Scheme: s4}, "Hessian has 9 entries, want 4×4"},
		{"short weights", w[:7], eye(4), Options{Scheme: s4}, "7 weights, want 2×4"},
		{"bad bits", w, eye(4), Options{Scheme: wq.Scheme{Bits: 3, GroupSize: 4}}, "want 4 or 8"},
		{"group", w, eye(4), Options{Scheme: wq.Scheme{Bits: 4, GroupSize: 3}}, "not a multiple"},
		{"damp", w, eye(4), Options{Scheme: s4, Damp: 1.5}, "damp"},
		{"not PD", w, neg, Options{Scheme: s4}, "not positive definite"},
	} {
		_, err := QuantizeMatrix("m.w", tc.w, 2, 4, tc.h, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestDampIncrease: a Hessian that is singular at the default damping gets
// more, as GPTQModel's damp_auto_increment does.
func TestDampIncrease(t *testing.T) {
	// diag mean 0.5; off-diagonal -0.5005 needs λ > 0.0005 = 0.001·mean... use
	// a matrix whose smallest eigenvalue is -0.0075·mean so damp must pass 0.0075.
	h := []float64{1, -1, -1, 1}
	for i := range h {
		h[i] *= 1.0
	}
	h[1], h[2] = -1.0075, -1.0075 // eigenvalues 2.0075 and -0.0075; mean diag 1
	res, err := QuantizeMatrix("m.w", []float32{1, -1, 0.5, 0.25}, 2, 2, h, Options{Scheme: wq.Scheme{Bits: 8, GroupSize: -1}, Damp: 0.001, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Damp <= 0.0075 || res.Damp > 0.0075+dampStep {
		t.Fatalf("damp %v, want just above 0.0075", res.Damp)
	}
}

// BenchmarkQuantizeMatrix: a Qwen3-0.6B-sized down_proj (1024 × 3072) at
// int4 g128 on a synthetic Hessian.
func BenchmarkQuantizeMatrix(b *testing.B) {
	const rows, cols, T = 1024, 3072, 256
	r := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, T*cols)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	h := NewHessian(cols, backend(b))
	h.Add(x, T)
	H := h.Matrix()
	w := make([]float32, rows*cols)
	for i := range w {
		w[i] = float32(r.NormFloat64()) * 0.02
	}
	b.ResetTimer()
	for range b.N {
		if _, err := QuantizeMatrix("w", w, rows, cols, H, Options{Scheme: wq.Scheme{Bits: 4, GroupSize: 128}}); err != nil {
			b.Fatal(err)
		}
	}
}
