// Package ggufmodel loads a GGUF file (llama.cpp's format, as `tune quantize`
// and llama.cpp's convert_hf_to_gguf.py write it) as a model.Model and a
// tokenizer.Tokenizer, so that everything that evaluates a Hugging Face folder
// evaluates a .gguf too. Quantized matrices (Q8_0 … Q6_K) stay quantized: they
// are zero-copy views of the mmapped file that the backend dequantizes while
// it computes; F32/F16/BF16 matrices are views too. Only the q/k projections
// of a `llama` file are copied, to undo the row permutation the converter
// applied (llama.cpp's rope pairs adjacent elements, HF's rotates halves).
//
// Supported: architectures qwen3, qwen2 and llama (general.architecture),
// tokenizers of tokenizer.ggml.model "gpt2" with pre "qwen2" or "llama-bpe"
// (byte-level BPE: Qwen2/Qwen3, Llama 3). Not supported: SentencePiece
// ("llama") vocabularies, yarn rope scaling, other architectures; those are
// errors that name the key.
package ggufmodel

import (
	"fmt"
	"github.com/tunellm/tune/internal/mmap"
	"os"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/quantize/gguf"
	"github.com/tunellm/tune/tokenizer"
)

// Load opens the GGUF file at path and returns its model and tokenizer. The
// model keeps the file mapped until its Close.
func Load(path string, opts model.LoadOptions) (*model.Model, *tokenizer.Tokenizer, error) {
	f, err := open(path)
	if err != nil {
		return nil, nil, err
	}
	tok, err := newTokenizer(f.gf, path)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	m, err := f.model(opts)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return m, tok, nil
}

// LoadModel is Load without the tokenizer.
func LoadModel(path string, opts model.LoadOptions) (*model.Model, error) {
	f, err := open(path)
	if err != nil {
		return nil, err
	}
	m, err := f.model(opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	return m, nil
}

// LoadTokenizer reads only the GGUF's metadata and builds its tokenizer.
func LoadTokenizer(path string) (*tokenizer.Tokenizer, error) {
	gf, err := gguf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ggufmodel: %w", err)
	}
	defer gf.Close()
	return newTokenizer(gf, path)
}

// LoadConfig reads only the GGUF's metadata and tensor index and returns the
// model configuration they imply.
func LoadConfig(path string) (*model.Config, error) {
	gf, err := gguf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ggufmodel: %w", err)
	}
	defer gf.Close()
	cfg, _, err := config(gf, path, nil)
	return cfg, err
}

// file is an open GGUF: its parsed header and the whole file mapped.
type file struct {
	path string
	gf   *gguf.File
	data []byte // the mapped file
}

func open(path string) (*file, error) {
	gf, err := gguf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ggufmodel: %w", err)
	}
	fd, err := os.Open(path)
	if err != nil {
		gf.Close()
		return nil, fmt.Errorf("ggufmodel: %w", err)
	}
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil {
		gf.Close()
		return nil, fmt.Errorf("ggufmodel: %w", err)
	}
	if st.Size() == 0 {
		gf.Close()
		return nil, fmt.Errorf("ggufmodel: %s: empty file", path)
	}
	data, err := mmap.Map(fd, st.Size())
	if err != nil {
		gf.Close()
		return nil, fmt.Errorf("ggufmodel: %s: %w", path, err)
	}
	return &file{path: path, gf: gf, data: data}, nil
}

// Close unmaps the file.
func (f *file) Close() error {
	err := f.gf.Close()
	if f.data != nil {
		if e := mmap.Unmap(f.data); err == nil {
			err = e
		}
		f.data = nil
	}
	return err
}

// tensorData returns the bytes of a tensor in the mapping.
func (f *file) tensorData(t gguf.TensorInfo) ([]byte, error) {
	a := f.gf.DataOffset + t.Offset
	if t.Offset < 0 || t.Size < 0 || a+t.Size > int64(len(f.data)) {
		return nil, fmt.Errorf("ggufmodel: %s: tensor %q: data [%d, %d) beyond file size %d", f.path, t.Name, a, a+t.Size, len(f.data))
	}
	return f.data[a : a+t.Size : a+t.Size], nil
}

func (f *file) model(opts model.LoadOptions) (*model.Model, error) {
	src, err := newSource(f)
	if err != nil {
		return nil, err
	}
	cfg, factors, err := config(f.gf, f.path, src.ropeFreqs)
	if err != nil {
		return nil, err
	}
	src.cfg = cfg
	if factors != nil {
		opts.RopeFreqFactors = factors
	}
	m, err := model.New(cfg, src, opts)
	if err != nil {
		return nil, err
	}
	m.SetCloser(f)
	return m, nil
}
