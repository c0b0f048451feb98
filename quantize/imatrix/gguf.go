package imatrix

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/tunellm/tune/quantize/gguf"
)

// Metadata keys of the GGUF format (tools/imatrix/imatrix.cpp LLM_KV_IMATRIX_*).
const (
	KeyDatasets   = "imatrix.datasets"
	KeyChunkCount = "imatrix.chunk_count"
	KeyChunkSize  = "imatrix.chunk_size"
)

const (
	sumSuffix   = ".in_sum2"
	countSuffix = ".counts"
)

// ParseGGUF decodes the GGUF format. As llama-quantize, it requires the
// three imatrix.* keys, pairs every W.in_sum2 with its W.counts and ignores
// other tensors; both must be F32, with one count per matrix.
func ParseGGUF(b []byte, file string) (*Matrix, error) {
	f, err := gguf.Read(bytes.NewReader(b), int64(len(b)), file)
	if err != nil {
		return nil, fmt.Errorf("imatrix: %w", err)
	}
	m := New()
	for _, key := range []string{KeyDatasets, KeyChunkCount, KeyChunkSize} {
		v, ok := f.Value(key)
		if !ok {
			return nil, fmt.Errorf("imatrix: %s: missing metadata key %s (not an imatrix file?)", file, key)
		}
		switch key {
		case KeyDatasets:
			ds, ok := v.([]string)
			if !ok {
				return nil, fmt.Errorf("imatrix: %s: %s is %T, want a string array", file, key, v)
			}
			m.Datasets = ds
		default:
			n, ok := v.(uint32)
			if !ok {
				return nil, fmt.Errorf("imatrix: %s: %s is %T, want uint32", file, key, v)
			}
			if key == KeyChunkCount {
				m.ChunkCount = int(n)
			} else {
				m.ChunkSize = int(n)
			}
		}
	}
	type pair struct{ sums, counts *gguf.TensorInfo }
	pairs := map[string]*pair{}
	var order []string
	for i := range f.Tensors {
		t := &f.Tensors[i]
		var name string
		isSum := strings.HasSuffix(t.Name, sumSuffix)
		switch {
		case isSum:
			name = strings.TrimSuffix(t.Name, sumSuffix)
		case strings.HasSuffix(t.Name, countSuffix):
			name = strings.TrimSuffix(t.Name, countSuffix)
		default:
			continue
		}
		p := pairs[name]
		if p == nil {
			p = &pair{}
			pairs[name] = p
			order = append(order, name)
		}
		if isSum {
			p.sums = t
		} else {
			p.counts = t
		}
	}
	for _, name := range order {
		p := pairs[name]
		if p.sums == nil || p.counts == nil {
			return nil, fmt.Errorf("imatrix: %s: entry %q: mismatched sums and counts (want both %s and %s)", file, name, name+sumSuffix, name+countSuffix)
		}
		sums, err := readF32(f, p.sums, file)
		if err != nil {
			return nil, err
		}
		counts, err := readF32(f, p.counts, file)
		if err != nil {
			return nil, err
		}
		cols := 1
		if len(p.sums.Shape) > 0 {
			cols = p.sums.Shape[len(p.sums.Shape)-1]
		}
		if cols == 0 || len(sums)%cols != 0 || len(sums)/cols != len(counts) {
			return nil, fmt.Errorf("imatrix: %s: entry %q: in_sum2 shape %v needs %d counts, found %d", file, name, p.sums.Shape, len(sums)/max(cols, 1), len(counts))
		}
		m.Entries[name] = &Entry{Sum2: sums, Counts: counts}
	}
	if err := m.check(file); err != nil {
		return nil, err
	}
	return m, nil
}

func readF32(f *gguf.File, t *gguf.TensorInfo, file string) ([]float32, error) {
	if t.Type != gguf.TypeF32 {
		return nil, fmt.Errorf("imatrix: %s: tensor %q: type %s, want F32", file, t.Name, t.Type)
	}
	b, err := f.TensorData(t.Name)
	if err != nil {
		return nil, fmt.Errorf("imatrix: %w", err)
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}

// WriteGGUF writes m in the GGUF format as llama-imatrix's save_imatrix
// does: general.type, the three imatrix.* keys, then for each entry in name
// order W.in_sum2 (ne [cols, n_mat]) and W.counts (ne [1, n_mat]), with
// trailing dimensions of 1 dropped as ggml does.
func WriteGGUF(path string, m *Matrix) error {
	w := gguf.NewWriter(path)
	ds := m.Datasets
	if ds == nil {
		ds = []string{}
	}
	for _, kv := range []gguf.KV{
		{Key: "general.type", Value: "imatrix"},
		{Key: KeyDatasets, Value: ds},
		{Key: KeyChunkCount, Value: uint32(m.ChunkCount)},
		{Key: KeyChunkSize, Value: uint32(m.ChunkSize)},
	} {
		if err := w.AddKV(kv.Key, kv.Value); err != nil {
			w.Abort()
			return fmt.Errorf("imatrix: %w", err)
		}
	}
	for _, name := range m.Names() {
		e := m.Entries[name]
		nmat, cols := len(e.Counts), e.Cols()
		if nmat == 0 || cols == 0 {
			continue
		}
		sumShape, countShape := []int{nmat, cols}, []int{nmat, 1}
		if nmat == 1 {
			sumShape, countShape = []int{cols}, []int{1}
		}
		for _, t := range []struct {
			suffix string
			shape  []int
			vals   []float32
		}{{sumSuffix, sumShape, e.Sum2}, {countSuffix, countShape, e.Counts}} {
			vals := t.vals
			if err := w.AddTensor(name+t.suffix, gguf.TypeF32, t.shape, func(o io.Writer) error {
				b := make([]byte, 4*len(vals))
				for i, v := range vals {
					binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
				}
				_, err := o.Write(b)
				return err
			}, int64(4*len(vals))); err != nil {
				w.Abort()
				return fmt.Errorf("imatrix: %w", err)
			}
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("imatrix: %w", err)
	}
	return nil
}
