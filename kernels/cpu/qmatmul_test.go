package cpu

import (
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/qblock"
	"github.com/tunellm/tune/quantize"
)

// quantWeight quantizes a random [rows, cols] matrix to dt with the
// llama.cpp-exact quantizers of package quantize.
func quantWeight(t testing.TB, r *rand.Rand, dt kernels.DType, rows, cols int) kernels.Weight {
	if dt == kernels.NF4 {
		return nf4Weight(r, rows, cols) // qback_test.go
	}
	gt, err := quantize.ParseType(dt.String())
	if err != nil {
		t.Fatal(err)
	}
	src := randVec(r, rows*cols, 1)
	n, err := quantize.RowSize(gt, cols)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, rows*n)
	if err := quantize.Quantize(gt, data, src, nil); err != nil {
		t.Fatal(err)
	}
	return kernels.Weight{DType: dt, Data: data, Rows: rows, Cols: cols}
}

// dequantF32 is the reference: the whole matrix dequantized by package
// quantize (llama.cpp's dequantize_row, checked bit for bit against it),
// as an F32 weight.
func dequantF32(t testing.TB, w kernels.Weight) (kernels.Weight, []float32) {
	f := make([]float32, w.Rows*w.Cols)
	if w.DType == kernels.NF4 {
		qblock.DequantizeNF4(f, w.Data) // checked against bitsandbytes' definition in kernels/qblock
	} else {
		gt, _ := quantize.ParseType(w.DType.String())
		if err := quantize.Dequantize(gt, f, w.Data); err != nil {
			t.Fatal(err)
		}
	}
	b := make([]byte, 4*len(f))
	for i, v := range f {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return kernels.Weight{DType: kernels.F32, Data: b, Rows: w.Rows, Cols: w.Cols}, f
}

// TestQuantMatMul: for T > 1 a matmul on a quantized weight equals, bit for
// bit, the fp32 matmul on the dequantized matrix (same gemm chain), for
// every type, T up to 67 and odd OC; every T (the one-row gemvQuant path
// included) is within 1e-5 (relative to sum |in*w|) of a float64 dot product
// over the dequantized matrix.
func TestQuantMatMul(t *testing.T) {
	defer SetQMatMulMode(SetQMatMulMode(QExact)) // the exact mode, whatever TUNE_QMATMUL says
	r := rand.New(rand.NewPCG(21, 22))
	b := New(3)
	for _, dt := range kernels.DTypes {
		if !dt.Quantized() {
			continue
		}
		e, _, _ := dt.Block()
		for _, sh := range []struct{ OC, C int }{{1, e}, {37, 2 * e}, {67, 5 * e}, {130, 1280 / e * e}, {33, 4608 / e * e}} {
			w := quantWeight(t, r, dt, sh.OC, sh.C)
			wf, f := dequantF32(t, w)
			for _, T := range []int{1, 2, 3, 5, 8, 9, 17, 31, 67} {
				name := fmt.Sprintf("%v/T%d_OC%d_C%d", dt, T, sh.OC, sh.C)
				in := randVec(r, T*sh.C, 1)
				bias := randVec(r, sh.OC, 1)
				got := make([]float32, T*sh.OC)
				want := make([]float32, T*sh.OC)
				b.MatMulForward(got, in, w, bias, T)
				b.MatMulForward(want, in, wf, bias, T)
				for i := range got {
					// T = 1 takes gemvQuant's summation order (checked
					// against float64 below only).
					if T > 1 && math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("%s: out[%d] = %v, dequantized fp32 matmul gives %v", name, i, got[i], want[i])
					}
				}
				for tt := 0; tt < T; tt++ {
					for o := 0; o < sh.OC; o++ {
						s, a := float64(bias[o]), math.Abs(float64(bias[o]))
						for c := 0; c < sh.C; c++ {
							p := float64(in[tt*sh.C+c]) * float64(f[o*sh.C+c])
							s += p
							a += math.Abs(p)
						}
						if d := math.Abs(float64(got[tt*sh.OC+o]) - s); d > 1e-5*a+1e-6 {
							t.Fatalf("%s: out[%d,%d] = %v, float64 dot %v (|diff| %g)", name, tt, o, got[tt*sh.OC+o], s, d)
						}
					}
				}
			}
		}
	}
}

func TestQuantEmbedding(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	b := New(2)
	for _, dt := range []kernels.DType{kernels.Q8_0, kernels.Q4_K, kernels.Q6_K, kernels.Q5_0} {
		e, _, _ := dt.Block()
		w := quantWeight(t, r, dt, 11, 2*e)
		_, f := dequantF32(t, w)
		tokens := []int{3, 0, 10, 3}
		out := make([]float32, len(tokens)*w.Cols)
		b.EmbeddingForward(out, tokens, w)
		for i, id := range tokens {
			for c := 0; c < w.Cols; c++ {
				if out[i*w.Cols+c] != f[id*w.Cols+c] {
					t.Fatalf("%v: row %d col %d: %v, want %v", dt, i, c, out[i*w.Cols+c], f[id*w.Cols+c])
				}
			}
		}
	}
}

