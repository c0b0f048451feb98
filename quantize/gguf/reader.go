package gguf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"unicode/utf8"
)

// File is a parsed GGUF file: its metadata and tensor index. Tensor data is
// read on demand through ReadAt, so opening a 16 GB file costs only the
// header.
type File struct {
	Version   uint32
	KVs       []KV         // in file order
	Tensors   []TensorInfo // in file order
	Alignment int64
	// DataOffset is the absolute file offset of the data section.
	DataOffset int64

	name   string
	r      io.ReaderAt
	size   int64
	closer io.Closer
	kvIdx  map[string]int
	tIdx   map[string]int
}

// TensorInfo describes one tensor of a File.
type TensorInfo struct {
	Name  string
	Type  Type
	Shape []int // numpy order (the file's ggml dims reversed)
	// Offset is relative to File.DataOffset; Size is the byte size of the
	// data, without padding.
	Offset int64
	Size   int64
}

// FormatError reports a malformed or unsupported file.
type FormatError struct {
	File string // file name as given to Open/Read
	Msg  string // what is wrong and where, e.g. `tensor "x": ...`
}

func (e *FormatError) Error() string { return "gguf: " + e.File + ": " + e.Msg }

// Open parses the GGUF file at path. The File keeps the file open for
// tensor reads until Close.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("gguf: %w", err)
	}
	gf, err := Read(f, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, err
	}
	gf.closer = f
	return gf, nil
}

// Read parses a GGUF image of the given size from r; name is used in
// errors only. Every count, length and offset is checked against size
// before anything is allocated, so a hostile header cannot cause a large
// allocation or a panic.
func Read(r io.ReaderAt, size int64, name string) (*File, error) {
	p := &parser{r: r, size: size, name: name}
	f, err := p.parse()
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil, err
		}
		return nil, &FormatError{name, err.Error()}
	}
	f.name, f.r, f.size = name, r, size
	return f, nil
}

// Close releases the underlying file when the File came from Open.
func (f *File) Close() error {
	if f.closer != nil {
		return f.closer.Close()
	}
	return nil
}

// Value returns the metadata value of key.
func (f *File) Value(key string) (any, bool) {
	i, ok := f.kvIdx[key]
	if !ok {
		return nil, false
	}
	return f.KVs[i].Value, true
}

// Tensor returns the info of the named tensor.
func (f *File) Tensor(name string) (TensorInfo, bool) {
	i, ok := f.tIdx[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.Tensors[i], true
}

// TensorReader returns a reader over the named tensor's bytes.
func (f *File) TensorReader(name string) (*io.SectionReader, error) {
	t, ok := f.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("gguf: %s: no tensor %q", f.name, name)
	}
	return io.NewSectionReader(f.r, f.DataOffset+t.Offset, t.Size), nil
}

// TensorData reads the named tensor's bytes into memory.
func (f *File) TensorData(name string) ([]byte, error) {
	sr, err := f.TensorReader(name)
	if err != nil {
		return nil, err
	}
	b := make([]byte, sr.Size())
	if _, err := io.ReadFull(sr, b); err != nil {
		return nil, fmt.Errorf("gguf: %s: tensor %q: %w", f.name, name, err)
	}
	return b, nil
}

type parser struct {
	r    io.ReaderAt
	size int64
	name string
	off  int64
	buf  [8]byte
	what string // field being read, for truncation errors
}

func (p *parser) fail(format string, args ...any) error {
	return &FormatError{p.name, fmt.Sprintf(format, args...)}
}

func (p *parser) read(b []byte) error {
	if int64(len(b)) > p.size-p.off {
		return p.fail("%s: truncated at offset %d (file size %d)", p.what, p.off, p.size)
	}
	// ReadAt may report io.EOF along with a full read of the last bytes.
	if n, err := p.r.ReadAt(b, p.off); n != len(b) {
		return p.fail("%s: read at offset %d: %v", p.what, p.off, err)
	}
	p.off += int64(len(b))
	return nil
}

func (p *parser) u8() (uint8, error) {
	err := p.read(p.buf[:1])
	return p.buf[0], err
}

func (p *parser) u16() (uint16, error) {
	err := p.read(p.buf[:2])
	return binary.LittleEndian.Uint16(p.buf[:]), err
}

func (p *parser) u32() (uint32, error) {
	err := p.read(p.buf[:4])
	return binary.LittleEndian.Uint32(p.buf[:]), err
}

func (p *parser) u64() (uint64, error) {
	err := p.read(p.buf[:8])
	return binary.LittleEndian.Uint64(p.buf[:]), err
}

func (p *parser) str() (string, error) {
	n, err := p.u64()
	if err != nil {
		return "", err
	}
	if n > uint64(p.size-p.off) {
		return "", p.fail("%s: string length %d at offset %d beyond file size %d", p.what, n, p.off-8, p.size)
	}
	b := make([]byte, n)
	if err := p.read(b); err != nil {
		return "", err
	}
	return string(b), nil
}

