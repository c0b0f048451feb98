// Package hubtest is a fake Hugging Face Hub for tests: the repo-info API with siblings
// and LFS sha256, resolve URLs that answer small files directly and redirect LFS files
// (302) to a second server standing for the CDN, HEAD metadata (X-Repo-Commit,
// X-Linked-Etag, X-Linked-Size), Range requests, the Hub's error codes (RepoNotFound,
// RevisionNotFound, EntryNotFound, GatedRepo), and faults on demand: a connection
// dropped midway, corrupted bytes, an ignored Range header.
//
// It is written from the Hub's documented behaviour (huggingface_hub's file_download.py
// and hf_api.py read these headers and fields), not from the hub package, so that the
// package's tests check one against the other.
package hubtest

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Repo is one repository the fake Hub serves.
type Repo struct {
	Dataset bool              // a dataset repo (/api/datasets/..., /datasets/.../resolve/...)
	ID      string            // org/name
	Files   map[string][]byte // path -> content
	// Branches are the revisions besides commit hashes (default: only "main"); every
	// branch has its own commit, all with the same files.
	Branches []string
	Gated    bool // files need a token the server accepts (the info stays public, as on the Hub)
	Private  bool // everything needs a token the server accepts
}

// Commit is the fake commit hash of a branch of the repo.
func (r *Repo) Commit(branch string) string {
	h := sha1.Sum([]byte("commit " + r.ID + " " + branch))
	return hex.EncodeToString(h[:])
}

// IsLFS says which files the fake stores in LFS: weights, data and anything over 10 kB.
func IsLFS(p string, size int) bool {
	for _, e := range []string{".safetensors", ".parquet", ".bin", ".gguf", ".pth", ".pt"} {
		if strings.HasSuffix(p, e) {
			return true
		}
	}
	return size > 10000
}

// SHA256 is the LFS object id of content.
func SHA256(content []byte) string {
	h := sha256.Sum256(content)
	return hex.EncodeToString(h[:])
}

// GitBlobID is git's object id of a blob: sha1("blob <size>\x00" + content).
func GitBlobID(content []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(content))
	h.Write(content)
	return hex.EncodeToString(h.Sum(nil))
}

// Etag is the blob name huggingface_hub uses for the file.
func Etag(p string, content []byte) string {
	if IsLFS(p, len(content)) {
		return SHA256(content)
	}
	return GitBlobID(content)
}

// Request is one request a server received.
type Request struct {
	Server string // "hub" or "cdn"
	Method string
	Path   string // the URL path, unescaped
	Range  string
	Auth   string
}

// Server is the fake Hub and its CDN.
type Server struct {
	URL   string // the endpoint (HF_ENDPOINT)
	Token string // the token that reads gated and private repos ("" accepts none); tokens starting hf_invalid get 401 everywhere

	// Faults, keyed by file path; each use of an entry decrements it.
	DropAfter   map[string]int64 // close the connection after this many bytes of the body ...
	DropTimes   map[string]int   // ... this many times (default once)
	Corrupt     map[string]int   // serve a flipped byte this many times
	NoBlobIDs   bool             // info without blobId/lfs: clients must HEAD each file
	IgnoreRange bool             // answer 200 with the whole file to Range requests

	hub, cdn *httptest.Server
	mu       sync.Mutex
	repos    map[string]*Repo
	reqs     []Request
}

// New starts a fake Hub serving repos.
func New(repos ...*Repo) *Server {
	s := &Server{repos: map[string]*Repo{}, DropAfter: map[string]int64{}, DropTimes: map[string]int{}, Corrupt: map[string]int{}}
	for _, r := range repos {
		s.repos[key(r.Dataset, r.ID)] = r
	}
	s.hub = httptest.NewServer(http.HandlerFunc(s.serveHub))
	s.cdn = httptest.NewServer(http.HandlerFunc(s.serveCDN))
	s.URL = s.hub.URL
	return s
}

func key(dataset bool, id string) string {
	if dataset {
		return "datasets/" + id
	}
	return "models/" + id
}

// Close stops both servers.
func (s *Server) Close() { s.hub.Close(); s.cdn.Close() }

