package safetensors

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tunellm/tune/internal/mmap"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// IndexFile is the name Hugging Face gives the shard index of model.safetensors.
const IndexFile = "model.safetensors.index.json"

// Reader is one .safetensors file or a (possibly sharded) model folder. It
// is safe for concurrent use by readers; Close invalidates every Tensor.Data
// it handed out.
type Reader struct {
	path    string // what Open was given, for error messages
	files   []*mappedFile
	tensors map[string]entry
	names   []string // sorted
	meta    map[string]string
}

type entry struct {
	file *mappedFile
	info tensorInfo
}

type mappedFile struct {
	path string
	mem  []byte // whole mapping; nil when the data section is empty
	data []byte // data section: mem[8+N:]
	hdr  *header
}

// Open opens a .safetensors file, a model.safetensors.index.json, or a
// folder. In a folder it prefers model.safetensors.index.json, then
// model.safetensors, then a single *.safetensors.index.json, then a single
// *.safetensors file (an adapter_model.safetensors, say).
func Open(path string) (*Reader, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	target := path
	if st.IsDir() {
		if target, err = resolveDir(path); err != nil {
			return nil, err
		}
	}
	r := &Reader{path: path, tensors: map[string]entry{}}
	if strings.HasSuffix(target, ".json") {
		err = r.openIndex(target)
	} else {
		var f *mappedFile
		if f, err = openFile(target); err == nil {
			r.files = append(r.files, f)
			err = r.add(f)
		}
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	r.names = make([]string, 0, len(r.tensors))
	for name := range r.tensors {
		r.names = append(r.names, name)
	}
	sort.Strings(r.names)
	r.meta = map[string]string{}
	// Earlier files (sorted by name) win on conflicting metadata keys;
	// HF writers put the same __metadata__ in every shard.
	for i := len(r.files) - 1; i >= 0; i-- {
		for k, v := range r.files[i].hdr.metadata {
			r.meta[k] = v
		}
	}
	return r, nil
}

func resolveDir(dir string) (string, error) {
	for _, name := range []string{IndexFile, "model.safetensors"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	indexes, _ := filepath.Glob(filepath.Join(dir, "*.safetensors.index.json"))
	if len(indexes) == 1 {
		return indexes[0], nil
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if len(indexes) == 0 && len(files) == 1 {
		return files[0], nil
	}
	var found []string
	for _, p := range append(indexes, files...) {
		found = append(found, filepath.Base(p))
	}
	if len(found) == 0 {
		return "", fmt.Errorf("safetensors: %s: no %s, model.safetensors or other *.safetensors file", dir, IndexFile)
	}
	return "", fmt.Errorf("safetensors: %s: no %s or model.safetensors, and more than one candidate: %s", dir, IndexFile, strings.Join(found, ", "))
}

// openFile validates the header before mapping anything, so a corrupt file
// is rejected with a message rather than mapped.
func openFile(path string) (_ *mappedFile, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("safetensors: %s: %w", path, err)
		}
	}()
	f, err := os.Open(path)
	if err != nil {
		return nil, errors.Unwrap(err) // the PathError's path is already in the prefix
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file")
	}
	size := st.Size()
	var prefix [8]byte
	if size >= 8 {
		if _, err := f.ReadAt(prefix[:], 0); err != nil {
			return nil, err
		}
	}
	n, err := headerLen(prefix[:], size)
	if err != nil {
		return nil, err
	}
	js := make([]byte, n)
	if _, err := f.ReadAt(js, 8); err != nil && !(errors.Is(err, io.EOF) && n == 0) {
		return nil, fmt.Errorf("read %d-byte header: %w", n, err)
	}
	dataSize := size - 8 - n
	hdr, err := parseHeader(js, dataSize)
	if err != nil {
		return nil, err
	}
	mf := &mappedFile{path: path, hdr: hdr}
	if dataSize > 0 {
		if mf.mem, err = mmap.Map(f, size); err != nil {
			return nil, err
		}
		mf.data = mf.mem[8+n:]
	}
	return mf, nil
}

func (r *Reader) add(f *mappedFile) error {
	for _, t := range f.hdr.tensors {
		if prev, ok := r.tensors[t.name]; ok {
			return fmt.Errorf("safetensors: %s: tensor %q is in both %s and %s", r.path, t.name, filepath.Base(prev.file.path), filepath.Base(f.path))
		}
		r.tensors[t.name] = entry{file: f, info: t}
	}
	return nil
}

// index is model.safetensors.index.json as transformers writes it.
type index struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

func (r *Reader) openIndex(path string) error {
	js, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	var idx index
	if err := json.Unmarshal(js, &idx); err != nil {
		return fmt.Errorf("safetensors: %s: %v", path, err)
	}
	if len(idx.WeightMap) == 0 {
		return fmt.Errorf("safetensors: %s: missing or empty weight_map", path)
	}
	dir := filepath.Dir(path)
	shardOf := map[string]string{} // shard -> one tensor naming it, for errors
	for name, shard := range idx.WeightMap {
		if shard == "" || filepath.Base(shard) != shard || shard == "." || shard == ".." {
			return fmt.Errorf("safetensors: %s: tensor %q: shard %q is not a file name in the index's folder", path, name, shard)
		}
		if prev, ok := shardOf[shard]; !ok || name < prev {
			shardOf[shard] = name
		}
	}
	shards := make([]string, 0, len(shardOf))
	for s := range shardOf {
		shards = append(shards, s)
	}
	sort.Strings(shards)
	for _, s := range shards {
		p := filepath.Join(dir, s)
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("safetensors: %s: shard %s (holding tensor %q) is missing: %v", path, s, shardOf[s], errors.Unwrap(err))
		}
		f, err := openFile(p)
		if err != nil {
			return err
		}
		r.files = append(r.files, f)
		if err := r.add(f); err != nil {
			return err
		}
	}
	// Tensors present in a shard but absent from weight_map are kept:
	// loaders that scan shards see them too.
	for name, shard := range idx.WeightMap {
		e, ok := r.tensors[name]
		if !ok {
			return fmt.Errorf("safetensors: %s: tensor %q listed in weight_map is not in shard %s", path, name, shard)
		}
		if got := filepath.Base(e.file.path); got != shard {
			return fmt.Errorf("safetensors: %s: tensor %q: weight_map says shard %s, found in %s", path, name, shard, got)
		}
	}
	return nil
}

