//go:build linux || darwin || freebsd

package hub

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tunellm/tune/hub/hubtest"
)

// A lock held by another process (as Python's filelock takes it: flock on
// .locks/models--org--name/<etag>.lock) makes the download wait for it.
func TestWaitsForPythonLock(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	c := newTestClient(t, srv)
	ref := Ref{Type: Model, ID: "Qwen/Qwen3-Tiny", Revision: "main"}
	lock := filepath.Join(c.CacheDir, ".locks", "models--Qwen--Qwen3-Tiny", helloBlobID+".lock")
	os.MkdirAll(filepath.Dir(lock), 0o755)
	f, err := os.OpenFile(lock, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		_, err := c.Download(context.Background(), ref, DownloadOptions{Include: []string{"config.json"}})
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if n := srv.Count("GET", "/config.json"); n != 0 {
		t.Fatalf("fetched under another process's lock")
	}
	// "Python" finishes the blob and releases the lock: nothing left to fetch.
	os.MkdirAll(filepath.Join(c.RepoDir(ref), "blobs"), 0o755)
	os.WriteFile(c.blobPath(ref, helloBlobID), []byte("hello\n"), 0o644)
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	f.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := srv.Count("GET", "/config.json"); n != 0 {
		t.Errorf("fetched a blob another process wrote")
	}
	if len(c.warns) != 1 || c.warns[0] != "hub: Qwen/Qwen3-Tiny: config.json: waiting for another download of it to finish" {
		t.Errorf("warnings %q", c.warns)
	}
}
