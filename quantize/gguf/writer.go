package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"unicode/utf8"
)

// Writer builds a GGUF file. Metadata and tensor infos are collected first
// (AddKV, AddTensor); Close then writes the header and streams each tensor's
// bytes from its write callback, so memory stays bounded by the largest
// buffer a callback holds, not by the model size.
//
// The file is written under a temporary name in the destination folder,
// synced and renamed over path on success, so a crash or error never leaves
// a truncated file at path.
type Writer struct {
	path      string
	kvs       []KV
	keys      map[string]bool
	tensors   []pendingTensor
	names     map[string]bool
	alignment int64
	dataSize  int64 // running padded size of the data section
	err       error // first AddKV/AddTensor error, reported again by Close
	closed    bool
}

type pendingTensor struct {
	name   string
	typ    Type
	ne     []uint64 // ggml order
	offset int64
	nbytes int64
	write  func(io.Writer) error
}

// NewWriter returns a Writer that will create path on Close.
func NewWriter(path string) *Writer {
	return &Writer{path: path, keys: map[string]bool{}, names: map[string]bool{}, alignment: DefaultAlignment}
}

func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return err
}

// AddKV appends a metadata entry. value must be one of the types listed at
// valueTypeOf (fixed-width integers, float32/64, bool, string or a slice of
// those). general.alignment must be a uint32 power of two and must be set
// before the first AddTensor, since it fixes the tensor offsets.
func (w *Writer) AddKV(key string, value any) error {
	if w.closed {
		return w.fail(fmt.Errorf("gguf: %s: AddKV %q after Close", w.path, key))
	}
	if key == "" || !utf8.ValidString(key) {
		return w.fail(fmt.Errorf("gguf: %s: invalid key %q", w.path, key))
	}
	if w.keys[key] {
		return w.fail(fmt.Errorf("gguf: %s: duplicate key %q", w.path, key))
	}
	if _, _, ok := valueTypeOf(value); !ok {
		return w.fail(fmt.Errorf("gguf: %s: key %q: unsupported value type %T, want a fixed-width integer, float32/64, bool, string or a slice of those", w.path, key, value))
	}
	if key == KeyAlignment {
		a, ok := value.(uint32)
		if !ok || a == 0 || a&(a-1) != 0 {
			return w.fail(fmt.Errorf("gguf: %s: key %q: want a uint32 power of two, got %T %v", w.path, key, value, value))
		}
		if len(w.tensors) > 0 {
			return w.fail(fmt.Errorf("gguf: %s: key %q set after the first tensor", w.path, key))
		}
		w.alignment = int64(a)
	}
	w.keys[key] = true
	w.kvs = append(w.kvs, KV{key, value})
	return nil
}

// AddTensor registers a tensor of the given type and shape (numpy order,
// slowest dimension first). At Close, write is called once and must write
// exactly nbytes bytes, the tensor's data in row-major order.
func (w *Writer) AddTensor(name string, typ Type, shape []int, write func(io.Writer) error, nbytes int64) error {
	if w.closed {
		return w.fail(fmt.Errorf("gguf: %s: AddTensor %q after Close", w.path, name))
	}
	if name == "" || len(name) > MaxNameLen || !utf8.ValidString(name) {
		return w.fail(fmt.Errorf("gguf: %s: tensor %q: name must be 1..%d bytes of UTF-8", w.path, name, MaxNameLen))
	}
	if w.names[name] {
		return w.fail(fmt.Errorf("gguf: %s: duplicate tensor %q", w.path, name))
	}
	if len(shape) == 0 || len(shape) > MaxDims {
		return w.fail(fmt.Errorf("gguf: %s: tensor %q: shape %v has %d dims, want 1..%d", w.path, name, shape, len(shape), MaxDims))
	}
	want, err := TensorBytes(typ, shape)
	if err != nil {
		return w.fail(fmt.Errorf("gguf: %s: tensor %q: %v", w.path, name, err))
	}
	if nbytes != want {
		return w.fail(fmt.Errorf("gguf: %s: tensor %q: nbytes %d, want %d for %s %v", w.path, name, nbytes, want, typ, shape))
	}
	if write == nil {
		return w.fail(fmt.Errorf("gguf: %s: tensor %q: nil write func", w.path, name))
	}
	ne := make([]uint64, len(shape))
	for i, d := range shape {
		ne[len(shape)-1-i] = uint64(d)
	}
	padded := padTo(nbytes, w.alignment)
	if padded < nbytes || w.dataSize > math.MaxInt64-padded {
		return w.fail(fmt.Errorf("gguf: %s: tensor %q: data section overflows int64", w.path, name))
	}
	w.names[name] = true
	w.tensors = append(w.tensors, pendingTensor{name, typ, ne, w.dataSize, nbytes, write})
	w.dataSize += padded
	return nil
}

