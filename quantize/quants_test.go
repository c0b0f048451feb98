package quantize

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/quantize/gguf"
)

// The goldens in testdata/quants were written by llama.cpp's ggml-quants.c
// (see testdata/quants/README.md); inputs come from testdata/quants/gen.

const quantsDir = "testdata/quants"

func readGolden(t *testing.T, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join(quantsDir, name+".gz"))
	if err != nil {
		t.Fatalf("golden: %v (regenerate: see %s/README.md)", err, quantsDir)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	return b
}

func f32s(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

type quantInputs struct {
	nrows, ncols int
	rows         []float32 // [nrows*ncols]
	imA, imB     []float32 // [ncols]
}

func loadInputs(t *testing.T) quantInputs {
	b := readGolden(t, "inputs.bin")
	if string(b[:4]) != "QIN1" {
		t.Fatalf("inputs.bin: magic %q, want QIN1", b[:4])
	}
	nr, nc := int(binary.LittleEndian.Uint32(b[4:])), int(binary.LittleEndian.Uint32(b[8:]))
	v := f32s(b[12:])
	if len(v) != (nr+2)*nc {
		t.Fatalf("inputs.bin: %d floats, want %d", len(v), (nr+2)*nc)
	}
	return quantInputs{nr, nc, v[:nr*nc], v[nr*nc : (nr+1)*nc], v[(nr+1)*nc:]}
}

func lower(name string) string { return strings.ToLower(name) }

// TestQuantizeMatchesLlamaCpp compares our bytes with llama.cpp's
// quantize_<type> for every row, without and with two importance matrices.
func TestQuantizeMatchesLlamaCpp(t *testing.T) {
	in := loadInputs(t)
	for _, tr := range traits {
		variants := []struct {
			suffix string
			im     []float32
		}{{"", nil}}
		if tr.Imatrix {
			variants = append(variants, struct {
				suffix string
				im     []float32
			}{".imat_a", in.imA}, struct {
				suffix string
				im     []float32
			}{".imat_b", in.imB})
		}
		for _, v := range variants {
			t.Run(tr.Name+v.suffix, func(t *testing.T) {
				want := readGolden(t, lower(tr.Name)+v.suffix+".bin")
				rs, _ := RowSize(tr.Type, in.ncols)
				if len(want) != rs*in.nrows {
					t.Fatalf("golden has %d bytes, want %d", len(want), rs*in.nrows)
				}
				bad := 0
				for r := 0; r < in.nrows; r++ {
					got := make([]byte, rs)
					src := in.rows[r*in.ncols : (r+1)*in.ncols]
					if err := Quantize(tr.Type, got, src, v.im); err != nil {
						t.Fatal(err)
					}
					w := want[r*rs : (r+1)*rs]
					if !bytes.Equal(got, w) {
						bad++
						i := 0
						for got[i] == w[i] {
							i++
						}
						t.Errorf("row %d: first difference at byte %d (block %d, offset %d): got %#02x, want %#02x", r, i, i/tr.BlockBytes, i%tr.BlockBytes, got[i], w[i])
					}
				}
				if bad > 0 {
					t.Errorf("%d of %d rows differ", bad, in.nrows)
				}
			})
		}
	}
}

// TestDequantizeMatchesLlamaCpp dequantizes random blocks (every bit
// pattern, fp16 NaN/Inf scales included) and compares bit for bit with
// llama.cpp's dequantize_row_<type>; NaNs need only both be NaN.
func TestDequantizeMatchesLlamaCpp(t *testing.T) {
	for _, tr := range traits {
		t.Run(tr.Name, func(t *testing.T) {
			src := readGolden(t, lower(tr.Name)+".rand.bin")
			want := f32s(readGolden(t, lower(tr.Name)+".rand.f32"))
			got := make([]float32, len(src)/tr.BlockBytes*tr.BlockElems)
			if len(got) != len(want) {
				t.Fatalf("%d outputs, golden has %d", len(got), len(want))
			}
			if err := Dequantize(tr.Type, got, src); err != nil {
				t.Fatal(err)
			}
			bad := 0
			for i := range got {
				g, w := got[i], want[i]
				if math.Float32bits(g) != math.Float32bits(w) && !(g != g && w != w) {
					if bad < 5 {
						t.Errorf("element %d: got %v, want %v", i, g, w)
					}
					bad++
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d elements differ", bad, len(got))
			}
		})
	}
}

// TestRoundTripRMSE is test-quantize-fns.cpp's round-trip check on its
// 0.1+2cos(i) data, with bounds set by the bit width b: the RMS error of a
// uniform quantizer with step range/(2^b-1) is step/sqrt(12), range being
// the data's 4.2, plus 30% slack (llama.cpp's sqrt(sum)/n metric is not an
// RMSE, so its constants do not carry over).
func TestRoundTripRMSE(t *testing.T) {
	const n = 32 * 256
	src := make([]float32, n)
	for i := range src {
		src[i] = float32(0.1 + 2*math.Cos(float64(i)))
	}
	bits := map[string]int{"Q8_0": 8, "Q6_K": 6, "Q5_0": 5, "Q5_1": 5, "Q5_K": 5, "Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q3_K": 3, "Q2_K": 2}
	limits := map[string]float64{}
	for name, b := range bits {
		limits[name] = 1.3 * 4.2 / float64(int(1)<<b-1) / math.Sqrt(12)
	}
	prev := map[string]float64{}
	for _, tr := range traits {
		q := make([]byte, n/tr.BlockElems*tr.BlockBytes)
		if err := Quantize(tr.Type, q, src, nil); err != nil {
			t.Fatal(err)
		}
		out := make([]float32, n)
		if err := Dequantize(tr.Type, out, q); err != nil {
			t.Fatal(err)
		}
		var s float64
		for i := range src {
			d := float64(out[i] - src[i])
			s += d * d
		}
		rmse := math.Sqrt(s / n)
		prev[tr.Name] = rmse
		if lim, ok := limits[tr.Name]; !ok || rmse > lim {
			t.Errorf("%s: round-trip RMSE %.5f, want <= %.5f", tr.Name, rmse, lim)
		}
		t.Logf("%s: RMSE %.5f", tr.Name, rmse)
	}
	// More bits must not be worse.
	for _, p := range [][2]string{{"Q8_0", "Q6_K"}, {"Q6_K", "Q5_K"}, {"Q5_K", "Q4_K"}, {"Q4_K", "Q3_K"}, {"Q3_K", "Q2_K"}, {"Q5_0", "Q4_0"}, {"Q5_1", "Q4_1"}} {
		if prev[p[0]] > prev[p[1]] {
			t.Errorf("RMSE %s %.5f > %s %.5f", p[0], prev[p[0]], p[1], prev[p[1]])
		}
	}
}

func TestBlockSizes(t *testing.T) {
	for _, c := range []struct {
		name         string
		elems, bytes int
		want         int // from the field list in ggml-common.h
	}{
		{"Q4_0", BlockQ4_0Elems, BlockQ4_0Bytes, 2 + 32/2},
		{"Q4_1", BlockQ4_1Elems, BlockQ4_1Bytes, 2*2 + 32/2},
		{"Q5_0", BlockQ5_0Elems, BlockQ5_0Bytes, 2 + 4 + 32/2},
		{"Q5_1", BlockQ5_1Elems, BlockQ5_1Bytes, 2*2 + 4 + 32/2},
		{"Q8_0", BlockQ8_0Elems, BlockQ8_0Bytes, 2 + 32},
		{"Q2_K", BlockQ2_KElems, BlockQ2_KBytes, 2*2 + 256/16 + 256/4},
		{"Q3_K", BlockQ3_KElems, BlockQ3_KBytes, 2 + 256/4 + 256/8 + 12},
		{"Q4_K", BlockQ4_KElems, BlockQ4_KBytes, 2*2 + 12 + 256/2},
		{"Q5_K", BlockQ5_KElems, BlockQ5_KBytes, 2*2 + 12 + 256/2 + 256/8},
		{"Q6_K", BlockQ6_KElems, BlockQ6_KBytes, 2 + 256/16 + 3*256/4},
	} {
		if c.bytes != c.want {
			t.Errorf("%s: block bytes %d, want %d", c.name, c.bytes, c.want)
		}
		typ, err := ParseType(c.name)
		if err != nil {
			t.Fatal(err)
		}
		tr, _ := TypeTraits(typ)
		if tr.BlockElems != c.elems || tr.BlockBytes != c.bytes {
			t.Errorf("%s: traits %d/%d, want %d/%d", c.name, tr.BlockElems, tr.BlockBytes, c.elems, c.bytes)
		}
	}
}

// TestTraitsMatchGGUF checks the table against quantize/gguf's type table.
func TestTraitsMatchGGUF(t *testing.T) {
	for _, tr := range traits {
		g, ok := gguf.TraitsOf(tr.Type)
		if !ok {
			t.Errorf("%s: type %d missing from gguf", tr.Name, tr.Type)
			continue
		}
		if g.Name != tr.Name || g.BlockElems != int64(tr.BlockElems) || g.BlockBytes != int64(tr.BlockBytes) {
			t.Errorf("%s: gguf has %+v, want %s %d/%d", tr.Name, g, tr.Name, tr.BlockElems, tr.BlockBytes)
		}
		if tr.Type.String() != tr.Name {
			t.Errorf("%s: gguf name %q", tr.Name, tr.Type.String())
		}
	}
}

func TestQuantizeErrors(t *testing.T) {
	ok := make([]float32, 256)
	nan := make([]float32, 256)
	nan[77] = float32(math.NaN())
	inf := make([]float32, 256)
	inf[3] = float32(math.Inf(-1))
	for _, c := range []struct {
		name string
		typ  gguf.Type
		dst  int
		src  []float32
		im   []float32
		want string
	}{
		{"nan", gguf.TypeQ4_K, 144, nan, nil, "non-finite input NaN at index 77"},
		{"inf", gguf.TypeQ8_0, 8 * 34, inf, nil, "non-finite input -Inf at index 3"},
		{"type", gguf.TypeF16, 512, ok, nil, "unsupported type F16, want one of Q4_0"},
		{"blocks", gguf.TypeQ6_K, 210, ok[:100], nil, "100 elements is not a multiple of the block size 256"},
		{"dst", gguf.TypeQ6_K, 200, ok, nil, "dst has 200 bytes, want 210"},
		{"imatrix len", gguf.TypeQ4_0, 8 * 18, ok, make([]float32, 48), "imatrix has 48 values"},
		{"imatrix nan", gguf.TypeQ4_0, 8 * 18, ok, append(make([]float32, 255), float32(math.NaN())), "imatrix value NaN at index 255"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := Quantize(c.typ, make([]byte, c.dst), c.src, c.im)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
	if _, err := ParseType("q9_z"); err == nil || !strings.Contains(err.Error(), "Q4_K") {
		t.Errorf("ParseType: %v", err)
	}
	if err := Dequantize(gguf.TypeQ4_K, make([]float32, 256), make([]byte, 143)); err == nil || !strings.Contains(err.Error(), "src has 143 bytes, want 144") {
		t.Errorf("Dequantize: %v", err)
	}
}

// TestImatrixRows checks that a matrix quantizes row by row: two rows at
// once equal each row alone, and Q8_0 ignores the imatrix.
func TestImatrixRows(t *testing.T) {
	in := loadInputs(t)
	for _, tr := range traits {
		rs, _ := RowSize(tr.Type, in.ncols)
		both := make([]byte, 2*rs)
		if err := Quantize(tr.Type, both, in.rows[2*in.ncols:4*in.ncols], in.imA); err != nil {
			t.Fatal(err)
		}
		for r := 0; r < 2; r++ {
			one := make([]byte, rs)
			im := in.imA
			if !tr.Imatrix {
				im = nil
			}
			tr.QuantizeRow(one, in.rows[(2+r)*in.ncols:(3+r)*in.ncols], im)
			if !bytes.Equal(one, both[r*rs:(r+1)*rs]) {
				t.Errorf("%s: row %d of a 2-row Quantize differs from the row alone", tr.Name, r)
			}
		}
	}
}

func BenchmarkQuantize(b *testing.B) {
	const n = 4096 * 4
	src := make([]float32, n)
	for i := range src {
		src[i] = float32(0.1 + 2*math.Cos(float64(i)))
	}
	im := make([]float32, 4096)
	for i := range im {
		im[i] = 1 + float32(i%7)
	}
	for _, tr := range traits {
		q := make([]byte, n/tr.BlockElems*tr.BlockBytes)
		out := make([]float32, n)
		for _, withIm := range []bool{false, true} {
			if withIm && !tr.Imatrix {
				continue
			}
			name := tr.Name
			var imx []float32
			if withIm {
				name += "/imatrix"
				imx = im
			}
			b.Run(fmt.Sprintf("quantize/%s", name), func(b *testing.B) {
				b.SetBytes(4 * n) // f32 input bytes
				for i := 0; i < b.N; i++ {
					if err := Quantize(tr.Type, q, src, imx); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		b.Run(fmt.Sprintf("dequantize/%s", tr.Name), func(b *testing.B) {
			b.SetBytes(4 * n) // f32 output bytes
			for i := 0; i < b.N; i++ {
				if err := Dequantize(tr.Type, out, q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
