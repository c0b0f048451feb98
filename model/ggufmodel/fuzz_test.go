package ggufmodel

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/quantize"
)

// FuzzLoad: whatever the bytes, Load returns a model and tokenizer or an
// error, never panics (metadata of the wrong types, tensors of the wrong
// shapes or types, data beyond the file, unsupported tokenizers).
func FuzzLoad(f *testing.F) {
	dir := f.TempDir()
	for i, typ := range []string{"Q8_0"} {
		p := filepath.Join(dir, typ+".gguf")
		src := filepath.Join(modelsDir, exportable[i*2])
		var err error
		if typ == "f32" {
			err = quantize.ExportGGUF(src, p, typ)
		} else {
			_, err = quantize.QuantizeGGUF(src, p, quantize.GGUFOptions{Type: typ})
		}
		if err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "f.gguf")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		m, tok, err := Load(p, model.LoadOptions{})
		if err != nil {
			return
		}
		defer m.Close()
		tok.Encode("hi <|im_end|>", true)
	})
}
