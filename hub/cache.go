package hub

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
)

// RepoDir is the repository's folder in the cache, huggingface_hub's
// repo_folder_name: "models--org--name" or "datasets--org--name".
func (c *Client) RepoDir(ref Ref) string {
	return filepath.Join(c.CacheDir, string(ref.Type)+"s--"+strings.ReplaceAll(ref.ID, "/", "--"))
}

// SnapshotDir is the folder of the repository's files at a commit.
func (c *Client) SnapshotDir(ref Ref, commit string) string {
	return filepath.Join(c.RepoDir(ref), "snapshots", commit)
}

func (c *Client) blobPath(ref Ref, etag string) string {
	return filepath.Join(c.RepoDir(ref), "blobs", etag)
}

// lockPath is huggingface_hub's blob lock: .locks/<repo folder>/<etag>.lock.
func (c *Client) lockPath(ref Ref, etag string) string {
	return filepath.Join(c.CacheDir, ".locks", filepath.Base(c.RepoDir(ref)), etag+".lock")
}

func (c *Client) refPath(ref Ref) string {
	return filepath.Join(c.RepoDir(ref), "refs", filepath.FromSlash(ref.Revision))
}

// CachedCommit is the commit ref.Revision names in the cache: the revision itself when
// it is a commit hash, else the content of refs/<revision>.
func (c *Client) CachedCommit(ref Ref) (string, error) {
	if commitRE.MatchString(ref.Revision) {
		return ref.Revision, nil
	}
	b, err := os.ReadFile(c.refPath(ref))
	if err != nil {
		return "", err
	}
	commit := strings.TrimSpace(string(b))
	if !commitRE.MatchString(commit) {
		return "", fmt.Errorf("%s holds %q, want a 40-digit commit hash", c.refPath(ref), commit)
	}
	return commit, nil
}

// writeRef records that ref.Revision pointed to commit (atomically: a reader never
// sees a half-written ref).
func (c *Client) writeRef(ref Ref, commit string) error {
	if ref.Revision == commit {
		return nil
	}
	p := c.refPath(ref)
	if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == commit {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("hub: %v", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".ref-*")
	if err != nil {
		return fmt.Errorf("hub: %v", err)
	}
	_, err = tmp.WriteString(commit)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("hub: writing %s: %v", p, err)
	}
	return nil
}

// linkSnapshot points snapshots/<commit>/<path> at the blob with a relative symlink,
// as huggingface_hub's _create_symlink does, so the cache folder can move. The link is
// made under a temporary name and renamed over any stale one.
func linkSnapshot(blob, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("hub: %v", err)
	}
	rel, err := filepath.Rel(filepath.Dir(dst), blob)
	if err != nil {
		rel = blob
	}
	tmp := filepath.Join(filepath.Dir(dst), fmt.Sprintf(".%s.%d-%d.link", filepath.Base(dst), os.Getpid(), linkSeq.Add(1)))
	os.Remove(tmp)
	if err := os.Symlink(rel, tmp); err != nil {
		// No symlinks (some Windows setups): a hard link still shares the bytes.
		if lerr := os.Link(blob, tmp); lerr != nil {
			return fmt.Errorf("hub: linking %s to %s: %v", dst, blob, err)
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("hub: %v", err)
	}
	return nil
}

// linkSeq makes temporary link names unique within the process.
var linkSeq atomic.Int64

// fileExists reports whether p (following symlinks) is a regular file.
func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// cachedSnapshot is a snapshot served from the cache alone (offline, or the Hub out of
// reach). why says which, for the error message.
func (c *Client) cachedSnapshot(ref Ref, why string) (*Snapshot, error) {
	commit, err := c.CachedCommit(ref)
	if err != nil {
		return nil, errorf(ErrNotCached, err, "hub: %s is not in the cache %s (%s): download it once with network access (tune download %s)", ref, c.CacheDir, why, ref)
	}
	dir := c.SnapshotDir(ref, commit)
	s := &Snapshot{Ref: ref, Commit: commit, Dir: dir, FromCache: true}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() {
			return nil // a dangling link: that file is not in the cache
		}
		rel, _ := filepath.Rel(dir, p)
		s.Files = append(s.Files, SnapshotFile{Path: filepath.ToSlash(rel), Size: st.Size(), Cached: true})
		s.Bytes += st.Size()
		return nil
	})
	if err != nil || len(s.Files) == 0 {
		return nil, errorf(ErrNotCached, err, "hub: %s is not in the cache %s (%s; no files in %s): download it once with network access (tune download %s)", ref, c.CacheDir, why, dir, ref)
	}
	sort.Slice(s.Files, func(i, j int) bool { return s.Files[i].Path < s.Files[j].Path })
	return s, nil
}
