package data

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
)

// Arrow IPC comes in two framings: the stream format (what datasets.save_to_disk
// writes as data-00000-of-00001.arrow) and the file format (ARROW1 magic, a footer
// indexing the record batches; also Feather v2). Both are read one record batch at
// a time. The IPC readers decode whole batches, so a projection saves the
// conversion of the other columns but not their I/O.

// ipcLimits bounds what a reader allocates for a message by the file's size: a
// corrupt length field then fails cleanly instead of asking for gigabytes, and a
// large honest batch (datasets writes 1000 rows per batch, whatever their length)
// is not refused by arrow-go's default 256 MiB cap.
func ipcLimits(fh *os.File) []ipc.Option {
	size := int64(1)
	if st, err := fh.Stat(); err == nil && st.Size() > 0 {
		size = st.Size()
	}
	return []ipc.Option{ipc.WithBodySizeLimit(size), ipc.WithMetadataSizeLimit(size)}
}

func openArrow(sf *sourceFile, fh *os.File) (err error) {
	inFn := false
	defer guard(sf.path, "Arrow IPC", &inFn, &err)
	st, err := fh.Stat()
	if err != nil {
		return fmt.Errorf("data: %s: %v", sf.path, err)
	}
	var schema *arrow.Schema
	if sf.stream {
		if sf.rows, err = countStreamRows(fh, st.Size()); err != nil {
			return fmt.Errorf("data: %s: corrupt Arrow IPC stream: %v", sf.path, err)
		}
		if _, err := fh.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("data: %s: %v", sf.path, err)
		}
		r, err := ipc.NewReader(&checkedStream{r: bufio.NewReader(fh), size: st.Size()}, ipcLimits(fh)...)
		if err != nil {
			return fmt.Errorf("data: %s: not a readable Arrow IPC stream: %v", sf.path, err)
		}
		defer r.Release()
		schema = r.Schema()
	} else {
		if sf.rows, err = checkIPCFile(fh, st.Size()); err != nil {
			return fmt.Errorf("data: %s: corrupt Arrow IPC file: %v", sf.path, err)
		}
		r, err := ipc.NewFileReader(fh, ipcLimits(fh)...)
		if err != nil {
			return fmt.Errorf("data: %s: not a readable Arrow IPC file: %v", sf.path, err)
		}
		defer r.Close()
		schema = r.Schema()
	}
	sf.rowsOK = true
	for _, f := range schema.Fields() {
		sf.columns = append(sf.columns, f.Name)
		sf.types = append(sf.types, arrowType(f.Type))
	}
	return nil
}

// countStreamRows walks the messages of an IPC stream, checking each one's
// metadata and skipping the bodies, and adds up the record batches' lengths.
func countStreamRows(fh *os.File, size int64) (int64, error) {
	var rows, off int64
	for off < size {
		var pre [8]byte
		n, _ := fh.ReadAt(pre[:], off)
		if n < 4 {
			return 0, fmt.Errorf("message at byte %d: %w", off, io.ErrUnexpectedEOF)
		}
		head := int64(4)
		length := binary.LittleEndian.Uint32(pre[:4])
		if length == 0xffffffff {
			if n < 8 {
				return 0, fmt.Errorf("message at byte %d: %w", off, io.ErrUnexpectedEOF)
			}
			head = 8
			length = binary.LittleEndian.Uint32(pre[4:])
		}
		if length == 0 {
			return rows, nil // end-of-stream marker
		}
		if off+head+int64(length) > size {
			return 0, fmt.Errorf("message at byte %d: metadata of %d bytes beyond the end: %w", off, length, io.ErrUnexpectedEOF)
		}
		meta := make([]byte, length)
		if _, err := fh.ReadAt(meta, off+head); err != nil {
			return 0, err
		}
		m, err := checkMessage(meta)
		if err != nil {
			return 0, fmt.Errorf("message at byte %d: %v", off, err)
		}
		off += head + int64(length)
		if m.bodyLength > size-off {
			return 0, fmt.Errorf("message at byte %d: body of %d bytes beyond the end: %w", off, m.bodyLength, io.ErrUnexpectedEOF)
		}
		off += m.bodyLength
		rows += m.rows
	}
	return rows, nil // streams may end without the marker
}

