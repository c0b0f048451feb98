package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Kinds of failure, for errors.Is. Every error this package returns is one line.
var (
	ErrNotFound    = errors.New("not found")      // repository, revision or file
	ErrGated       = errors.New("gated")          // licence not accepted, or no token
	ErrAuth        = errors.New("bad token")      // HF_TOKEN refused
	ErrUnreachable = errors.New("unreachable")    // no network, DNS, refused, TLS
	ErrNotCached   = errors.New("not cached")     // offline and not in the cache
	ErrChecksum    = errors.New("checksum")       // sha256 or git blob sha1 mismatch, twice
	ErrNoWeights   = errors.New("no weights")     // nothing tune can load in the repo
	ErrNoSplit     = errors.New("no such split")  // a dataset split the repo does not have
	ErrDiskFull    = errors.New("disk full")      // ENOSPC, or not enough free space up front
	ErrProtocol    = errors.New("protocol error") // a reply that does not follow the Hub's API
)

// Error is a failure with its kind (one of the Err* values) and a one-line message.
type Error struct {
	Kind error
	Msg  string
	Err  error // the underlying error, if any
}

func (e *Error) Error() string   { return e.Msg }
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

func errorf(kind, err error, format string, args ...any) *Error {
	return &Error{Kind: kind, Err: err, Msg: fmt.Sprintf(format, args...)}
}

// File is one file of a repository revision, as the info endpoint lists it.
type File struct {
	Path   string
	Size   int64  // -1 when the info has no size
	SHA256 string // the LFS object id (sha256 of the content), "" for files not in LFS
	BlobID string // the git blob sha1
}

// Etag is the name huggingface_hub gives the file's blob in the cache: the sha256
// for LFS files, the git blob id for the others (the Hub's X-Linked-Etag / ETag).
func (f File) Etag() string {
	if f.SHA256 != "" {
		return f.SHA256
	}
	return f.BlobID
}

// Info is a repository at one commit.
type Info struct {
	Ref    Ref
	Commit string
	Files  []File
	Gated  bool
}

// apiInfo is the part of /api/models/{id}/revision/{rev}?blobs=true we read.
type apiInfo struct {
	SHA      string          `json:"sha"`
	Gated    json.RawMessage `json:"gated"` // false, "auto" or "manual"
	Siblings []struct {
		RFilename string `json:"rfilename"`
		Size      *int64 `json:"size"`
		BlobID    string `json:"blobId"`
		LFS       *struct {
			SHA256 string `json:"sha256"`
			Size   int64  `json:"size"`
		} `json:"lfs"`
	} `json:"siblings"`
}

var (
	hexRE  = regexp.MustCompile(`^[0-9a-f]+$`)
	etagRE = regexp.MustCompile(`^[0-9A-Za-z_\-]{8,128}$`)
)

// parseInfo checks the info reply: a commit hash, and file paths that stay inside a
// snapshot folder (the reply decides file names on disk, so it is untrusted input).
func parseInfo(ref Ref, body []byte) (*Info, error) {
	var a apiInfo
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, errorf(ErrProtocol, err, "hub: %s: repo info is not valid JSON: %v", ref, err)
	}
	if !commitRE.MatchString(a.SHA) {
		return nil, errorf(ErrProtocol, nil, "hub: %s: repo info has commit %q, want 40 hex digits", ref, a.SHA)
	}
	info := &Info{Ref: ref, Commit: a.SHA}
	g := strings.TrimSpace(string(a.Gated))
	info.Gated = g != "" && g != "false" && g != "null"
	seen := map[string]bool{}
	for _, s := range a.Siblings {
		if err := checkRepoPath(s.RFilename); err != nil {
			return nil, errorf(ErrProtocol, nil, "hub: %s: repo info lists file %q: %v", ref, s.RFilename, err)
		}
		if seen[s.RFilename] {
			return nil, errorf(ErrProtocol, nil, "hub: %s: repo info lists file %q twice", ref, s.RFilename)
		}
		seen[s.RFilename] = true
		f := File{Path: s.RFilename, Size: -1}
		if s.Size != nil {
			f.Size = *s.Size
		}
		if s.BlobID != "" {
			if len(s.BlobID) != 40 || !hexRE.MatchString(s.BlobID) {
				return nil, errorf(ErrProtocol, nil, "hub: %s: %s: blobId %q, want 40 hex digits", ref, s.RFilename, s.BlobID)
			}
			f.BlobID = s.BlobID
		}
		if s.LFS != nil {
			if len(s.LFS.SHA256) != 64 || !hexRE.MatchString(s.LFS.SHA256) {
				return nil, errorf(ErrProtocol, nil, "hub: %s: %s: lfs sha256 %q, want 64 hex digits", ref, s.RFilename, s.LFS.SHA256)
			}
			f.SHA256 = s.LFS.SHA256
			f.Size = s.LFS.Size
		}
		if f.Size < -1 {
			return nil, errorf(ErrProtocol, nil, "hub: %s: %s: size %d", ref, s.RFilename, f.Size)
		}
		info.Files = append(info.Files, f)
	}
	return info, nil
}

