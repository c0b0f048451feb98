package hub

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// DownloadOptions choose what a Download fetches.
type DownloadOptions struct {
	// Include globs (fnmatch, see Glob) replace the default selection: for a model the
	// configs, tokenizer files and safetensors weights; for a dataset its Parquet files.
	// Pickles (*.bin, *.pt, *.pth, ...) are never fetched.
	Include []string
	// Split keeps, of a dataset's files, those of one split (see SplitOf); "" keeps all.
	Split string
}

// Snapshot is a repository revision in the cache.
type Snapshot struct {
	Ref       Ref
	Commit    string
	Dir       string // snapshots/<commit>: pass it where a model folder is expected
	Files     []SnapshotFile
	Bytes     int64 // size of Files
	Fetched   int64 // bytes received over the network by this call
	FromCache bool  // the Hub was not asked (offline, or out of reach)
}

// SnapshotFile is one file of a Snapshot.
type SnapshotFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Cached bool   `json:"cached"` // already in the cache before this call
}

// ResolveModel parses "org/name[@rev]" and downloads the model's files (or finds them
// in the cache when offline).
func (c *Client) ResolveModel(ctx context.Context, id string, opts DownloadOptions) (*Snapshot, error) {
	ref, err := ParseRef(Model, id)
	if err != nil {
		return nil, err
	}
	return c.Download(ctx, ref, opts)
}

// ResolveDataset parses "org/name[@rev]" and downloads the dataset's Parquet files
// (or its JSONL/Arrow files when it has no Parquet).
func (c *Client) ResolveDataset(ctx context.Context, id string, opts DownloadOptions) (*Snapshot, error) {
	ref, err := ParseRef(Dataset, id)
	if err != nil {
		return nil, err
	}
	return c.Download(ctx, ref, opts)
}

// Download brings the selected files of ref into the cache and returns the snapshot,
// as huggingface_hub's snapshot_download does: one repo-info call fixes the commit,
// refs/<revision> records it, every file is fetched at that commit (a few at a time,
// resuming partial blobs), checked against the Hub's sha256 (LFS) or git blob id,
// and linked into snapshots/<commit>/. Offline, or when the Hub cannot be reached, the
// cached snapshot of the revision is used.
func (c *Client) Download(ctx context.Context, ref Ref, opts DownloadOptions) (*Snapshot, error) {
	if c.Offline {
		s, err := c.cachedSnapshot(ref, "HF_HUB_OFFLINE is set")
		if err != nil {
			return nil, err
		}
		return filterCached(s, opts)
	}
	info, err := c.Info(ctx, ref)
	if err != nil {
		if errors.Is(err, ErrUnreachable) {
			if s, cerr := c.cachedSnapshot(ref, "the Hub is out of reach"); cerr == nil {
				c.warn(fmt.Sprintf("%v; using the cached snapshot %s", err, s.Dir))
				return filterCached(s, opts)
			}
		}
		return nil, err
	}
	sel, err := selectFiles(info, opts.Include)
	if err != nil {
		return nil, err
	}
	if opts.Split != "" {
		if sel, err = pickSplit(ref, sel, opts.Split); err != nil {
			return nil, err
		}
	}
	if err := c.writeRef(ref, info.Commit); err != nil {
		return nil, err
	}
	prog := &progress{fn: c.Progress}
	s := &Snapshot{Ref: ref, Commit: info.Commit, Dir: c.SnapshotDir(ref, info.Commit)}

	// A sharded model's index says which *.safetensors are its weights: fetch it first.
	fetchedFirst := map[string]bool{}
	if len(opts.Include) == 0 && ref.Type == Model {
		for _, f := range sel {
			if f.Path != "model.safetensors.index.json" {
				continue
			}
			cached, err := c.fetchFile(ctx, ref, info.Commit, f, prog)
			if err != nil {
				return nil, err
			}
			fetchedFirst[f.Path] = !cached
			b, err := os.ReadFile(filepath.Join(s.Dir, filepath.FromSlash(f.Path)))
			if err != nil {
				return nil, fmt.Errorf("hub: %v", err)
			}
			if sel, err = narrowToIndex(ref, sel, f.Path, b); err != nil {
				return nil, err
			}
		}
	}

	// What is left to fetch, and is there room for it? (total counts partial files in
	// whole, need only their missing bytes.)
	var need, total int64
	for _, f := range sel {
		s.Bytes += max(f.Size, 0)
		if fileExists(filepath.Join(s.Dir, filepath.FromSlash(f.Path))) {
			continue
		}
		if e := f.Etag(); e != "" && fileExists(c.blobPath(ref, e)) {
			continue
		}
		n := max(f.Size, 0)
		total += n
		if e := f.Etag(); e != "" {
			if st, err := os.Stat(c.blobPath(ref, e) + ".incomplete"); err == nil && st.Mode().IsRegular() {
				n -= min(st.Size(), n)
			}
		}
		need += n
	}
	if err := os.MkdirAll(filepath.Join(c.RepoDir(ref), "blobs"), 0o755); err != nil {
		return nil, fmt.Errorf("hub: %v", err)
	}
	if free, ok := diskFreeFn(filepath.Join(c.RepoDir(ref), "blobs")); ok && need > free {
		return nil, errorf(ErrDiskFull, nil, "hub: %s needs %s more but %s has %s free: free some space, or set HF_HUB_CACHE to a larger disk", ref, human(need), c.CacheDir, human(free))
	}
	prog.setTotal(total)

	// Fetch a few files at a time; the first error cancels the others.
	workers := c.Workers
	if workers <= 0 {
		workers = 4
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	files := make([]SnapshotFile, len(sel))
	errs := make([]error, len(sel))
	var wg sync.WaitGroup
	sem := make(chan struct{}, workers)
	for i, f := range sel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			cached, err := c.fetchFile(ctx, ref, info.Commit, f, prog)
			if err != nil {
				errs[i] = err
				cancel()
				return
			}
			files[i] = SnapshotFile{Path: f.Path, Size: f.Size, Cached: cached && !fetchedFirst[f.Path]}
		}()
	}
	wg.Wait()
	// Report the first real failure, not the cancellations it caused.
	var first error
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			first = err
			break
		}
		if err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return nil, first
	}
	for i := range files {
		if files[i].Size < 0 {
			if st, err := os.Stat(filepath.Join(s.Dir, filepath.FromSlash(files[i].Path))); err == nil {
				files[i].Size = st.Size()
				s.Bytes += st.Size()
			}
		}
	}
	s.Files = files
	s.Fetched = prog.received()
	return s, nil
}

