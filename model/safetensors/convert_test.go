package safetensors

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"strconv"
	"testing"
)

// conversions is testdata/conversions.json, written by gen_conversions.py
// from PyTorch.
type conversions struct {
	Cases []struct {
		F32, BF16, F16 string
	}
	F16ToF32SHA  string `json:"f16_to_f32_sha256"`
	BF16ToF32SHA string `json:"bf16_to_f32_sha256"`
	SampleCount  int    `json:"f32_sample_count"`
	F32ToBF16SHA string `json:"f32_to_bf16_sha256"`
	F32ToF16SHA  string `json:"f32_to_f16_sha256"`
}

func loadConversions(t *testing.T) conversions {
	t.Helper()
	b, err := os.ReadFile("testdata/conversions.json")
	if err != nil {
		t.Fatal(err)
	}
	var c conversions
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Cases) < 40 || c.SampleCount < 1<<19 {
		t.Fatalf("conversions.json looks truncated: %d cases, %d samples", len(c.Cases), c.SampleCount)
	}
	return c
}

func hexBits(t *testing.T, s string) uint32 {
	t.Helper()
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(v)
}

func isNaN16BF(h uint16) bool { return h&0x7f80 == 0x7f80 && h&0x7f != 0 }

func TestConversionCasesVsTorch(t *testing.T) {
	c := loadConversions(t)
	for _, tc := range c.Cases {
		in := math.Float32frombits(hexBits(t, tc.F32))
		wantBF, wantF16 := uint16(hexBits(t, tc.BF16)), uint16(hexBits(t, tc.F16))
		gotBF, gotF16 := Float32ToBF16(in), Float32ToF16(in)
		if isNaN16BF(wantBF) {
			// torch's NaN bits differ between its scalar and vector paths.
			if !isNaN16BF(gotBF) {
				t.Errorf("Float32ToBF16(%s) = %04x, want a NaN (torch %04x)", tc.F32, gotBF, wantBF)
			}
		} else if gotBF != wantBF {
			t.Errorf("Float32ToBF16(%s = %g) = %04x, torch %04x", tc.F32, in, gotBF, wantBF)
		}
		if gotF16 != wantF16 {
			t.Errorf("Float32ToF16(%s = %g) = %04x, torch %04x", tc.F32, in, gotF16, wantF16)
		}
		// Widening back must give exactly the rounded value.
		if !isNaN16BF(wantBF) {
			if got, want := math.Float32bits(BF16ToFloat32(wantBF)), uint32(wantBF)<<16; got != want {
				t.Errorf("BF16ToFloat32(%04x) bits %08x, want %08x", wantBF, got, want)
			}
		}
	}
}

// TestWideningExhaustiveVsTorch checks all 65536 half and bfloat16 patterns,
// NaN payloads included, against torch's results via a hash.
func TestWideningExhaustiveVsTorch(t *testing.T) {
	c := loadConversions(t)
	for _, tc := range []struct {
		name string
		f    func(uint16) float32
		dt   DType
		want string
	}{
		{"F16ToFloat32", F16ToFloat32, F16, c.F16ToF32SHA},
		{"BF16ToFloat32", BF16ToFloat32, BF16, c.BF16ToF32SHA},
	} {
		scalar := make([]byte, 4*65536)
		src := make([]byte, 2*65536)
		for i := 0; i < 65536; i++ {
			binary.LittleEndian.PutUint32(scalar[4*i:], math.Float32bits(tc.f(uint16(i))))
			binary.LittleEndian.PutUint16(src[2*i:], uint16(i))
		}
		if got := sha256hex(scalar); got != tc.want {
			t.Errorf("%s over all 65536 inputs: sha256 %s, torch %s", tc.name, got, tc.want)
		}
		// The bulk path must agree with the scalar one, bit for bit.
		dst := make([]float32, 65536)
		if err := ToFloat32(dst, src, tc.dt); err != nil {
			t.Fatal(err)
		}
		for i, f := range dst {
			if got, want := math.Float32bits(f), binary.LittleEndian.Uint32(scalar[4*i:]); got != want {
				t.Fatalf("ToFloat32 %s input %04x = %08x, scalar %08x", tc.dt, i, got, want)
			}
		}
	}
}

