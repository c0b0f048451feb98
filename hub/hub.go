// Package hub downloads model and dataset repositories from the Hugging Face Hub into
// the cache huggingface_hub uses, so that files fetched by Python tools are reused by
// tune and the other way round.
//
// The protocol and the cache follow huggingface_hub (constants.py, file_download.py,
// hf_api.py):
//
//	GET  {endpoint}/api/models/{org}/{name}/revision/{rev}?blobs=true   repo info: commit sha,
//	     siblings [{rfilename, size, blobId, lfs: {sha256, size}}]    (/api/datasets/... for datasets)
//	GET  {endpoint}/{org}/{name}/resolve/{commit}/{path}                a file; LFS files answer 302
//	     to a CDN; Range: bytes=N- resumes      ({endpoint}/datasets/{org}/{name}/resolve/... for datasets)
//	HEAD the same URL                                                  X-Repo-Commit, X-Linked-Etag
//	     (or ETag), X-Linked-Size (or Content-Length), when the info carries no blob ids
//
//	$HF_HUB_CACHE/models--org--name/
//	    blobs/<etag>                the file's bytes; etag = sha256 for LFS files, git blob sha1 otherwise
//	    blobs/<etag>.incomplete     a partial download, resumed with a Range request
//	    snapshots/<commit>/<path>   relative symlink to ../../blobs/<etag>
//	    refs/<revision>             the commit a branch or tag pointed to when last resolved
//
// Environment (as huggingface_hub reads it): HF_ENDPOINT (https://huggingface.co),
// HF_TOKEN (else the file $HF_TOKEN_PATH, default $HF_HOME/token), HF_HOME
// (default $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface), HF_HUB_CACHE
// (default $HF_HOME/hub), HF_HUB_OFFLINE=1 (cache only).
package hub

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// DefaultEndpoint is the Hub's address when HF_ENDPOINT is unset.
const DefaultEndpoint = "https://huggingface.co"

// RepoType is the kind of a Hub repository.
type RepoType string

const (
	Model   RepoType = "model"
	Dataset RepoType = "dataset"
)

// Client talks to one Hub endpoint and keeps files in one cache folder.
type Client struct {
	Endpoint string // no trailing slash
	Token    string // sent as "Authorization: Bearer" to the endpoint (not to CDN redirects)
	CacheDir string // HF_HUB_CACHE
	Offline  bool   // never touch the network; use the cache only
	HTTP     *http.Client
	// Workers is how many files download at once (default 4).
	Workers int
	// Progress, when set, is called (serially) with the bytes received so far and the
	// total to receive, across all files of one Download.
	Progress func(done, total int64)
	// Warn, when set, receives one-line warnings (a cached snapshot used because the
	// Hub could not be reached, a checksum mismatch that a second download fixed).
	Warn func(msg string)
	// UserAgent is sent with every request.
	UserAgent string

	retryWait time.Duration // pause before retry n is n*retryWait (tests shorten it)
}

// NewFromEnv returns a Client configured as huggingface_hub configures itself from the
// environment.
func NewFromEnv() *Client {
	home := os.Getenv("HF_HOME")
	if home == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			h, err := os.UserHomeDir()
			if err != nil {
				h = os.TempDir()
			}
			cache = filepath.Join(h, ".cache")
		}
		home = filepath.Join(cache, "huggingface")
	}
	home = expandHome(home)
	cacheDir := os.Getenv("HF_HUB_CACHE")
	if cacheDir == "" {
		cacheDir = os.Getenv("HUGGINGFACE_HUB_CACHE")
	}
	if cacheDir == "" {
		cacheDir = filepath.Join(home, "hub")
	}
	endpoint := strings.TrimRight(os.Getenv("HF_ENDPOINT"), "/")
	if endpoint == "" {
		endpoint = DefaultEndpoint
	}
	token := strings.TrimSpace(os.Getenv("HF_TOKEN"))
	if token == "" {
		token = strings.TrimSpace(os.Getenv("HUGGING_FACE_HUB_TOKEN"))
	}
	if token == "" {
		p := os.Getenv("HF_TOKEN_PATH")
		if p == "" {
			p = filepath.Join(home, "token")
		}
		if b, err := os.ReadFile(expandHome(p)); err == nil {
			token = strings.TrimSpace(string(b))
		}
	}
	return &Client{
		Endpoint: endpoint,
		Token:    token,
		CacheDir: expandHome(cacheDir),
		Offline:  envTrue(os.Getenv("HF_HUB_OFFLINE")),
	}
}

// envTrue is huggingface_hub's _is_true: 1, ON, YES, TRUE in any case.
func envTrue(v string) bool {
	switch strings.ToUpper(strings.TrimSpace(v)) {
	case "1", "ON", "YES", "TRUE":
		return true
	}
	return false
}

func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if h, err := os.UserHomeDir(); err == nil {
			return filepath.Join(h, p[1:])
		}
	}
	return p
}

// Ref names a revision of a repository: "org/name" and "org/name@rev".
type Ref struct {
	Type     RepoType
	ID       string // org/name
	Revision string // branch, tag or commit; "main" when not given
}

func (r Ref) String() string {
	s := r.ID
	if r.Revision != "" && r.Revision != "main" {
		s += "@" + r.Revision
	}
	return s
}

// repoName is huggingface_hub's validate_repo_id alphabet: word characters, '-', '.'.
var repoName = regexp.MustCompile(`^[A-Za-z0-9_.\-]{1,96}$`)

// commitRE matches a full commit hash (huggingface_hub's REGEX_COMMIT_HASH).
var commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)

// ParseRef parses "org/name" or "org/name@revision" for a repository of type t.
func ParseRef(t RepoType, s string) (Ref, error) {
	id, rev, hasRev := strings.Cut(s, "@")
	if hasRev && rev == "" {
		return Ref{}, fmt.Errorf("hub: %q: empty revision after '@'", s)
	}
	if err := checkID(id); err != nil {
		return Ref{}, fmt.Errorf("hub: %q: %v", s, err)
	}
	if rev == "" {
		rev = "main"
	}
	if strings.Contains(rev, "..") || strings.HasPrefix(rev, "/") || strings.ContainsAny(rev, "\\\x00") {
		return Ref{}, fmt.Errorf("hub: %q: invalid revision %q", s, rev)
	}
	return Ref{Type: t, ID: id, Revision: rev}, nil
}

// LooksLikeID reports whether s has the shape of a Hub id "org/name[@rev]" (it may
// still name a local path; callers check the file system first).
func LooksLikeID(s string) bool {
	_, err := ParseRef(Model, s)
	return err == nil
}

func checkID(id string) error {
	org, name, ok := strings.Cut(id, "/")
	if !ok || strings.Contains(name, "/") {
		return fmt.Errorf("want a Hub id org/name")
	}
	for _, p := range []string{org, name} {
		if !repoName.MatchString(p) || strings.HasPrefix(p, "-") || strings.HasPrefix(p, ".") ||
			strings.HasSuffix(p, "-") || strings.HasSuffix(p, ".") {
			return fmt.Errorf("want a Hub id org/name of letters, digits, '-', '_' and '.'")
		}
	}
	if strings.Contains(id, "--") || strings.Contains(id, "..") || strings.HasSuffix(id, ".git") {
		return fmt.Errorf("want a Hub id org/name without '--', '..' or a .git suffix")
	}
	return nil
}
