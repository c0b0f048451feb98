package qblock

import (
	"compress/gzip"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// nf4Golden is testdata/nf4_golden.json.gz, written by the independent
// NumPy reference testdata/gen/nf4_reference.py from bitsandbytes'
// definition of NF4 with double quantization.
type nf4Golden struct {
	DynamicMap string           `json:"dynamic_map"`
	RawCases   []map[string]any `json:"cases"`
}

func b64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func f32s(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

func sameF32(a, b float32) bool {
	return math.Float32bits(a) == math.Float32bits(b) || (a != a && b != b)
}

func loadNF4Golden(t *testing.T) *nf4Golden {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "nf4_golden.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var g nf4Golden
	if err := json.NewDecoder(zr).Decode(&g); err != nil {
		t.Fatal(err)
	}
	return &g
}

// TestNF4MatchesReference: codes, absmax, double-quantized absmax codes,
// absmax2, offset, the decoded scales and the dequantized values all equal
// the NumPy reference bit for bit, and the dynamic map equals torch's.
func TestNF4MatchesReference(t *testing.T) {
	g := loadNF4Golden(t)
	dm := f32s(b64(t, g.DynamicMap))
	for i, v := range dm {
		if !sameF32(v, DynamicMap[i]) {
			t.Fatalf("dynamic map[%d] = %v, bitsandbytes/torch %v", i, DynamicMap[i], v)
		}
	}
	for _, rc := range g.RawCases {
		c := struct {
			Name                                                   string
			N                                                      int
			X, Codes, Absmax, QAbsmax, Absmax2, Offset, Scale, Deq string
		}{rc["name"].(string), int(rc["n"].(float64)), rc["x_f32"].(string), rc["codes"].(string), rc["absmax"].(string),
			rc["qabsmax"].(string), rc["absmax2"].(string), rc["offset"].(string), rc["scale"].(string), rc["deq"].(string)}
		t.Run(c.Name, func(t *testing.T) {
			x := f32s(b64(t, c.X))
			s := QuantizeNF4(x, true)
			codes := b64(t, c.Codes)
			for i := range codes {
				if codes[i] != s.Codes[i] {
					t.Fatalf("byte %d (elements %d,%d: %v,%v): %02x, reference %02x", i, 2*i, 2*i+1, x[2*i], x[2*i+1], s.Codes[i], codes[i])
				}
			}
			check := func(what string, got []float32, want []float32) {
				if len(got) != len(want) {
					t.Fatalf("%s: %d values, reference %d", what, len(got), len(want))
				}
				for i := range want {
					if !sameF32(got[i], want[i]) {
						t.Fatalf("%s[%d] = %v, reference %v", what, i, got[i], want[i])
					}
				}
			}
			check("absmax", s.Absmax, f32s(b64(t, c.Absmax)))
			check("absmax2", s.Absmax2, f32s(b64(t, c.Absmax2)))
			check("offset", []float32{s.Offset}, f32s(b64(t, c.Offset)))
			qa := b64(t, c.QAbsmax)
			for i := range qa {
				if qa[i] != s.QAbsmax[i] {
					t.Fatalf("qabsmax[%d] = %d, reference %d (absmax %v)", i, s.QAbsmax[i], qa[i], s.Absmax[i])
				}
			}
			scale := make([]float32, len(s.Absmax))
			for b := range scale {
				scale[b] = s.BlockScale(b)
			}
			check("scale", scale, f32s(b64(t, c.Scale)))
			blocks := s.AppendBlocks(nil)
			if len(blocks) != c.N/NF4Elems*NF4Bytes {
				t.Fatalf("%d bytes, want %d", len(blocks), c.N/NF4Elems*NF4Bytes)
			}
			got := make([]float32, c.N)
			NF4Format.Dequantize(got, blocks)
			check("dequantized", got, f32s(b64(t, c.Deq)))
		})
	}
}

// TestNF4Index: the decision tree picks the nearest level, ties (exact
// float32 midpoints) going to the lower one.
func TestNF4Index(t *testing.T) {
	for q := 0; q < 16; q++ {
		if got := NF4Index(NF4Values[q]); int(got) != q {
			t.Fatalf("NF4Index(%v) = %d, want %d", NF4Values[q], got, q)
		}
	}
	for x := float32(-1.2); x <= 1.2; x += 0.001 {
		best := 0
		for q := range NF4Values {
			if math.Abs(float64(x-NF4Values[q])) < math.Abs(float64(x-NF4Values[best])) {
				best = q
			}
		}
		if got := NF4Index(x); int(got) != best && math.Abs(math.Abs(float64(x-NF4Values[got]))-math.Abs(float64(x-NF4Values[best]))) > 1e-6 {
			t.Fatalf("NF4Index(%v) = %d, nearest %d", x, got, best)
		}
	}
	if NF4Index(float32(math.NaN())) != 0 {
		t.Fatal("NaN should map to level 0 as in bitsandbytes")
	}
}