// TestNarrowingSampleVsTorch compares ~1M float32 patterns spread over the
// whole bit space (NaNs excluded, see gen_conversions.py).
func TestNarrowingSampleVsTorch(t *testing.T) {
	c := loadConversions(t)
	var bf, f16 []byte
	for i := uint64(0); i < 1<<20; i++ {
		u := uint32(i * 2654435761)
		if u&0x7f800000 == 0x7f800000 && u&0x7fffff != 0 {
			continue
		}
		f := math.Float32frombits(u)
		bf = binary.LittleEndian.AppendUint16(bf, Float32ToBF16(f))
		f16 = binary.LittleEndian.AppendUint16(f16, Float32ToF16(f))
	}
	if len(bf)/2 != c.SampleCount {
		t.Fatalf("sample has %d values, torch's %d", len(bf)/2, c.SampleCount)
	}
	if got := sha256hex(bf); got != c.F32ToBF16SHA {
		t.Errorf("Float32ToBF16 over the sample: sha256 %s, torch %s", got, c.F32ToBF16SHA)
	}
	if got := sha256hex(f16); got != c.F32ToF16SHA {
		t.Errorf("Float32ToF16 over the sample: sha256 %s, torch %s", got, c.F32ToF16SHA)
	}
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestToFloat32Errors(t *testing.T) {
	for _, tc := range []struct {
		name string
		dst  int
		src  int
		dt   DType
	}{
		{"short src", 4, 7, BF16},
		{"long src", 4, 9, BF16},
		{"f32 mismatch", 2, 4, F32},
		{"unsupported", 2, 2, I8},
		{"unknown", 2, 2, "X9"},
	} {
		err := ToFloat32(make([]float32, tc.dst), make([]byte, tc.src), tc.dt)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

// TestToFloat32Unaligned: tensors in files by other writers need not be
// aligned; the fast paths must not care.
func TestToFloat32Unaligned(t *testing.T) {
	vals := []float32{1, -2.5, 3.25, 1e-3, 65504, -0.0, 7, 8, 9, 10, 11}
	for _, dt := range []DType{F32, F16, BF16} {
		buf := make([]byte, 1+len(vals)*dt.Size())
		if err := FromFloat32(buf[1:], vals, dt); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, len(vals))
		if err := ToFloat32(got, buf[1:], dt); err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			want := v
			switch dt {
			case F16:
				want = F16ToFloat32(Float32ToF16(v))
			case BF16:
				want = BF16ToFloat32(Float32ToBF16(v))
			}
			if math.Float32bits(got[i]) != math.Float32bits(want) {
				t.Errorf("%s [%d]: %g, want %g", dt, i, got[i], want)
			}
		}
	}
}

func BenchmarkToFloat32BF16(b *testing.B) {
	const n = 1 << 20 // a 1M-element weight row block: 2 MiB in, 4 MiB out
	src := make([]byte, 2*n)
	for i := range n {
		binary.LittleEndian.PutUint16(src[2*i:], Float32ToBF16(float32(i%1000)*0.001))
	}
	dst := make([]float32, n)
	b.SetBytes(2 * n) // bytes of bf16 read
	for b.Loop() {
		if err := ToFloat32(dst, src, BF16); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkToFloat32F16(b *testing.B) {
	const n = 1 << 20
	src := make([]byte, 2*n)
	for i := range n {
		binary.LittleEndian.PutUint16(src[2*i:], Float32ToF16(float32(i%1000)*0.001))
	}
	dst := make([]float32, n)
	b.SetBytes(2 * n)
	for b.Loop() {
		if err := ToFloat32(dst, src, F16); err != nil {
			b.Fatal(err)
		}
	}
}
