package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/ggufmodel"
	"github.com/tunellm/tune/quantize/wq"
	"github.com/tunellm/tune/tokenizer"
)

// modelPathHelp is the wording every --model flag uses.
const modelPathHelp = "model: a Hugging Face folder, a quantized (GPTQ / compressed-tensors) folder, or a .gguf file"

// isGGUF reports whether path is a GGUF file: a regular file whose first
// four bytes are the GGUF magic (the .gguf suffix is not required).
func isGGUF(path string) bool {
	st, err := os.Stat(path)
	if err != nil || st.IsDir() {
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		return strings.HasSuffix(strings.ToLower(path), ".gguf")
	}
	return string(magic[:]) == "GGUF"
}

// loadModel loads a model and, when adapterDir is set, attaches that PEFT
// adapter unmerged (as PeftModel.from_pretrained does): what --adapter means on
// every command that runs a model. path is a Hugging Face folder, a quantized
// safetensors folder (GPTQ or compressed-tensors layout: weights dequantized as
// the layout's loaders do) or a GGUF file (quantized matrices stay quantized,
// mmapped, and are dequantized block by block as the matmuls read them).
func loadModel(path, adapterDir string) (*model.Model, error) {
	be, err := deviceBackend()
	if err != nil {
		return nil, err
	}
	lo := model.LoadOptions{Backend: be}
	var m *model.Model
	switch {
	case isGGUF(path):
		m, err = ggufmodel.LoadModel(path, lo)
	case wq.IsQuantizedFolder(path):
		m, err = wq.LoadModel(path, lo)
	default:
		if st, serr := os.Stat(path); serr == nil && !st.IsDir() {
			return nil, fmt.Errorf("%s: not a model folder nor a GGUF file (no GGUF magic)", path)
		}
		m, err = model.Load(path, lo)
	}
	if err != nil {
		return nil, err
	}
	if adapterDir != "" {
		a, err := lora.Load(adapterDir, m.Config)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.SetAdapter(a)
	}
	return m, nil
}

// loadTokenizer loads the tokenizer of what loadModel loads: the folder's
// tokenizer.json (+ tokenizer_config.json, chat_template.jinja), or the one
// a GGUF's tokenizer.ggml.* metadata describes.
func loadTokenizer(path string) (*tokenizer.Tokenizer, error) {
	if isGGUF(path) {
		return ggufmodel.LoadTokenizer(path)
	}
	return tokenizer.Load(path)
}

// loadConfig reads the model configuration of a folder or GGUF file
// without loading weights.
func loadConfig(path string) (*model.Config, error) {
	if isGGUF(path) {
		return ggufmodel.LoadConfig(path)
	}
	return model.LoadConfig(path)
}

// sameTokenizer refuses a base and model whose vocabularies differ (KL
// divergence compares distributions token by token). Folders compare as
// eval.SameTokenizer does; a GGUF's tokenizer compares by its tokens.
func sameTokenizer(basePath, modelPath string, sameFolders func(a, b string) error) error {
	if !isGGUF(basePath) && !isGGUF(modelPath) {
		return sameFolders(basePath, modelPath)
	}
	ta, err := loadTokenizer(basePath)
	if err != nil {
		return err
	}
	tb, err := loadTokenizer(modelPath)
	if err != nil {
		return err
	}
	if ta.VocabSize() != tb.VocabSize() {
		return fmt.Errorf("eval: kld: tokenizers differ: %s has %d tokens, %s has %d", basePath, ta.VocabSize(), modelPath, tb.VocabSize())
	}
	for id := range ta.VocabSize() {
		if x, y := ta.Token(id), tb.Token(id); x != y {
			return fmt.Errorf("eval: kld: tokenizers differ: token %d is %q in %s, %q in %s", id, x, basePath, y, modelPath)
		}
	}
	return nil
}
