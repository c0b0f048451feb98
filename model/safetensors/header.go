package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"sort"
	"unicode/utf8"
)

// maxHeaderSize is the Rust crate's MAX_HEADER_SIZE: a larger header is
// treated as corrupt rather than allocated.
const maxHeaderSize = 100_000_000

// tensorInfo is one parsed header entry. Offsets are relative to the data
// section that follows the header.
type tensorInfo struct {
	name       string
	dtype      DType
	shape      []int
	begin, end int64
}

// header is a parsed and validated safetensors header.
type header struct {
	metadata map[string]string // nil when absent
	tensors  []tensorInfo      // sorted by (begin, end, name)
}

// headerLen checks the 8-byte prefix of a file of size fileSize and returns
// the JSON header length N.
func headerLen(prefix []byte, fileSize int64) (int64, error) {
	if fileSize < 8 || len(prefix) < 8 {
		return 0, fmt.Errorf("file is %d bytes, shorter than the 8-byte header length", fileSize)
	}
	n := binary.LittleEndian.Uint64(prefix)
	if n > maxHeaderSize {
		return 0, fmt.Errorf("header length %d exceeds the %d-byte limit", n, maxHeaderSize)
	}
	if int64(n) > fileSize-8 {
		return 0, fmt.Errorf("header length %d exceeds the %d bytes after the length prefix", n, fileSize-8)
	}
	return int64(n), nil
}

// rawTensorInfo has pointer fields so that missing fields can be told apart
// from zero values. Unknown fields are ignored, as serde does by default.
type rawTensorInfo struct {
	DType       *string  `json:"dtype"`
	Shape       *[]int64 `json:"shape"`
	DataOffsets *[]int64 `json:"data_offsets"`
}

// parseHeader parses the JSON header and validates it against a data section
// of dataSize bytes. Errors are one line and name the tensor; the caller
// prefixes the file name.
func parseHeader(js []byte, dataSize int64) (*header, error) {
	if !utf8.Valid(js) {
		return nil, fmt.Errorf("header is not valid UTF-8")
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(js, &raw); err != nil {
		if bytes.HasPrefix(bytes.TrimLeft(js, " \t\r\n"), []byte("{")) {
			return nil, fmt.Errorf("header is not valid JSON: %v", err)
		}
		return nil, fmt.Errorf("header is not a JSON object: %v", err)
	}
	if raw == nil {
		return nil, fmt.Errorf("header is JSON null, want an object")
	}
	h := &header{tensors: make([]tensorInfo, 0, len(raw))}
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &h.metadata); err != nil {
				return nil, fmt.Errorf("__metadata__ is not an object of strings: %s", truncate(msg))
			}
			continue
		}
		ti, err := parseTensorInfo(name, msg, dataSize)
		if err != nil {
			return nil, err
		}
		h.tensors = append(h.tensors, ti)
	}
	sort.Slice(h.tensors, func(i, j int) bool {
		a, b := h.tensors[i], h.tensors[j]
		if a.begin != b.begin {
			return a.begin < b.begin
		}
		if a.end != b.end {
			return a.end < b.end
		}
		return a.name < b.name
	})
	// Like the Rust crate's Metadata::validate: sorted by offset, tensors must
	// tile [0, dataSize) exactly.
	var pos int64
	prev := ""
	for _, t := range h.tensors {
		switch {
		case t.begin < pos:
			return nil, fmt.Errorf("tensor %q: data_offsets [%d,%d) overlap tensor %q ending at %d", t.name, t.begin, t.end, prev, pos)
		case t.begin > pos && prev == "":
			return nil, fmt.Errorf("tensor %q: data_offsets [%d,%d) leave a %d-byte hole at the start of the data", t.name, t.begin, t.end, t.begin)
		case t.begin > pos:
			return nil, fmt.Errorf("tensor %q: data_offsets [%d,%d) leave a %d-byte hole after tensor %q ending at %d", t.name, t.begin, t.end, t.begin-pos, prev, pos)
		}
		pos, prev = t.end, t.name
	}
	if pos != dataSize {
		return nil, fmt.Errorf("tensors end at data offset %d but the data section is %d bytes (%d trailing bytes)", pos, dataSize, dataSize-pos)
	}
	return h, nil
}

func parseTensorInfo(name string, msg json.RawMessage, dataSize int64) (tensorInfo, error) {
	var r rawTensorInfo
	if err := json.Unmarshal(msg, &r); err != nil {
		return tensorInfo{}, fmt.Errorf("tensor %q: bad entry %s: %v", name, truncate(msg), err)
	}
	switch {
	case r.DType == nil:
		return tensorInfo{}, fmt.Errorf("tensor %q: missing dtype in %s", name, truncate(msg))
	case r.Shape == nil:
		return tensorInfo{}, fmt.Errorf("tensor %q: missing shape in %s", name, truncate(msg))
	case r.DataOffsets == nil:
		return tensorInfo{}, fmt.Errorf("tensor %q: missing data_offsets in %s", name, truncate(msg))
	}
	dt := DType(*r.DType)
	if err := dt.check(); err != nil {
		return tensorInfo{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	ti := tensorInfo{name: name, dtype: dt, shape: make([]int, len(*r.Shape))}
	// nbytes is computed in uint64 with overflow checks: a hostile shape must
	// not wrap around to a size that happens to match the offsets.
	nbytes := uint64(dt.Size())
	overflow := false
	for i, d := range *r.Shape {
		if d < 0 {
			return tensorInfo{}, fmt.Errorf("tensor %q: shape %v has negative dim %d", name, *r.Shape, d)
		}
		ti.shape[i] = int(d)
		hi, lo := bits.Mul64(nbytes, uint64(d))
		if hi != 0 {
			overflow = true
		}
		nbytes = lo
	}
	off := *r.DataOffsets
	if len(off) != 2 {
		return tensorInfo{}, fmt.Errorf("tensor %q: data_offsets %v, want [begin, end]", name, off)
	}
	ti.begin, ti.end = off[0], off[1]
	if ti.begin < 0 || ti.end < ti.begin {
		return tensorInfo{}, fmt.Errorf("tensor %q: data_offsets [%d,%d), want 0 <= begin <= end", name, ti.begin, ti.end)
	}
	if ti.end > dataSize {
		return tensorInfo{}, fmt.Errorf("tensor %q: data_offsets [%d,%d) beyond data size %d", name, ti.begin, ti.end, dataSize)
	}
	if overflow || nbytes != uint64(ti.end-ti.begin) {
		want := fmt.Sprint(nbytes)
		if overflow {
			want = "overflow"
		}
		return tensorInfo{}, fmt.Errorf("tensor %q: data_offsets [%d,%d) hold %d bytes, shape %v x %s (%d bytes) needs %s",
			name, ti.begin, ti.end, ti.end-ti.begin, *r.Shape, dt, dt.Size(), want)
	}
	return ti, nil
}

// truncate keeps error messages to one short line.
func truncate(b []byte) string {
	const max = 120
	s := string(bytes.Join(bytes.Fields(b), []byte(" ")))
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