// Requests returns the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// Count is the number of requests with this method whose path ends with suffix.
func (s *Server) Count(method, suffix string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Method == method && strings.HasSuffix(r.Path, suffix) {
			n++
		}
	}
	return n
}

// Reset forgets the requests received so far.
func (s *Server) Reset() {
	s.mu.Lock()
	s.reqs = nil
	s.mu.Unlock()
}

func (s *Server) record(server string, r *http.Request) {
	s.mu.Lock()
	s.reqs = append(s.reqs, Request{Server: server, Method: r.Method, Path: r.URL.Path, Range: r.Header.Get("Range"), Auth: r.Header.Get("Authorization")})
	s.mu.Unlock()
}

func hubError(w http.ResponseWriter, status int, code, msg string) {
	if code != "" {
		w.Header().Set("X-Error-Code", code)
	}
	w.Header().Set("X-Error-Message", msg)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":%q}`, msg)
}

// authorized: 0 ok, 401 no token, 403 a token the server does not accept.
func (s *Server) authorized(r *http.Request) int {
	a := r.Header.Get("Authorization")
	switch {
	case a == "":
		return 401
	case s.Token != "" && a == "Bearer "+s.Token:
		return 0
	}
	return 403
}

// commitOf resolves a branch or commit of repo.
func commitOf(repo *Repo, rev string) (string, bool) {
	branches := repo.Branches
	if len(branches) == 0 {
		branches = []string{"main"}
	}
	for _, b := range branches {
		if rev == b || rev == repo.Commit(b) {
			return repo.Commit(b), true
		}
	}
	return "", false
}

// findRepo splits "org/name/rest" and finds the repo; unknown repos answer as the Hub
// does: 401 RepoNotFound without a token, 404 with one.
func (s *Server) findRepo(w http.ResponseWriter, r *http.Request, dataset bool, id string) *Repo {
	repo := s.repos[key(dataset, id)]
	if repo == nil || (repo.Private && s.authorized(r) != 0) {
		status := 404
		if r.Header.Get("Authorization") == "" {
			status = 401
		}
		hubError(w, status, "RepoNotFound", "Repository not found")
		return nil
	}
	return repo
}

func (s *Server) serveHub(w http.ResponseWriter, r *http.Request) {
	s.record("hub", r)
	// The Hub refuses a token it does not know on every request, public repos included.
	if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer hf_invalid") {
		hubError(w, 401, "", "Invalid credentials in Authorization header")
		return
	}
	// The escaped path keeps revisions such as refs%2Fconvert%2Fparquet in one segment.
	segs := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	for i := range segs {
		segs[i], _ = url.PathUnescape(segs[i])
	}
	if len(segs) >= 6 && segs[0] == "api" && (segs[1] == "models" || segs[1] == "datasets") {
		dataset, id := segs[1] == "datasets", segs[2]+"/"+segs[3]
		switch segs[4] {
		case "revision":
			s.serveInfo(w, r, dataset, id, strings.Join(segs[5:], "/"))
			return
		case "tree": // huggingface.js' listFiles (the revision is not escaped there: a commit)
			s.serveTree(w, r, dataset, id, segs[5], strings.Join(segs[6:], "/"), nil)
			return
		case "paths-info":
			var body struct {
				Paths []string `json:"paths"`
			}
			if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&body) != nil {
				http.Error(w, "want POST {paths}", http.StatusBadRequest)
				return
			}
			s.serveTree(w, r, dataset, id, strings.Join(segs[5:], "/"), "", body.Paths)
			return
		}
	}
	dataset := false
	if len(segs) > 0 && segs[0] == "datasets" {
		dataset, segs = true, segs[1:]
	}
	if len(segs) >= 5 && segs[2] == "resolve" {
		s.serveResolve(w, r, dataset, segs[0]+"/"+segs[1], segs[3], strings.Join(segs[4:], "/"))
		return
	}
	http.NotFound(w, r)
}