// arrowType names a type in the notation of Source.Schema: large and small
// variants read the same, dictionary encoding shows as the value type.
func arrowType(t arrow.DataType) string {
	switch t := t.(type) {
	case *arrow.StringType, *arrow.LargeStringType, *arrow.StringViewType:
		return "string"
	case *arrow.BinaryType, *arrow.LargeBinaryType, *arrow.BinaryViewType:
		return "binary"
	case *arrow.BooleanType:
		return "bool"
	case *arrow.Float16Type:
		return "float16"
	case *arrow.Float32Type:
		return "float32"
	case *arrow.Float64Type:
		return "float64"
	case *arrow.FixedSizeBinaryType:
		return fmt.Sprintf("fixed_size_binary[%d]", t.ByteWidth)
	case *arrow.Date32Type, *arrow.Date64Type:
		return "date32"
	case *arrow.TimestampType:
		return "timestamp[" + t.Unit.String() + "]"
	case *arrow.Time32Type:
		return "time[" + t.Unit.String() + "]"
	case *arrow.Time64Type:
		return "time[" + t.Unit.String() + "]"
	case *arrow.DurationType:
		return "duration[" + t.Unit.String() + "]"
	case arrow.DecimalType:
		return fmt.Sprintf("decimal(%d,%d)", t.GetPrecision(), t.GetScale())
	case *arrow.DictionaryType:
		return arrowType(t.ValueType)
	case *arrow.MapType:
		return "map<" + arrowType(t.KeyType()) + ", " + arrowType(t.ItemType()) + ">"
	case arrow.ListLikeType:
		return "list<" + arrowType(t.Elem()) + ">"
	case *arrow.StructType:
		var parts []string
		for _, f := range t.Fields() {
			parts = append(parts, f.Name+": "+arrowType(f.Type))
		}
		return "struct<" + strings.Join(parts, ", ") + ">"
	}
	switch t.ID() {
	case arrow.INT8, arrow.INT16, arrow.INT32, arrow.INT64, arrow.UINT8, arrow.UINT16, arrow.UINT32, arrow.UINT64, arrow.NULL:
		return t.Name()
	}
	return t.String()
}

// arrowBatches calls fn with each record batch of the file, released after fn.
func arrowBatches(sf *sourceFile, fh *os.File, fn func(arrow.RecordBatch) error) error {
	if sf.stream {
		st, err := fh.Stat()
		if err != nil {
			return fmt.Errorf("data: %s: %v", sf.path, err)
		}
		r, err := ipc.NewReader(&checkedStream{r: bufio.NewReaderSize(fh, 1<<16), size: st.Size()}, ipcLimits(fh)...)
		if err != nil {
			return fmt.Errorf("data: %s: not a readable Arrow IPC stream: %v", sf.path, err)
		}
		defer r.Release()
		for r.Next() {
			if err := fn(r.RecordBatch()); err != nil {
				return err
			}
		}
		if err := r.Err(); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("data: %s: Arrow IPC stream: %v", sf.path, err)
		}
		return nil
	}
	st, err := fh.Stat()
	if err != nil {
		return fmt.Errorf("data: %s: %v", sf.path, err)
	}
	if _, err := checkIPCFile(fh, st.Size()); err != nil {
		return fmt.Errorf("data: %s: corrupt Arrow IPC file: %v", sf.path, err)
	}
	r, err := ipc.NewFileReader(fh, ipcLimits(fh)...)
	if err != nil {
		return fmt.Errorf("data: %s: not a readable Arrow IPC file: %v", sf.path, err)
	}
	defer r.Close()
	for i := 0; i < r.NumRecords(); i++ {
		rec, err := r.RecordBatch(i)
		if err != nil {
			return fmt.Errorf("data: %s: record batch %d: %v", sf.path, i, err)
		}
		err = fn(rec)
		rec.Release()
		if err != nil {
			return err
		}
	}
	return nil
}

