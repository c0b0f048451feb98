package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestReadTorchWritten reads a file serialised by hand from torch tensors
// (testdata/gen_torch_file.py) and checks every value against torch's own
// listing in testdata/torch_written.json.
func TestReadTorchWritten(t *testing.T) {
	var want struct {
		Metadata map[string]string
		Tensors  map[string]struct {
			DType  DType
			Shape  []int
			Values []string
		}
	}
	b, err := os.ReadFile("testdata/torch_written.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	r, err := Open("testdata/torch_written.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := r.Metadata(); !mapsEqual(got, want.Metadata) {
		t.Errorf("metadata %v, want %v", got, want.Metadata)
	}
	if len(r.Names()) != len(want.Tensors) || len(want.Tensors) < 10 {
		t.Fatalf("tensors %v, want %d", r.Names(), len(want.Tensors))
	}
	for name, w := range want.Tensors {
		tn, err := r.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if tn.DType != w.DType || !slices.Equal(tn.Shape, w.Shape) || tn.NumElements() != len(w.Values) {
			t.Errorf("%s: %s %v (%d elems), want %s %v (%d values)", name, tn.DType, tn.Shape, tn.NumElements(), w.DType, w.Shape, len(w.Values))
			continue
		}
		var floats []float32
		if tn.DType == F32 || tn.DType == F16 || tn.DType == BF16 {
			if floats, err = tn.Float32(); err != nil {
				t.Fatal(err)
			}
		}
		for i, ws := range w.Values {
			sz := tn.DType.Size()
			e := tn.Data[i*sz : (i+1)*sz]
			var got, wantV float64
			var gotI, wantI int64
			isInt := false
			switch tn.DType {
			case F32, F16, BF16:
				got = float64(floats[i])
			case F64:
				got = math.Float64frombits(binary.LittleEndian.Uint64(e))
			case I64:
				gotI, isInt = int64(binary.LittleEndian.Uint64(e)), true
			case I32:
				gotI, isInt = int64(int32(binary.LittleEndian.Uint32(e))), true
			case I16:
				gotI, isInt = int64(int16(binary.LittleEndian.Uint16(e))), true
			case I8:
				gotI, isInt = int64(int8(e[0])), true
			case U8:
				gotI, isInt = int64(e[0]), true
			case BOOL:
				gotI, isInt = int64(e[0]), true
			default:
				t.Fatalf("%s: unexpected dtype %s", name, tn.DType)
			}
			if isInt {
				if wantI, err = strconv.ParseInt(ws, 10, 64); err != nil {
					t.Fatal(err)
				}
				if gotI != wantI {
					t.Errorf("%s[%d] = %d, torch %d", name, i, gotI, wantI)
				}
				continue
			}
			if wantV, err = strconv.ParseFloat(ws, 64); err != nil {
				t.Fatal(err)
			}
			if got != wantV || math.Signbit(got) != math.Signbit(wantV) {
				t.Errorf("%s[%d] = %v, torch %v", name, i, got, wantV)
			}
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestTensorNotFound(t *testing.T) {
	r, err := Open("testdata/torch_written.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Has("nope") || !r.Has("i8") {
		t.Errorf("Has wrong")
	}
	_, err = r.Tensor("model.nope.weight")
	if err == nil || !strings.Contains(err.Error(), `"model.nope.weight"`) || !strings.Contains(err.Error(), "testdata/torch_written.safetensors") {
		t.Errorf("error %v should name the tensor and the path", err)
	}
}

// TestDataIsReadOnly: the mapping is PROT_READ, so a write through
// Tensor.Data faults (recovered here as a panic) instead of corrupting
// weights or the file.
func TestDataIsReadOnly(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		t.Skip("files are read into memory on", runtime.GOOS)
	}
	r, err := Open("testdata/torch_written.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tn, _ := r.Tensor("u8")
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	faulted := func() (f bool) {
		defer func() { f = recover() != nil }()
		tn.Data[0] = 42
		return false
	}()
	if !faulted {
		t.Fatal("writing to Tensor.Data did not fault")
	}
}

func TestOpenFolderChoice(t *testing.T) {
	one := func(name string) []byte {
		return rawFile(-1, `{"`+name+`":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{7})
	}
	for _, tc := range []struct {
		name    string
		files   map[string][]byte
		want    string // the tensor we expect to see, or "" for an error
		wantErr []string
	}{
		{"model.safetensors preferred", map[string][]byte{"model.safetensors": one("m"), "other.safetensors": one("o")}, "m", nil},
		{"single other file", map[string][]byte{"adapter_model.safetensors": one("a"), "config.json": []byte("{}")}, "a", nil},
		{"index preferred", map[string][]byte{
			"model.safetensors": one("m"), "s1.safetensors": one("x"),
			IndexFile: []byte(`{"metadata":{},"weight_map":{"x":"s1.safetensors"}}`),
		}, "x", nil},
		{"ambiguous", map[string][]byte{"a.safetensors": one("a"), "b.safetensors": one("b")}, "", []string{"a.safetensors, b.safetensors"}},
		{"nothing", map[string][]byte{"config.json": []byte("{}")}, "", []string{"no model.safetensors.index.json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, b := range tc.files {
				writeRaw(t, dir, n, b)
			}
			r, err := Open(dir)
			if tc.want == "" {
				if err == nil {
					r.Close()
					t.Fatal("no error")
				}
				for _, w := range append(tc.wantErr, dir) {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if names := r.Names(); len(names) != 1 || names[0] != tc.want {
				t.Errorf("tensors %v, want [%s]", names, tc.want)
			}
		})
	}
}

func TestOpenBadIndex(t *testing.T) {
	shard := func(names ...string) []byte {
		var parts []string
		for i, n := range names {
			parts = append(parts, `"`+n+`":{"dtype":"U8","shape":[1],"data_offsets":[`+strconv.Itoa(i)+`,`+strconv.Itoa(i+1)+`]}`)
		}
		return rawFile(-1, "{"+strings.Join(parts, ",")+"}", make([]byte, len(names)))
	}
	for _, tc := range []struct {
		name  string
		index string
		files map[string][]byte
		want  []string
	}{
		{"missing shard", `{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shard("a")}, []string{"s2.safetensors", `"b"`, "missing"}},
		{"tensor absent from shard", `{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shard("a")}, []string{`"b"`, "s1.safetensors", "not in shard"}},
		{"duplicate across shards", `{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shard("a", "b"), "s2.safetensors": shard("b")}, []string{`"b"`, "s1.safetensors", "s2.safetensors", "both"}},
		{"wrong shard", `{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shard("a"), "s2.safetensors": shard("b")}, []string{`"b"`, "not in shard s1.safetensors"}},
		{"path escape", `{"weight_map":{"a":"../s1.safetensors"}}`, nil, []string{`"a"`, "../s1.safetensors"}},
		{"empty weight_map", `{"metadata":{"total_size":0}}`, nil, []string{"weight_map"}},
		{"not json", `{"weight_map":`, nil, []string{IndexFile}},
		{"corrupt shard", `{"weight_map":{"a":"s1.safetensors"}}`,
			map[string][]byte{"s1.safetensors": []byte("xx")}, []string{"s1.safetensors", "2 bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeRaw(t, dir, IndexFile, []byte(tc.index))
			for n, b := range tc.files {
				writeRaw(t, dir, n, b)
			}
			r, err := Open(dir)
			if err == nil {
				r.Close()
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestOpenIndexDirectly(t *testing.T) {
	dir := t.TempDir()
	writeRaw(t, dir, "s1.safetensors", rawFile(-1, `{"__metadata__":{"format":"pt"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{9}))
	p := writeRaw(t, dir, IndexFile, []byte(`{"metadata":{"total_size":1},"weight_map":{"a":"s1.safetensors"}}`))
	r, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tn, err := r.Tensor("a")
	if err != nil || tn.Data[0] != 9 || r.Metadata()["format"] != "pt" {
		t.Errorf("got %+v %v, metadata %v", tn, err, r.Metadata())
	}
	if f := r.Files(); len(f) != 1 || filepath.Base(f[0]) != "s1.safetensors" {
		t.Errorf("Files() = %v", f)
	}
}