// filterCached keeps the cached files that opts.Include and opts.Split choose.
func filterCached(s *Snapshot, opts DownloadOptions) (*Snapshot, error) {
	if len(opts.Include) == 0 && opts.Split == "" {
		return s, nil
	}
	info := &Info{Ref: s.Ref}
	for _, f := range s.Files {
		info.Files = append(info.Files, File{Path: f.Path, Size: f.Size})
	}
	sel := info.Files
	var err error
	if len(opts.Include) > 0 {
		if sel, err = selectFiles(info, opts.Include); err != nil {
			return nil, err
		}
	}
	if opts.Split != "" {
		if sel, err = pickSplit(s.Ref, sel, opts.Split); err != nil {
			return nil, err
		}
	}
	s.Files, s.Bytes = nil, 0
	for _, f := range sel {
		s.Files = append(s.Files, SnapshotFile{Path: f.Path, Size: f.Size, Cached: true})
		s.Bytes += f.Size
	}
	return s, nil
}

// fetchFile makes snapshots/<commit>/<path> exist. cached is true when nothing was
// downloaded.
func (c *Client) fetchFile(ctx context.Context, ref Ref, commit string, f File, prog *progress) (cached bool, err error) {
	dst := filepath.Join(c.SnapshotDir(ref, commit), filepath.FromSlash(f.Path))
	if fileExists(dst) {
		return true, nil
	}
	if f.Etag() == "" {
		etag, size, err := c.head(ctx, ref, commit, f.Path)
		if err != nil {
			return false, err
		}
		f.Size = size
		if len(etag) == 64 && hexRE.MatchString(etag) {
			f.SHA256 = etag
		} else if len(etag) == 40 && hexRE.MatchString(etag) {
			f.BlobID = etag
		} else {
			f.BlobID = etag // not a hash we can check; still the blob's name
		}
	}
	blob := c.blobPath(ref, f.Etag())
	cached = true
	if !fileExists(blob) {
		unlock, err := lockBlob(ctx, c.lockPath(ref, f.Etag()), func() {
			c.warn(fmt.Sprintf("hub: %s: %s: waiting for another download of it to finish", ref, f.Path))
		})
		if err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			return false, fmt.Errorf("hub: %s: locking %s: %v", ref, c.lockPath(ref, f.Etag()), err)
		}
		defer unlock()
		// The other process may have finished it while we waited.
		if !fileExists(blob) {
			cached = false
			if err := c.fetchBlob(ctx, ref, commit, f, blob, prog); err != nil {
				return false, err
			}
		}
	}
	return cached, linkSnapshot(blob, dst)
}