func rowsArrow(sf *sourceFile, columns []string, fn func(RowRef, Row) error) (err error) {
	fh, err := os.Open(sf.path)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	defer fh.Close()
	inFn := false
	defer guard(sf.path, "Arrow IPC", &inFn, &err)
	var row int64
	batch := 0
	err = arrowBatches(sf, fh, func(rec arrow.RecordBatch) error {
		defer func() { batch++ }()
		schema := rec.Schema()
		var idx []int
		for i, f := range schema.Fields() {
			if wantColumn(columns, f.Name) {
				idx = append(idx, i)
			}
		}
		if columns != nil && len(idx) != len(columns) {
			for _, c := range columns {
				if len(schema.FieldIndices(c)) == 0 {
					return noColumn(sf.path, c, sf.columns)
				}
			}
		}
		for _, i := range idx {
			if hasNullType(schema.Field(i).Type) {
				continue // arrow-go's validation rejects the buffer-less null arrays IPC carries
			}
			if err := array.ValidateFull(rec.Column(i)); err != nil {
				return fmt.Errorf("data: %s: record batch %d, column %q: %s", sf.path, batch, schema.Field(i).Name, oneLine(err))
			}
		}
		for i := 0; i < int(rec.NumRows()); i++ {
			ref := RowRef{File: sf.path, Index: row}
			r := make(Row, len(idx))
			for _, c := range idx {
				v, err := arrowValue(rec.Column(c), i)
				if err != nil {
					return fmt.Errorf("data: %s: column %q: %v", ref, schema.Field(c).Name, err)
				}
				r[schema.Field(c).Name] = v
			}
			inFn = true
			if err := fn(ref, r); err != nil {
				return err
			}
			inFn = false
			row++
		}
		return nil
	})
	return err
}