func (s *Server) serveInfo(w http.ResponseWriter, r *http.Request, dataset bool, id, rev string) {
	repo := s.findRepo(w, r, dataset, id)
	if repo == nil {
		return
	}
	commit, ok := commitOf(repo, rev)
	if !ok {
		hubError(w, 404, "RevisionNotFound", "Invalid rev id: "+rev)
		return
	}
	type lfs struct {
		SHA256      string `json:"sha256"`
		Size        int    `json:"size"`
		PointerSize int    `json:"pointerSize"`
	}
	type sibling struct {
		RFilename string `json:"rfilename"`
		Size      *int   `json:"size,omitempty"`
		BlobID    string `json:"blobId,omitempty"`
		LFS       *lfs   `json:"lfs,omitempty"`
	}
	var sibs []sibling
	var paths []string
	for p := range repo.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	blobs := r.URL.Query().Get("blobs") == "true" && !s.NoBlobIDs
	for _, p := range paths {
		c := repo.Files[p]
		sb := sibling{RFilename: p}
		if blobs {
			n := len(c)
			sb.Size = &n
			if IsLFS(p, len(c)) {
				// The git blob of an LFS file is its pointer file, not the content.
				sb.BlobID = GitBlobID([]byte("version https://git-lfs.github.com/spec/v1\noid sha256:" + SHA256(c) + "\nsize " + strconv.Itoa(len(c)) + "\n"))
				sb.LFS = &lfs{SHA256: SHA256(c), Size: len(c), PointerSize: 134}
			} else {
				sb.BlobID = GitBlobID(c)
			}
		}
		sibs = append(sibs, sb)
	}
	var gated any = false
	if repo.Gated {
		gated = "manual"
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"id": repo.ID, "sha": commit, "private": repo.Private, "gated": gated, "siblings": sibs})
}

// treeEntry is an item of /api/models/{id}/tree/{rev} and of paths-info.
type treeEntry struct {
	Type       string  `json:"type"`
	OID        string  `json:"oid"`
	Size       int     `json:"size"`
	Path       string  `json:"path"`
	LFS        *lfsOID `json:"lfs,omitempty"`
	LastCommit *struct {
		ID    string `json:"id"`
		Title string `json:"title"`
		Date  string `json:"date"`
	} `json:"lastCommit,omitempty"`
}

type lfsOID struct {
	OID         string `json:"oid"`
	Size        int    `json:"size"`
	PointerSize int    `json:"pointerSize"`
}

