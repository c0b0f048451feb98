//go:build linux || darwin

package mmap

import (
	"fmt"
	"os"
	"syscall"
)

// Map maps size bytes of f read-only. PROT_READ makes a stray write
// to Tensor.Data fault instead of silently corrupting the weights (or, with
// MAP_SHARED, the file). size must be > 0: mmap rejects length 0.
func Map(f *os.File, size int64) ([]byte, error) {
	if int64(int(size)) != size {
		return nil, fmt.Errorf("file of %d bytes too large to map on this platform", size)
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", size, err)
	}
	return b, nil
}

func Unmap(b []byte) error { return syscall.Munmap(b) }
