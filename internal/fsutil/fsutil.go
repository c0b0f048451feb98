// Package fsutil is how tune writes its outputs: a file or a folder appears
// under its final name only once complete (written to a temporary name in
// the same folder, synced, renamed), so a crash, a full disk or Ctrl-C never
// leaves half an artifact where a user or a server would read it.
package fsutil

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteFile writes data to path atomically with mode 0644 (artifacts are
// shared data, unlike os.CreateTemp's 0600).
func WriteFile(path string, data []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// CopyFile copies src to dst (mode 0644, synced); a missing src is not an
// error and copies nothing: the optional files of a model folder
// (generation_config.json, merges.txt, ...) are copied when present.
func CopyFile(src, dst string) error {
	in, err := os.Open(src)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// PublishDir renames the finished folder tmp to outDir. An existing outDir
// (replaced under --force) is moved aside first, put back if the rename
// fails, and removed after.
func PublishDir(tmp, outDir string) error {
	old := ""
	if _, err := os.Lstat(outDir); err == nil {
		old = tmp + ".old"
		if err := os.Rename(outDir, old); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, outDir); err != nil {
		if old != "" {
			os.Rename(old, outDir)
		}
		return err
	}
	if old != "" {
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("remove the replaced %s: %w", outDir, err)
		}
	}
	return nil
}
