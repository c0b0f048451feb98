package imatrix

import (
	"encoding/binary"
	"fmt"
	"math"
)

// ParseDat decodes llama-imatrix's legacy binary format. Each entry's values
// v (= mean Σx² · ncall) are stored as Sum2 = v·LegacyChunkSize and
// Counts = [ncall·LegacyChunkSize], the state llama-imatrix rebuilds when it
// reads such a file, so Weights gives v/ncall as llama-quantize does (v
// itself when ncall <= 0, where llama-quantize does not divide).
func ParseDat(b []byte, file string) (*Matrix, error) {
	r := &datReader{b: b, file: file}
	n := r.i32("entry count")
	if r.err == nil && n < 1 {
		return nil, fmt.Errorf("imatrix: %s: %d entries, want at least 1 (not an imatrix file?)", file, n)
	}
	m := New()
	m.ChunkSize = LegacyChunkSize
	for i := 0; i < int(n) && r.err == nil; i++ {
		what := fmt.Sprintf("entry %d", i+1)
		nameLen := r.i32(what + " name length")
		if r.err == nil && (nameLen < 0 || int64(nameLen) > int64(len(r.b)-r.off)) {
			return nil, fmt.Errorf("imatrix: %s: %s: name length %d, but %d bytes are left", file, what, nameLen, len(r.b)-r.off)
		}
		name := string(r.bytes(int(max(nameLen, 0)), what+" name"))
		if r.err != nil {
			break
		}
		what = fmt.Sprintf("entry %d (%q)", i+1, name)
		ncall := r.i32(what + " ncall")
		nval := r.i32(what + " value count")
		if r.err != nil {
			break
		}
		if nval < 1 || int64(nval)*4 > int64(len(r.b)-r.off) {
			return nil, fmt.Errorf("imatrix: %s: %s: %d values, but %d bytes are left", file, what, nval, len(r.b)-r.off)
		}
		if _, dup := m.Entries[name]; dup {
			return nil, fmt.Errorf("imatrix: %s: %s: duplicate name", file, what)
		}
		raw := r.bytes(int(nval)*4, what+" values")
		e := &Entry{Sum2: make([]float32, nval), Counts: []float32{float32(max(ncall, 1)) * LegacyChunkSize}}
		for j := range e.Sum2 {
			v := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*j:]))
			if !(v >= 0) || v > math.MaxFloat32/LegacyChunkSize {
				return nil, fmt.Errorf("imatrix: %s: %s: value %v at column %d, want finite, >= 0 and <= %g", file, what, v, j, math.MaxFloat32/LegacyChunkSize)
			}
			e.Sum2[j] = v * LegacyChunkSize
		}
		m.Entries[name] = e
	}
	// Files since 2024 end with the chunk count and the dataset name.
	if r.err == nil && r.off < len(r.b) {
		m.ChunkCount = int(r.i32("chunk count"))
		dl := r.i32("dataset name length")
		if r.err == nil && (dl < 0 || int64(dl) > int64(len(r.b)-r.off)) {
			return nil, fmt.Errorf("imatrix: %s: dataset name length %d, but %d bytes are left", file, dl, len(r.b)-r.off)
		}
		ds := r.bytes(int(max(dl, 0)), "dataset name")
		if r.err == nil {
			m.Datasets = []string{string(ds)}
			if r.off != len(r.b) {
				return nil, fmt.Errorf("imatrix: %s: %d bytes after the dataset name", file, len(r.b)-r.off)
			}
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if err := m.check(file); err != nil {
		return nil, err
	}
	return m, nil
}

type datReader struct {
	b    []byte
	off  int
	file string
	err  error
}

func (r *datReader) bytes(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = fmt.Errorf("imatrix: %s: truncated at byte %d reading %s", r.file, r.off, what)
		return nil
	}
	out := r.b[r.off : r.off+n]
	r.off += n
	return out
}

func (r *datReader) i32(what string) int32 {
	b := r.bytes(4, what)
	if b == nil {
		return 0
	}
	return int32(binary.LittleEndian.Uint32(b))
}

// MarshalDat encodes m in the legacy binary format as llama-imatrix's
// save_imatrix_legacy does: entries sorted by name, those that saw no input
// at all left out, ncall = ceil(max count / chunk size), each value
// (Σx²/count)·ncall (1·ncall for a matrix without input); then the chunk
// count and the last dataset name.
func (m *Matrix) MarshalDat() []byte {
	cs := m.ChunkSize
	if cs <= 0 {
		cs = LegacyChunkSize
	}
	var names []string
	for _, name := range m.Names() {
		e := m.Entries[name]
		for _, c := range e.Counts {
			if c > 0 {
				names = append(names, name)
				break
			}
		}
	}
	var out []byte
	put := func(v uint32) { out = binary.LittleEndian.AppendUint32(out, v) }
	put(uint32(len(names)))
	for _, name := range names {
		e := m.Entries[name]
		put(uint32(len(name)))
		out = append(out, name...)
		var maxCount float64 // a whole number of tokens; llama-imatrix keeps int64
		for _, c := range e.Counts {
			maxCount = max(maxCount, math.Round(float64(c)))
		}
		ncall := int32(min(math.Ceil(maxCount/float64(cs)), math.MaxInt32))
		put(uint32(ncall))
		put(uint32(len(e.Sum2)))
		cols := e.Cols()
		for i, v := range e.Sum2 {
			count := e.Counts[i/cols]
			if count == 0 {
				v, count = 1, 1
			}
			put(math.Float32bits(v / count * float32(ncall)))
		}
	}
	put(uint32(int32(m.ChunkCount)))
	ds := ""
	if len(m.Datasets) > 0 {
		ds = m.Datasets[len(m.Datasets)-1]
	}
	put(uint32(len(ds)))
	out = append(out, ds...)
	return out
}
