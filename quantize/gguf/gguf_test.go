package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// allKVs covers every value type, scalar and array.
var allKVs = []KV{
	{"general.architecture", "qwen3"},
	{"u8", uint8(200)}, {"i8", int8(-100)}, {"u16", uint16(60000)}, {"i16", int16(-30000)},
	{"u32", uint32(4000000000)}, {"i32", int32(-2000000000)}, {"f32", float32(1e-6)},
	{"bool", true}, {"bool0", false}, {"str", "héllo\x00world"}, {"empty", ""},
	{"u64", uint64(1) << 63}, {"i64", int64(-1) << 62}, {"f64", 1e300},
	{"a.u8", []uint8{1, 2, 255}}, {"a.i8", []int8{-1, 0, 1}}, {"a.u16", []uint16{1, 65535}},
	{"a.i16", []int16{-2, 2}}, {"a.u32", []uint32{7}}, {"a.i32", []int32{1, 3, 4}},
	{"a.f32", []float32{0.5, float32(math.Inf(-1))}}, {"a.bool", []bool{true, false, true}},
	{"a.str", []string{"a", "", "Ġthe"}}, {"a.u64", []uint64{math.MaxUint64}},
	{"a.i64", []int64{math.MinInt64}}, {"a.f64", []float64{-0.25}}, {"a.emptystr", []string{}},
}

