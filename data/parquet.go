package data

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/parquet-go/parquet-go"
	pqformat "github.com/parquet-go/parquet-go/format"
)

// Parquet rows are rebuilt here from the leaf columns' values and their
// repetition/definition levels (the Dremel record assembly the format
// specification describes), rather than through parquet-go's reflection-based
// reconstruction: that way a projection opens only the chosen columns' pages,
// every value is converted to the Row types once, and LIST/MAP annotations
// (including the legacy two-level lists) become []any and map[string]any.

// openParquetFile opens the footer after checking the sizes parquet-go would
// otherwise trust: it allocates the footer length read from the file, so a
// corrupt one asked for gigabytes (found by FuzzOpenParquet).
func openParquetFile(fh *os.File, size int64) (*parquet.File, error) {
	if size < 12 {
		return nil, fmt.Errorf("%d bytes is too short for a Parquet file", size)
	}
	var tail [8]byte
	if _, err := fh.ReadAt(tail[:], size-8); err != nil {
		return nil, err
	}
	footer := int64(binary.LittleEndian.Uint32(tail[:4]))
	if footer > size-12 {
		return nil, fmt.Errorf("footer length %d beyond file size %d", footer, size)
	}
	pf, err := parquet.OpenFile(fh, size, parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
	if err != nil {
		return nil, err
	}
	dataEnd := size - 8 - footer
	for gi, rg := range pf.Metadata().RowGroups {
		if rg.NumRows < 0 {
			return nil, fmt.Errorf("row group %d: %d rows", gi, rg.NumRows)
		}
		for _, cc := range rg.Columns {
			md := &cc.MetaData
			name := strings.Join(md.PathInSchema, ".")
			if cc.FilePath != "" {
				return nil, fmt.Errorf("row group %d, column %q: data in another file (%s) is not supported", gi, name, cc.FilePath)
			}
			start := md.DataPageOffset
			if md.DictionaryPageOffset > 0 && md.DictionaryPageOffset < start {
				start = md.DictionaryPageOffset
			}
			if start < 4 || md.TotalCompressedSize < 0 || start+md.TotalCompressedSize > dataEnd {
				return nil, fmt.Errorf("row group %d, column %q: chunk [%d, %d) beyond the data's end %d", gi, name, start, start+md.TotalCompressedSize, dataEnd)
			}
		}
	}
	if err := checkLZ4Pages(fh, pf); err != nil {
		return nil, err
	}
	return pf, nil
}

func openParquet(sf *sourceFile, fh *os.File, size int64) (err error) {
	inFn := false
	defer guard(sf.path, "Parquet", &inFn, &err)
	pf, err := openParquetFile(fh, size)
	if err != nil {
		return fmt.Errorf("data: %s: not a readable Parquet file: %v", sf.path, err)
	}
	for _, c := range pf.Root().Columns() {
		sf.columns = append(sf.columns, c.Name())
		sf.types = append(sf.types, parquetType(c))
	}
	sf.rows, sf.rowsOK = pf.NumRows(), true
	return nil
}

// parquetType names a column's type in the notation of Source.Schema.
func parquetType(c *parquet.Column) string {
	t := parquetInstanceType(c)
	if c.Repeated() { // a bare repeated field is a list
		return "list<" + t + ">"
	}
	return t
}

func parquetInstanceType(c *parquet.Column) string {
	if c.Leaf() {
		return parquetLeafType(c.Type())
	}
	switch groupKind(c) {
	case pqList:
		r := c.Columns()[0]
		if listThreeLevel(c, r) {
			return "list<" + parquetType(r.Columns()[0]) + ">"
		}
		return "list<" + parquetInstanceType(r) + ">"
	case pqMap:
		kv := c.Columns()[0]
		if len(kv.Columns()) == 2 {
			return "map<" + parquetType(kv.Columns()[0]) + ", " + parquetType(kv.Columns()[1]) + ">"
		}
	}
	var parts []string
	for _, f := range c.Columns() {
		parts = append(parts, f.Name()+": "+parquetType(f))
	}
	return "struct<" + strings.Join(parts, ", ") + ">"
}

func timeUnit(u pqformat.TimeUnit) string {
	switch u.Value.(type) {
	case *pqformat.MilliSeconds:
		return "ms"
	case *pqformat.MicroSeconds:
		return "us"
	case *pqformat.NanoSeconds:
		return "ns"
	}
	return "?"
}

func parquetLeafType(t parquet.Type) string {
	var lv pqformat.LogicalTypeValue
	if lt := t.LogicalType(); lt != nil {
		lv = lt.Value
	}
	switch l := lv.(type) {
	case *pqformat.StringType, *pqformat.EnumType, *pqformat.JsonType:
		return "string"
	case *pqformat.DateType:
		return "date32"
	case *pqformat.TimestampType:
		return "timestamp[" + timeUnit(l.Unit) + "]"
	case *pqformat.TimeType:
		return "time[" + timeUnit(l.Unit) + "]"
	case *pqformat.DecimalType:
		return fmt.Sprintf("decimal(%d,%d)", l.Precision, l.Scale)
	case *pqformat.UUIDType:
		return "uuid"
	case *pqformat.Float16Type:
		return "float16"
	case *pqformat.IntType:
		if l.IsSigned {
			return fmt.Sprintf("int%d", l.BitWidth)
		}
		return fmt.Sprintf("uint%d", l.BitWidth)
	}
	switch t.Kind() {
	case parquet.Boolean:
		return "bool"
	case parquet.Int32:
		return "int32"
	case parquet.Int64:
		return "int64"
	case parquet.Int96:
		return "timestamp[int96]"
	case parquet.Float:
		return "float32"
	case parquet.Double:
		return "float64"
	case parquet.ByteArray:
		return "binary"
	case parquet.FixedLenByteArray:
		return fmt.Sprintf("fixed_size_binary[%d]", t.Length())
	}
	return t.String()
}

const (
	pqLeaf = iota
	pqGroup
	pqList
	pqMap
)

func groupKind(c *parquet.Column) int {
	if c.Leaf() {
		return pqLeaf
	}
	kids := c.Columns()
	if lt := c.Type().LogicalType(); lt != nil && len(kids) == 1 && kids[0].Repeated() {
		switch lt.Value.(type) {
		case *pqformat.ListType:
			return pqList
		case *pqformat.MapType:
			return pqMap
		}
	}
	return pqGroup
}

// listThreeLevel tells the standard list layout (repeated group "list" holding one
// "element" field) from the legacy two-level ones, by the backward-compatibility
// rules of the Parquet LogicalTypes spec.
func listThreeLevel(list, r *parquet.Column) bool {
	if r.Leaf() || len(r.Columns()) != 1 {
		return false
	}
	return r.Name() != "array" && r.Name() != list.Name()+"_tuple"
}

// lv is one leaf value with its levels, already converted to a Row value.
type lv struct {
	rep, def uint8
	v        any
}

// pqNode is the compiled assembly plan of one column (or nested field).
type pqNode struct {
	name     string
	kind     int
	optional bool
	repeated bool
	def, rep uint8 // levels that mean "this node is present" / "a new instance of it"
	slot     int   // leaf: index of its cursor
	first    int   // first leaf slot under this node
	fields   []*pqNode
	elem     *pqNode // list: the repeated node; map: the key_value node
	elemOnly bool    // list: three-level, the element is elem.fields[0]
}

func compilePQ(c *parquet.Column, def, rep uint8, slots *[]*parquet.Column) *pqNode {
	n := &pqNode{name: c.Name(), optional: c.Optional(), repeated: c.Repeated(), first: len(*slots)}
	if n.optional {
		def++
	}
	if n.repeated {
		def++
		rep++
	}
	n.def, n.rep = def, rep
	n.kind = groupKind(c)
	if n.kind == pqLeaf {
		n.slot = len(*slots)
		*slots = append(*slots, c)
		return n
	}
	for _, f := range c.Columns() {
		n.fields = append(n.fields, compilePQ(f, def, rep, slots))
	}
	if n.kind == pqList || n.kind == pqMap {
		n.elem = n.fields[0]
		n.elemOnly = n.kind == pqList && listThreeLevel(c, c.Columns()[0])
		if n.kind == pqMap && len(n.elem.fields) != 2 {
			n.kind = pqGroup
		}
	}
	return n
}

// seg holds, for each leaf slot, the values of one instance of a node.
type seg [][]lv

func (n *pqNode) value(s seg) (any, error) {
	if len(s[n.first]) == 0 {
		return nil, fmt.Errorf("column %q: missing values", n.name)
	}
	present := s[n.first][0].def >= n.def
	if n.repeated {
		if !present {
			return []any{}, nil
		}
		parts, err := n.split(s)
		if err != nil {
			return nil, err
		}
		out := make([]any, len(parts))
		for i, p := range parts {
			if out[i], err = n.instance(p); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	if n.optional && !present {
		return nil, nil
	}
	return n.instance(s)
}

// split cuts a repeated node's values into its instances: a value whose
// repetition level is at most the node's starts a new instance.
func (n *pqNode) split(s seg) ([]seg, error) {
	var parts []seg
	var starts []int
	for slot := n.first; slot <= n.last(); slot++ {
		vals := s[slot]
		starts = starts[:0]
		for i := range vals {
			if i == 0 || vals[i].rep <= n.rep {
				starts = append(starts, i)
			}
		}
		if slot == n.first {
			parts = make([]seg, len(starts))
			for k := range parts {
				parts[k] = make(seg, len(s))
			}
		} else if len(starts) != len(parts) {
			return nil, fmt.Errorf("column %q: leaf columns disagree on the number of list elements (%d and %d)", n.name, len(parts), len(starts))
		}
		for k, st := range starts {
			end := len(vals)
			if k+1 < len(starts) {
				end = starts[k+1]
			}
			parts[k][slot] = vals[st:end]
		}
	}
	return parts, nil
}

func (n *pqNode) last() int {
	for len(n.fields) > 0 {
		n = n.fields[len(n.fields)-1]
	}
	if n.kind == pqLeaf {
		return n.slot
	}
	return n.first
}

// instance assembles one present instance of n.
func (n *pqNode) instance(s seg) (any, error) {
	switch n.kind {
	case pqLeaf:
		return s[n.slot][0].v, nil
	case pqList:
		r := n.elem
		if len(s[r.first]) == 0 {
			return nil, fmt.Errorf("column %q: missing values", n.name)
		}
		if s[r.first][0].def < r.def {
			return []any{}, nil
		}
		parts, err := r.split(s)
		if err != nil {
			return nil, err
		}
		items := make([]any, len(parts))
		for i, p := range parts {
			if n.elemOnly {
				items[i], err = r.fields[0].value(p)
			} else {
				items[i], err = r.instance(p)
			}
			if err != nil {
				return nil, err
			}
		}
		return items, nil
	case pqMap:
		l, err := n.elem.value(s)
		if err != nil {
			return nil, err
		}
		m := make(map[string]any, len(l.([]any)))
		for _, it := range l.([]any) {
			kv := it.(map[string]any)
			k := kv[n.elem.fields[0].name]
			ks, ok := k.(string)
			if !ok {
				ks = fmt.Sprint(k)
			}
			m[ks] = kv[n.elem.fields[1].name]
		}
		return m, nil
	}
	m := make(map[string]any, len(n.fields))
	for _, f := range n.fields {
		v, err := f.value(s)
		if err != nil {
			return nil, err
		}
		m[f.name] = v
	}
	return m, nil
}

// pqCursor reads one leaf column page by page and hands out one row's values.
type pqCursor struct {
	col    *parquet.Column
	pages  parquet.Pages
	vr     parquet.ValueReader
	page   parquet.Page
	raw    []parquet.Value
	buf    []lv
	pos    int
	conv   func(parquet.Value) any
	maxDef uint8
	rec    []lv
}

func (c *pqCursor) fill() error {
	c.buf, c.pos = c.buf[:0], 0
	for {
		if c.vr == nil {
			p, err := c.pages.ReadPage()
			if err != nil {
				return err // io.EOF at the end of the column
			}
			c.page, c.vr = p, p.Values()
		}
		n, err := c.vr.ReadValues(c.raw)
		for _, v := range c.raw[:n] {
			x := lv{rep: uint8(v.RepetitionLevel()), def: uint8(v.DefinitionLevel())}
			if x.def == c.maxDef {
				x.v = c.conv(v) // copies byte arrays: the page buffer is released below
			}
			c.buf = append(c.buf, x)
		}
		if errors.Is(err, io.EOF) {
			parquet.Release(c.page)
			c.page, c.vr = nil, nil
		} else if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// next returns the values of the next row (valid until the following call).
func (c *pqCursor) next() ([]lv, error) {
	c.rec = c.rec[:0]
	for {
		if c.pos == len(c.buf) {
			err := c.fill()
			if errors.Is(err, io.EOF) {
				if len(c.rec) == 0 {
					return nil, io.EOF
				}
				return c.rec, nil
			}
			if err != nil {
				return nil, err
			}
		}
		x := c.buf[c.pos]
		if x.rep == 0 && len(c.rec) > 0 {
			return c.rec, nil
		}
		if len(c.rec) == 0 && x.rep != 0 {
			return nil, fmt.Errorf("column %q: row starts with repetition level %d", c.col.Name(), x.rep)
		}
		c.rec = append(c.rec, x)
		c.pos++
	}
}

func rowsParquet(sf *sourceFile, columns []string, fn func(RowRef, Row) error) (err error) {
	fh, err := os.Open(sf.path)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return fmt.Errorf("data: %s: %v", sf.path, err)
	}
	inFn := false
	defer guard(sf.path, "Parquet", &inFn, &err)
	pf, err := openParquetFile(fh, st.Size())
	if err != nil {
		return fmt.Errorf("data: %s: not a readable Parquet file: %v", sf.path, err)
	}
	var nodes []*pqNode
	var leaves []*parquet.Column
	for _, c := range pf.Root().Columns() {
		if wantColumn(columns, c.Name()) {
			nodes = append(nodes, compilePQ(c, 0, 0, &leaves))
		}
	}
	cursors := make([]*pqCursor, len(leaves))
	for i, c := range leaves {
		cursors[i] = &pqCursor{col: c, pages: c.Pages(), raw: make([]parquet.Value, 1024),
			conv: parquetConv(c.Type()), maxDef: uint8(c.MaxDefinitionLevel())}
		defer cursors[i].pages.Close()
	}
	s := make(seg, len(leaves))
	want := pf.NumRows()
	for row := int64(0); ; row++ {
		ref := RowRef{File: sf.path, Index: row}
		done := 0
		for i, c := range cursors {
			vals, err := c.next()
			if errors.Is(err, io.EOF) {
				done++
				continue
			}
			if err != nil {
				return fmt.Errorf("data: %s: %v", ref, err)
			}
			s[i] = vals
		}
		if len(cursors) > 0 && done == len(cursors) {
			if row != want {
				return fmt.Errorf("data: %s: footer says %d rows, column data holds %d", sf.path, want, row)
			}
			return nil
		}
		if done > 0 {
			return fmt.Errorf("data: %s: columns end at different rows", ref)
		}
		if len(cursors) == 0 && row == want { // a projection onto no columns
			return nil
		}
		r := make(Row, len(nodes))
		for _, n := range nodes {
			v, err := n.value(s)
			if err != nil {
				return fmt.Errorf("data: %s: %v", ref, err)
			}
			r[n.name] = v
		}
		inFn = true
		if err := fn(ref, r); err != nil {
			return err
		}
		inFn = false
	}
}

// parquetConv returns the conversion of a leaf's non-null values to Row values.
func parquetConv(t parquet.Type) func(parquet.Value) any {
	var lt pqformat.LogicalTypeValue
	if l := t.LogicalType(); l != nil {
		lt = l.Value
	}
	switch l := lt.(type) {
	case *pqformat.DateType:
		return func(v parquet.Value) any { return time.Unix(int64(v.Int32())*86400, 0).UTC().Format(time.DateOnly) }
	case *pqformat.TimestampType:
		unit := timeUnit(l.Unit)
		return func(v parquet.Value) any { return formatTimestamp(v.Int64(), unit) }
	case *pqformat.DecimalType:
		scale := int(l.Scale)
		return func(v parquet.Value) any {
			var x big.Int
			switch t.Kind() {
			case parquet.Int32:
				x.SetInt64(int64(v.Int32()))
			case parquet.Int64:
				x.SetInt64(v.Int64())
			default:
				b := v.ByteArray()
				x.SetBytes(b)
				if len(b) > 0 && b[0]&0x80 != 0 { // two's complement
					x.Sub(&x, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
				}
			}
			return decimalFloat(&x, scale)
		}
	case *pqformat.UUIDType:
		return func(v parquet.Value) any {
			b := v.ByteArray()
			if len(b) != 16 {
				return string(b)
			}
			return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
		}
	case *pqformat.Float16Type:
		return func(v parquet.Value) any {
			b := v.ByteArray()
			if len(b) != 2 {
				return nil
			}
			return float16(binary.LittleEndian.Uint16(b))
		}
	case *pqformat.IntType:
		if !l.IsSigned {
			if t.Kind() == parquet.Int32 {
				return func(v parquet.Value) any { return int64(uint32(v.Int32())) }
			}
			return func(v parquet.Value) any { return uint64Value(uint64(v.Int64())) }
		}
	}
	switch t.Kind() {
	case parquet.Boolean:
		return func(v parquet.Value) any { return v.Boolean() }
	case parquet.Int32:
		return func(v parquet.Value) any { return int64(v.Int32()) }
	case parquet.Int64:
		return func(v parquet.Value) any { return v.Int64() }
	case parquet.Int96:
		// Legacy Impala/Spark timestamps: nanoseconds of the day, then the Julian day.
		return func(v parquet.Value) any {
			x := v.Int96()
			nanos := int64(uint64(x[1])<<32 | uint64(x[0]))
			days := int64(x[2]) - 2440588
			return formatTimestamp(days*86400e9+nanos, "ns")
		}
	case parquet.Float:
		return func(v parquet.Value) any { return float64(v.Float()) }
	case parquet.Double:
		return func(v parquet.Value) any { return v.Double() }
	}
	return func(v parquet.Value) any { return string(v.ByteArray()) }
}

// uint64Value keeps unsigned integers as int64 when they fit; larger ones can
// only be float64 in a Row.
func uint64Value(u uint64) any {
	if u > math.MaxInt64 {
		return float64(u)
	}
	return int64(u)
}

func formatTimestamp(x int64, unit string) string {
	var t time.Time
	switch unit {
	case "s":
		t = time.Unix(x, 0)
	case "ms":
		t = time.UnixMilli(x)
	case "us":
		t = time.UnixMicro(x)
	default:
		t = time.Unix(0, x)
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// float16 widens an IEEE 754 half-precision number.
func float16(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	frac := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * frac * math.Pow(2, -24)
	case 0x1f:
		if frac == 0 {
			return sign * math.Inf(1)
		}
		return math.NaN()
	}
	return sign * (1 + frac/1024) * math.Pow(2, float64(exp-15))
}

// decimalFloat is x / 10^scale, correctly rounded: it goes through the decimal
// string, as a user reading the number would.
func decimalFloat(x *big.Int, scale int) float64 {
	d := x.String()
	neg := strings.HasPrefix(d, "-")
	d = strings.TrimPrefix(d, "-")
	if scale > 0 {
		if len(d) <= scale {
			d = strings.Repeat("0", scale-len(d)+1) + d
		}
		d = d[:len(d)-scale] + "." + d[len(d)-scale:]
	}
	f, _ := strconv.ParseFloat(d, 64)
	if neg {
		f = -f
	}
	return f
}
