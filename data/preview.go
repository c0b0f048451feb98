package data

import (
	"errors"
	"fmt"

	"github.com/tunellm/tune/tokenizer"
)

// Preview returns the examples of the first n rows of cfg.Path in file order,
// rendered, tokenized and masked exactly as Prepare does, but unpacked,
// untruncated and without the cache: what `tune data preview` shows. A row whose
// template rewrites earlier turns may give more than one example.
func Preview(cfg Config, tok *tokenizer.Tokenizer, n int) ([]Example, error) {
	if n < 1 {
		return nil, fmt.Errorf("data: preview: want at least 1 row, got %d", n)
	}
	if cfg.Format == "" {
		cfg.Format = "chat"
	}
	f, err := newFormatter(cfg, tok)
	if err != nil {
		return nil, err
	}
	src, err := Open(cfg.Path)
	if err != nil {
		return nil, err
	}
	var out []Example
	rows := 0
	errEnough := errors.New("enough rows")
	err = src.Rows(f.columns(src.Columns()), func(ref RowRef, row Row) error {
		ex, err := f.examples(ref, row)
		if err != nil {
			if cfg.SkipBadRows {
				return nil
			}
			return err
		}
		out = append(out, ex...)
		if rows++; rows == n {
			return errEnough
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		return nil, err
	}
	return out, nil
}
