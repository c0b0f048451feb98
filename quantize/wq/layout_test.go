package wq

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tunellm/tune/model/safetensors"
)

// testWeights is deterministic cos-based data with a constant row, a zero
// row and an outlier, as test-quantize-fns.cpp uses.
func testWeights(rows, cols int) []float32 {
	w := make([]float32, rows*cols)
	for i := range w {
		w[i] = 0.1 * float32(math.Cos(float64(i)*0.37+1))
	}
	for c := 0; c < cols; c++ {
		w[cols+c] = 0.25 // constant row
		w[2*cols+c] = 0  // zero row
	}
	w[3*cols+1] = 40 // outlier
	return w
}

func byName(ts []safetensors.Tensor) map[string]safetensors.Tensor {
	m := map[string]safetensors.Tensor{}
	for _, t := range ts {
		m[t.Name] = t
	}
	return m
}

func decode(t *testing.T, layout string, s Scheme, ts []safetensors.Tensor) *QTensor {
	t.Helper()
	m := byName(ts)
	p := "model.layers.0.mlp.up_proj"
	opt := func(n string) *safetensors.Tensor {
		if x, ok := m[p+n]; ok {
			return &x
		}
		return nil
	}
	var q *QTensor
	var err error
	if layout == LayoutGPTQ {
		q, err = DecodeGPTQ(p, s, false, m[p+".qweight"], m[p+".qzeros"], m[p+".scales"], opt(".g_idx"))
	} else {
		q, err = DecodeCompressed(p, s, m[p+".weight_packed"], m[p+".weight_scale"], m[p+".weight_shape"], opt(".weight_zero_point"), opt(".weight_g_idx"))
	}
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// TestEncodeDecode round-trips every scheme and layout, with and without an
// act-order g_idx, on shapes that need compressed-tensors' padding.
func TestEncodeDecode(t *testing.T) {
	for _, tc := range []struct {
		layout     string
		rows, cols int
		s          Scheme
		actOrder   bool
	}{
		{LayoutGPTQ, 16, 64, Scheme{4, 32, true, false}, false},
		{LayoutGPTQ, 16, 64, Scheme{4, 32, false, true}, false},
		{LayoutGPTQ, 16, 64, Scheme{4, 16, true, false}, true},
		{LayoutGPTQ, 8, 64, Scheme{8, -1, true, false}, false},
		{LayoutGPTQ, 8, 64, Scheme{8, -1, false, true}, false},
		{LayoutCompressed, 16, 64, Scheme{4, 32, true, false}, false},
		{LayoutCompressed, 13, 12, Scheme{4, -1, false, false}, false},
		{LayoutCompressed, 5, 36, Scheme{4, 12, false, false}, true},
		{LayoutCompressed, 7, 6, Scheme{8, -1, false, false}, false},
		{LayoutCompressed, 7, 6, Scheme{8, 3, true, false}, false},
	} {
		name := tc.layout + "/" + tc.s.String()
		t.Run(name, func(t *testing.T) {
			w := testWeights(tc.rows, tc.cols)
			q, err := RTN("model.layers.0.mlp.up_proj.weight", w, tc.rows, tc.cols, tc.s)
			if err != nil {
				t.Fatal(err)
			}
			if tc.actOrder { // a permuted grouping, as GPTQ's act-order leaves it
				G := tc.s.Groups(tc.cols)
				q.GIdx = make([]int32, tc.cols)
				for c := range q.GIdx {
					q.GIdx[c] = int32((c * 7) % G)
				}
			}
			ts, err := Encode(tc.layout, q)
			if err != nil {
				t.Fatal(err)
			}
			got := decode(t, tc.layout, tc.s, ts)
			if !reflect.DeepEqual(got, q) {
				t.Fatalf("round trip differs:\n got %+v\nwant %+v", got, q)
			}
			// Dequantized values are scale*(q-zero) with fp16 scales.
			d := got.Dequantize()
			for i, v := range d {
				if math.IsNaN(float64(v)) {
					t.Fatalf("NaN at %d", i)
				}
			}
		})
	}
}

// TestGPTQPacking checks the bit positions against a hand-packed int32:
// codes 0..7 along the input dim of output 0 give 0x76543210, and the v1
// zero point 8 is stored as 7 in every nibble.
func TestGPTQPacking(t *testing.T) {
	s := Scheme{Bits: 4, GroupSize: -1, Sym: true}
	q := &QTensor{Name: "x.weight", Rows: 8, Cols: 8, Scheme: s, Q: make([]uint8, 64), Scales: make([]float32, 8), Zeros: make([]uint8, 8)}
	for c := 0; c < 8; c++ {
		q.Q[c] = uint8(c)
	}
	for r := range q.Scales {
		q.Scales[r], q.Zeros[r] = 1, 8
	}
	ts, err := Encode(LayoutGPTQ, q)
	if err != nil {
		t.Fatal(err)
	}
	m := byName(ts)
	if got := binary.LittleEndian.Uint32(m["x.qweight"].Data); got != 0x76543210 {
		t.Errorf("qweight[0,0] = %#x, want 0x76543210", got)
	}
	if got := binary.LittleEndian.Uint32(m["x.qzeros"].Data); got != 0x77777777 {
		t.Errorf("qzeros[0,0] = %#x, want 0x77777777", got)
	}
	ts, err = Encode(LayoutCompressed, q)
	if err != nil {
		t.Fatal(err)
	}
	m = byName(ts)
	// pack_to_int32 docstring: 8-bit [1,2] -> 33409; here 4-bit codes 0..7
	// (signed -8..-1) of row 0 become 0x76543210 too.
	if got := binary.LittleEndian.Uint32(m["x.weight_packed"].Data); got != 0x76543210 {
		t.Errorf("weight_packed[0,0] = %#x, want 0x76543210", got)
	}
}

func TestEncodeErrors(t *testing.T) {
	w := testWeights(8, 32)
	q, _ := RTN("a.weight", w, 8, 32, Scheme{Bits: 4, GroupSize: 32})
	q.Zeros[3] = 0
	if _, err := Encode(LayoutGPTQ, q); err == nil || !strings.Contains(err.Error(), "needs both") && !strings.Contains(err.Error(), "V1Zeros") {
		t.Errorf("asym without V1Zeros: %v", err)
	}
	q.Scheme.V1Zeros = true
	if _, err := Encode(LayoutGPTQ, q); err == nil || !strings.Contains(err.Error(), "zero point 0 at row 1 group 0 cannot be stored") {
		t.Errorf("zero 0: %v", err)
	}
	q2, _ := RTN("b.weight", testWeights(4, 32), 4, 32, Scheme{Bits: 4, GroupSize: 32, Sym: true})
	if _, err := Encode(LayoutGPTQ, q2); err == nil || !strings.Contains(err.Error(), "shape [4 32] needs both dims a multiple of 8") {
		t.Errorf("rows 4: %v", err)
	}
	q2.Scales[0] = 0.1
	if _, err := Encode(LayoutCompressed, q2); err == nil || !strings.Contains(err.Error(), "not an fp16 value") {
		t.Errorf("scale: %v", err)
	}
	if _, err := RTN("c.weight", []float32{1, float32(math.Inf(1)), 0, 0}, 2, 2, Scheme{Bits: 8, GroupSize: -1, Sym: true}); err == nil ||
		err.Error() != "wq: c.weight: weight [0,1] is +Inf" {
		t.Errorf("inf: %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	s := Scheme{Bits: 4, GroupSize: 32, Sym: true}
	q, _ := RTN("p.weight", testWeights(16, 64), 16, 64, s)
	ts, _ := Encode(LayoutGPTQ, q)
	m := byName(ts)
	short := m["p.qzeros"]
	short.Shape = []int{1, 2}
	short.Data = short.Data[:8]
	if _, err := DecodeGPTQ("p", s, false, m["p.qweight"], short, m["p.scales"], nil); err == nil ||
		err.Error() != "wq: p.qzeros: shape [1 2], want [2 2] ([groups, out*bits/32]; -1: any)" {
		t.Errorf("qzeros: %v", err)
	}
	if _, err := DecodeGPTQ("p", Scheme{Bits: 4, GroupSize: 32}, false, m["p.qweight"], m["p.qzeros"], m["p.scales"], nil); err != nil {
		t.Errorf("sym file read as asym: %v", err)
	}
	bad := m["p.qzeros"]
	bad.Data = append([]byte(nil), bad.Data...)
	bad.Data[0] = 0x70 // zero 1 for output 0
	if _, err := DecodeGPTQ("p", s, false, m["p.qweight"], bad, m["p.scales"], nil); err == nil ||
		!strings.Contains(err.Error(), "symmetric checkpoint has zero point 1 at group 0 output 0, want 8") {
		t.Errorf("sym zero: %v", err)
	}
	bad.Data[0] = 0x7f // stored 15: zero 16 overflows 4 bits
	if _, err := DecodeGPTQ("p", Scheme{Bits: 4, GroupSize: 32}, false, m["p.qweight"], bad, m["p.scales"], nil); err == nil ||
		!strings.Contains(err.Error(), "zero point 16 exceeds 15") {
		t.Errorf("zero overflow: %v", err)
	}
	gi := m["p.g_idx"]
	gi.Data = append([]byte(nil), gi.Data...)
	binary.LittleEndian.PutUint32(gi.Data[4*5:], 9)
	if _, err := DecodeGPTQ("p", s, false, m["p.qweight"], m["p.qzeros"], m["p.scales"], &gi); err == nil ||
		!strings.Contains(err.Error(), "g_idx[5] = 9 outside [0,2)") {
		t.Errorf("g_idx: %v", err)
	}
}

func TestParseQuantizationConfig(t *testing.T) {
	for _, tc := range []struct {
		js   string
		want *Config
		err  string
	}{
		{`{"quantization_config":{"quant_method":"gptq","bits":4,"group_size":128,"sym":true,"desc_act":false}}`,
			&Config{Layout: LayoutGPTQ, Scheme: Scheme{4, 128, true, false}}, ""},
		{`{"quantization_config":{"quant_method":"gptq","bits":4,"group_size":-1,"sym":false,"checkpoint_format":"gptq_v2"}}`,
			&Config{Layout: LayoutGPTQ, Scheme: Scheme{4, -1, false, false}, V2: true}, ""},
		{`{"quantization_config":{"quant_method":"compressed-tensors","format":"pack-quantized","config_groups":{"group_0":{"targets":["Linear"],"weights":{"num_bits":8,"type":"int","symmetric":true,"strategy":"channel"}}}}}`,
			&Config{Layout: LayoutCompressed, Scheme: Scheme{8, -1, true, false}}, ""},
		{`{"quantization_config":{"quant_method":"awq","bits":4}}`, nil, `quant_method "awq", want gptq or compressed-tensors`},
		{`{"quantization_config":{"quant_method":"gptq","bits":3,"group_size":128}}`, nil, "bits: want 4 or 8, got 3"},
		{`{"quantization_config":{"quant_method":"compressed-tensors","format":"float-quantized"}}`, nil, `format "float-quantized", want pack-quantized`},
		{`{"quantization_config":{"quant_method":"compressed-tensors","format":"pack-quantized","config_groups":{"g":{"weights":{"num_bits":4,"type":"int","strategy":"group","group_size":128},"input_activations":{"num_bits":8}}}}}`, nil, "only weight-only"},
		{`{"model_type":"qwen3"}`, nil, "no quantization_config"},
		{`{`, nil, "config.json"},
	} {
		got, err := ParseQuantizationConfig([]byte(tc.js))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.js, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, %v, want %+v", tc.js, got, err, tc.want)
		}
	}
}

// TestWriterAbort: nothing appears under the output name until Close, and
// Abort or a failing Add leaves no temporary folder.
func TestWriterAbort(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join("..", "..", "testdata", "models", "qwen3-tied")
	out := filepath.Join(dir, "q")
	w, err := NewWriter(out, src, LayoutGPTQ, Scheme{Bits: 4, GroupSize: 32, Sym: true})
	if err != nil {
		t.Fatal(err)
	}
	q, _ := RTN("model.layers.0.mlp.up_proj.weight", testWeights(16, 64), 16, 64, Scheme{Bits: 8, GroupSize: -1, Sym: true})
	if err := w.Add(q); err == nil || !strings.Contains(err.Error(), "scheme int8 per-channel sym, the writer's is int4 g32 sym") {
		t.Errorf("scheme mismatch: %v", err)
	}
	if err := w.Close(); err == nil {
		t.Error("Close after a failed Add succeeded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
	w, err = NewWriter(out, src, LayoutCompressed, Scheme{Bits: 4, GroupSize: 32, Sym: true})
	if err != nil {
		t.Fatal(err)
	}
	w.AddDense("model.norm.weight", safetensors.Tensor{DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)})
	w.Abort()
	entries, _ = os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
	if _, err := NewWriter(out, src, LayoutGPTQ, Scheme{Bits: 4, GroupSize: 32}); err == nil || !strings.Contains(err.Error(), "needs V1Zeros") {
		t.Errorf("gptq asym without V1Zeros: %v", err)
	}
}

// FuzzDecode feeds arbitrary bytes and shapes to both unpackers: they must
// return an error or a QTensor that passes Check, never panic.
func FuzzDecode(f *testing.F) {
	s := Scheme{Bits: 4, GroupSize: 32, Sym: false, V1Zeros: true}
	q, _ := RTN("p.weight", testWeights(16, 64), 16, 64, s)
	g, _ := Encode(LayoutGPTQ, q)
	c, _ := Encode(LayoutCompressed, q)
	f.Add(g[0].Data, g[1].Data, g[2].Data, c[0].Data, c[2].Data, uint8(8), uint8(16), uint8(2), uint8(2), uint8(4), int8(32))
	f.Add([]byte{1, 2, 3, 4}, []byte{}, []byte{0, 60}, []byte{1, 2, 3, 4}, make([]byte, 16), uint8(1), uint8(8), uint8(1), uint8(1), uint8(8), int8(-1))
	f.Fuzz(func(t *testing.T, qw, qz, sc, packed, shape []byte, d0, d1, g, zr, bits8 uint8, gs int8) {
		bits := 4
		if bits8%2 == 1 {
			bits = 8
		}
		s := Scheme{Bits: bits, GroupSize: int(gs), Sym: bits8&2 != 0}
		mk := func(name string, dt safetensors.DType, data []byte, shape ...int) safetensors.Tensor {
			return safetensors.Tensor{Name: name, DType: dt, Shape: shape, Data: data}
		}
		if t1, err := DecodeGPTQ("p", s, bits8&4 != 0, mk("qw", safetensors.I32, qw, int(d0), int(d1)),
			mk("qz", safetensors.I32, qz, int(g), int(zr)), mk("sc", safetensors.F16, sc, int(g), int(d1)), nil); err == nil {
			if err := t1.Check(); err != nil {
				t.Fatalf("gptq decode gave an invalid tensor: %v", err)
			}
			t1.Dequantize()
		}
		zp := mk("zp", safetensors.I32, qz, int(zr), int(g))
		if t2, err := DecodeCompressed("p", s, mk("wp", safetensors.I32, packed, int(d0), int(d1)), mk("sc", safetensors.F16, sc, int(d0), int(g)),
			mk("shape", safetensors.I64, shape, 2), &zp, nil); err == nil {
			if err := t2.Check(); err != nil {
				t.Fatalf("compressed decode gave an invalid tensor: %v", err)
			}
			t2.Dequantize()
		}
	})
}

// FuzzParseQuantizationConfig: arbitrary config.json bytes never panic and
// an accepted config has a valid scheme.
func FuzzParseQuantizationConfig(f *testing.F) {
	f.Add([]byte(`{"quantization_config":{"quant_method":"gptq","bits":4,"group_size":128,"sym":true}}`))
	f.Add([]byte(`{"quantization_config":{"quant_method":"compressed-tensors","format":"pack-quantized","config_groups":{"group_0":{"weights":{"num_bits":4,"type":"int","strategy":"group","group_size":32}}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseQuantizationConfig(b)
		if err == nil {
			if err := c.Scheme.Check(0); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestV1Zeros: an all-positive group has min/max zero point 0, which the
// gptq v1 layout cannot store; V1Zeros moves it to 1 and the codes follow
// (the top value clips one step lower).
func TestV1Zeros(t *testing.T) {
	x := []float32{0.5, 1.0, 1.5}
	s := Scheme{Bits: 4, GroupSize: -1}
	scale, zero := s.FindParams(x)
	if scale != 0.0999755859375 || zero != 0 {
		t.Fatalf("plain: scale %v zero %d", scale, zero)
	}
	s.V1Zeros = true
	scale, zero = s.FindParams(x)
	if scale != 0.0999755859375 || zero != 1 {
		t.Fatalf("V1Zeros: scale %v zero %d", scale, zero)
	}
	var got []uint8
	for _, v := range x {
		got = append(got, s.Code(v, scale, zero))
	}
	if !reflect.DeepEqual(got, []uint8{6, 11, 15}) {
		t.Errorf("codes %v, want [6 11 15]", got)
	}
	q, err := RTN("m.weight", []float32{0.5, 1, 1.5, 0, 0.5, 1, 1.5, 0}, 8, 1, Scheme{Bits: 4, GroupSize: -1, V1Zeros: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Encode(LayoutGPTQ, q); err == nil {
		t.Error("1 input column: want a packing error")
	}
}