// Close writes the file and renames it into place. On any error the
// temporary file is removed and path is left untouched.
func (w *Writer) Close() (err error) {
	if w.closed {
		return fmt.Errorf("gguf: %s: Close called twice", w.path)
	}
	w.closed = true
	if w.err != nil {
		return w.err
	}
	dir, base := filepath.Split(w.path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("gguf: %s: %w", w.path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// CreateTemp makes the file private; a model file is ordinary data.
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("gguf: %s: %w", w.path, err)
	}
	cw := &countWriter{w: bufio.NewWriterSize(f, 1<<20)}
	if err := w.writeHeader(cw); err != nil {
		return fmt.Errorf("gguf: %s: %w", w.path, err)
	}
	if err := cw.pad(w.alignment); err != nil {
		return fmt.Errorf("gguf: %s: %w", w.path, err)
	}
	dataStart := cw.n
	for _, t := range w.tensors {
		start := cw.n
		if start-dataStart != t.offset {
			return fmt.Errorf("gguf: %s: tensor %q: at data offset %d, want %d (internal error)", w.path, t.name, start-dataStart, t.offset)
		}
		lw := &limitWriter{w: cw, left: t.nbytes}
		if err := t.write(lw); err != nil {
			return fmt.Errorf("gguf: %s: tensor %q: %w", w.path, t.name, err)
		}
		if lw.over || lw.left != 0 {
			return fmt.Errorf("gguf: %s: tensor %q: write func wrote %d bytes, want %d", w.path, t.name, t.nbytes-lw.left+lw.extra, t.nbytes)
		}
		if err := cw.pad(w.alignment); err != nil {
			return fmt.Errorf("gguf: %s: tensor %q: %w", w.path, t.name, err)
		}
	}
	if err := cw.w.(*bufio.Writer).Flush(); err != nil {
		return fmt.Errorf("gguf: %s: %w", w.path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("gguf: %s: %w", w.path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("gguf: %s: %w", w.path, err)
	}
	if err := os.Rename(tmp, w.path); err != nil {
		return fmt.Errorf("gguf: %s: %w", w.path, err)
	}
	// Make the rename itself durable; failure here is not worth failing the write.
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func (w *Writer) writeHeader(cw *countWriter) error {
	cw.write(magic[:])
	cw.u32(Version)
	cw.u64(uint64(len(w.tensors)))
	cw.u64(uint64(len(w.kvs)))
	for _, kv := range w.kvs {
		cw.str(kv.Key)
		typ, elem, _ := valueTypeOf(kv.Value)
		cw.u32(uint32(typ))
		if typ == ValueArray {
			cw.u32(uint32(elem))
		}
		writeValue(cw, kv.Value)
	}
	for _, t := range w.tensors {
		cw.str(t.name)
		cw.u32(uint32(len(t.ne)))
		for _, d := range t.ne {
			cw.u64(d)
		}
		cw.u32(uint32(t.typ))
		cw.u64(uint64(t.offset))
	}
	return cw.err
}

func writeValue(cw *countWriter, v any) {
	switch v := v.(type) {
	case uint8:
		cw.write([]byte{v})
	case int8:
		cw.write([]byte{byte(v)})
	case uint16:
		cw.u16(v)
	case int16:
		cw.u16(uint16(v))
	case uint32:
		cw.u32(v)
	case int32:
		cw.u32(uint32(v))
	case float32:
		cw.u32(math.Float32bits(v))
	case bool:
		b := byte(0)
		if v {
			b = 1
		}
		cw.write([]byte{b})
	case string:
		cw.str(v)
	case uint64:
		cw.u64(v)
	case int64:
		cw.u64(uint64(v))
	case float64:
		cw.u64(math.Float64bits(v))
	case []uint8:
		writeArray(cw, v)
	case []int8:
		writeArray(cw, v)
	case []uint16:
		writeArray(cw, v)
	case []int16:
		writeArray(cw, v)
	case []uint32:
		writeArray(cw, v)
	case []int32:
		writeArray(cw, v)
	case []float32:
		writeArray(cw, v)
	case []bool:
		writeArray(cw, v)
	case []string:
		writeArray(cw, v)
	case []uint64:
		writeArray(cw, v)
	case []int64:
		writeArray(cw, v)
	case []float64:
		writeArray(cw, v)
	}
}

func writeArray[T any](cw *countWriter, s []T) {
	cw.u64(uint64(len(s)))
	for _, e := range s {
		writeValue(cw, e)
	}
}

// countWriter counts bytes and keeps the first error, so the header code
// reads as a plain list of fields.
type countWriter struct {
	w   io.Writer
	n   int64
	err error
	buf [8]byte
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

func (c *countWriter) write(p []byte) { c.Write(p) }
func (c *countWriter) u16(v uint16) {
	binary.LittleEndian.PutUint16(c.buf[:], v)
	c.Write(c.buf[:2])
}
func (c *countWriter) u32(v uint32) {
	binary.LittleEndian.PutUint32(c.buf[:], v)
	c.Write(c.buf[:4])
}
func (c *countWriter) u64(v uint64) {
	binary.LittleEndian.PutUint64(c.buf[:], v)
	c.Write(c.buf[:8])
}
func (c *countWriter) str(s string) {
	c.u64(uint64(len(s)))
	io.WriteString(c, s)
}

var zeros [256]byte

func (c *countWriter) pad(align int64) error {
	for n := padTo(c.n, align) - c.n; n > 0; {
		k := min(n, int64(len(zeros)))
		c.Write(zeros[:k])
		n -= k
	}
	return c.err
}

// limitWriter refuses bytes past a tensor's declared size, so a buggy
// callback cannot shift every later tensor.
type limitWriter struct {
	w     io.Writer
	left  int64
	extra int64
	over  bool
}

var errTooMuch = errors.New("write func wrote more bytes than declared")

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		l.over = true
		l.extra += int64(len(p)) - l.left
		return 0, errTooMuch
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}

// Abort discards a Writer without creating anything: no file is touched
// before Close, so there is nothing to remove.
func (w *Writer) Abort() {
	w.closed = true
	w.tensors = nil
}