// Names returns the tensor names, sorted.
func (r *Reader) Names() []string { return append([]string(nil), r.names...) }

// Has reports whether a tensor exists.
func (r *Reader) Has(name string) bool {
	_, ok := r.tensors[name]
	return ok
}

// Tensor returns a zero-copy view of a tensor; see Tensor.Data.
func (r *Reader) Tensor(name string) (Tensor, error) {
	e, ok := r.tensors[name]
	if !ok {
		return Tensor{}, fmt.Errorf("safetensors: %s: tensor %q not found (%d tensors in %d files)", r.path, name, len(r.tensors), len(r.files))
	}
	if r.files == nil {
		return Tensor{}, fmt.Errorf("safetensors: %s: tensor %q: reader is closed", r.path, name)
	}
	var data []byte
	if e.info.end > e.info.begin {
		// The capacity limit keeps an append from writing past the tensor.
		data = e.file.data[e.info.begin:e.info.end:e.info.end]
	}
	return Tensor{
		Name:  name,
		DType: e.info.dtype,
		Shape: append([]int{}, e.info.shape...),
		Data:  data,
	}, nil
}

// Metadata returns the __metadata__ of all files merged (earlier shard
// names win on conflicts). The map is the caller's to modify.
func (r *Reader) Metadata() map[string]string {
	m := make(map[string]string, len(r.meta))
	for k, v := range r.meta {
		m[k] = v
	}
	return m
}

// Files returns the paths of the .safetensors files read, sorted.
func (r *Reader) Files() []string {
	out := make([]string, len(r.files))
	for i, f := range r.files {
		out[i] = f.path
	}
	return out
}

// Close unmaps every file. Tensor data handed out earlier must not be used
// afterwards: on Linux and macOS touching it faults.
func (r *Reader) Close() error {
	var first error
	for _, f := range r.files {
		if f.mem != nil {
			if err := mmap.Unmap(f.mem); err != nil && first == nil {
				first = fmt.Errorf("safetensors: %s: munmap: %w", f.path, err)
			}
			f.mem, f.data = nil, nil
		}
	}
	r.files = nil
	return first
}
