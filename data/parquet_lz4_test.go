package data

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/lz4"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	pqformat "github.com/parquet-go/parquet-go/format"
)

type lz4Row struct {
	Instruction string `parquet:"instruction"`
	N           int64  `parquet:"n"`
}

// writeLZ4Parquet writes rows with parquet-go's own writer (not our code)
// and the LZ4_RAW codec, and returns the file's bytes.
func writeLZ4Parquet(t *testing.T, rows []lz4Row, v2 bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := parquet.NewGenericWriter[lz4Row](&buf, parquet.Compression(&lz4.Codec{}), parquet.DataPageVersion(map[bool]int{false: 1, true: 2}[v2]), parquet.PageBufferSize(256))
	if _, err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// openWithin fails the test instead of hanging when reading path takes
// longer than d (the bug this file guards against never returned).
func openWithin(t *testing.T, path string, d time.Duration) ([]Row, error) {
	t.Helper()
	type result struct {
		rows []Row
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		var rows []Row
		src, err := Open(path)
		if err == nil {
			err = src.Rows(nil, func(_ RowRef, r Row) error { rows = append(rows, r); return nil })
		}
		ch <- result{rows, err}
	}()
	select {
	case r := <-ch:
		return r.rows, r.err
	case <-time.After(d):
		t.Fatalf("%s: still reading after %v", path, d)
		return nil, nil
	}
}

func TestParquetLZ4(t *testing.T) {
	var rows []lz4Row
	for i := 0; i < 300; i++ {
		rows = append(rows, lz4Row{strings.Repeat("abc ", i%17) + "row", int64(i * 7)})
	}
	for _, v2 := range []bool{false, true} {
		b := writeLZ4Parquet(t, rows, v2)
		dir := t.TempDir()
		good := filepath.Join(dir, "good.parquet")
		if err := os.WriteFile(good, b, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := openWithin(t, good, 20*time.Second)
		if err != nil {
			t.Fatalf("v2=%v: valid LZ4_RAW file refused: %v", v2, err)
		}
		if len(got) != len(rows) {
			t.Fatalf("v2=%v: %d rows, want %d", v2, len(got), len(rows))
		}
		for i, r := range got {
			if r["instruction"] != rows[i].Instruction || r["n"] != rows[i].N {
				t.Fatalf("v2=%v row %d: %v, want %+v", v2, i, r, rows[i])
			}
		}

		// Corrupt one byte of every page's LZ4 payload region: each file
		// must either read the same rows or fail with an error naming the
		// file, and never hang.
		footer := int(binary.LittleEndian.Uint32(b[len(b)-8:]))
		dataEnd := len(b) - 8 - footer
		bad := 0
		for pos := 4; pos < dataEnd; pos += 7 {
			c := bytes.Clone(b)
			c[pos] ^= 0xA5
			p := filepath.Join(dir, "bad.parquet")
			if err := os.WriteFile(p, c, 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := openWithin(t, p, 20*time.Second); err != nil {
				bad++
				if !strings.Contains(err.Error(), "bad.parquet") {
					t.Fatalf("error does not name the file: %v", err)
				}
			}
		}
		if bad == 0 {
			t.Fatalf("v2=%v: no corruption of the data pages was noticed", v2)
		}
	}
}

// TestParquetCodecFlip is the input FuzzOpenParquet found: a Snappy file
// whose footer says LZ4_RAW. parquet-go alone never returns on it.
func TestParquetCodecFlip(t *testing.T) {
	b, err := os.ReadFile("testdata/sources/alpaca.parquet")
	if err != nil {
		t.Fatal(err)
	}
	footer := int(binary.LittleEndian.Uint32(b[len(b)-8:]))
	var md pqformat.FileMetaData
	if err := thrift.Unmarshal(new(thrift.CompactProtocol), b[len(b)-8-footer:len(b)-8], &md); err != nil {
		t.Fatal(err)
	}
	flipped := 0
	for gi := range md.RowGroups {
		for ci := range md.RowGroups[gi].Columns {
			cm := &md.RowGroups[gi].Columns[ci].MetaData
			if cm.Codec != pqformat.Uncompressed {
				cm.Codec = pqformat.Lz4Raw
				flipped++
			}
		}
	}
	if flipped == 0 {
		t.Fatal("alpaca.parquet has no compressed column to flip")
	}
	nf, err := thrift.Marshal(new(thrift.CompactProtocol), &md)
	if err != nil {
		t.Fatal(err)
	}
	out := append(bytes.Clone(b[:len(b)-8-footer]), nf...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(nf)))
	out = append(out, "PAR1"...)
	p := filepath.Join(t.TempDir(), "flipped.parquet")
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = openWithin(t, p, 20*time.Second)
	if err == nil || !strings.Contains(err.Error(), "flipped.parquet") || !strings.Contains(err.Error(), "LZ4") {
		t.Fatalf("want an LZ4 error naming the file, got %v", err)
	}
	t.Log(err)
}
