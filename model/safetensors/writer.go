package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
)

// WriteTensor describes a tensor up front; its bytes come later from Write,
// called once, in file order, so only one tensor need exist in memory at a
// time.
type WriteTensor struct {
	Name  string
	DType DType
	Shape []int
	// Write must write exactly NumElements(Shape) x DType.Size() bytes,
	// row-major, little-endian. It may be nil for an empty tensor.
	Write func(w io.Writer) error
}

// WriteOptions controls WriteDir.
type WriteOptions struct {
	// Metadata is stored as __metadata__ in every file. "format": "pt" is
	// added when missing: transformers' from_pretrained rejects a file whose
	// metadata lacks a known format (modeling_utils.load_state_dict).
	Metadata map[string]string
	// MaxShardBytes caps the tensor bytes per shard; 0 never shards. Shards
	// are named like transformers' (model-00001-of-00004.safetensors) with a
	// model.safetensors.index.json; a tensor bigger than the cap gets a shard
	// of its own; when everything fits in one shard the single-file name is
	// used and no index is written, as transformers does.
	MaxShardBytes int64
	// FileName is the single-file name, default "model.safetensors". Shards
	// and the index take its stem: <stem>-00001-of-0000N.safetensors and
	// <FileName>.index.json.
	FileName string
}

// Bytes returns a Write func that writes b, for tensors already in memory.
func Bytes(b []byte) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}
}

