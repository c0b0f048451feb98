package imatrix

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tunellm/tune/quantize/gguf"
)

// legacyBytes lays out a legacy file field by field as llama-imatrix's
// save_imatrix_legacy writes it (written here from the format, not with
// MarshalDat).
type legacyEntry struct {
	name  string
	ncall int32
	vals  []float32
}

func legacyBytes(entries []legacyEntry, trailer bool, lastChunk int32, dataset string) []byte {
	var b bytes.Buffer
	w := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	w(int32(len(entries)))
	for _, e := range entries {
		w(int32(len(e.name)))
		b.WriteString(e.name)
		w(e.ncall)
		w(int32(len(e.vals)))
		w(e.vals)
	}
	if trailer {
		w(lastChunk)
		w(int32(len(dataset)))
		b.WriteString(dataset)
	}
	return b.Bytes()
}

// ggufImatrix writes a GGUF imatrix with package gguf's writer, tensors
// given in ggml ne order as llama-imatrix creates them.
type ggufTensor struct {
	name string
	ne   []int // ggml order
	vals []float32
}

func ggufImatrix(t *testing.T, kvs []gguf.KV, tensors []ggufTensor) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "m.gguf")
	w := gguf.NewWriter(path)
	for _, kv := range kvs {
		if err := w.AddKV(kv.Key, kv.Value); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range tensors {
		shape := make([]int, len(tt.ne))
		for i, d := range tt.ne {
			shape[len(shape)-1-i] = d
		}
		vals := tt.vals
		if err := w.AddTensor(tt.name, gguf.TypeF32, shape, func(o io.Writer) error {
			return binary.Write(o, binary.LittleEndian, vals)
		}, int64(4*len(vals))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var stdKVs = []gguf.KV{
	{Key: "general.type", Value: "imatrix"},
	{Key: KeyDatasets, Value: []string{"wiki.train.raw"}},
	{Key: KeyChunkCount, Value: uint32(10)},
	{Key: KeyChunkSize, Value: uint32(512)},
}

// TestLegacyWeights checks the per-column weights against llama-quantize's
// load_legacy_imatrix: value / ncall, or the value itself when ncall <= 0.
func TestLegacyWeights(t *testing.T) {
	b := legacyBytes([]legacyEntry{
		{"blk.0.attn_q.weight", 3, []float32{3, 6, 0.3, 1e-9}},
		{"blk.0.ffn_down.weight", 0, []float32{2, 4}},
		{"output.weight", 7, []float32{7, 1}},
	}, true, 12, "calib.txt")
	m, err := ParseDat(b, "x.dat")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]float32{
		"blk.0.attn_q.weight":   {3.0 / 3, 6.0 / 3, float32(0.3) / 3, float32(1e-9) / 3},
		"blk.0.ffn_down.weight": {2, 4},
		"output.weight":         {1, float32(1) / 7},
	}
	for name, w := range want {
		if got := m.Weights(name); !reflect.DeepEqual(got, w) {
			t.Errorf("%s: weights %v, want %v", name, got, w)
		}
	}
	if m.Weights("token_embd.weight") != nil {
		t.Error("weights for a missing entry")
	}
	if m.ChunkCount != 12 || !reflect.DeepEqual(m.Datasets, []string{"calib.txt"}) || m.ChunkSize != LegacyChunkSize {
		t.Errorf("chunks %d, datasets %v, chunk size %d", m.ChunkCount, m.Datasets, m.ChunkSize)
	}
	// Older files have no trailer.
	m, err = ParseDat(legacyBytes([]legacyEntry{{"a", 2, []float32{4}}}, false, 0, ""), "old.dat")
	if err != nil || m.Weights("a")[0] != 2 || m.Datasets != nil {
		t.Errorf("no trailer: %v, %+v", err, m)
	}
}

// TestGGUFWeights checks llama-quantize's load_imatrix: in_sum2/count per
// matrix, 1 for a matrix with count 0; other tensors ignored.
func TestGGUFWeights(t *testing.T) {
	b := ggufImatrix(t, stdKVs, []ggufTensor{
		{"blk.0.attn_q.weight.counts", []int{1}, []float32{4}},
		{"blk.0.attn_q.weight.in_sum2", []int{3}, []float32{4, 2, 0}},
		{"blk.1.ffn_down_exps.weight.in_sum2", []int{2, 3}, []float32{1, 2, 3, 4, 5, 6}},
		{"blk.1.ffn_down_exps.weight.counts", []int{1, 3}, []float32{2, 0, 4}},
		{"something.else", []int{2}, []float32{1, 1}},
	})
	m, err := Parse(b, "x.gguf")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Weights("blk.0.attn_q.weight"), []float32{1, 0.5, 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("attn_q: %v, want %v", got, want)
	}
	if got, want := m.Weights("blk.1.ffn_down_exps.weight"), []float32{0.5, 1, 1, 1, 1.25, 1.5}; !reflect.DeepEqual(got, want) {
		t.Errorf("experts: %v, want %v", got, want)
	}
	if len(m.Entries) != 2 || m.ChunkCount != 10 || m.ChunkSize != 512 || m.Datasets[0] != "wiki.train.raw" {
		t.Errorf("entries %d, chunks %d×%d, datasets %v", len(m.Entries), m.ChunkCount, m.ChunkSize, m.Datasets)
	}
}

// TestRoundTrip writes both formats and reads them back.
func TestRoundTrip(t *testing.T) {
	m := New()
	m.ChunkCount, m.ChunkSize, m.Datasets = 3, 64, []string{"a.txt"}
	m.Entries["blk.0.attn_k.weight"] = &Entry{Sum2: []float32{1, 2, 3, 4}, Counts: []float32{192}}
	m.Entries["blk.0.ffn_down.weight"] = &Entry{Sum2: []float32{0.5, 9}, Counts: []float32{150}}
	m.Entries["blk.3.unused.weight"] = &Entry{Sum2: []float32{0, 0}, Counts: []float32{0}}
	dir := t.TempDir()

	gpath := filepath.Join(dir, "m.gguf")
	if err := Save(gpath, m); err != nil {
		t.Fatal(err)
	}
	g, err := Load(gpath)
	if err != nil {
		t.Fatal(err)
	}
	g.Path = ""
	if !reflect.DeepEqual(g, m) {
		t.Errorf("GGUF round trip: %+v, want %+v", g, m)
	}
	f, err := gguf.Open(gpath)
	if err != nil {
		t.Fatal(err)
	}
	ti, _ := f.Tensor("blk.0.attn_k.weight.in_sum2")
	tc, _ := f.Tensor("blk.0.attn_k.weight.counts")
	if !reflect.DeepEqual(ti.Shape, []int{4}) || !reflect.DeepEqual(tc.Shape, []int{1}) {
		t.Errorf("shapes %v %v, want [4] [1] (ggml drops trailing 1s)", ti.Shape, tc.Shape)
	}
	if v, _ := f.Value("general.type"); v != "imatrix" {
		t.Errorf("general.type = %v", v)
	}
	f.Close()

	dpath := filepath.Join(dir, "m.dat")
	if err := Save(dpath, m); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(dpath)
	// ncall = ceil(192/64) = 3, ceil(150/64) = 3; values (sum/count)·ncall;
	// the entry without data is left out.
	want := legacyBytes([]legacyEntry{
		{"blk.0.attn_k.weight", 3, []float32{float32(1) / 192 * 3, float32(2) / 192 * 3, float32(3) / 192 * 3, float32(4) / 192 * 3}},
		{"blk.0.ffn_down.weight", 3, []float32{float32(0.5) / 150 * 3, float32(9) / 150 * 3}},
	}, true, 3, "a.txt")
	if !bytes.Equal(raw, want) {
		t.Errorf("legacy bytes differ:\n got %x\nwant %x", raw, want)
	}
	d, err := Load(dpath)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"blk.0.attn_k.weight", "blk.0.ffn_down.weight"} {
		a, b := d.Weights(name), m.Weights(name)
		for i := range a {
			if math.Abs(float64(a[i]-b[i])) > 1e-6*math.Abs(float64(b[i])) {
				t.Errorf("%s[%d]: legacy round trip %g, want %g", name, i, a[i], b[i])
			}
		}
	}
}

func TestParseErrors(t *testing.T) {
	good := legacyBytes([]legacyEntry{{"blk.0.attn_q.weight", 1, []float32{1, 2}}}, true, 1, "d")
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "truncated"},
		{"zero entries", []byte{0, 0, 0, 0}, "0 entries"},
		{"truncated values", good[:len(good)-12], "2 values, but"},
		{"huge name", legacyBytes([]legacyEntry{{"x", 1, []float32{1}}}, false, 0, "")[:4:4], "truncated"},
		{"negative value", legacyBytes([]legacyEntry{{"blk.0.x", 1, []float32{-1}}}, false, 0, ""), `entry 1 ("blk.0.x"): value -1`},
		{"nan", legacyBytes([]legacyEntry{{"blk.0.x", 1, []float32{float32(math.NaN())}}}, false, 0, ""), "value NaN"},
		{"duplicate", legacyBytes([]legacyEntry{{"a", 1, []float32{1}}, {"a", 1, []float32{1}}}, false, 0, ""), "duplicate"},
		{"trailing", append(append([]byte{}, good...), 1), "bytes after"},
	}
	for _, tc := range cases {
		_, err := Parse(tc.b, "bad.dat")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "bad.dat") {
			t.Errorf("%s: error %v, want one naming bad.dat and containing %q", tc.name, err, tc.want)
		}
	}
	g := []struct {
		name    string
		kvs     []gguf.KV
		tensors []ggufTensor
		want    string
	}{
		{"no metadata", stdKVs[:2], []ggufTensor{{"a.in_sum2", []int{2}, []float32{1, 1}}, {"a.counts", []int{1}, []float32{1}}}, "missing metadata key imatrix.chunk_count"},
		{"no counts", stdKVs, []ggufTensor{{"a.in_sum2", []int{2}, []float32{1, 1}}}, `entry "a": mismatched sums and counts`},
		{"count shape", stdKVs, []ggufTensor{{"a.in_sum2", []int{2}, []float32{1, 1}}, {"a.counts", []int{2}, []float32{1, 1}}}, `entry "a": in_sum2 shape [2] needs 1 counts, found 2`},
		{"negative count", stdKVs, []ggufTensor{{"a.in_sum2", []int{2}, []float32{1, 1}}, {"a.counts", []int{1}, []float32{-3}}}, `entry "a": count -3`},
		{"no tensors", stdKVs, nil, "no entries"},
	}
	for _, tc := range g {
		_, err := Parse(ggufImatrix(t, tc.kvs, tc.tensors), "bad.gguf")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "bad.gguf") {
			t.Errorf("%s: error %v, want one naming bad.gguf and containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "none.dat")); err == nil {
		t.Error("Load of a missing file: no error")
	}
}