func (p *parser) parse() (*File, error) {
	p.what = "header"
	var m [4]byte
	if err := p.read(m[:]); err != nil {
		return nil, err
	}
	if m != magic {
		return nil, p.fail("bad magic %q, want \"GGUF\"", m[:])
	}
	version, err := p.u32()
	if err != nil {
		return nil, err
	}
	// v2 has the same layout as v3 (u64 counts); v1 (u32 counts) is gone from llama.cpp too.
	if version != 2 && version != 3 {
		if version&0xFFFF == 0 {
			return nil, p.fail("version %#x: big-endian files are not supported", version)
		}
		return nil, p.fail("unsupported version %d, want 2 or 3", version)
	}
	nTensors, err := p.u64()
	if err != nil {
		return nil, err
	}
	nKV, err := p.u64()
	if err != nil {
		return nil, err
	}
	// Each kv takes at least 8+4+1 bytes, each tensor info 8+4+4+8.
	rest := uint64(p.size - p.off)
	if nKV > rest/13 {
		return nil, p.fail("header: %d metadata entries cannot fit in %d bytes", nKV, rest)
	}
	if nTensors > rest/24 {
		return nil, p.fail("header: %d tensors cannot fit in %d bytes", nTensors, rest)
	}
	f := &File{Version: version, Alignment: DefaultAlignment, kvIdx: map[string]int{}, tIdx: map[string]int{}}
	f.KVs = make([]KV, 0, nKV)
	for i := uint64(0); i < nKV; i++ {
		p.what = fmt.Sprintf("metadata entry %d", i)
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		if !utf8.ValidString(key) {
			return nil, p.fail("metadata entry %d: key %q is not UTF-8", i, key)
		}
		if _, dup := f.kvIdx[key]; dup {
			return nil, p.fail("duplicate key %q", key)
		}
		p.what = fmt.Sprintf("key %q", key)
		typ, err := p.u32()
		if err != nil {
			return nil, err
		}
		v, err := p.value(ValueType(typ), true)
		if err != nil {
			return nil, err
		}
		f.kvIdx[key] = len(f.KVs)
		f.KVs = append(f.KVs, KV{key, v})
	}
	if v, ok := f.Value(KeyAlignment); ok {
		a, ok := v.(uint32)
		if !ok {
			return nil, p.fail("key %q: type %T, want uint32", KeyAlignment, v)
		}
		if a == 0 || a&(a-1) != 0 {
			return nil, p.fail("key %q: alignment %d is not a power of two", KeyAlignment, a)
		}
		f.Alignment = int64(a)
	}

	f.Tensors = make([]TensorInfo, 0, nTensors)
	for i := uint64(0); i < nTensors; i++ {
		p.what = fmt.Sprintf("tensor info %d", i)
		name, err := p.str()
		if err != nil {
			return nil, err
		}
		if len(name) > MaxNameLen {
			return nil, p.fail("tensor info %d: name of %d bytes, want at most %d", i, len(name), MaxNameLen)
		}
		if _, dup := f.tIdx[name]; dup {
			return nil, p.fail("duplicate tensor %q", name)
		}
		p.what = fmt.Sprintf("tensor %q", name)
		nDims, err := p.u32()
		if err != nil {
			return nil, err
		}
		if nDims > MaxDims {
			return nil, p.fail("tensor %q: %d dims, want at most %d", name, nDims, MaxDims)
		}
		ne := make([]uint64, nDims)
		for j := range ne {
			if ne[j], err = p.u64(); err != nil {
				return nil, err
			}
		}
		typ, err := p.u32()
		if err != nil {
			return nil, err
		}
		off, err := p.u64()
		if err != nil {
			return nil, err
		}
		size, err := tensorBytes(Type(typ), ne)
		if err != nil {
			return nil, p.fail("tensor %q: %v", name, err)
		}
		if off%uint64(f.Alignment) != 0 {
			return nil, p.fail("tensor %q: offset %d is not a multiple of the alignment %d", name, off, f.Alignment)
		}
		if off > math.MaxInt64 {
			return nil, p.fail("tensor %q: offset %d overflows int64", name, off)
		}
		shape := make([]int, nDims)
		for j, d := range ne {
			if d > math.MaxInt {
				return nil, p.fail("tensor %q: dimension %d overflows int", name, d)
			}
			shape[len(ne)-1-j] = int(d)
		}
		f.tIdx[name] = len(f.Tensors)
		f.Tensors = append(f.Tensors, TensorInfo{Name: name, Type: Type(typ), Shape: shape, Offset: int64(off), Size: size})
	}

	if p.off > math.MaxInt64-f.Alignment {
		return nil, p.fail("data section offset overflows")
	}
	f.DataOffset = padTo(p.off, f.Alignment)
	if f.DataOffset > p.size {
		if len(f.Tensors) > 0 {
			return nil, p.fail("data section starts at %d, beyond file size %d", f.DataOffset, p.size)
		}
		f.DataOffset = p.size // a metadata-only file (vocab-only) may omit the final padding
	}
	dataSize := p.size - f.DataOffset
	// Bounds and overlap, checked in offset order.
	order := make([]int, len(f.Tensors))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return f.Tensors[order[a]].Offset < f.Tensors[order[b]].Offset })
	end := int64(0)
	prev := ""
	for _, i := range order {
		t := f.Tensors[i]
		if t.Offset > dataSize || t.Size > dataSize-t.Offset {
			return nil, p.fail("tensor %q: data [%d,%d) beyond data size %d", t.Name, t.Offset, uint64(t.Offset)+uint64(t.Size), dataSize)
		}
		if t.Offset < end {
			return nil, p.fail("tensor %q: data at %d overlaps tensor %q ending at %d", t.Name, t.Offset, prev, end)
		}
		end, prev = t.Offset+t.Size, t.Name
	}
	return f, nil
}