type testTensor struct {
	name  string
	typ   Type
	shape []int
	data  []byte
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

func testTensors() []testTensor {
	return []testTensor{
		{"token_embd.weight", TypeF32, []int{5, 3}, pattern(5*3*4, 1)},
		{"blk.0.attn_q.weight", TypeF16, []int{3, 7}, pattern(3*7*2, 2)}, // 42 bytes: forces padding
		{"blk.0.attn_norm.weight", TypeF32, []int{3}, pattern(3*4, 3)},
		{"q8", TypeQ8_0, []int{2, 64}, pattern(2*2*34, 4)},
		{"bf16.4d", TypeBF16, []int{1, 2, 1, 3}, pattern(6*2, 5)},
		{"empty", TypeF32, []int{0, 4}, nil},
	}
}

func writeFile(t testing.TB, path string, kvs []KV, tensors []testTensor) {
	t.Helper()
	w := NewWriter(path)
	for _, kv := range kvs {
		if err := w.AddKV(kv.Key, kv.Value); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range tensors {
		data := tt.data
		if err := w.AddTensor(tt.name, tt.typ, tt.shape, func(out io.Writer) error {
			// Two writes, to check the writer does not assume one call per tensor.
			h := len(data) / 2
			if _, err := out.Write(data[:h]); err != nil {
				return err
			}
			_, err := out.Write(data[h:])
			return err
		}, int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, align := range []uint32{0, 1, 64} {
		kvs := allKVs
		if align != 0 {
			kvs = append([]KV{{KeyAlignment, align}}, allKVs...)
		}
		path := filepath.Join(t.TempDir(), "m.gguf")
		writeFile(t, path, kvs, testTensors())
		f, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if f.Version != 3 {
			t.Errorf("version %d, want 3", f.Version)
		}
		wantAlign := int64(DefaultAlignment)
		if align != 0 {
			wantAlign = int64(align)
		}
		if f.Alignment != wantAlign || f.DataOffset%wantAlign != 0 {
			t.Errorf("alignment %d data offset %d, want alignment %d", f.Alignment, f.DataOffset, wantAlign)
		}
		if !reflect.DeepEqual(f.KVs, kvs) {
			t.Errorf("align %d: KVs differ:\n got %#v\nwant %#v", align, f.KVs, kvs)
		}
		if len(f.Tensors) != len(testTensors()) {
			t.Fatalf("%d tensors, want %d", len(f.Tensors), len(testTensors()))
		}
		for i, tt := range testTensors() {
			info := f.Tensors[i]
			if info.Name != tt.name || info.Type != tt.typ || !reflect.DeepEqual(info.Shape, tt.shape) || info.Size != int64(len(tt.data)) {
				t.Errorf("tensor %d: got %+v, want %s %s %v size %d", i, info, tt.name, tt.typ, tt.shape, len(tt.data))
			}
			if info.Offset%wantAlign != 0 {
				t.Errorf("tensor %q offset %d not aligned to %d", tt.name, info.Offset, wantAlign)
			}
			got, err := f.TensorData(tt.name)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.data) && len(tt.data) > 0 {
				t.Errorf("tensor %q: data differs", tt.name)
			}
		}
		if v, ok := f.Value("a.str"); !ok || !reflect.DeepEqual(v, []string{"a", "", "Ġthe"}) {
			t.Errorf("Value(a.str) = %v %v", v, ok)
		}
		f.Close()
		// Nothing but the file itself is left in the folder (no temp files).
		ents, _ := os.ReadDir(filepath.Dir(path))
		if len(ents) != 1 {
			t.Errorf("folder holds %d entries, want 1", len(ents))
		}
	}
}

// TestSpecBytes checks the writer against a file assembled by hand from the
// spec (ggml docs/gguf.md), field by field, independently of the writer code.
func TestSpecBytes(t *testing.T) {
	var b bytes.Buffer
	le := binary.LittleEndian
	put := func(v any) { binary.Write(&b, le, v) }
	str := func(s string) { put(uint64(len(s))); b.WriteString(s) }
	b.WriteString("GGUF")
	put(uint32(3))
	put(uint64(2)) // tensors
	put(uint64(3)) // kvs
	str("general.architecture")
	put(uint32(8))
	str("llama")
	str("llama.block_count")
	put(uint32(4))
	put(uint32(2))
	str("tokenizer.ggml.token_type")
	put(uint32(9))
	put(uint32(5))
	put(uint64(2))
	put(int32(1))
	put(int32(3))
	// tensor infos: dims reversed (ggml order)
	str("a")
	put(uint32(2))
	put(uint64(3))
	put(uint64(2))
	put(uint32(0))
	put(uint64(0))
	str("b")
	put(uint32(1))
	put(uint64(5))
	put(uint32(1))
	put(uint64(32)) // 24 bytes of "a" padded to 32
	for b.Len()%32 != 0 {
		b.WriteByte(0)
	}
	aData := pattern(24, 9)
	bData := pattern(10, 11)
	b.Write(aData)
	b.Write(make([]byte, 8))
	b.Write(bData)
	b.Write(make([]byte, 22))

	path := filepath.Join(t.TempDir(), "spec.gguf")
	writeFile(t, path, []KV{
		{"general.architecture", "llama"},
		{"llama.block_count", uint32(2)},
		{"tokenizer.ggml.token_type", []int32{1, 3}},
	}, []testTensor{{"a", TypeF32, []int{2, 3}, aData}, {"b", TypeF16, []int{5}, bData}})
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b.Bytes()) {
		t.Fatalf("writer output differs from the hand-built file:\n got %x\nwant %x", got, b.Bytes())
	}
	f, err := Read(bytes.NewReader(b.Bytes()), int64(b.Len()), "spec")
	if err != nil {
		t.Fatal(err)
	}
	if ti, _ := f.Tensor("a"); !reflect.DeepEqual(ti.Shape, []int{2, 3}) || ti.Offset != 0 {
		t.Errorf("tensor a: %+v", ti)
	}
}

func TestTensorBytes(t *testing.T) {
	tests := []struct {
		typ     Type
		shape   []int
		want    int64
		wantErr string
	}{
		{TypeF32, []int{3, 4}, 48, ""},
		{TypeF16, []int{3, 4}, 24, ""},
		{TypeBF16, []int{5}, 10, ""},
		{TypeQ8_0, []int{2, 64}, 2 * 2 * 34, ""},
		{TypeQ8_0, []int{64, 2}, 0, "not a multiple of the block size 32"},
		{TypeF32, []int{1 << 40, 1 << 40}, 0, "overflows"},
		{TypeF32, []int{1 << 31, 1 << 31}, 0, "overflows"}, // elements fit, bytes do not
		{Type(4), []int{32}, 0, "unsupported ggml type 4"}, // Q4_2, removed from ggml
		{TypeF32, []int{-1}, 0, "negative"},
		{TypeF32, []int{}, 4, ""}, // a scalar
	}
	for _, tt := range tests {
		got, err := TensorBytes(tt.typ, tt.shape)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("TensorBytes(%s, %v) err = %v, want %q", tt.typ, tt.shape, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("TensorBytes(%s, %v) = %d, %v, want %d", tt.typ, tt.shape, got, err, tt.want)
		}
	}
}

func TestWriterErrors(t *testing.T) {
	ok := func(io.Writer) error { return nil }
	tests := []struct {
		name    string
		do      func(w *Writer) error
		wantErr string
	}{
		{"dup key", func(w *Writer) error { w.AddKV("a", uint32(1)); return w.AddKV("a", uint32(2)) }, `duplicate key "a"`},
		{"int", func(w *Writer) error { return w.AddKV("a", 1) }, "unsupported value type int"},
		{"alignment type", func(w *Writer) error { return w.AddKV(KeyAlignment, uint64(32)) }, "uint32 power of two"},
		{"alignment pow2", func(w *Writer) error { return w.AddKV(KeyAlignment, uint32(24)) }, "power of two"},
		{"dup tensor", func(w *Writer) error {
			w.AddTensor("t", TypeF32, []int{1}, ok, 4)
			return w.AddTensor("t", TypeF32, []int{1}, ok, 4)
		}, `duplicate tensor "t"`},
		{"nbytes", func(w *Writer) error { return w.AddTensor("t", TypeF32, []int{2}, ok, 4) }, "nbytes 4, want 8"},
		{"long name", func(w *Writer) error { return w.AddTensor(strings.Repeat("x", 64), TypeF32, []int{1}, ok, 4) }, "name must be"},
		{"rank", func(w *Writer) error { return w.AddTensor("t", TypeF32, []int{1, 1, 1, 1, 1}, ok, 4) }, "5 dims"},
		{"short write", func(w *Writer) error {
			w.AddTensor("t", TypeF32, []int{2}, func(o io.Writer) error { _, err := o.Write(make([]byte, 4)); return err }, 8)
			return w.Close()
		}, `tensor "t": write func wrote 4 bytes, want 8`},
		{"long write", func(w *Writer) error {
			w.AddTensor("t", TypeF32, []int{1}, func(o io.Writer) error { _, err := o.Write(make([]byte, 8)); return err }, 4)
			return w.Close()
		}, `tensor "t": write func wrote more bytes than declared`},
		{"callback error", func(w *Writer) error {
			w.AddTensor("t", TypeF32, []int{1}, func(io.Writer) error { return errors.New("boom") }, 4)
			return w.Close()
		}, `tensor "t": boom`},
		{"sticky error", func(w *Writer) error { w.AddKV("a", 1); return w.Close() }, "unsupported value type int"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "out.gguf")
			err := tt.do(NewWriter(path))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "gguf: ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is not one line prefixed gguf:", err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("failed write left %d files behind", len(ents))
			}
		})
	}
}

