//go:build !linux && !darwin

package mmap

import (
	"fmt"
	"io"
	"os"
)

// Map reads the file into memory where we do not map files (Windows and
// others): simpler than a second mapping API, at the cost of RAM, and the
// data is writable there, so callers must treat it as read-only by contract.
func Map(f *os.File, size int64) ([]byte, error) {
	if int64(int(size)) != size {
		return nil, fmt.Errorf("file of %d bytes too large to read on this platform", size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, size), b); err != nil {
		return nil, fmt.Errorf("read %d bytes: %w", size, err)
	}
	return b, nil
}

func Unmap(b []byte) error { return nil }
