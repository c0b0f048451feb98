package qblock_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels/qblock"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/wq"
)

// encodeInt writes a wq.QTensor as integer blocks of f, row by row (the
// encoding model.IntWeight does, restated here so that this test checks
// the block layout and its dequantizer on their own).
func encodeInt(t *testing.T, f qblock.Format, q *wq.QTensor) []byte {
	t.Helper()
	e, bb := f.BlockElems, f.BlockBytes
	G := q.Scheme.Groups(q.Cols)
	gs := q.Cols / G
	out := make([]byte, q.Rows*q.Cols/e*bb)
	for r := 0; r < q.Rows; r++ {
		for b := 0; b < q.Cols/e; b++ {
			g := r*G + b*e/gs
			if err := qblock.PutIntBlock(f, out[(r*q.Cols/e+b)*bb:], q.Scales[g], q.Zeros[g], q.Q[r*q.Cols+b*e:]); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

// TestIntBlocksEqualWQ: wq's round-to-nearest codes of random matrices (wide
// and tiny magnitudes, so subnormal fp16 scales occur), stored as integer
// blocks and expanded by the format's dequantizer, equal wq's own
// dequantization (QTensor.Dequantize: scale*(q-zero)) bit for bit, for 4
// and 8 bits, symmetric and not, GPTQ v1 zero points, groups of 32, 64,
// 128, 256 and per channel.
func TestIntBlocksEqualWQ(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, bits := range []int{4, 8} {
		for _, gs := range []int{32, 64, 128, 256, -1} {
			for _, kind := range []string{"sym", "asym", "v1"} {
				for _, sc := range []float32{1, 1e-6} {
					s := wq.Scheme{Bits: bits, GroupSize: gs, Sym: kind == "sym", V1Zeros: kind == "v1"}
					rows, cols := 5, 512
					if gs == -1 {
						cols = 96 // per channel on a width that is not a multiple of 128
					}
					w := make([]float32, rows*cols)
					for i := range w {
						w[i] = sc * float32(r.NormFloat64()) * float32(1+i%7)
					}
					name := fmt.Sprintf("int%d/g%d/%s/x%g", bits, gs, kind, sc)
					q, err := wq.RTN(name, w, rows, cols, s)
					if err != nil {
						t.Fatal(err)
					}
					f, err := qblock.IntFormat(bits, gs, cols)
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					data := encodeInt(t, f, q)
					if len(data) != rows*cols/f.BlockElems*f.BlockBytes {
						t.Fatalf("%s: %d bytes", name, len(data))
					}
					got := make([]float32, rows*cols)
					for row := 0; row < rows; row++ { // row by row, as the kernels call it
						rb := cols / f.BlockElems * f.BlockBytes
						f.Dequantize(got[row*cols:(row+1)*cols], data[row*rb:(row+1)*rb])
					}
					want := q.Dequantize()
					for i := range want {
						if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
							t.Fatalf("%s (%s): element %d = %v, wq %v", name, f.Name, i, got[i], want[i])
						}
					}
				}
			}
		}
	}
}

func TestIntFormat(t *testing.T) {
	for _, tc := range []struct {
		bits, gs, cols int
		want           string // format name or error text
	}{
		{4, 128, 4096, "INT4"}, {4, 256, 4096, "INT4"}, {4, -1, 4096, "INT4"}, {4, 64, 4096, "INT4_32"},
		{4, 32, 64, "INT4_32"}, {4, -1, 96, "INT4_32"}, {8, -1, 12288, "INT8"}, {8, 64, 128, "INT8_32"},
		{4, 128, 64, "64 columns are not a multiple of the group size 128"},
		{4, 48, 96, "need a multiple of 32"}, {4, -1, 80, "per-channel rows of 80 columns"},
		{3, 128, 128, "want 4 or 8"}, {8, 0, 128, "group size 0"},
	} {
		f, err := qblock.IntFormat(tc.bits, tc.gs, tc.cols)
		got := f.Name
		if err != nil {
			got = err.Error()
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("int%d g%d cols %d: %q, want %q", tc.bits, tc.gs, tc.cols, got, tc.want)
		}
	}
}

// TestPutIntBlockRefuses: scales that are not fp16 values, codes or zero
// points beyond 4 bits.
func TestPutIntBlockRefuses(t *testing.T) {
	q := make([]uint8, 32)
	dst := make([]byte, qblock.INT4_32Bytes)
	for _, tc := range []struct {
		scale float32
		zero  uint8
		code  uint8
		want  string
	}{
		{0.1, 8, 0, "not an fp16 value"}, {float32(math.NaN()), 8, 0, "not an fp16 value"}, {1e-9, 8, 0, "not an fp16 value"},
		{0.5, 16, 0, "zero point 16"}, {0.5, 8, 16, "code 16"},
	} {
		q[7] = tc.code
		err := qblock.PutIntBlock(qblock.INT4_32Format, dst, tc.scale, tc.zero, q)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("scale %v zero %d code %d: %v, want %q", tc.scale, tc.zero, tc.code, err, tc.want)
		}
	}
	// Every finite fp16 value (and ±Inf) is stored exactly.
	for h := 0; h < 1<<16; h++ {
		if h&0x7c00 == 0x7c00 && h&0x3ff != 0 {
			continue // NaN
		}
		v := safetensors.F16ToFloat32(uint16(h))
		if err := qblock.PutIntBlock(qblock.INT4_32Format, dst, v, 0, make([]uint8, 32)); err != nil {
			t.Fatalf("half %#04x (%v): %v", h, v, err)
		}
		if got := qblock.F16(dst); math.Float32bits(got) != math.Float32bits(v) {
			t.Fatalf("half %#04x: stored %v, want %v", h, got, v)
		}
	}
}