// validImage returns a small valid file and the offsets of some fields.
func validImage(t testing.TB) []byte {
	path := filepath.Join(t.TempDir(), "v.gguf")
	writeFile(t, path, []KV{{"general.architecture", "qwen3"}, {"a.i32", []int32{1, 2}}},
		[]testTensor{{"w", TypeF32, []int{2, 2}, pattern(16, 1)}, {"n", TypeF32, []int{4}, pattern(16, 2)}})
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func dupKeyImage(t *testing.T) []byte {
	path := filepath.Join(t.TempDir(), "d.gguf")
	writeFile(t, path, []KV{{"k1", uint8(1)}, {"k2", uint8(2)}}, nil)
	b, _ := os.ReadFile(path)
	i := bytes.LastIndex(b, []byte("k2"))
	b[i+1] = '1'
	return b
}

func TestReadErrors(t *testing.T) {
	base := validImage(t)
	le := binary.LittleEndian
	// Offsets in validImage: header 24; kv0 key at 24 (8+20), type at 52, value str at 56 (8+5) -> 69;
	// kv1 key at 69 (8+5), type 82, elem type 86, count 90, items 98..106;
	// tensor "w" name at 106 (8+1), n_dims 115, dims 119,127, type 135, offset 139 -> 147;
	// tensor "n" name at 147, n_dims 156, dim 160, type 168, offset 172 -> 180.
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(base)) }
	tests := []struct {
		name    string
		img     []byte
		wantErr string
	}{
		{"magic", mod(func(b []byte) []byte { b[0] = 'X'; return b }), "bad magic"},
		{"version", mod(func(b []byte) []byte { le.PutUint32(b[4:], 9); return b }), "unsupported version 9"},
		{"big endian", mod(func(b []byte) []byte { le.PutUint32(b[4:], 3<<24); return b }), "big-endian"},
		{"too many tensors", mod(func(b []byte) []byte { le.PutUint64(b[8:], 1<<60); return b }), "tensors cannot fit"},
		{"too many kvs", mod(func(b []byte) []byte { le.PutUint64(b[16:], 1<<60); return b }), "metadata entries cannot fit"},
		{"key length", mod(func(b []byte) []byte { le.PutUint64(b[24:], 1<<62); return b }), "string length"},
		{"value type", mod(func(b []byte) []byte { le.PutUint32(b[52:], 13); return b }), `key "general.architecture": unknown value type 13`},
		{"array count", mod(func(b []byte) []byte { le.PutUint64(b[90:], 1<<61); return b }), `key "a.i32": array of`},
		{"nested array", mod(func(b []byte) []byte { le.PutUint32(b[86:], 9); return b }), "nested arrays"},
		{"dup key", dupKeyImage(t), `duplicate key "k1"`},
		{"n_dims", mod(func(b []byte) []byte { le.PutUint32(b[115:], 5); return b }), `tensor "w": 5 dims`},
		{"ggml type", mod(func(b []byte) []byte { le.PutUint32(b[135:], 4); return b }), `tensor "w": unsupported ggml type 4`},
		{"misaligned", mod(func(b []byte) []byte { le.PutUint64(b[139:], 4); return b }), `tensor "w": offset 4 is not a multiple`},
		{"out of range", mod(func(b []byte) []byte { le.PutUint64(b[172:], 1<<20); return b }), `tensor "n": data [1048576,1048592) beyond data size`},
		{"overlap", mod(func(b []byte) []byte { le.PutUint64(b[172:], 0); return b }), "overlaps"},
		{"dims overflow", mod(func(b []byte) []byte { le.PutUint64(b[119:], 1<<62); le.PutUint64(b[127:], 1<<62); return b }), "overflows"},
		{"dup tensor", mod(func(b []byte) []byte { b[155] = 'w'; return b }), `duplicate tensor "w"`},
		{"truncated header", base[:110], "tensor info 0: truncated at offset 106"},
		{"truncated data", base[:len(base)-20], `tensor "n": data`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(tt.img), int64(len(tt.img)), "bad.gguf")
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "gguf: bad.gguf: ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("err = %q, want one line containing %q", err, tt.wantErr)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Errorf("err %T is not a *FormatError", err)
			}
		})
	}
}

func FuzzRead(f *testing.F) {
	base := validImage(f)
	f.Add(base)
	f.Add(base[:64])
	f.Add([]byte("GGUF"))
	path := filepath.Join(f.TempDir(), "all.gguf")
	writeFile(f, path, allKVs, testTensors())
	all, _ := os.ReadFile(path)
	f.Add(all)
	f.Fuzz(func(t *testing.T, b []byte) {
		gf, err := Read(bytes.NewReader(b), int64(len(b)), "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "gguf: fuzz: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		for _, ti := range gf.Tensors {
			d, err := gf.TensorData(ti.Name)
			if err != nil || int64(len(d)) != ti.Size {
				t.Fatalf("tensor %q: %d bytes, err %v, want %d", ti.Name, len(d), err, ti.Size)
			}
		}
	})
}
