package eval

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tunellm/tune/tokenizer"
)

// SameTokenizer checks that two model folders tokenize alike, which a KL
// divergence between their next-token distributions presumes: identical
// tokenizer.json bytes, or else the same vocabulary size and the same token
// string at every id. The error names the first difference.
func SameTokenizer(baseDir, modelDir string) error {
	a, errA := os.ReadFile(filepath.Join(baseDir, "tokenizer.json"))
	b, errB := os.ReadFile(filepath.Join(modelDir, "tokenizer.json"))
	if errA == nil && errB == nil && bytes.Equal(a, b) {
		return nil
	}
	ta, err := tokenizer.Load(baseDir)
	if err != nil {
		return err
	}
	tb, err := tokenizer.Load(modelDir)
	if err != nil {
		return err
	}
	return sameVocab(baseDir, modelDir, ta, tb)
}

func sameVocab(baseDir, modelDir string, ta, tb *tokenizer.Tokenizer) error {
	if ta.VocabSize() != tb.VocabSize() {
		return fmt.Errorf("eval: kld: tokenizers differ: %s has %d tokens, %s has %d", baseDir, ta.VocabSize(), modelDir, tb.VocabSize())
	}
	for id := range ta.VocabSize() {
		if x, y := ta.Token(id), tb.Token(id); x != y {
			return fmt.Errorf("eval: kld: tokenizers differ: token %d is %q in %s, %q in %s", id, x, baseDir, y, modelDir)
		}
	}
	return nil
}