// value reads one value of type typ; arrays are allowed only at top level,
// as in llama.cpp (an array of arrays is refused).
func (p *parser) value(typ ValueType, top bool) (any, error) {
	switch typ {
	case ValueUint8:
		v, err := p.u8()
		return v, err
	case ValueInt8:
		v, err := p.u8()
		return int8(v), err
	case ValueUint16:
		v, err := p.u16()
		return v, err
	case ValueInt16:
		v, err := p.u16()
		return int16(v), err
	case ValueUint32:
		v, err := p.u32()
		return v, err
	case ValueInt32:
		v, err := p.u32()
		return int32(v), err
	case ValueFloat32:
		v, err := p.u32()
		return math.Float32frombits(v), err
	case ValueBool:
		v, err := p.u8()
		if err == nil && v > 1 {
			return nil, p.fail("%s: bool byte %d, want 0 or 1", p.what, v)
		}
		return v == 1, err
	case ValueString:
		return p.str()
	case ValueUint64:
		return p.u64()
	case ValueInt64:
		v, err := p.u64()
		return int64(v), err
	case ValueFloat64:
		v, err := p.u64()
		return math.Float64frombits(v), err
	case ValueArray:
		if !top {
			return nil, p.fail("%s: nested arrays are not supported", p.what)
		}
		et, err := p.u32()
		if err != nil {
			return nil, err
		}
		n, err := p.u64()
		if err != nil {
			return nil, err
		}
		return p.array(ValueType(et), n)
	}
	return nil, p.fail("%s: unknown value type %d, want 0..12", p.what, uint32(typ))
}

func (p *parser) array(et ValueType, n uint64) (any, error) {
	min := uint64(et.fixedSize())
	switch et {
	case ValueString:
		min = 8
	case ValueArray:
		return nil, p.fail("%s: nested arrays are not supported", p.what)
	}
	if min == 0 {
		return nil, p.fail("%s: unknown array item type %d, want 0..12", p.what, uint32(et))
	}
	if n > uint64(p.size-p.off)/min {
		return nil, p.fail("%s: array of %d %s beyond file size %d", p.what, n, et, p.size)
	}
	if et == ValueString {
		s := make([]string, n)
		for i := range s {
			var err error
			if s[i], err = p.str(); err != nil {
				return nil, err
			}
		}
		return s, nil
	}
	raw := make([]byte, n*min)
	if err := p.read(raw); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	switch et {
	case ValueUint8:
		return raw, nil
	case ValueInt8:
		return mapSlice(raw, 1, func(b []byte) int8 { return int8(b[0]) }), nil
	case ValueBool:
		for _, b := range raw {
			if b > 1 {
				return nil, p.fail("%s: bool byte %d, want 0 or 1", p.what, b)
			}
		}
		return mapSlice(raw, 1, func(b []byte) bool { return b[0] == 1 }), nil
	case ValueUint16:
		return mapSlice(raw, 2, le.Uint16), nil
	case ValueInt16:
		return mapSlice(raw, 2, func(b []byte) int16 { return int16(le.Uint16(b)) }), nil
	case ValueUint32:
		return mapSlice(raw, 4, le.Uint32), nil
	case ValueInt32:
		return mapSlice(raw, 4, func(b []byte) int32 { return int32(le.Uint32(b)) }), nil
	case ValueFloat32:
		return mapSlice(raw, 4, func(b []byte) float32 { return math.Float32frombits(le.Uint32(b)) }), nil
	case ValueUint64:
		return mapSlice(raw, 8, le.Uint64), nil
	case ValueInt64:
		return mapSlice(raw, 8, func(b []byte) int64 { return int64(le.Uint64(b)) }), nil
	case ValueFloat64:
		return mapSlice(raw, 8, func(b []byte) float64 { return math.Float64frombits(le.Uint64(b)) }), nil
	}
	return nil, p.fail("%s: unknown array item type %d", p.what, uint32(et))
}

func mapSlice[T any](raw []byte, size int, f func([]byte) T) []T {
	out := make([]T, len(raw)/size)
	for i := range out {
		out[i] = f(raw[i*size : (i+1)*size])
	}
	return out
}