// serveTree lists the files under dir (recursively), or the given paths.
func (s *Server) serveTree(w http.ResponseWriter, r *http.Request, dataset bool, id, rev, dir string, paths []string) {
	repo := s.findRepo(w, r, dataset, id)
	if repo == nil {
		return
	}
	commit, ok := commitOf(repo, rev)
	if !ok {
		hubError(w, 404, "RevisionNotFound", "Invalid rev id: "+rev)
		return
	}
	want := map[string]bool{}
	for _, p := range paths {
		want[p] = true
	}
	var all []string
	for p := range repo.Files {
		all = append(all, p)
	}
	sort.Strings(all)
	out := []treeEntry{}
	dirs := map[string]bool{}
	for _, p := range all {
		if paths != nil && !want[p] {
			continue
		}
		if paths == nil && dir != "" && !strings.HasPrefix(p, dir+"/") {
			continue
		}
		c := repo.Files[p]
		e := treeEntry{Type: "file", OID: GitBlobID(c), Size: len(c), Path: p}
		if IsLFS(p, len(c)) {
			e.LFS = &lfsOID{OID: SHA256(c), Size: len(c), PointerSize: 134}
		}
		e.LastCommit = &struct {
			ID    string `json:"id"`
			Title string `json:"title"`
			Date  string `json:"date"`
		}{commit, "fake", "2026-01-01T00:00:00.000Z"}
		out = append(out, e)
		for d := pathDir(p); paths == nil && d != "" && d != dir && !dirs[d]; d = pathDir(d) {
			dirs[d] = true
			out = append(out, treeEntry{Type: "directory", Path: d, OID: GitBlobID([]byte(d))})
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func pathDir(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

func (s *Server) serveResolve(w http.ResponseWriter, r *http.Request, dataset bool, id, rev, p string) {
	repo := s.findRepo(w, r, dataset, id)
	if repo == nil {
		return
	}
	if repo.Gated {
		switch s.authorized(r) {
		case 401:
			hubError(w, 401, "GatedRepo", "Access to model "+id+" is restricted. You must have access to it and be authenticated to access it. Please log in.")
			return
		case 403:
			hubError(w, 403, "GatedRepo", "Access to model "+id+" is restricted and you are not in the authorized list.")
			return
		}
	}
	commit, ok := commitOf(repo, rev)
	if !ok {
		hubError(w, 404, "RevisionNotFound", "Invalid rev id: "+rev)
		return
	}
	c, ok := repo.Files[p]
	if !ok {
		hubError(w, 404, "EntryNotFound", "Entry not found")
		return
	}
	w.Header().Set("X-Repo-Commit", commit)
	if IsLFS(p, len(c)) {
		w.Header().Set("X-Linked-Etag", `"`+SHA256(c)+`"`)
		w.Header().Set("X-Linked-Size", strconv.Itoa(len(c)))
		w.Header().Set("ETag", `"`+GitBlobID(c)+`"`) // the pointer's, as on the Hub; clients must prefer X-Linked-Etag
		w.Header().Set("Location", s.cdn.URL+"/lfs/"+SHA256(c)+"?path="+url.QueryEscape(p)+"&repo="+url.QueryEscape(key(dataset, id)))
		w.WriteHeader(http.StatusFound)
		return
	}
	w.Header().Set("ETag", `"`+GitBlobID(c)+`"`)
	s.serveBytes(w, r, p, c)
}

func (s *Server) serveCDN(w http.ResponseWriter, r *http.Request) {
	s.record("cdn", r)
	repo := s.repos[r.URL.Query().Get("repo")]
	p := r.URL.Query().Get("path")
	if repo == nil || !strings.HasPrefix(r.URL.Path, "/lfs/") {
		http.NotFound(w, r)
		return
	}
	c, ok := repo.Files[p]
	if !ok || SHA256(c) != strings.TrimPrefix(r.URL.Path, "/lfs/") {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", `"`+SHA256(c)+`"`)
	s.serveBytes(w, r, p, c)
}

// serveBytes answers a GET or HEAD for content, honouring "Range: bytes=N-" and the
// faults set for p.
func (s *Server) serveBytes(w http.ResponseWriter, r *http.Request, p string, c []byte) {
	// "Range: bytes=A-" or "bytes=A-B" (huggingface.js asks for bytes=0-0 to learn the size).
	start, end := 0, len(c)
	ranged := false
	if rg := r.Header.Get("Range"); rg != "" && !s.IgnoreRange {
		v, ok := strings.CutPrefix(rg, "bytes=")
		a, b, ok2 := strings.Cut(v, "-")
		n, err := strconv.Atoi(a)
		if !ok || !ok2 || err != nil || n < 0 {
			http.Error(w, "bad range", http.StatusBadRequest)
			return
		}
		if n >= len(c) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", len(c)))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		if b != "" {
			m, err := strconv.Atoi(b)
			if err != nil || m < n {
				http.Error(w, "bad range", http.StatusBadRequest)
				return
			}
			end = min(m+1, len(c))
		}
		start, ranged = n, true
	}
	body := c[start:end]
	w.Header().Set("Accept-Ranges", "bytes")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodHead {
		return
	}
	s.mu.Lock()
	if s.Corrupt[p] > 0 && len(body) > 0 {
		s.Corrupt[p]--
		body = append([]byte(nil), body...)
		body[len(body)/2] ^= 0x55
	}
	drop := int64(-1)
	if n, ok := s.DropAfter[p]; ok && n < int64(len(body)) {
		drop = n
		if s.DropTimes[p] <= 1 {
			delete(s.DropAfter, p)
			delete(s.DropTimes, p)
		} else {
			s.DropTimes[p]--
		}
	}
	s.mu.Unlock()
	if ranged {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, len(c)))
		w.WriteHeader(http.StatusPartialContent)
	}
	if drop >= 0 {
		w.Write(body[:drop])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler) // the server closes the connection mid-body
	}
	w.Write(body)
}