// checkRepoPath refuses paths that would leave the snapshot folder or that no
// repository can hold.
func checkRepoPath(p string) error {
	if p == "" || strings.HasPrefix(p, "/") || strings.ContainsAny(p, "\\\x00") {
		return fmt.Errorf("not a relative path")
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("not a clean relative path")
		}
	}
	return nil
}

func (c *Client) apiURL(ref Ref) string {
	return fmt.Sprintf("%s/api/%ss/%s/revision/%s?blobs=true", c.Endpoint, ref.Type, ref.ID, url.PathEscape(ref.Revision))
}

// fileURL is huggingface_hub's hf_hub_url: {endpoint}/[datasets/]{id}/resolve/{rev}/{path}.
func (c *Client) fileURL(ref Ref, rev, p string) string {
	prefix := ""
	if ref.Type == Dataset {
		prefix = "datasets/"
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return fmt.Sprintf("%s/%s%s/resolve/%s/%s", c.Endpoint, prefix, ref.ID, url.PathEscape(rev), strings.Join(segs, "/"))
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   15 * time.Second,
			ResponseHeaderTimeout: 60 * time.Second,
			MaxIdleConnsPerHost:   16,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: dropAuthOffHost,
	}
}

// dropAuthOffHost keeps the token for redirects within the Hub (renamed repos) and drops
// it for any other host and port (the CDN's signed URLs need none).
func dropAuthOffHost(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return fmt.Errorf("stopped after 10 redirects")
	}
	if req.URL.Host != via[0].URL.Host {
		req.Header.Del("Authorization")
	}
	return nil
}

