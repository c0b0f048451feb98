package qblock

import (
	"compress/gzip"
	"encoding/binary"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// goldenDir holds llama.cpp's own dequantize_row_* outputs on random blocks
// (ggml-quants.c compiled with gcc; see its README.md).
var goldenDir = filepath.Join("..", "..", "quantize", "testdata", "quants")

func readGolden(t *testing.T, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join(goldenDir, name+".gz"))
	if err != nil {
		t.Fatalf("golden: %v", err)
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

// TestDequantizeMatchesLlamaCpp: every type's Dequantize equals llama.cpp's
// dequantize_row bit for bit (NaN for NaN) on random bytes.
func TestDequantizeMatchesLlamaCpp(t *testing.T) {
	for _, f := range Formats {
		t.Run(f.Name, func(t *testing.T) {
			name := strings.ToLower(f.Name)
			src := readGolden(t, name+".rand.bin")
			wb := readGolden(t, name+".rand.f32")
			got := make([]float32, len(src)/f.BlockBytes*f.BlockElems)
			if len(got)*4 != len(wb) {
				t.Fatalf("%d outputs, golden has %d", len(got), len(wb)/4)
			}
			f.Dequantize(got, src)
			for i, g := range got {
				w := math.Float32frombits(binary.LittleEndian.Uint32(wb[4*i:]))
				if math.Float32bits(g) != math.Float32bits(w) && !(g != g && w != w) {
					t.Fatalf("element %d: %v, llama.cpp %v", i, g, w)
				}
			}
		})
	}
}

func TestTable(t *testing.T) {
	// ggml-common.h static_asserts.
	want := map[string][2]int{"Q4_0": {32, 18}, "Q4_1": {32, 20}, "Q5_0": {32, 22}, "Q5_1": {32, 24}, "Q8_0": {32, 34},
		"Q2_K": {256, 84}, "Q3_K": {256, 110}, "Q4_K": {256, 144}, "Q5_K": {256, 176}, "Q6_K": {256, 210}}
	if len(Formats) != len(want) {
		t.Fatalf("%d formats, want %d", len(Formats), len(want))
	}
	for _, f := range Formats {
		if w := want[f.Name]; f.BlockElems != w[0] || f.BlockBytes != w[1] {
			t.Errorf("%s: %d elements in %d bytes, want %v", f.Name, f.BlockElems, f.BlockBytes, w)
		}
		if g, ok := ByName(f.Name); !ok || g.GGUFType != f.GGUFType {
			t.Errorf("ByName(%s)", f.Name)
		}
		if g, ok := ByGGUFType(f.GGUFType); !ok || g.Name != f.Name {
			t.Errorf("ByGGUFType(%d)", f.GGUFType)
		}
	}
	for h := 0; h < 1<<16; h++ {
		if v := halfToFloat(uint16(h)); v == v && h&0x7c00 != 0x7c00 {
			// finite: exact in float64 as sign * m * 2^(e-25)
			e, m := h>>10&0x1f, float64(h&0x3ff)
			var x float64
			if e == 0 {
				x = m * math.Ldexp(1, -24)
			} else {
				x = (1024 + m) * math.Ldexp(1, e-25)
			}
			if h&0x8000 != 0 {
				x = -x
			}
			if float64(v) != x {
				t.Fatalf("half %#04x = %v, want %v", h, v, x)
			}
		}
	}
}

func BenchmarkDequantize(b *testing.B) {
	const n = 1 << 16
	r := rand.New(rand.NewPCG(1, 2))
	for _, f := range Formats {
		src := make([]byte, n/f.BlockElems*f.BlockBytes)
		for i := range src {
			src[i] = byte(r.Uint32())
		}
		dst := make([]float32, n)
		b.Run(f.Name, func(b *testing.B) {
			b.SetBytes(n * 4)
			for i := 0; i < b.N; i++ {
				f.Dequantize(dst, src)
			}
		})
	}
}
