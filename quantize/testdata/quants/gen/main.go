// Command gen writes the inputs of the llama.cpp quantization goldens:
// inputs.bin (test rows and two importance matrices) and <type>.rand.bin
// (random blocks for the dequantizers). The expected outputs are then
// written by llama.cpp's own ggml-quants.c through the C driver in
// ../README.md. Run from the repository root:
//
//	go run ./quantize/testdata/quants/gen quantize/testdata/quants
package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
)

const ncols = 512

// lcg is a 64-bit LCG (Knuth's MMIX constants), so the data do not depend
// on math/rand's algorithm.
type lcg uint64

func (s *lcg) next() uint64 {
	*s = *s*6364136223846793005 + 1442695040888963407
	return uint64(*s)
}

func (s *lcg) uniform() float64 { return float64(s.next()>>11) / (1 << 53) }

// normal is Box-Muller.
func (s *lcg) normal() float64 {
	u1 := s.uniform()
	if u1 < 1e-300 {
		u1 = 1e-300
	}
	return math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*s.uniform())
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gen OUTDIR")
		os.Exit(2)
	}
	dir := os.Args[1]
	rng := lcg(12345)
	var rows [][]float32
	row := func(f func(i int) float64) {
		r := make([]float32, ncols)
		for i := range r {
			r[i] = float32(f(i))
		}
		rows = append(rows, r)
	}
	// test-quantize-fns.cpp's generate_data: 0.1 + 2*cos(i + offset).
	row(func(i int) float64 { return 0.1 + 2*math.Cos(float64(i)) })
	row(func(i int) float64 { return 0.1 + 2*math.Cos(float64(i)+1) })
	for k := 0; k < 4; k++ {
		row(func(int) float64 { return rng.normal() })
	}
	row(func(int) float64 { return 1e-3 * rng.normal() })
	row(func(int) float64 { return 50 * rng.normal() })
	row(func(int) float64 { return 0 })
	row(func(int) float64 { return math.Copysign(0, -1) })
	row(func(int) float64 { return 0.5 })
	row(func(int) float64 { return -3 })
	row(func(i int) float64 { // outliers of 1e4 among unit normals
		if i%97 == 13 {
			return math.Copysign(1e4, rng.normal())
		}
		return rng.normal()
	})
	row(func(i int) float64 { // one huge outlier
		if i == 300 {
			return 3e5
		}
		return rng.normal()
	})
	row(func(int) float64 { return 1e-40 * rng.normal() }) // subnormal floats
	row(func(int) float64 { return 1e-20 * rng.normal() }) // below GROUP_MAX_EPS
	row(func(int) float64 { return 1e-7 * rng.normal() })  // fp16 scales underflow
	row(func(i int) float64 { return float64(1 - 2*(i%2)) })
	row(func(i int) float64 { return float64(i%16 - 8) }) // integer grids: search ties
	row(func(i int) float64 { return float64(i%7 - 3) })
	row(func(i int) float64 { return float64((i*5)%17-8) * 0.5 })
	row(func(int) float64 { return 0.5 + rng.uniform() })
	row(func(int) float64 { return -0.5 - rng.uniform() })
	row(func(i int) float64 { // sparse, and blocks whose extremes tie in |x|
		switch {
		case i%32 == 5:
			return 1
		case i%64 == 7:
			return -5
		case i%64 == 9:
			return 5
		}
		return 0
	})
	row(func(i int) float64 { return []float64{-1, 2}[i*7%3%2] })
	row(func(int) float64 { return 2*rng.uniform() - 1 })
	row(func(int) float64 { v := rng.normal(); return v * v * v })
	row(func(i int) float64 { return math.Pow(10, float64((i/32)%7-3)) * rng.normal() })
	row(func(int) float64 { return 1e5 * rng.normal() })
	row(func(int) float64 { return 7e6 * rng.normal() }) // fp16 scale overflow
	imA := make([]float32, ncols)
	imB := make([]float32, ncols)
	for i := range imA {
		v := 0.05 + 2*rng.uniform()
		imA[i] = float32(v * v)
		imB[i] = float32(rng.uniform())
		if i%5 == 0 || (i >= 64 && i < 96) {
			imB[i] = 0
		}
	}
	var buf []byte
	buf = append(buf, "QIN1"...)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(rows)))
	buf = binary.LittleEndian.AppendUint32(buf, ncols)
	for _, r := range append(rows, imA, imB) {
		for _, v := range r {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
		}
	}
	must(os.WriteFile(filepath.Join(dir, "inputs.bin"), buf, 0o644))
	// Random blocks: 256 elements' worth per type; any bit pattern,
	// fp16 NaNs and infinities included.
	for _, t := range []struct {
		name  string
		bytes int // per 256 elements
	}{{"q4_0", 8 * 18}, {"q4_1", 8 * 20}, {"q5_0", 8 * 22}, {"q5_1", 8 * 24}, {"q8_0", 8 * 34},
		{"q2_k", 84}, {"q3_k", 110}, {"q4_k", 144}, {"q5_k", 176}, {"q6_k", 210}} {
		b := make([]byte, 4*t.bytes) // 1024 elements
		for i := range b {
			b[i] = byte(rng.next() >> 56)
		}
		must(os.WriteFile(filepath.Join(dir, t.name+".rand.bin"), b, 0o644))
	}
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