// fetchBlob downloads f into blob+".incomplete", checks it and renames it to blob. A
// checksum mismatch discards the bytes and downloads once more before failing.
func (c *Client) fetchBlob(ctx context.Context, ref Ref, commit string, f File, blob string, prog *progress) error {
	inc := blob + ".incomplete"
	if err := os.MkdirAll(filepath.Dir(blob), 0o755); err != nil {
		return diskError(ref, filepath.Dir(blob), err, f.Size)
	}
	for attempt := 1; ; attempt++ {
		got, want, n, err := c.fetchIncomplete(ctx, ref, commit, f, inc, prog)
		if err != nil {
			return err
		}
		if f.Size >= 0 && n != f.Size {
			os.Remove(inc)
			prog.discard(n)
			if attempt == 2 {
				return errorf(ErrChecksum, nil, "hub: %s: %s: received %d bytes, the Hub lists %d (downloaded twice)", ref, f.Path, n, f.Size)
			}
			c.warn(fmt.Sprintf("hub: %s: %s: received %d bytes, the Hub lists %d; downloading it again", ref, f.Path, n, f.Size))
			continue
		}
		if got == want {
			if err := os.Rename(inc, blob); err != nil {
				return fmt.Errorf("hub: %v", err)
			}
			return nil
		}
		os.Remove(inc)
		prog.discard(n)
		algo := "sha256"
		if f.SHA256 == "" {
			algo = "git blob sha1"
		}
		if attempt == 2 {
			return errorf(ErrChecksum, nil, "hub: %s: %s: %s mismatch: got %s, want %s (downloaded twice; the file was discarded)", ref, f.Path, algo, got, want)
		}
		c.warn(fmt.Sprintf("hub: %s: %s: %s mismatch (got %s, want %s); downloading it again", ref, f.Path, algo, got, want))
	}
}

// maxTries bounds the GETs of one file that end in a dropped connection or a 5xx; each
// retry resumes where the last one stopped.
const maxTries = 5

