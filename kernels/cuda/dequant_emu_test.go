package cuda

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunellm/tune/kernels"
)

// dequantCase is one dtype's random blocks and what qblock makes of them.
type dequantCase struct {
	dt     kernels.DType
	kernel string
	e      int // block width argument of dequant_int4/int8
	raw    []byte
	want   []float32
}

// dequantKernelOf names w's kernel and its E argument (the switch in
// dequantRows, restated for the harnesses).
func dequantKernelOf(dt kernels.DType) (string, int) {
	e, _, _ := dt.Block()
	switch dt {
	case kernels.INT4, kernels.INT4_32:
		return "dequant_int4", e
	case kernels.INT8, kernels.INT8_32:
		return "dequant_int8", e
	}
	return "dequant_" + strings.ToLower(dt.String()), 0
}

// randomBlocks makes nb blocks of dt: every byte random (fp16 scales of any
// class: normal, subnormal, zero, Inf, NaN), except that the scale fields
// are set to small normal values, as real weights have them, in every
// other block (finite: in every block). NF4's fp32 absmax is a random
// finite value.
func randomBlocks(r *rand.Rand, dt kernels.DType, nb int, finite bool) []byte {
	_, bb, _ := dt.Block()
	raw := make([]byte, nb*bb)
	for i := range raw {
		raw[i] = byte(r.Uint32())
	}
	half := func(b []byte, x float32) {
		u := math.Float32bits(x)
		h := uint16(u>>16)&0x8000 | uint16((int(u>>23&0xff)-127+15)<<10) | uint16(u>>13&0x3ff)
		binary.LittleEndian.PutUint16(b, h)
	}
	for k := 0; k < nb; k++ {
		b := raw[k*bb : (k+1)*bb]
		if dt == kernels.NF4 {
			binary.LittleEndian.PutUint32(b, math.Float32bits(float32(r.ExpFloat64()*0.05)))
			continue
		}
		if k%2 == 0 && !finite {
			continue
		}
		s := float32(0.001 + 0.01*r.Float64())
		switch dt {
		case kernels.Q4_0, kernels.Q5_0, kernels.Q8_0, kernels.INT4, kernels.INT4_32, kernels.INT8, kernels.INT8_32:
			half(b, s)
		case kernels.Q4_1, kernels.Q5_1, kernels.Q4_K, kernels.Q5_K:
			half(b, s)
			half(b[2:], -s)
		case kernels.Q2_K:
			half(b[80:], s)
			half(b[82:], s/2)
		case kernels.Q3_K:
			half(b[108:], s)
		case kernels.Q6_K:
			half(b[208:], s)
		}
	}
	return raw
}

// dequantCases: every quantized dtype, 48 random blocks each.
func dequantCases(seed uint64) []dequantCase {
	r := rand.New(rand.NewPCG(seed, 7))
	var cs []dequantCase
	for dt := kernels.DType(0); dt < 64; dt++ {
		e, _, ok := dt.Block()
		if !dt.Quantized() || !ok {
			continue
		}
		k, arg := dequantKernelOf(dt)
		raw := randomBlocks(r, dt, 48, false)
		want := make([]float32, 48*e)
		dt.Format().Dequantize(want, raw)
		cs = append(cs, dequantCase{dt: dt, kernel: k, e: arg, raw: raw, want: want})
	}
	return cs
}

// bf16Bits is f32_to_bf16's rounding on the host.
func bf16Bits(x float32) uint16 {
	u := math.Float32bits(x)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// dequantSection is the "// ---- dequant" section of kernels.cu: up to the
// next "// ---- " heading or the end.
func dequantSection(t *testing.T) string {
	src, err := os.ReadFile("kernels.cu")
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	i := strings.Index(s, "\n// ---- dequant")
	if i < 0 {
		t.Fatal("kernels.cu has no // ---- dequant section")
	}
	s = s[i+1:]
	if j := strings.Index(s[1:], "\n// ---- "); j >= 0 {
		s = s[:j+2]
	}
	return s
}

// TestDequantEmulated compiles the dequant kernels of kernels.cu with g++
// against scripts/gpu/emulate/emu.h (CUDA threads as OS threads) and checks
// that on random blocks of every quantized dtype they produce qblock's
// dequantized values bit for bit, as fp32 and as bf16. It needs g++ (C++20)
// and skips without it, except under CI=true (.ci/run installs g++).
// ~10 s on 2 cores.
func TestDequantEmulated(t *testing.T) {
	gxx, err := exec.LookPath("g++")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("no g++: the emulated dequant check needs g++ (C++20); .ci/run installs it")
		}
		t.Skip("no g++: the emulated dequant check needs g++ (C++20)")
	}
	dir := t.TempDir()
	sec := filepath.Join(dir, "dequant.cu")
	if err := os.WriteFile(sec, []byte(dequantSection(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.WriteString("DQ1\n")
	cs := dequantCases(1)
	le := binary.LittleEndian
	binary.Write(&buf, le, uint32(len(cs)))
	for _, c := range cs {
		for _, s := range []string{c.dt.String(), c.kernel} {
			binary.Write(&buf, le, uint32(len(s)))
			buf.WriteString(s)
		}
		binary.Write(&buf, le, int32(c.e))
		binary.Write(&buf, le, int64(len(c.want)))
		binary.Write(&buf, le, int64(len(c.raw)))
		buf.Write(c.raw)
		for _, v := range c.want {
			binary.Write(&buf, le, math.Float32bits(v))
		}
		for _, v := range c.want {
			binary.Write(&buf, le, bf16Bits(v))
		}
	}
	cases := filepath.Join(dir, "cases.bin")
	if err := os.WriteFile(cases, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	check, _ := filepath.Abs(filepath.Join("..", "..", "scripts", "gpu", "emulate", "dequant_check.cpp"))
	bin := filepath.Join(dir, "dequant_check")
	t0 := time.Now()
	cmd := exec.Command(gxx, "-std=c++20", "-O1", "-pthread", "-ffp-contract=off", "-w", `-DDQ_SRC="`+sec+`"`, "-o", bin, check)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("g++: %v\n%s", err, out)
	}
	t1 := time.Now()
	out, err := exec.Command(bin, cases).CombinedOutput()
	t.Logf("compile %.1f s, run %.1f s\n%s", t1.Sub(t0).Seconds(), time.Since(t1).Seconds(), out)
	if err != nil {
		t.Fatalf("dequant_check: %v", err)
	}
	if n := strings.Count(string(out), "bit-exact"); n != 2*len(cs) {
		t.Fatalf("%d bit-exact lines, want %d", n, 2*len(cs))
	}
}
