package data

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	pqformat "github.com/parquet-go/parquet-go/format"
	"github.com/pierrec/lz4/v4"
)

// parquet-go's LZ4_RAW codec retries a failed block decode with a buffer
// twice as large, forever: it assumes the only possible error is a short
// output buffer, so a corrupt page (FuzzOpenParquet found one by flipping a
// chunk's codec from SNAPPY to LZ4_RAW) grows memory until the process dies.
// checkLZ4Pages decodes every LZ4_RAW page once, into a buffer of the size its
// header declares, before parquet-go sees the file, and refuses the file
// when a page does not decode to exactly that size. A page that passes here
// decodes on parquet-go's first try (its buffer is at least that size).
// Valid LZ4_RAW files are decompressed twice for it; they are rare (pyarrow,
// DuckDB and Spark default to Snappy or Zstd).

// lz4MaxRatio bounds a page's declared uncompressed size by its compressed
// size: an LZ4 sequence of at least 2 bytes (token + offset) expands to at
// most 255 literal-run bytes per length byte, so no valid block expands by
// more than 255x (plus a small constant for tiny blocks).
const lz4MaxRatio = 255

func checkLZ4Pages(fh *os.File, pf *parquet.File) error {
	for gi, rg := range pf.Metadata().RowGroups {
		for _, cc := range rg.Columns {
			md := &cc.MetaData
			if md.Codec != pqformat.Lz4Raw {
				continue
			}
			name := strings.Join(md.PathInSchema, ".")
			start := md.DataPageOffset
			if md.DictionaryPageOffset > 0 && md.DictionaryPageOffset < start {
				start = md.DictionaryPageOffset
			}
			chunk := make([]byte, md.TotalCompressedSize) // bounded by the file size (openParquetFile checked it)
			if _, err := fh.ReadAt(chunk, start); err != nil {
				return fmt.Errorf("row group %d, column %q: %v", gi, name, err)
			}
			if err := checkLZ4Chunk(chunk); err != nil {
				return fmt.Errorf("row group %d, column %q (LZ4_RAW): %v", gi, name, err)
			}
		}
	}
	return nil
}

// checkLZ4Chunk walks the pages of one column chunk's bytes.
func checkLZ4Chunk(chunk []byte) error {
	var dst []byte
	for off, page := 0, 0; off < len(chunk); page++ {
		r := bytes.NewReader(chunk[off:])
		var h pqformat.PageHeader
		var proto thrift.CompactProtocol
		if err := thrift.NewDecoder(proto.NewReader(r)).Decode(&h); err != nil {
			return fmt.Errorf("page %d at byte %d: bad page header: %v", page, off, err)
		}
		off += len(chunk[off:]) - r.Len()
		csize, usize := int(h.CompressedPageSize), int(h.UncompressedPageSize)
		if csize < 0 || usize < 0 || csize > len(chunk)-off {
			return fmt.Errorf("page %d: compressed size %d, uncompressed %d, with %d bytes left in the chunk", page, csize, usize, len(chunk)-off)
		}
		src := chunk[off : off+csize]
		off += csize
		switch h.Type {
		case pqformat.DataPage, pqformat.DictionaryPage:
		case pqformat.DataPageV2:
			if !h.DataPageHeaderV2.Valid {
				return fmt.Errorf("page %d: data page v2 without its header", page)
			}
			v2 := h.DataPageHeaderV2.V
			if c := v2.IsCompressed; c.Valid && !c.V {
				continue
			}
			levels := int(v2.RepetitionLevelsByteLength) + int(v2.DefinitionLevelsByteLength)
			if levels < 0 || levels > csize || levels > usize {
				return fmt.Errorf("page %d: %d bytes of levels in a page of %d (%d uncompressed)", page, levels, csize, usize)
			}
			src, usize = src[levels:], usize-levels
		default:
			continue // index pages carry no values
		}
		if usize > lz4MaxRatio*len(src)+64 {
			return fmt.Errorf("page %d: %d compressed bytes cannot hold %d bytes", page, len(src), usize)
		}
		if cap(dst) < usize {
			dst = make([]byte, usize)
		}
		n, err := lz4.UncompressBlock(src, dst[:usize])
		if err != nil {
			return fmt.Errorf("page %d: corrupt LZ4 block (%d bytes, %d declared uncompressed): %v", page, len(src), usize, err)
		}
		if n != usize {
			return fmt.Errorf("page %d: decodes to %d bytes, header says %d", page, n, usize)
		}
	}
	return nil
}