// fetchIncomplete appends the rest of the file to inc (resuming with a Range request
// from its current size) and returns the checksum of the whole of inc, the checksum
// wanted ("" when the Hub gave none) and inc's size.
func (c *Client) fetchIncomplete(ctx context.Context, ref Ref, commit string, f File, inc string, prog *progress) (got, want string, n int64, err error) {
	out, err := os.OpenFile(inc, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", "", 0, diskError(ref, inc, err, f.Size)
	}
	defer out.Close()

	// The checksum covers the bytes already there, then what arrives.
	var h hash.Hash
	newHash := func() {
		switch {
		case f.SHA256 != "":
			h, want = sha256.New(), f.SHA256
		case f.BlobID != "" && f.Size >= 0:
			// git hashes "blob <size>\0" + content.
			h, want = sha1.New(), f.BlobID
			fmt.Fprintf(h, "blob %d\x00", f.Size)
		default:
			h, want = nil, ""
		}
	}
	newHash()
	hw := func() io.Writer {
		if h == nil {
			return io.Discard
		}
		return h
	}
	st, err := out.Stat()
	if err != nil {
		return "", "", 0, diskError(ref, inc, err, f.Size)
	}
	if st.Mode().IsRegular() {
		n = st.Size()
	}
	if f.Size >= 0 && n > f.Size {
		if err := out.Truncate(0); err != nil {
			return "", "", 0, diskError(ref, inc, err, f.Size)
		}
		n = 0
	}
	if n > 0 {
		if _, err := io.CopyN(hw(), out, n); err != nil {
			return "", "", 0, diskError(ref, inc, err, f.Size)
		}
		prog.resumed(n)
	}
	if _, err := out.Seek(n, io.SeekStart); err != nil && st.Mode().IsRegular() {
		return "", "", 0, diskError(ref, inc, err, f.Size)
	}

	u := c.fileURL(ref, commit, f.Path)
	var lastErr error
	for try := 1; try <= maxTries; try++ {
		if f.Size >= 0 && n == f.Size {
			lastErr = nil
			break
		}
		if try > 1 {
			if err := c.sleep(ctx, try-1); err != nil {
				return "", "", 0, err
			}
		}
		req, err := c.newRequest(ctx, "GET", u)
		if err != nil {
			return "", "", 0, err
		}
		if n > 0 {
			req.Header.Set("Range", "bytes="+strconv.FormatInt(n, 10)+"-")
		}
		resp, err := c.httpClient().Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return "", "", 0, ctx.Err()
			}
			lastErr = c.unreachable(err)
			continue
		}
		switch {
		case resp.StatusCode == http.StatusPartialContent && n > 0:
			if start, ok := rangeStart(resp.Header.Get("Content-Range")); !ok || start != n {
				resp.Body.Close()
				return "", "", 0, errorf(ErrProtocol, nil, "hub: %s: %s: asked for bytes %d-, got Content-Range %q", ref, f.Path, n, resp.Header.Get("Content-Range"))
			}
		case resp.StatusCode == http.StatusOK:
			if n > 0 { // the server ignored the Range: start over
				if err := out.Truncate(0); err != nil {
					resp.Body.Close()
					return "", "", 0, diskError(ref, inc, err, f.Size)
				}
				out.Seek(0, io.SeekStart)
				prog.discard(n)
				n = 0
				newHash()
			}
		case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && n > 0:
			// The partial file is as long as the file or longer than it: start over.
			resp.Body.Close()
			lastErr = errorf(ErrProtocol, nil, "hub: %s: %s: 416 for bytes %d-", ref, f.Path, n)
			out.Truncate(0)
			out.Seek(0, io.SeekStart)
			prog.discard(n)
			n = 0
			newHash()
			continue
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
			resp.Body.Close()
			lastErr = errorf(ErrProtocol, nil, "hub: %s: %s: %s", ref, f.Path, resp.Status)
			continue
		default:
			err := c.statusError(ref, f.Path, resp)
			resp.Body.Close()
			return "", "", 0, err
		}
		m, rerr, werr := copyBody(out, hw(), resp.Body, prog)
		resp.Body.Close()
		n += m
		if werr != nil {
			return "", "", 0, diskError(ref, inc, werr, f.Size-n)
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return "", "", 0, ctx.Err()
			}
			lastErr = errorf(ErrUnreachable, rerr, "hub: %s: %s: connection lost after %d bytes (%v)", ref, f.Path, n, rerr)
			continue
		}
		lastErr = nil
		if f.Size < 0 || n >= f.Size {
			break // a file longer than listed is reported by fetchBlob's size check
		}
		lastErr = errorf(ErrUnreachable, nil, "hub: %s: %s: the reply ended after %d of %d bytes", ref, f.Path, n, f.Size)
	}
	if lastErr != nil {
		return "", "", 0, fmt.Errorf("%w (%d tries; run again to resume from %s)", lastErr, maxTries, human(n))
	}
	if err := out.Sync(); err != nil && st.Mode().IsRegular() {
		return "", "", 0, diskError(ref, inc, err, 0)
	}
	if h != nil {
		got = hex.EncodeToString(h.Sum(nil))
	}
	return got, want, n, nil
}

// copyBody copies body to out and hw, counting progress; it tells a failed read (the
// network) from a failed write (the disk).
func copyBody(out io.Writer, hw io.Writer, body io.Reader, prog *progress) (n int64, rerr, werr error) {
	buf := make([]byte, 256<<10)
	for {
		k, err := body.Read(buf)
		if k > 0 {
			if _, werr := out.Write(buf[:k]); werr != nil {
				return n, nil, werr
			}
			hw.Write(buf[:k])
			n += int64(k)
			prog.add(int64(k))
		}
		if err == io.EOF {
			return n, nil, nil
		}
		if err != nil {
			return n, err, nil
		}
	}
}

// rangeStart reads the first byte position of a "bytes START-END/TOTAL" Content-Range.
func rangeStart(s string) (int64, bool) {
	s, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, false
	}
	a, _, ok := strings.Cut(s, "-")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseInt(a, 10, 64)
	return v, err == nil
}