func FuzzParseDat(f *testing.F) {
	f.Add(legacyBytes([]legacyEntry{{"blk.0.attn_q.weight", 2, []float32{1, 2}}, {"o", 0, []float32{3}}}, true, 4, "data"))
	f.Add(legacyBytes([]legacyEntry{{"a", 1, []float32{1}}}, false, 0, ""))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseDat(b, "fuzz.dat")
		if err != nil {
			return
		}
		for _, name := range m.Names() {
			for _, w := range m.Weights(name) {
				if !(w >= 0) || math.IsInf(float64(w), 0) {
					t.Fatalf("%s: weight %v", name, w)
				}
			}
		}
		if _, err := ParseDat(m.MarshalDat(), "again.dat"); err != nil && len(m.Entries) > 0 {
			// Entries with zero counts are dropped; a file of only those has none.
			if !strings.Contains(err.Error(), "0 entries") {
				t.Fatalf("re-parse: %v", err)
			}
		}
	})
}

func FuzzParseGGUF(f *testing.F) {
	dir, err := os.MkdirTemp("", "imatrix-fuzz-")
	if err != nil {
		f.Fatal(err)
	}
	defer os.RemoveAll(dir)
	m := New()
	m.ChunkCount, m.ChunkSize, m.Datasets = 1, 8, []string{"d"}
	m.Entries["blk.0.attn_q.weight"] = &Entry{Sum2: []float32{1, 2, 3, 4}, Counts: []float32{8}}
	m.Entries["x"] = &Entry{Sum2: []float32{1, 2, 3, 4}, Counts: []float32{8, 0}}
	path := filepath.Join(dir, "seed.gguf")
	if err := WriteGGUF(path, m); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(path)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseGGUF(b, "fuzz.gguf")
		if err != nil {
			return
		}
		for _, name := range m.Names() {
			if w := m.Weights(name); len(w) != len(m.Entries[name].Sum2) {
				t.Fatalf("%s: %d weights for %d sums", name, len(w), len(m.Entries[name].Sum2))
			}
		}
	})
}