// WriteFile writes tensors to one file at path, atomically: a temporary file
// in the same folder is fsync'd and renamed over path.
func WriteFile(path string, tensors []WriteTensor, metadata map[string]string) error {
	sizes, err := checkTensors(path, tensors)
	if err != nil {
		return err
	}
	tmp, err := writeTemp(path, tensors, sizes, metadata)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("safetensors: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// WriteDir writes tensors into dir as one file or as shards with an index
// (see WriteOptions). Every file goes to a temporary name first; only when
// all are complete and fsync'd are they renamed, the index last. On error
// the temporaries are removed and nothing appears under the final names.
// After success, files of an earlier save under the same stem that the new
// save does not use (old shards, a stale index or single file) are removed,
// so Open cannot pick up stale weights; this mirrors transformers'
// save_pretrained clean-up.
func WriteDir(dir string, tensors []WriteTensor, opts WriteOptions) error {
	name := opts.FileName
	if name == "" {
		name = "model.safetensors"
	}
	if filepath.Base(name) != name || !strings.HasSuffix(name, ".safetensors") || name == ".safetensors" {
		return fmt.Errorf("safetensors: WriteDir: FileName %q, want a plain file name ending in .safetensors", name)
	}
	stem := strings.TrimSuffix(name, ".safetensors")
	indexName := name + ".index.json"
	sizes, err := checkTensors(filepath.Join(dir, name), tensors)
	if err != nil {
		return err
	}
	if opts.MaxShardBytes < 0 {
		return fmt.Errorf("safetensors: WriteDir: MaxShardBytes %d, want >= 0", opts.MaxShardBytes)
	}
	meta := map[string]string{"format": "pt"}
	for k, v := range opts.Metadata {
		meta[k] = v
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}

	// Greedy packing in the caller's order, like huggingface_hub's
	// split_torch_state_dict_into_shards: layers stay together in order.
	var shards [][]int // indices into tensors
	var cur []int
	var curBytes, total int64
	for i := range tensors {
		total += sizes[i]
		if opts.MaxShardBytes > 0 && len(cur) > 0 && curBytes+sizes[i] > opts.MaxShardBytes {
			shards = append(shards, cur)
			cur, curBytes = nil, 0
		}
		cur = append(cur, i)
		curBytes += sizes[i]
	}
	shards = append(shards, cur)

	type out struct{ tmp, final string }
	var outs []out
	cleanup := func() {
		for _, o := range outs {
			os.Remove(o.tmp)
		}
	}
	weightMap := map[string]string{}
	for s, idx := range shards {
		fname := name
		if len(shards) > 1 {
			fname = fmt.Sprintf("%s-%05d-of-%05d.safetensors", stem, s+1, len(shards))
		}
		ts := make([]WriteTensor, len(idx))
		sz := make([]int64, len(idx))
		for j, i := range idx {
			ts[j], sz[j] = tensors[i], sizes[i]
			weightMap[tensors[i].Name] = fname
		}
		final := filepath.Join(dir, fname)
		tmp, err := writeTemp(final, ts, sz, meta)
		if err != nil {
			cleanup()
			return err
		}
		outs = append(outs, out{tmp, final})
	}
	if len(shards) > 1 {
		js, err := marshalIndex(total, weightMap)
		if err != nil {
			cleanup()
			return err
		}
		final := filepath.Join(dir, indexName)
		tmp, err := writeTempWith(final, func(w io.Writer) error {
			_, err := w.Write(js)
			return err
		})
		if err != nil {
			cleanup()
			return err
		}
		outs = append(outs, out{tmp, final})
	}
	for i, o := range outs {
		if err := os.Rename(o.tmp, o.final); err != nil {
			for _, rest := range outs[i:] {
				os.Remove(rest.tmp)
			}
			return fmt.Errorf("safetensors: %w", err)
		}
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, o := range outs {
		keep[filepath.Base(o.final)] = true
	}
	return removeStale(dir, name, stem, indexName, keep)
}

// removeStale deletes what an earlier save under the same stem left behind.
func removeStale(dir, name, stem, indexName string, keep map[string]bool) error {
	shardRE := regexp.MustCompile(`^` + regexp.QuoteMeta(stem) + `-[0-9]{5}-of-[0-9]{5}\.safetensors$`)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	for _, e := range entries {
		n := e.Name()
		if keep[n] || !e.Type().IsRegular() {
			continue
		}
		if n == name || n == indexName || shardRE.MatchString(n) {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				return fmt.Errorf("safetensors: remove stale %w", err)
			}
		}
	}
	return nil
}

func marshalIndex(total int64, weightMap map[string]string) ([]byte, error) {
	// transformers writes json.dumps(index, indent=2, sort_keys=True) + "\n";
	// MarshalIndent sorts map keys too.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(index{Metadata: map[string]any{"total_size": total}, WeightMap: weightMap}); err != nil {
		return nil, fmt.Errorf("safetensors: index: %w", err)
	}
	return buf.Bytes(), nil
}

// checkTensors validates descriptions and returns each tensor's byte size.
func checkTensors(path string, tensors []WriteTensor) ([]int64, error) {
	sizes := make([]int64, len(tensors))
	seen := map[string]bool{}
	for i, t := range tensors {
		switch {
		case t.Name == "":
			return nil, fmt.Errorf("safetensors: write %s: tensor #%d has an empty name", path, i)
		case t.Name == "__metadata__":
			return nil, fmt.Errorf("safetensors: write %s: tensor name %q is reserved", path, t.Name)
		case seen[t.Name]:
			return nil, fmt.Errorf("safetensors: write %s: tensor %q given twice", path, t.Name)
		}
		seen[t.Name] = true
		if err := t.DType.check(); err != nil {
			return nil, fmt.Errorf("safetensors: write %s: tensor %q: %w", path, t.Name, err)
		}
		n := uint64(t.DType.Size())
		for _, d := range t.Shape {
			if d < 0 {
				return nil, fmt.Errorf("safetensors: write %s: tensor %q: shape %v has negative dim %d", path, t.Name, t.Shape, d)
			}
			hi, lo := bits.Mul64(n, uint64(d))
			if hi != 0 || lo > 1<<62 {
				return nil, fmt.Errorf("safetensors: write %s: tensor %q: shape %v overflows", path, t.Name, t.Shape)
			}
			n = lo
		}
		if n > 0 && t.Write == nil {
			return nil, fmt.Errorf("safetensors: write %s: tensor %q: nil Write for %d bytes", path, t.Name, n)
		}
		sizes[i] = int64(n)
	}
	return sizes, nil
}

// fileOrder is the Rust crate's layout: descending dtype alignment, then
// name. With the header padded to 8 bytes, each tensor starts aligned to its
// element size.
func fileOrder(tensors []WriteTensor) []int {
	order := make([]int, len(tensors))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool {
		ta, tb := tensors[order[a]], tensors[order[b]]
		if ra, rb := dtypeRank[ta.DType], dtypeRank[tb.DType]; ra != rb {
			return ra > rb
		}
		return ta.Name < tb.Name
	})
	return order
}