func diskError(ref Ref, p string, err error, left int64) error {
	if errors.Is(err, syscall.ENOSPC) {
		more := ""
		if left > 0 {
			more = fmt.Sprintf(" (%s still to write)", human(left))
		}
		return errorf(ErrDiskFull, err, "hub: %s: disk full writing %s%s: free some space and run again to resume, or set HF_HUB_CACHE to a larger disk", ref, p, more)
	}
	return fmt.Errorf("hub: %s: writing %s: %w", ref, p, err)
}

func (c *Client) warn(msg string) {
	if c.Warn != nil {
		c.Warn(msg)
	}
}

// progress adds up the bytes of all files of a Download and reports them serially.
type progress struct {
	mu          sync.Mutex
	done, total int64
	fetched     int64
	fn          func(done, total int64)
}

func (p *progress) setTotal(t int64) {
	p.mu.Lock()
	p.total = t
	p.mu.Unlock()
}

// add counts n bytes received from the network.
func (p *progress) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fetched += n
	p.moved(n)
}

// resumed counts the n bytes of a partial file found in the cache.
func (p *progress) resumed(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.moved(n)
}

// discard takes back n bytes that failed a check or that a server made us refetch.
func (p *progress) discard(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.moved(-n)
}

func (p *progress) moved(n int64) {
	p.done += n
	if p.fn != nil {
		p.fn(p.done, max(p.total, p.done))
	}
}

func (p *progress) received() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fetched
}

// human writes a byte count as "1.2 GB".
func human(n int64) string {
	f := float64(n)
	for _, u := range []string{"B", "kB", "MB", "GB"} {
		if f < 1000 {
			if u == "B" {
				return fmt.Sprintf("%d B", n)
			}
			return fmt.Sprintf("%.1f %s", f, u)
		}
		f /= 1000
	}
	return fmt.Sprintf("%.1f TB", f)
}

// diskFreeFn is diskFree, replaced by tests.
var diskFreeFn = diskFree

// DataPath names exactly the snapshot's files for a dataset reader: the file itself
// when there is one, else a glob (data/train-*.parquet, default/train/*.parquet) that
// matches them and no other file of the snapshot folder (which keeps the files of
// every split fetched so far).
func (s *Snapshot) DataPath() (string, error) {
	if len(s.Files) == 0 {
		return "", fmt.Errorf("hub: %s: no files", s.Ref)
	}
	if len(s.Files) == 1 {
		return filepath.Join(s.Dir, filepath.FromSlash(s.Files[0].Path)), nil
	}
	dir, ext := path.Dir(s.Files[0].Path), path.Ext(s.Files[0].Path)
	prefix := path.Base(s.Files[0].Path)
	want := map[string]bool{}
	for _, f := range s.Files {
		if path.Dir(f.Path) != dir || path.Ext(f.Path) != ext {
			return "", fmt.Errorf("hub: %s: the files are in several folders (%s, %s): name one with --include", s.Ref, dir, path.Dir(f.Path))
		}
		b := path.Base(f.Path)
		for !strings.HasPrefix(b, prefix) {
			prefix = prefix[:len(prefix)-1]
		}
		want[filepath.Join(s.Dir, filepath.FromSlash(f.Path))] = true
	}
	// Shards of one split: <split>-*, the name the Hub's layout suggests.
	if m := shardRE.FindStringSubmatch(path.Base(s.Files[0].Path)); m != nil && strings.HasPrefix(prefix, m[1]+"-") {
		prefix = m[1] + "-"
	}
	glob := filepath.Join(s.Dir, filepath.FromSlash(dir), globEscape(prefix)+"*"+globEscape(ext))
	got, err := filepath.Glob(glob)
	if err != nil {
		return "", fmt.Errorf("hub: %s: %v", s.Ref, err)
	}
	if len(got) != len(want) {
		return "", fmt.Errorf("hub: %s: no glob names just these %d files (%s matches %d)", s.Ref, len(want), glob, len(got))
	}
	for _, g := range got {
		if !want[g] {
			return "", fmt.Errorf("hub: %s: no glob names just these %d files (%s also matches %s)", s.Ref, len(want), glob, g)
		}
	}
	return glob, nil
}

// globEscape quotes filepath.Match's special characters.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