func (c *Client) newRequest(ctx context.Context, method, u string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, errorf(ErrProtocol, err, "hub: %v", err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	ua := c.UserAgent
	if ua == "" {
		ua = "tune"
	}
	req.Header.Set("User-Agent", ua)
	return req, nil
}

// unreachable wraps a transport error (no response at all) as huggingface_hub's
// offline hint does.
func (c *Client) unreachable(err error) error {
	var ue *url.Error
	msg := err.Error()
	if errors.As(err, &ue) {
		msg = ue.Err.Error()
	}
	return errorf(ErrUnreachable, err, "hub: cannot reach %s (%s): check the network, or set HF_HUB_OFFLINE=1 to use only the cache in %s", c.Endpoint, msg, c.CacheDir)
}

// statusError maps a Hub error reply to one line, as huggingface_hub's
// hf_raise_for_status reads X-Error-Code: RepoNotFound, RevisionNotFound,
// EntryNotFound, GatedRepo. A bare 401 is what the Hub answers for a missing repo
// and for a private one without a token, so it reads as "not found".
func (c *Client) statusError(ref Ref, p string, resp *http.Response) error {
	code := resp.Header.Get("X-Error-Code")
	msg := resp.Header.Get("X-Error-Message")
	tokenHint := "set HF_TOKEN if it is private"
	if c.Token != "" {
		tokenHint = "check that HF_TOKEN may read it if it is private"
	}
	switch {
	case code == "GatedRepo" || (resp.StatusCode == 403 && strings.Contains(strings.ToLower(msg), "gated")):
		if c.Token == "" {
			return errorf(ErrGated, nil, "hub: %s is gated: accept its licence on the Hub (%s/%s) and set HF_TOKEN", ref.ID, c.Endpoint, ref.ID)
		}
		return errorf(ErrGated, nil, "hub: %s is gated: accept its licence on the Hub (%s/%s) with the account of HF_TOKEN", ref.ID, c.Endpoint, ref.ID)
	case resp.StatusCode == 401 && c.Token != "" && code == "" && strings.Contains(strings.ToLower(msg), "invalid"):
		return errorf(ErrAuth, nil, "hub: HF_TOKEN was refused (%s): make a new token at %s/settings/tokens", msg, c.Endpoint)
	case code == "RevisionNotFound":
		return errorf(ErrNotFound, nil, "hub: revision not found: %s@%s (a branch, tag or commit of %s)", ref.ID, ref.Revision, ref.ID)
	case code == "EntryNotFound" || (p != "" && resp.StatusCode == 404 && code == ""):
		return errorf(ErrNotFound, nil, "hub: %s: file not found: %s", ref, p)
	case code == "RepoNotFound" || resp.StatusCode == 401 || resp.StatusCode == 404:
		kind := "repository"
		if ref.Type == Dataset {
			kind = "dataset"
		}
		return errorf(ErrNotFound, nil, "hub: %s not found: %s (check the id, or %s)", kind, ref.ID, tokenHint)
	case resp.StatusCode == 403:
		return errorf(ErrGated, nil, "hub: %s: access denied (403 %s): %s", ref.ID, msg, tokenHint)
	}
	what := ref.String()
	if p != "" {
		what += ": " + p
	}
	detail := resp.Status
	if msg != "" {
		detail += ": " + msg
	}
	return errorf(ErrProtocol, nil, "hub: %s: %s %s: %s", what, resp.Request.Method, resp.Request.URL.Redacted(), detail)
}

// maxInfoBytes bounds the info reply (a repository with thousands of files is a few MB).
const maxInfoBytes = 64 << 20

// Info fetches the repository's commit and file list at ref.Revision.
func (c *Client) Info(ctx context.Context, ref Ref) (*Info, error) {
	if c.Offline {
		return nil, errorf(ErrNotCached, nil, "hub: %s: HF_HUB_OFFLINE is set: no repo info without the network", ref)
	}
	req, err := c.newRequest(ctx, "GET", c.apiURL(ref))
	if err != nil {
		return nil, err
	}
	var resp *http.Response
	for attempt := 0; ; attempt++ {
		resp, err = c.httpClient().Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, c.unreachable(err)
		}
		if (resp.StatusCode >= 500 || resp.StatusCode == 429) && attempt < 2 {
			resp.Body.Close()
			if err := c.sleep(ctx, attempt+1); err != nil {
				return nil, err
			}
			continue
		}
		break
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, c.statusError(ref, "", resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxInfoBytes+1))
	if err != nil {
		return nil, c.unreachable(err)
	}
	if len(body) > maxInfoBytes {
		return nil, errorf(ErrProtocol, nil, "hub: %s: repo info is over %d bytes", ref, maxInfoBytes)
	}
	return parseInfo(ref, body)
}

// head reads a file's metadata as huggingface_hub's get_hf_file_metadata does, without
// following redirects: the etag (X-Linked-Etag, else ETag) and size (X-Linked-Size,
// else Content-Length). Used when the info has no blob ids for a file.
func (c *Client) head(ctx context.Context, ref Ref, rev string, p string) (etag string, size int64, err error) {
	req, err := c.newRequest(ctx, "HEAD", c.fileURL(ref, rev, p))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Accept-Encoding", "identity")
	hc := *c.httpClient()
	hc.CheckRedirect = func(r *http.Request, via []*http.Request) error {
		// Relative redirects stay on the Hub (a renamed repo); absolute ones go to the CDN
		// and carry the headers we want on this reply already.
		if r.URL.Host == via[0].URL.Host && len(via) < 10 {
			return nil
		}
		return http.ErrUseLastResponse
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "", 0, ctx.Err()
		}
		return "", 0, c.unreachable(err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return "", 0, c.statusError(ref, p, resp)
	}
	etag = resp.Header.Get("X-Linked-Etag")
	if etag == "" {
		etag = resp.Header.Get("ETag")
	}
	etag = normalizeEtag(etag)
	if !etagRE.MatchString(etag) {
		return "", 0, errorf(ErrProtocol, nil, "hub: %s: %s: no usable ETag in the Hub's reply (%q)", ref, p, etag)
	}
	sz := resp.Header.Get("X-Linked-Size")
	if sz == "" {
		sz = resp.Header.Get("Content-Length")
	}
	size = -1
	if n, err := strconv.ParseInt(sz, 10, 64); err == nil && n >= 0 {
		size = n
	}
	return etag, size, nil
}

// normalizeEtag is huggingface_hub's _normalize_etag: drop a weak "W/" prefix and quotes.
func normalizeEtag(s string) string {
	s = strings.TrimPrefix(strings.TrimSpace(s), "W/")
	return strings.Trim(s, `"`)
}

func (c *Client) sleep(ctx context.Context, n int) error {
	d := c.retryWait
	if d == 0 {
		d = time.Second
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Duration(n) * d):
		return nil
	}
}
