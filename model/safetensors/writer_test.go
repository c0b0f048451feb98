package safetensors

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// TestWriterMatchesRustCrate compares our bytes with the expected outputs in
// the Rust crate's own tests (huggingface/safetensors,
// safetensors/src/tensor.rs: test_serialization,
// test_serialization_forced_alignement, test_empty).
func TestWriterMatchesRustCrate(t *testing.T) {
	f32s := []byte{0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64} // 0..5
	for _, tc := range []struct {
		name    string
		tensors []WriteTensor
		meta    map[string]string
		want    []byte
	}{
		{"test_serialization", []WriteTensor{{Name: "attn.0", DType: F32, Shape: []int{1, 2, 3}, Write: Bytes(f32s)}}, nil,
			append(append([]byte{64, 0, 0, 0, 0, 0, 0, 0}, `{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}`...), f32s...)},
		{"forced alignment", []WriteTensor{{Name: "attn0", DType: F32, Shape: []int{1, 1, 2, 3}, Write: Bytes(f32s)}}, nil,
			append(append([]byte{72, 0, 0, 0, 0, 0, 0, 0}, `{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}       `...), f32s...)},
		{"test_empty", nil, nil, append([]byte{8, 0, 0, 0, 0, 0, 0, 0}, `{}      `...)},
		{"test_empty metadata", nil, map[string]string{"framework": "pt"},
			append([]byte{40, 0, 0, 0, 0, 0, 0, 0}, `{"__metadata__":{"framework":"pt"}}     `...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "x.safetensors")
			if err := WriteFile(p, tc.tensors, tc.meta); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("got\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

var allDTypes = []DType{F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8E4M3, F8E5M2, F8E8M0}

// randomTensors makes one tensor per dtype with odd shapes (so a name-order
// layout would misalign), plus empty and scalar ones, in shuffled order.
func randomTensors(rng *rand.Rand) ([]WriteTensor, map[string][]byte) {
	var ts []WriteTensor
	data := map[string][]byte{}
	add := func(name string, dt DType, shape ...int) {
		n := dt.Size()
		for _, d := range shape {
			n *= d
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		data[name] = b
		ts = append(ts, WriteTensor{Name: name, DType: dt, Shape: shape, Write: Bytes(b)})
	}
	for i, dt := range allDTypes {
		add(fmt.Sprintf("layers.%d.%s", i, dt), dt, 3, 1+i%3)
	}
	add("empty", BF16, 0, 7)
	add("scalar", F32)
	add("odd", U8, 5)
	ts = append(ts, WriteTensor{Name: "empty.nil", DType: F32, Shape: []int{4, 0}}) // nil Write is fine when empty
	data["empty.nil"] = []byte{}
	rng.Shuffle(len(ts), func(i, j int) { ts[i], ts[j] = ts[j], ts[i] })
	return ts, data
}

func checkRoundTrip(t *testing.T, r *Reader, ts []WriteTensor, data map[string][]byte) {
	t.Helper()
	var want []string
	for _, w := range ts {
		want = append(want, w.Name)
	}
	sort.Strings(want)
	if got := r.Names(); !slices.Equal(got, want) {
		t.Fatalf("names %v, want %v", got, want)
	}
	for _, w := range ts {
		got, err := r.Tensor(w.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got.DType != w.DType || !slices.Equal(got.Shape, w.Shape) || !bytes.Equal(got.Data, data[w.Name]) {
			t.Errorf("%s: got %s %v %x, want %s %v %x", w.Name, got.DType, got.Shape, got.Data, w.DType, w.Shape, data[w.Name])
		}
	}
}

func TestRoundTripAllDTypes(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ts, data := randomTensors(rng)
	dir := t.TempDir()
	meta := map[string]string{"format": "pt", "note": `quotes " and <html> & é`}
	if err := WriteDir(dir, ts, WriteOptions{Metadata: meta}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	checkRoundTrip(t, r, ts, data)
	if !mapsEqual(r.Metadata(), meta) {
		t.Errorf("metadata %v, want %v", r.Metadata(), meta)
	}
	// Without a format, transformers refuses the file; WriteDir adds one.
	dir2 := filepath.Join(t.TempDir(), "new", "folder")
	if err := WriteDir(dir2, ts, WriteOptions{Metadata: map[string]string{"x": "y"}}); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if want := map[string]string{"x": "y", "format": "pt"}; !mapsEqual(r2.Metadata(), want) {
		t.Errorf("metadata %v, want %v", r2.Metadata(), want)
	}
	checkRoundTrip(t, r2, ts, data)
	// Descending-alignment layout: every tensor starts at a multiple of its
	// element size within the file, so unaligned access never happens.
	f := r.files[0]
	base := len(f.mem) - len(f.data)
	if base%8 != 0 {
		t.Errorf("data section starts at %d, not 8-aligned", base)
	}
	for _, ti := range f.hdr.tensors {
		if (int64(base)+ti.begin)%int64(ti.dtype.Size()) != 0 {
			t.Errorf("%s (%s) starts at file offset %d, misaligned", ti.name, ti.dtype, int64(base)+ti.begin)
		}
	}
	if got, _ := os.ReadDir(dir); len(got) != 1 {
		t.Errorf("dir holds %v, want only model.safetensors", got)
	}
}

func TestShardedRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var ts []WriteTensor
	data := map[string][]byte{}
	for i := range 10 {
		name := fmt.Sprintf("model.layers.%d.weight", i)
		b := make([]byte, 100)
		for j := range b {
			b[j] = byte(rng.IntN(256))
		}
		data[name] = b
		ts = append(ts, WriteTensor{Name: name, DType: BF16, Shape: []int{5, 10}, Write: Bytes(b)})
	}
	big := make([]byte, 1000) // bigger than the cap: a shard of its own
	data["lm_head.weight"] = big
	ts = append(ts[:3], append([]WriteTensor{{Name: "lm_head.weight", DType: F32, Shape: []int{250}, Write: Bytes(big)}}, ts[3:]...)...)

	dir := t.TempDir()
	if err := WriteDir(dir, ts, WriteOptions{MaxShardBytes: 250, Metadata: map[string]string{"format": "pt"}}); err != nil {
		t.Fatal(err)
	}
	// Greedy in caller order: [l0 l1] [l2] [lm_head] [l3 l4] [l5 l6] [l7 l8] [l9].
	wantShards := [][]string{{"0", "1"}, {"2"}, {"lm_head"}, {"3", "4"}, {"5", "6"}, {"7", "8"}, {"9"}}
	js, err := os.ReadFile(filepath.Join(dir, IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Metadata  map[string]int64  `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(js, &idx); err != nil {
		t.Fatal(err)
	}
	if idx.Metadata["total_size"] != 2000 {
		t.Errorf("total_size %d, want 2000", idx.Metadata["total_size"])
	}
	for s, members := range wantShards {
		shard := fmt.Sprintf("model-%05d-of-%05d.safetensors", s+1, len(wantShards))
		for _, m := range members {
			name := "lm_head.weight"
			if m != "lm_head" {
				name = "model.layers." + m + ".weight"
			}
			if idx.WeightMap[name] != shard {
				t.Errorf("weight_map[%s] = %q, want %q", name, idx.WeightMap[name], shard)
			}
		}
	}
	if len(idx.WeightMap) != 11 {
		t.Errorf("weight_map has %d entries, want 11", len(idx.WeightMap))
	}
	// transformers' layout: json.dumps(index, indent=2, sort_keys=True) + "\n".
	if !strings.HasPrefix(string(js), "{\n  \"metadata\": {\n    \"total_size\": 2000\n  },\n  \"weight_map\": {\n    \"lm_head.weight\": \"model-00003-of-00007.safetensors\",\n") || !strings.HasSuffix(string(js), "}\n}\n") {
		t.Errorf("index.json layout:\n%s", js)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 8 {
		t.Errorf("%d files in dir, want 7 shards + index", len(entries))
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	checkRoundTrip(t, r, ts, data)
	if len(r.Files()) != 7 || r.Metadata()["format"] != "pt" {
		t.Errorf("files %v metadata %v", r.Files(), r.Metadata())
	}

	// A single-file save over it removes the old shards and index: Open
	// must not find stale weights.
	small := []WriteTensor{{Name: "only", DType: U8, Shape: []int{2}, Write: Bytes([]byte{1, 2})}}
	if err := WriteDir(dir, small, WriteOptions{MaxShardBytes: 250}); err != nil {
		t.Fatal(err)
	}
	entries, _ = os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "model.safetensors" {
		t.Errorf("after single-file save, dir holds %v", entries)
	}
}

func TestWriteFileNameStem(t *testing.T) {
	dir := t.TempDir()
	ts := []WriteTensor{
		{Name: "a", DType: U8, Shape: []int{8}, Write: Bytes(make([]byte, 8))},
		{Name: "b", DType: U8, Shape: []int{8}, Write: Bytes(make([]byte, 8))},
	}
	if err := WriteDir(dir, ts, WriteOptions{MaxShardBytes: 8, FileName: "adapter_model.safetensors"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"adapter_model-00001-of-00002.safetensors", "adapter_model-00002-of-00002.safetensors", "adapter_model.safetensors.index.json"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Error(err)
		}
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := WriteDir(dir, ts, WriteOptions{FileName: "../x.safetensors"}); err == nil {
		t.Error("FileName with a folder accepted")
	}
}

// failingWriter writes half its bytes, then fails.
func failingWriter(n int) func(io.Writer) error {
	return func(w io.Writer) error {
		if _, err := w.Write(make([]byte, n/2)); err != nil {
			return err
		}
		return errors.New("disk on fire")
	}
}

func TestWriteAtomicOnError(t *testing.T) {
	good := func(n int) func(io.Writer) error { return Bytes(make([]byte, n)) }
	for _, tc := range []struct {
		name    string
		tensors []WriteTensor
		opts    WriteOptions
		want    []string
	}{
		{"fails mid-file", []WriteTensor{
			{Name: "a", DType: F32, Shape: []int{4}, Write: good(16)},
			{Name: "b", DType: F32, Shape: []int{4}, Write: failingWriter(16)},
		}, WriteOptions{}, []string{`"b"`, "disk on fire"}},
		{"fails in third shard", []WriteTensor{
			{Name: "a", DType: F32, Shape: []int{4}, Write: good(16)},
			{Name: "b", DType: F32, Shape: []int{4}, Write: good(16)},
			{Name: "c", DType: F32, Shape: []int{4}, Write: failingWriter(16)},
		}, WriteOptions{MaxShardBytes: 16}, []string{`"c"`, "model-00003-of-00003.safetensors", "disk on fire"}},
		{"short write", []WriteTensor{
			{Name: "a", DType: BF16, Shape: []int{2, 2}, Write: good(5)},
		}, WriteOptions{}, []string{`"a"`, "produced 5 bytes, want 8", "[2 2]", "BF16"}},
		{"long write", []WriteTensor{
			{Name: "a", DType: BF16, Shape: []int{2, 2}, Write: good(9)},
		}, WriteOptions{}, []string{`"a"`, "more than 8 bytes"}},
		{"duplicate name", []WriteTensor{
			{Name: "a", DType: U8, Shape: []int{1}, Write: good(1)},
			{Name: "a", DType: U8, Shape: []int{1}, Write: good(1)},
		}, WriteOptions{}, []string{`"a"`, "twice"}},
		{"unknown dtype", []WriteTensor{{Name: "a", DType: "Q4", Shape: []int{1}, Write: good(1)}}, WriteOptions{}, []string{`"a"`, `"Q4"`, "supported"}},
		{"negative dim", []WriteTensor{{Name: "a", DType: U8, Shape: []int{-1}, Write: good(1)}}, WriteOptions{}, []string{`"a"`, "negative"}},
		{"reserved name", []WriteTensor{{Name: "__metadata__", DType: U8, Shape: []int{1}, Write: good(1)}}, WriteOptions{}, []string{"reserved"}},
		{"nil write", []WriteTensor{{Name: "a", DType: U8, Shape: []int{1}}}, WriteOptions{}, []string{`"a"`, "nil Write"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			// An earlier save must survive a failed one untouched.
			old := rawFile(-1, `{}      `, nil)
			writeRaw(t, dir, "model.safetensors", old)
			err := WriteDir(dir, tc.tensors, tc.opts)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 || entries[0].Name() != "model.safetensors" {
				var names []string
				for _, e := range entries {
					names = append(names, e.Name())
				}
				t.Errorf("dir holds %v, want only the old model.safetensors", names)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "model.safetensors")); !bytes.Equal(b, old) {
				t.Errorf("old model.safetensors changed")
			}
		})
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "out.safetensors")
	err := WriteFile(p, []WriteTensor{{Name: "w", DType: F16, Shape: []int{8}, Write: failingWriter(16)}}, nil)
	if err == nil || !strings.Contains(err.Error(), `"w"`) {
		t.Fatalf("error %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left behind %v", entries)
	}
	// And a good write leaves exactly the file, world-readable.
	if err := WriteFile(p, []WriteTensor{{Name: "w", DType: F16, Shape: []int{8}, Write: Bytes(make([]byte, 16))}}, nil); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm()&0o444 != 0o444 {
		t.Errorf("stat %v %v", st, err)
	}
}

// BenchmarkWriteDir measures streaming throughput through the buffered
// writer (to the temp folder's disk).
func BenchmarkWriteDir(b *testing.B) {
	const n = 4 << 20
	buf := make([]byte, n)
	ts := []WriteTensor{
		{Name: "a", DType: BF16, Shape: []int{n / 2}, Write: Bytes(buf)},
		{Name: "b", DType: BF16, Shape: []int{n / 2}, Write: Bytes(buf)},
	}
	dir := b.TempDir()
	b.SetBytes(2 * n)
	for b.Loop() {
		if err := WriteDir(dir, ts, WriteOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDTypeTables(t *testing.T) {
	if len(dtypeRank) != len(allDTypes) {
		t.Errorf("dtypeRank has %d dtypes, tests cover %d", len(dtypeRank), len(allDTypes))
	}
	for _, d := range allDTypes {
		if _, ok := dtypeRank[d]; !ok || d.Size() == 0 || !strings.Contains(supportedDTypes(), string(d)) {
			t.Errorf("%s: rank %v, size %d", d, ok, d.Size())
		}
	}
	if DType("F4").Size() != 0 {
		t.Error("unknown dtype has a size")
	}
}