// arrowValue converts element i of a to a Row value.
func arrowValue(a arrow.Array, i int) (any, error) {
	if a.IsNull(i) {
		return nil, nil
	}
	switch a := a.(type) {
	case *array.Null:
		return nil, nil
	case *array.Boolean:
		return a.Value(i), nil
	case *array.Int8:
		return int64(a.Value(i)), nil
	case *array.Int16:
		return int64(a.Value(i)), nil
	case *array.Int32:
		return int64(a.Value(i)), nil
	case *array.Int64:
		return a.Value(i), nil
	case *array.Uint8:
		return int64(a.Value(i)), nil
	case *array.Uint16:
		return int64(a.Value(i)), nil
	case *array.Uint32:
		return int64(a.Value(i)), nil
	case *array.Uint64:
		return uint64Value(a.Value(i)), nil
	case *array.Float16:
		return float64(a.Value(i).Float32()), nil
	case *array.Float32:
		return float64(a.Value(i)), nil
	case *array.Float64:
		return a.Value(i), nil
	case *array.String:
		return a.Value(i), nil
	case *array.LargeString:
		return a.Value(i), nil
	case *array.StringView:
		return a.Value(i), nil
	case *array.Binary:
		return string(a.Value(i)), nil
	case *array.LargeBinary:
		return string(a.Value(i)), nil
	case *array.BinaryView:
		return string(a.Value(i)), nil
	case *array.FixedSizeBinary:
		return string(a.Value(i)), nil
	case *array.Date32:
		return a.Value(i).ToTime().UTC().Format(time.DateOnly), nil
	case *array.Date64:
		return a.Value(i).ToTime().UTC().Format(time.DateOnly), nil
	case *array.Timestamp:
		return formatTimestamp(int64(a.Value(i)), a.DataType().(*arrow.TimestampType).Unit.String()), nil
	case *array.Time32:
		return int64(a.Value(i)), nil
	case *array.Time64:
		return int64(a.Value(i)), nil
	case *array.Duration:
		return int64(a.Value(i)), nil
	case *array.Dictionary:
		return arrowValue(a.Dictionary(), a.GetValueIndex(i))
	case *array.Struct:
		st := a.DataType().(*arrow.StructType)
		m := make(map[string]any, a.NumField())
		for f := 0; f < a.NumField(); f++ {
			v, err := arrowValue(a.Field(f), i)
			if err != nil {
				return nil, err
			}
			m[st.Field(f).Name] = v
		}
		return m, nil
	case *array.Map:
		start, end := a.ValueOffsets(i)
		m := make(map[string]any, end-start)
		for j := start; j < end; j++ {
			k, err := arrowValue(a.Keys(), int(j))
			if err != nil {
				return nil, err
			}
			v, err := arrowValue(a.Items(), int(j))
			if err != nil {
				return nil, err
			}
			ks, ok := k.(string)
			if !ok {
				ks = fmt.Sprint(k)
			}
			m[ks] = v
		}
		return m, nil
	case array.ListLike:
		start, end := a.ValueOffsets(i)
		vals := a.ListValues()
		l := make([]any, 0, end-start)
		for j := start; j < end; j++ {
			v, err := arrowValue(vals, int(j))
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		}
		return l, nil
	}
	if _, ok := a.DataType().(arrow.DecimalType); ok {
		f, err := strconv.ParseFloat(a.ValueStr(i), 64)
		if err != nil {
			return math.NaN(), nil
		}
		return f, nil
	}
	return nil, fmt.Errorf("unsupported Arrow type %s", a.DataType())
}

func hasNullType(t arrow.DataType) bool {
	switch t := t.(type) {
	case *arrow.NullType:
		return true
	case arrow.NestedType:
		for _, f := range t.Fields() {
			if hasNullType(f.Type) {
				return true
			}
		}
	}
	return false
}

// ---- metadata checks before arrow-go sees the bytes --------------------------
//
// arrow-go trusts the lengths inside the IPC flatbuffers: a corrupt children count
// made it allocate 11 GB, and a field that lists itself as its own child would
// recurse until the stack overflows. Both are fatal errors, which recover cannot
// catch, so every metadata flatbuffer (stream messages, the file footer, the
// file's batch messages) is walked here first: vectors must fit in the buffer,
// nesting is bounded, and the total number of tables visited is bounded by the
// buffer's size (so shared or cyclic references cannot blow up).

type fbCheck struct {
	buf    []byte
	visits int
}

type fbTable struct{ pos, vt, vtSize, size uint64 }

func (c *fbCheck) u32(p uint64) (uint64, error) {
	if p+4 > uint64(len(c.buf)) {
		return 0, fmt.Errorf("flatbuffer offset %d beyond %d bytes", p, len(c.buf))
	}
	return uint64(binary.LittleEndian.Uint32(c.buf[p:])), nil
}

func (c *fbCheck) table(pos uint64) (fbTable, error) {
	c.visits++
	if c.visits > len(c.buf)/4+16 {
		return fbTable{}, errors.New("flatbuffer references more tables than its size allows")
	}
	so, err := c.u32(pos)
	if err != nil {
		return fbTable{}, err
	}
	vt := int64(pos) - int64(int32(uint32(so)))
	if vt < 0 || uint64(vt)+4 > uint64(len(c.buf)) {
		return fbTable{}, fmt.Errorf("flatbuffer vtable at %d out of range", vt)
	}
	t := fbTable{pos: pos, vt: uint64(vt)}
	t.vtSize = uint64(binary.LittleEndian.Uint16(c.buf[vt:]))
	t.size = uint64(binary.LittleEndian.Uint16(c.buf[vt+2:]))
	if t.vtSize < 4 || t.vt+t.vtSize > uint64(len(c.buf)) || pos+t.size > uint64(len(c.buf)) {
		return fbTable{}, fmt.Errorf("flatbuffer table at %d out of range", pos)
	}
	return t, nil
}

