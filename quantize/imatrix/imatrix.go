// Package imatrix reads and writes llama.cpp importance matrices: the
// per-input-column mean of squared activations of each weight matrix, which
// llama-quantize passes to the quantizers (quantize.Quantize's imatrix
// argument) so that columns that see large inputs are rounded more carefully.
//
// Two file formats exist, both written by llama-imatrix (tools/imatrix):
//
//   - GGUF (imatrix.gguf, the default since 2025): for each weight tensor W
//     an F32 tensor "W.in_sum2" of ne = [cols, n_mat] holding Σx² per input
//     column and an F32 tensor "W.counts" of ne = [1, n_mat] holding how many
//     activation rows (tokens) were summed; metadata general.type =
//     "imatrix", imatrix.datasets ([]string), imatrix.chunk_count and
//     imatrix.chunk_size (u32).
//   - legacy binary (imatrix.dat), little-endian: int32 n_entries; per entry
//     int32 name length, the name, int32 ncall, int32 nval, nval float32
//     values = (Σx²/count)·ncall; then int32 chunk count, int32 dataset name
//     length and the dataset name.
//
// llama-quantize (tools/quantize/quantize.cpp load_imatrix and
// load_legacy_imatrix) turns either into per-column weights: Σx²/count (1
// where a matrix saw no input) for GGUF, value/ncall for legacy. Weights
// returns exactly that. n_mat > 1 only for stacked MoE experts.
package imatrix

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
)

// LegacyChunkSize is the chunk size assumed for legacy files, which do not
// record it: llama-imatrix's default context of 512 tokens, as its own
// legacy loader assumes with the default settings.
const LegacyChunkSize = 512

// Matrix is an importance matrix: one Entry per weight tensor, keyed by its
// GGUF name ("blk.0.attn_q.weight").
type Matrix struct {
	Path       string   // file it was loaded from ("" when computed)
	Datasets   []string // calibration files it was computed from
	ChunkCount int      // chunks of ChunkSize tokens processed
	ChunkSize  int      // tokens per chunk (the context length)
	Entries    map[string]*Entry
}

// Entry holds the sums for one weight tensor of n_mat = len(Counts)
// matrices (1 for a dense layer) of Cols() input columns.
type Entry struct {
	Sum2   []float32 // Σ x² per input column, matrix after matrix [n_mat][cols]
	Counts []float32 // activation rows summed, per matrix
}

// Cols is the number of input columns (the weight's row length, ggml ne[0]).
func (e *Entry) Cols() int {
	if len(e.Counts) == 0 {
		return 0
	}
	return len(e.Sum2) / len(e.Counts)
}

// New returns an empty matrix.
func New() *Matrix { return &Matrix{Entries: map[string]*Entry{}} }

// Names returns the entry names in sorted order.
func (m *Matrix) Names() []string {
	names := make([]string, 0, len(m.Entries))
	for n := range m.Entries {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Weights returns the per-column importances llama-quantize derives for
// tensor name (Σx²/count per matrix, 1 for a matrix that saw no input), or
// nil when the matrix has no entry for it.
func (m *Matrix) Weights(name string) []float32 {
	if m == nil {
		return nil
	}
	e, ok := m.Entries[name]
	if !ok {
		return nil
	}
	cols := e.Cols()
	out := make([]float32, len(e.Sum2))
	for j, c := range e.Counts {
		for i := 0; i < cols; i++ {
			if c > 0 {
				out[j*cols+i] = e.Sum2[j*cols+i] / c
			} else {
				out[j*cols+i] = 1
			}
		}
	}
	return out
}

// Load reads an importance matrix in either format (GGUF when the file
// starts with the GGUF magic, the legacy binary format otherwise).
func Load(path string) (*Matrix, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("imatrix: %w", err)
	}
	m, err := Parse(b, path)
	if err != nil {
		return nil, err
	}
	m.Path = path
	return m, nil
}

// Parse decodes an importance matrix file image; name is used in errors.
func Parse(b []byte, name string) (*Matrix, error) {
	if len(b) >= 4 && string(b[:4]) == "GGUF" {
		return ParseGGUF(b, name)
	}
	return ParseDat(b, name)
}

// Save writes m to path: the legacy binary format when path ends in
// ".dat", GGUF otherwise. The file appears complete or not at all.
func Save(path string, m *Matrix) error {
	if filepath.Ext(path) == ".dat" {
		return writeAtomic(path, m.MarshalDat())
	}
	return WriteGGUF(path, m)
}

// check validates every entry: consistent lengths, finite non-negative
// sums and counts.
func (m *Matrix) check(file string) error {
	if len(m.Entries) == 0 {
		return fmt.Errorf("imatrix: %s: no entries", file)
	}
	for _, name := range m.Names() {
		e := m.Entries[name]
		if len(e.Counts) == 0 || len(e.Sum2) == 0 || len(e.Sum2)%len(e.Counts) != 0 {
			return fmt.Errorf("imatrix: %s: entry %q: %d values do not split into %d matrices", file, name, len(e.Sum2), len(e.Counts))
		}
		for i, v := range e.Sum2 {
			if !(v >= 0) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("imatrix: %s: entry %q: value %v at column %d, want finite and >= 0", file, name, v, i)
			}
		}
		for i, c := range e.Counts {
			if !(c >= 0) || math.IsInf(float64(c), 0) {
				return fmt.Errorf("imatrix: %s: entry %q: count %v for matrix %d, want finite and >= 0", file, name, c, i)
			}
		}
	}
	return nil
}

// writeAtomic writes b to a temporary file beside path, syncs it and
// renames it over path.
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("imatrix: %w", err)
	}
	tmp := f.Name()
	err = f.Chmod(0o644) // CreateTemp makes the file private
	if err == nil {
		_, err = f.Write(b)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("imatrix: %s: %w", path, err)
	}
	return nil
}