// encodeHeader builds the JSON header as the Rust crate serialises it:
// __metadata__ first, then tensors in data order, compact, padded with
// spaces to a multiple of 8 bytes.
func encodeHeader(tensors []WriteTensor, sizes []int64, order []int, metadata map[string]string) ([]byte, error) {
	var b bytes.Buffer
	str := func(s string) error {
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			return err
		}
		b.Truncate(b.Len() - 1) // Encode's newline
		return nil
	}
	b.WriteByte('{')
	first := true
	if metadata != nil {
		keys := make([]string, 0, len(metadata))
		for k := range metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString(`"__metadata__":{`)
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := str(k); err != nil {
				return nil, err
			}
			b.WriteByte(':')
			if err := str(metadata[k]); err != nil {
				return nil, err
			}
		}
		b.WriteByte('}')
		first = false
	}
	var off int64
	for _, i := range order {
		t := tensors[i]
		if !first {
			b.WriteByte(',')
		}
		first = false
		if err := str(t.Name); err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, `:{"dtype":"%s","shape":[`, t.DType)
		for j, d := range t.Shape {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprint(&b, d)
		}
		fmt.Fprintf(&b, `],"data_offsets":[%d,%d]}`, off, off+sizes[i])
		off += sizes[i]
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	return b.Bytes(), nil
}

// writeTemp writes one safetensors file to a temporary name next to final
// and returns that name; on error nothing is left behind.
func writeTemp(final string, tensors []WriteTensor, sizes []int64, metadata map[string]string) (string, error) {
	order := fileOrder(tensors)
	hdr, err := encodeHeader(tensors, sizes, order, metadata)
	if err != nil {
		return "", fmt.Errorf("safetensors: write %s: header: %w", final, err)
	}
	return writeTempWith(final, func(w io.Writer) error {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(hdr)))
		if _, err := w.Write(n[:]); err != nil {
			return err
		}
		if _, err := w.Write(hdr); err != nil {
			return err
		}
		for _, i := range order {
			t := tensors[i]
			if sizes[i] == 0 && t.Write == nil {
				continue
			}
			cw := &limitedWriter{w: w, left: sizes[i]}
			err := t.Write(cw)
			written := sizes[i] - cw.left
			if errors.Is(err, errTooMuch) || cw.over {
				return fmt.Errorf("tensor %q: Write produced more than %d bytes (shape %s x %s)", t.Name, sizes[i], shapeString(t.Shape), t.DType)
			}
			if err != nil {
				return fmt.Errorf("tensor %q: %w", t.Name, err)
			}
			if cw.left != 0 {
				return fmt.Errorf("tensor %q: Write produced %d bytes, want %d (shape %s x %s)", t.Name, written, sizes[i], shapeString(t.Shape), t.DType)
			}
		}
		return nil
	})
}

var errTooMuch = errors.New("write beyond the declared tensor size")

// limitedWriter fails a write past the declared size at once, so a buggy
// Write cannot fill the disk before the count check.
type limitedWriter struct {
	w    io.Writer
	left int64
	over bool
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		l.over = true
		return 0, errTooMuch
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}

// writeTempWith creates .<name>.tmp-* next to final, streams fill into it
// through a buffer, fsyncs and closes it, and returns its path.
func writeTempWith(final string, fill func(io.Writer) error) (_ string, err error) {
	dir, base := filepath.Split(final)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("safetensors: write %s: %w", final, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("safetensors: write %s: %w", final, err)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := fill(bw); err != nil {
		return "", err
	}
	if err := bw.Flush(); err != nil {
		return "", err
	}
	// CreateTemp makes 0600; weights are ordinary shared files.
	if err := f.Chmod(0o644); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return tmp, nil
}

// syncDir makes the renames durable. Windows cannot fsync a directory, and
// NTFS orders the metadata anyway.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("safetensors: fsync %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("safetensors: fsync %s: %w", dir, err)
	}
	return nil
}