// field returns the position of field slot i of t (0: absent), checking that
// width bytes fit inside the table.
func (c *fbCheck) field(t fbTable, i int, width uint64) (uint64, error) {
	at := 4 + 2*uint64(i)
	if at+2 > t.vtSize {
		return 0, nil
	}
	off := uint64(binary.LittleEndian.Uint16(c.buf[t.vt+at:]))
	if off == 0 {
		return 0, nil
	}
	if off+width > t.size {
		return 0, fmt.Errorf("flatbuffer field %d beyond its table", i)
	}
	return t.pos + off, nil
}

// ref follows the offset stored in field i (0: absent).
func (c *fbCheck) ref(t fbTable, i int) (uint64, error) {
	p, err := c.field(t, i, 4)
	if p == 0 || err != nil {
		return 0, err
	}
	o, err := c.u32(p)
	if err != nil {
		return 0, err
	}
	if p+o >= uint64(len(c.buf)) {
		return 0, fmt.Errorf("flatbuffer offset in field %d beyond %d bytes", i, len(c.buf))
	}
	return p + o, nil
}

// vector checks the vector in field i and returns its first element and length.
func (c *fbCheck) vector(t fbTable, i int, elem uint64) (start, n uint64, err error) {
	p, err := c.ref(t, i)
	if p == 0 || err != nil {
		return 0, 0, err
	}
	if n, err = c.u32(p); err != nil {
		return 0, 0, err
	}
	if p+4+n*elem > uint64(len(c.buf)) {
		return 0, 0, fmt.Errorf("flatbuffer vector of %d elements beyond %d bytes", n, len(c.buf))
	}
	return p + 4, n, nil
}

// tables calls fn with each table of the table vector in field i.
func (c *fbCheck) tables(t fbTable, i int, fn func(fbTable) error) error {
	start, n, err := c.vector(t, i, 4)
	if err != nil {
		return err
	}
	for j := uint64(0); j < n; j++ {
		e := start + 4*j
		o, _ := c.u32(e)
		sub, err := c.table(e + o)
		if err != nil {
			return err
		}
		if err := fn(sub); err != nil {
			return err
		}
	}
	return nil
}

func (c *fbCheck) sub(t fbTable, i int, fn func(fbTable) error) error {
	p, err := c.ref(t, i)
	if p == 0 || err != nil {
		return err
	}
	s, err := c.table(p)
	if err != nil {
		return err
	}
	return fn(s)
}

func (c *fbCheck) keyValues(t fbTable, i int) error {
	return c.tables(t, i, func(kv fbTable) error {
		if _, _, err := c.vector(kv, 0, 1); err != nil {
			return err
		}
		_, _, err := c.vector(kv, 1, 1)
		return err
	})
}

func (c *fbCheck) schema(s fbTable) error {
	if err := c.tables(s, 1, func(f fbTable) error { return c.arrowField(f, 0) }); err != nil {
		return err
	}
	if err := c.keyValues(s, 2); err != nil {
		return err
	}
	_, _, err := c.vector(s, 3, 8)
	return err
}

