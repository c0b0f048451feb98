package pipeline

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/gguf"
)

// pathBytes is a file's size, or the sum of a folder's files (validation.json
// excluded).
func pathBytes(path string) int64 {
	var n int64
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "validation.json" {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// params counts the elements of a model folder's safetensors.
func params(dir string) int64 {
	r, err := safetensors.Open(dir)
	if err != nil {
		return 0
	}
	defer r.Close()
	var n int64
	for _, name := range r.Names() {
		if t, err := r.Tensor(name); err == nil {
			n += int64(t.NumElements())
		}
	}
	return n
}

// bitsPerWeight is 8 x the tensor bytes over the reference's parameter count:
// a GGUF's tensor data (as llama.cpp counts bpw), a folder's .safetensors
// files (codes, scales and zeros, and the layers kept dense). 0 when unknown.
func bitsPerWeight(path, kind, ref string) float64 {
	n := params(ref)
	if n == 0 {
		return 0
	}
	var b int64
	if kind == "gguf" {
		f, err := gguf.Open(path)
		if err != nil {
			return 0
		}
		defer f.Close()
		for _, t := range f.Tensors {
			b += t.Size
		}
	} else {
		ents, err := os.ReadDir(path)
		if err != nil {
			return 0
		}
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".safetensors") {
				if fi, err := e.Info(); err == nil {
					b += fi.Size()
				}
			}
		}
	}
	return 8 * float64(b) / float64(n)
}