func TestQuantBackwardRefused(t *testing.T) {
	r := rand.New(rand.NewPCG(25, 26))
	b := New(1)
	w := quantWeight(t, r, kernels.Q8_0, 4, 32)
	defer func() {
		if p := recover(); p == nil {
			t.Fatal("MatMulBackward with dw on a quantized weight did not refuse")
		}
	}()
	b.MatMulBackward(nil, make([]float32, 4*32), nil, make([]float32, 4), make([]float32, 32), w, 1)
}

func TestWeightCheckQuant(t *testing.T) {
	for _, tt := range []struct {
		w  kernels.Weight
		ok bool
	}{
		{kernels.Weight{DType: kernels.Q8_0, Data: make([]byte, 2*34), Rows: 2, Cols: 32}, true},
		{kernels.Weight{DType: kernels.Q8_0, Data: make([]byte, 2*34), Rows: 2, Cols: 31}, false},
		{kernels.Weight{DType: kernels.Q4_K, Data: make([]byte, 3*144), Rows: 3, Cols: 256}, true},
		{kernels.Weight{DType: kernels.Q4_K, Data: make([]byte, 3*144-1), Rows: 3, Cols: 256}, false},
		{kernels.Weight{DType: kernels.Q6_K, Data: make([]byte, 210), Rows: 1, Cols: 128}, false},
	} {
		if err := tt.w.Check(); (err == nil) != tt.ok {
			t.Errorf("Check(%v [%d %d], %d bytes) = %v, want ok=%v", tt.w.DType, tt.w.Rows, tt.w.Cols, len(tt.w.Data), err, tt.ok)
		}
	}
}

// BenchmarkQuantMatMul: one decoding step (T=1) and a 64-row prompt chunk
// through an [OC=3072, C=1024] weight of each type, against BF16.
func BenchmarkQuantMatMul(b *testing.B) {
	defer SetQMatMulMode(SetQMatMulMode(QExact))
	r := rand.New(rand.NewPCG(27, 28))
	be := New(0)
	const OC, C = 3072, 1024
	for _, dt := range []kernels.DType{kernels.BF16, kernels.Q8_0, kernels.Q4_K, kernels.Q6_K, kernels.Q5_K, kernels.Q4_0} {
		var w kernels.Weight
		if dt == kernels.BF16 {
			data, _ := encode(randVec(r, OC*C, 1), dt)
			w = kernels.Weight{DType: dt, Data: data, Rows: OC, Cols: C}
		} else {
			w = quantWeight(b, r, dt, OC, C)
		}
		for _, T := range []int{1, 64} {
			in := randVec(r, T*C, 1)
			out := make([]float32, T*OC)
			b.Run(fmt.Sprintf("%v/T%d", dt, T), func(b *testing.B) {
				b.SetBytes(int64(len(w.Data)))
				for i := 0; i < b.N; i++ {
					be.MatMulForward(out, in, w, nil, T)
				}
				b.ReportMetric(float64(b.N)*2*float64(T*OC*C)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

// TestDequantizerExact: the SIMD dequantizers equal kernels/qblock's bit for
// bit on random blocks (any bytes, scales kept finite).
func TestDequantizerExact(t *testing.T) {
	r := rand.New(rand.NewPCG(29, 30))
	for _, dt := range kernels.DTypes {
		if !dt.Quantized() {
			continue
		}
		f := dt.Format()
		const nb = 37
		src := make([]byte, nb*f.BlockBytes)
		for i := range src {
			src[i] = byte(r.Uint32())
		}
		// Every fp16 field: exponent below 31 (finite). Their offsets vary by
		// type, so clear bit 6 of every odd byte: a finite half then.
		for i := 1; i < len(src); i += 2 {
			src[i] &^= 0x40
		}
		want := make([]float32, nb*f.BlockElems)
		got := make([]float32, nb*f.BlockElems)
		f.Dequantize(want, src)
		dequantizer(dt)(got, src)
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%v: element %d = %v, qblock gives %v", dt, i, got[i], want[i])
			}
		}
	}
}

// TestDequantizerLlamaCpp: the SIMD dequantizers against llama.cpp's own
// dequantize_row outputs on random bytes (quantize/testdata/quants, NaN and
// Inf scales included): bit for bit, NaN for NaN.
func TestDequantizerLlamaCpp(t *testing.T) {
	dir := filepath.Join("..", "..", "quantize", "testdata", "quants")
	read := func(name string) []byte {
		f, err := os.Open(filepath.Join(dir, name+".gz"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, dt := range []kernels.DType{kernels.Q8_0, kernels.Q4_0, kernels.Q4_K, kernels.Q5_K, kernels.Q6_K} {
		f := dt.Format()
		src := read(strings.ToLower(f.Name) + ".rand.bin")
		wb := read(strings.ToLower(f.Name) + ".rand.f32")
		got := make([]float32, len(src)/f.BlockBytes*f.BlockElems)
		dequantizer(dt)(got, src)
		for i, g := range got {
			w := math.Float32frombits(binary.LittleEndian.Uint32(wb[4*i:]))
			if math.Float32bits(g) != math.Float32bits(w) && !(g != g && w != w) {
				t.Fatalf("%v: element %d = %v, llama.cpp %v", dt, i, g, w)
			}
		}
	}
}