func (c *fbCheck) arrowField(f fbTable, depth int) error {
	if depth > 64 {
		return errors.New("schema nested deeper than 64 levels")
	}
	if _, _, err := c.vector(f, 0, 1); err != nil { // name
		return err
	}
	typ := byte(0)
	if p, err := c.field(f, 2, 1); err != nil {
		return err
	} else if p != 0 {
		typ = c.buf[p]
	}
	if err := c.sub(f, 3, func(ty fbTable) error {
		if typ == 14 { // Union: typeIds
			_, _, err := c.vector(ty, 1, 4)
			return err
		}
		return nil
	}); err != nil {
		return err
	}
	if err := c.sub(f, 4, func(d fbTable) error { return c.sub(d, 1, func(fbTable) error { return nil }) }); err != nil {
		return err
	}
	if err := c.tables(f, 5, func(ch fbTable) error { return c.arrowField(ch, depth+1) }); err != nil {
		return err
	}
	return c.keyValues(f, 6)
}

func (c *fbCheck) recordBatch(rb fbTable) (rows int64, err error) {
	if p, err := c.field(rb, 0, 8); err != nil {
		return 0, err
	} else if p != 0 {
		rows = int64(binary.LittleEndian.Uint64(c.buf[p:]))
	}
	for i, w := range []uint64{1: 16, 2: 16, 4: 8} {
		if w > 0 {
			if _, _, err := c.vector(rb, i, w); err != nil {
				return 0, err
			}
		}
	}
	if err := c.sub(rb, 3, func(fbTable) error { return nil }); err != nil {
		return 0, err
	}
	if rows < 0 {
		return 0, fmt.Errorf("record batch of %d rows", rows)
	}
	return rows, nil
}

// ipcMessage is what checkMessage learned from one message's metadata.
type ipcMessage struct {
	header     byte  // 1 schema, 2 dictionary batch, 3 record batch
	bodyLength int64 // bytes after the metadata
	rows       int64 // record batches: their length
}

// checkMessage verifies a Message flatbuffer (without the 8-byte prefix).
func checkMessage(b []byte) (m ipcMessage, err error) {
	c := &fbCheck{buf: b}
	root, err := c.u32(0)
	if err != nil {
		return m, err
	}
	t, err := c.table(root)
	if err != nil {
		return m, err
	}
	if p, err := c.field(t, 1, 1); err != nil {
		return m, err
	} else if p != 0 {
		m.header = b[p]
	}
	if p, err := c.field(t, 3, 8); err != nil {
		return m, err
	} else if p != 0 {
		m.bodyLength = int64(binary.LittleEndian.Uint64(b[p:]))
	}
	if m.bodyLength < 0 {
		return m, fmt.Errorf("message body length %d", m.bodyLength)
	}
	if err := c.keyValues(t, 4); err != nil {
		return m, err
	}
	err = c.sub(t, 2, func(h fbTable) error {
		switch m.header {
		case 1:
			return c.schema(h)
		case 2:
			return c.sub(h, 1, func(rb fbTable) error { _, err := c.recordBatch(rb); return err })
		case 3:
			var err error
			m.rows, err = c.recordBatch(h)
			return err
		}
		return nil
	})
	return m, err
}

// checkedStream hands an IPC stream to arrow-go message by message, each
// message's metadata checked before it is passed on. It also counts rows.
type checkedStream struct {
	r        *bufio.Reader
	size     int64 // file size: no metadata or body can be larger
	pending  []byte
	bodyLeft int64
	rows     int64
	done     bool
}

func (s *checkedStream) Read(p []byte) (int, error) {
	for len(s.pending) == 0 && s.bodyLeft == 0 {
		if s.done {
			return 0, io.EOF
		}
		if err := s.nextMessage(); err != nil {
			return 0, err
		}
	}
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		return n, nil
	}
	if int64(len(p)) > s.bodyLeft {
		p = p[:s.bodyLeft]
	}
	n, err := s.r.Read(p)
	s.bodyLeft -= int64(n)
	if errors.Is(err, io.EOF) && s.bodyLeft > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// nextMessage reads one message's prefix and metadata into pending.
