package data

import (
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
	var schema *arrow.Schema
	if sf.stream {
		r, err := ipc.NewReader(fh, ipcLimits(fh)...)
		if err != nil {
			return fmt.Errorf("data: %s: not a readable Arrow IPC stream: %v", sf.path, err)
		}
		defer r.Release()
		schema = r.Schema()
	} else {
		r, err := ipc.NewFileReader(fh, ipcLimits(fh)...)
		if err != nil {
			return fmt.Errorf("data: %s: not a readable Arrow IPC file: %v", sf.path, err)
		}
		defer r.Close()
		schema = r.Schema()
	}
	for _, f := range schema.Fields() {
		sf.columns = append(sf.columns, f.Name)
		sf.types = append(sf.types, arrowType(f.Type))
	}
	return nil
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
		r, err := ipc.NewReader(fh, ipcLimits(fh)...)
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
				return fmt.Errorf("data: %s: record batch %d, column %q: %v", sf.path, batch, schema.Field(i).Name, err)
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
