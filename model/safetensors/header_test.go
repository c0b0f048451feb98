package safetensors

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rawFile assembles a safetensors file by hand; n < 0 means the true header
// length.
func rawFile(n int64, hdr string, data []byte) []byte {
	if n < 0 {
		n = int64(len(hdr))
	}
	b := binary.LittleEndian.AppendUint64(nil, uint64(n))
	b = append(b, hdr...)
	return append(b, data...)
}

func writeRaw(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOpenCorruptFiles(t *testing.T) {
	d16 := make([]byte, 16)
	for _, tc := range []struct {
		name string
		file []byte
		want []string // substrings of the error, besides the file name
	}{
		{"too short", []byte{1, 2, 3, 4, 5}, []string{"5 bytes", "shorter than the 8-byte"}},
		{"empty file", nil, []string{"0 bytes"}},
		{"header past EOF", rawFile(100, `{}`, nil), []string{"header length 100", "2 bytes"}},
		{"header too large", rawFile(200_000_000, `{}`, nil), []string{"200000000", "100000000"}},
		{"header length 2^64-1", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'}, []string{"18446744073709551615", "limit"}},
		{"invalid json", rawFile(-1, `{"a":`, nil), []string{"not valid JSON"}},
		{"not an object", rawFile(-1, `[1,2]`, nil), []string{"not a JSON object"}},
		{"null", rawFile(-1, `null`, nil), []string{"JSON null"}},
		{"invalid utf8", rawFile(-1, "{\"\xff\":1}", nil), []string{"UTF-8"}},
		{"metadata not strings", rawFile(-1, `{"__metadata__":{"a":1}}`, nil), []string{"__metadata__"}},
		{"entry not object", rawFile(-1, `{"w":[1]}`, nil), []string{`"w"`, "bad entry"}},
		{"missing dtype", rawFile(-1, `{"w":{"shape":[4],"data_offsets":[0,16]}}`, d16), []string{`"w"`, "missing dtype"}},
		{"missing shape", rawFile(-1, `{"w":{"dtype":"F32","data_offsets":[0,16]}}`, d16), []string{`"w"`, "missing shape"}},
		{"missing offsets", rawFile(-1, `{"w":{"dtype":"F32","shape":[4]}}`, d16), []string{`"w"`, "missing data_offsets"}},
		{"dtype not string", rawFile(-1, `{"w":{"dtype":4,"shape":[4],"data_offsets":[0,16]}}`, d16), []string{`"w"`, "bad entry"}},
		{"shape not ints", rawFile(-1, `{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,16]}}`, d16), []string{`"w"`, "bad entry"}},
		{"offsets not ints", rawFile(-1, `{"w":{"dtype":"F32","shape":[4],"data_offsets":"0,16"}}`, d16), []string{`"w"`, "bad entry"}},
		{"unknown dtype", rawFile(-1, `{"w":{"dtype":"F128","shape":[4],"data_offsets":[0,16]}}`, d16), []string{`"w"`, `"F128"`, "supported", "BF16"}},
		{"negative dim", rawFile(-1, `{"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}`, d16), []string{`"w"`, "negative dim -4"}},
		{"one offset", rawFile(-1, `{"w":{"dtype":"F32","shape":[4],"data_offsets":[16]}}`, d16), []string{`"w"`, "want [begin, end]"}},
		{"three offsets", rawFile(-1, `{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8,16]}}`, d16), []string{`"w"`, "want [begin, end]"}},
		{"begin after end", rawFile(-1, `{"w":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}}`, d16), []string{`"w"`, "[16,0)", "begin <= end"}},
		{"negative begin", rawFile(-1, `{"w":{"dtype":"F32","shape":[4],"data_offsets":[-16,0]}}`, d16), []string{`"w"`, "begin <= end"}},
		{"end beyond data", rawFile(-1, `{"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}`, d16), []string{`"w"`, "[0,32)", "beyond data size 16"}},
		{"size mismatch", rawFile(-1, `{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}`, d16[:12]), []string{`"w"`, "hold 12 bytes", "needs 16"}},
		{"shape overflow", rawFile(-1, `{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`, nil), []string{`"w"`, "overflow"}},
		{"overlap", rawFile(-1, `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, d16[:12]), []string{`"b"`, `"a"`, "overlap"}},
		{"hole between", rawFile(-1, `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, d16[:12]), []string{`"b"`, `"a"`, "4-byte hole"}},
		{"hole at start", rawFile(-1, `{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, d16[:8]), []string{`"a"`, "hole at the start"}},
		{"trailing bytes", rawFile(-1, `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, d16[:12]), []string{"end at data offset 8", "12 bytes", "4 trailing"}},
		{"no tensors but data", rawFile(-1, `{}`, d16[:3]), []string{"3 trailing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeRaw(t, t.TempDir(), "bad.safetensors", tc.file)
			r, err := Open(p)
			if err == nil {
				r.Close()
				t.Fatalf("Open succeeded")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error has several lines: %q", msg)
			}
			for _, w := range append([]string{"safetensors: ", p}, tc.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
		})
	}
}

func TestOpenAcceptsEdgeCases(t *testing.T) {
	for _, tc := range []struct {
		name, hdr string
		data      int
		tensors   int
	}{
		{"no tensors", `{}`, 0, 0},
		{"padded header", `{"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}      `, 3, 1},
		{"leading space", ` {"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}`, 3, 1},
		{"null metadata", `{"__metadata__":null,"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}`, 3, 1},
		{"unknown fields ignored", `{"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3],"extra":1}}`, 3, 1},
		{"empty tensors only", `{"a":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]},"b":{"dtype":"BF16","shape":[3,0],"data_offsets":[0,0]}}`, 0, 2},
		{"empty between", `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"e":{"dtype":"F32","shape":[0],"data_offsets":[1,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 2, 3},
		{"scalar", `{"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}`, 8, 1},
		{"fp8", `{"s":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]},"t":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[2,3]}}`, 3, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeRaw(t, t.TempDir(), "ok.safetensors", rawFile(-1, tc.hdr, make([]byte, tc.data)))
			r, err := Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if got := len(r.Names()); got != tc.tensors {
				t.Errorf("%d tensors, want %d", got, tc.tensors)
			}
			for _, n := range r.Names() {
				tn, err := r.Tensor(n)
				if err != nil {
					t.Fatal(err)
				}
				if len(tn.Data) != tn.NumElements()*tn.DType.Size() {
					t.Errorf("%s: %d bytes for shape %v %s", n, len(tn.Data), tn.Shape, tn.DType)
				}
			}
		})
	}
}

// FuzzParseHeader feeds whole files to the header checks: no input may
// panic, and whatever is accepted must describe tensors that tile the data
// section exactly.
func FuzzParseHeader(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`,
		`{"a":{"dtype":"BF16","shape":[2,1],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}}`,
		`{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`,
		`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}}`,
		`{"a":{"dtype":"F32","shape":[4294967296,4294967297],"data_offsets":[0,8]}}`,
		`{"a":{"dtype":"X","shape":[1],"data_offsets":[0,8]}}`,
		`[]`, `null`, `{"a":null}`, `{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}`,
	} {
		f.Add(rawFile(-1, s, make([]byte, 12)))
	}
	f.Add([]byte{})
	f.Add(rawFile(1<<62, "", nil))
	f.Fuzz(func(t *testing.T, file []byte) {
		n, err := headerLen(file, int64(len(file)))
		if err != nil {
			return
		}
		dataSize := int64(len(file)) - 8 - n
		h, err := parseHeader(file[8:8+n], dataSize)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
			return
		}
		var pos int64
		seen := map[string]bool{}
		for _, ti := range h.tensors {
			if ti.name == "__metadata__" || seen[ti.name] {
				t.Fatalf("bad or duplicate name %q", ti.name)
			}
			seen[ti.name] = true
			if ti.dtype.Size() == 0 {
				t.Fatalf("%q: unknown dtype %q accepted", ti.name, ti.dtype)
			}
			elems := int64(1)
			for _, d := range ti.shape {
				if d < 0 {
					t.Fatalf("%q: negative dim accepted", ti.name)
				}
				elems *= int64(d)
			}
			if ti.begin != pos || ti.end-ti.begin != elems*int64(ti.dtype.Size()) {
				t.Fatalf("%q: [%d,%d) at pos %d, %d elems of %s", ti.name, ti.begin, ti.end, pos, elems, ti.dtype)
			}
			pos = ti.end
		}
		if pos != dataSize {
			t.Fatalf("tensors end at %d, data is %d bytes", pos, dataSize)
		}
	})
}