func (s *checkedStream) nextMessage() error {
	var pre [8]byte
	n, err := io.ReadFull(s.r, pre[:4])
	if n == 0 && errors.Is(err, io.EOF) {
		s.done = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading message prefix: %w", io.ErrUnexpectedEOF)
	}
	head := 4
	length := binary.LittleEndian.Uint32(pre[:4])
	if length == 0xffffffff { // continuation marker, then the length
		if _, err := io.ReadFull(s.r, pre[4:8]); err != nil {
			return fmt.Errorf("reading message length: %w", io.ErrUnexpectedEOF)
		}
		head = 8
		length = binary.LittleEndian.Uint32(pre[4:8])
	}
	if length == 0 { // end of stream
		s.pending = append([]byte(nil), pre[:head]...)
		s.done = true
		return nil
	}
	if int64(length) > s.size {
		return fmt.Errorf("message metadata of %d bytes in a %d-byte file", length, s.size)
	}
	buf := make([]byte, head+int(length))
	copy(buf, pre[:head])
	if _, err := io.ReadFull(s.r, buf[head:]); err != nil {
		return fmt.Errorf("reading message metadata: %w", io.ErrUnexpectedEOF)
	}
	m, err := checkMessage(buf[head:])
	if err != nil {
		return err
	}
	if m.bodyLength > s.size {
		return fmt.Errorf("message body of %d bytes in a %d-byte file", m.bodyLength, s.size)
	}
	s.rows += m.rows
	s.pending, s.bodyLeft = buf, m.bodyLength
	return nil
}

// checkIPCFile verifies the footer of an IPC file and the metadata of every block
// it lists, and returns the number of rows.
func checkIPCFile(fh *os.File, size int64) (int64, error) {
	const magic = 6
	if size < 2*magic+4 {
		return 0, fmt.Errorf("%d bytes is too short for an Arrow IPC file", size)
	}
	var tail [10]byte
	if _, err := fh.ReadAt(tail[:], size-10); err != nil {
		return 0, err
	}
	if string(tail[4:]) != "ARROW1" {
		return 0, errors.New("no ARROW1 magic at the end (truncated file?)")
	}
	flen := int64(int32(binary.LittleEndian.Uint32(tail[:4])))
	if flen <= 0 || flen > size-10-8 {
		return 0, fmt.Errorf("footer length %d in a %d-byte file", flen, size)
	}
	foot := make([]byte, flen)
	if _, err := fh.ReadAt(foot, size-10-flen); err != nil {
		return 0, err
	}
	c := &fbCheck{buf: foot}
	root, err := c.u32(0)
	if err != nil {
		return 0, err
	}
	t, err := c.table(root)
	if err != nil {
		return 0, err
	}
	if err := c.sub(t, 1, c.schema); err != nil {
		return 0, err
	}
	if err := c.keyValues(t, 4); err != nil {
		return 0, err
	}
	var rows int64
	for _, slot := range []int{2, 3} {
		start, n, err := c.vector(t, slot, 24)
		if err != nil {
			return 0, err
		}
		for j := uint64(0); j < n; j++ {
			b := foot[start+24*j:]
			off := int64(binary.LittleEndian.Uint64(b))
			mlen := int64(int32(binary.LittleEndian.Uint32(b[8:])))
			blen := int64(binary.LittleEndian.Uint64(b[16:]))
			if off < 8 || mlen < 8 || blen < 0 || mlen > size || blen > size || off+mlen+blen > size {
				return 0, fmt.Errorf("block %d: [%d, +%d, +%d) beyond the file's %d bytes", j, off, mlen, blen, size)
			}
			meta := make([]byte, mlen)
			if _, err := fh.ReadAt(meta, off); err != nil {
				return 0, err
			}
			skip := 4
			if binary.LittleEndian.Uint32(meta) == 0xffffffff {
				skip = 8
			}
			m, err := checkMessage(meta[skip:])
			if err != nil {
				return 0, fmt.Errorf("block %d: %v", j, err)
			}
			if slot == 3 {
				rows += m.rows
			}
		}
	}
	return rows, nil
}
