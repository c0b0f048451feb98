package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunellm/tune/hub/hubtest"
)

// weights returns n deterministic bytes (a stand-in for a safetensors file).
func weights(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

func qwenRepo() *hubtest.Repo {
	return &hubtest.Repo{ID: "Qwen/Qwen3-Tiny", Branches: []string{"main", "dev"}, Files: map[string][]byte{
		"config.json":                  []byte("hello\n"),
		"generation_config.json":       []byte(`{"do_sample":true}`),
		"tokenizer.json":               []byte(`{"model":{}}`),
		"tokenizer_config.json":        []byte(`{"chat_template":"x"}`),
		"model.safetensors":            weights(300_000, 1),
		"pytorch_model.bin":            weights(1000, 2),
		"original/consolidated.00.pth": weights(1000, 3),
		"onnx/model.onnx":              weights(100, 4),
		"README.md":                    []byte("---\nlicense: apache-2.0\n---\n"),
		".gitattributes":               []byte("*.safetensors filter=lfs\n"),
	}}
}

type testClient struct {
	*Client
	mu    sync.Mutex
	warns []string
}

func newTestClient(t *testing.T, srv *hubtest.Server) *testClient {
	tc := &testClient{Client: &Client{Endpoint: srv.URL, Token: "hf_test", CacheDir: filepath.Join(t.TempDir(), "hub"), retryWait: time.Millisecond}}
	tc.Warn = func(m string) { tc.mu.Lock(); tc.warns = append(tc.warns, m); tc.mu.Unlock() }
	return tc
}

func fileNames(s *Snapshot) []string {
	var out []string
	for _, f := range s.Files {
		out = append(out, f.Path)
	}
	slices.Sort(out)
	return out
}

// The Hub's known values, computed by git and sha256sum (not by this package):
// printf 'hello\n' | git hash-object --stdin; printf 'hello\n' | sha256sum.
const (
	helloBlobID = "ce013625030ba8dba906f756967f9e9ca394464a"
	helloSHA256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
)

func TestKnownHashes(t *testing.T) {
	if got := hubtest.GitBlobID([]byte("hello\n")); got != helloBlobID {
		t.Errorf("git blob id %s, want %s", got, helloBlobID)
	}
	if got := hubtest.SHA256([]byte("hello\n")); got != helloSHA256 {
		t.Errorf("sha256 %s, want %s", got, helloSHA256)
	}
}

func TestDownloadModel(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	srv.Token = "hf_test"
	defer srv.Close()
	c := newTestClient(t, srv)
	var lastDone, lastTotal int64
	c.Progress = func(done, total int64) { lastDone, lastTotal = done, total }
	ref, err := ParseRef(Model, "Qwen/Qwen3-Tiny")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Download(context.Background(), ref, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
	if got := fileNames(s); !slices.Equal(got, want) {
		t.Errorf("files %v, want %v", got, want)
	}
	commit := repo.Commit("main")
	repoDir := filepath.Join(c.CacheDir, "models--Qwen--Qwen3-Tiny")
	if s.Commit != commit || s.Dir != filepath.Join(repoDir, "snapshots", commit) {
		t.Errorf("snapshot %s at %s, want %s", s.Commit, s.Dir, commit)
	}
	var total int64
	for _, p := range want {
		total += int64(len(repo.Files[p]))
	}
	if s.Bytes != total || s.Fetched != total || lastDone != total || lastTotal != total {
		t.Errorf("bytes %d, fetched %d, progress %d/%d, want %d", s.Bytes, s.Fetched, lastDone, lastTotal, total)
	}

	// huggingface_hub's layout: refs/main, blobs named by etag, relative symlinks.
	if b, err := os.ReadFile(filepath.Join(repoDir, "refs", "main")); err != nil || string(b) != commit {
		t.Errorf("refs/main = %q, %v; want %s", b, err, commit)
	}
	for p, etag := range map[string]string{"config.json": helloBlobID, "model.safetensors": hubtest.SHA256(repo.Files["model.safetensors"])} {
		link, err := os.Readlink(filepath.Join(s.Dir, p))
		if err != nil || link != "../../blobs/"+etag {
			t.Errorf("%s -> %q (%v), want ../../blobs/%s", p, link, err, etag)
		}
		got, err := os.ReadFile(filepath.Join(s.Dir, p))
		if err != nil || !bytes.Equal(got, repo.Files[p]) {
			t.Errorf("%s: content differs (%v)", p, err)
		}
	}
	blobs, _ := os.ReadDir(filepath.Join(repoDir, "blobs"))
	if len(blobs) != len(want) {
		t.Errorf("%d blobs, want %d", len(blobs), len(want))
	}
	for _, b := range blobs {
		if strings.HasSuffix(b.Name(), ".incomplete") {
			t.Errorf("left %s", b.Name())
		}
	}
	// Pickles and subfolders are never fetched; the token goes to the Hub, not the CDN.
	for _, r := range srv.Requests() {
		if strings.Contains(r.Path, ".bin") || strings.Contains(r.Path, ".pth") || strings.Contains(r.Path, "onnx") {
			t.Errorf("fetched %s", r.Path)
		}
		if (r.Server == "hub") != (r.Auth == "Bearer hf_test") {
			t.Errorf("%s %s %s: Authorization %q", r.Server, r.Method, r.Path, r.Auth)
		}
	}
	if n := srv.Count("GET", "/model.safetensors"); n != 1 {
		t.Errorf("%d GETs of the resolve URL, want 1", n)
	}

	// A second call fetches nothing.
	srv.Reset()
	s2, err := c.Download(context.Background(), ref, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Fetched != 0 || s2.Dir != s.Dir {
		t.Errorf("second download fetched %d into %s", s2.Fetched, s2.Dir)
	}
	for _, f := range s2.Files {
		if !f.Cached {
			t.Errorf("%s not cached", f.Path)
		}
	}
	if reqs := srv.Requests(); len(reqs) != 1 || !strings.HasPrefix(reqs[0].Path, "/api/models/") {
		t.Errorf("second download made requests %v, want only the info", reqs)
	}
}

func TestDownloadRevision(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	c := newTestClient(t, srv)
	c.Token = ""
	ctx := context.Background()
	s, err := c.ResolveModel(ctx, "Qwen/Qwen3-Tiny@dev", DownloadOptions{Include: []string{"config.json"}})
	if err != nil {
		t.Fatal(err)
	}
	repoDir := c.RepoDir(Ref{Type: Model, ID: "Qwen/Qwen3-Tiny"})
	if s.Commit != repo.Commit("dev") || s.Commit == repo.Commit("main") {
		t.Errorf("commit %s, want dev's %s", s.Commit, repo.Commit("dev"))
	}
	if b, _ := os.ReadFile(filepath.Join(repoDir, "refs", "dev")); string(b) != repo.Commit("dev") {
		t.Errorf("refs/dev = %q", b)
	}
	// Every file is fetched at the commit, not the branch (a push mid-download changes nothing).
	if n := srv.Count("GET", "/resolve/"+repo.Commit("dev")+"/config.json"); n != 1 {
		t.Errorf("%d GETs at the commit, want 1: %v", n, srv.Requests())
	}
	// A commit hash writes no ref; the blob is shared, so nothing is fetched again.
	srv.Reset()
	s, err = c.ResolveModel(ctx, "Qwen/Qwen3-Tiny@"+repo.Commit("main"), DownloadOptions{Include: []string{"config.json"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Fetched != 0 || s.Files[0].Cached != true {
		t.Errorf("same blob at another commit fetched %d bytes", s.Fetched)
	}
	refs, _ := os.ReadDir(filepath.Join(repoDir, "refs"))
	if len(refs) != 1 {
		t.Errorf("refs %v, want only dev", refs)
	}
	if _, err := os.Stat(filepath.Join(repoDir, "snapshots", repo.Commit("main"), "config.json")); err != nil {
		t.Error(err)
	}
}

func TestDownloadShardedIndex(t *testing.T) {
	repo := &hubtest.Repo{ID: "mistralai/Tiny", Files: map[string][]byte{
		"config.json":                       []byte(`{}`),
		"model-00001-of-00002.safetensors":  weights(5000, 1),
		"model-00002-of-00002.safetensors":  weights(4000, 2),
		"consolidated.safetensors":          weights(9000, 3),
		"model.safetensors.index.json":      []byte(`{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}`),
		"tokenizer.model":                   []byte("sp"),
		"tokenizer.model.v3":                []byte("sp3"),
		"original/params.json":              []byte(`{}`),
		"model-00003-of-00003.safetensors2": []byte("x"),
	}}
	srv := hubtest.New(repo)
	defer srv.Close()
	c := newTestClient(t, srv)
	s, err := c.ResolveModel(context.Background(), "mistralai/Tiny", DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.model"}
	if got := fileNames(s); !slices.Equal(got, want) {
		t.Errorf("files %v, want %v", got, want)
	}

	// An index naming a shard the repo lacks is an error.
	repo.Files["model.safetensors.index.json"] = []byte(`{"weight_map":{"a":"model-00001-of-00003.safetensors"}}`)
	c = newTestClient(t, srv)
	_, err = c.ResolveModel(context.Background(), "mistralai/Tiny", DownloadOptions{})
	if err == nil || err.Error() != "hub: mistralai/Tiny: model.safetensors.index.json names shard model-00001-of-00003.safetensors, which the repo does not have" {
		t.Errorf("error %v", err)
	}
}

func TestDownloadResumesPartialBlob(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	c := newTestClient(t, srv)
	ref := Ref{Type: Model, ID: "Qwen/Qwen3-Tiny", Revision: "main"}
	w := repo.Files["model.safetensors"]
	inc := c.blobPath(ref, hubtest.SHA256(w)) + ".incomplete"
	os.MkdirAll(filepath.Dir(inc), 0o755)
	if err := os.WriteFile(inc, w[:123_456], 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := c.Download(context.Background(), ref, DownloadOptions{Include: []string{"*.safetensors"}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(s.Dir, "model.safetensors"))
	if !bytes.Equal(got, w) {
		t.Fatal("resumed file differs")
	}
	if s.Fetched != int64(len(w)-123_456) {
		t.Errorf("fetched %d, want %d", s.Fetched, len(w)-123_456)
	}
	var ranges []string
	for _, r := range srv.Requests() {
		if r.Server == "cdn" {
			ranges = append(ranges, r.Range)
		}
	}
	if !slices.Equal(ranges, []string{"bytes=123456-"}) {
		t.Errorf("CDN ranges %q, want [bytes=123456-]", ranges)
	}

	// A server that ignores Range: the partial file is restarted, the result is right.
	srv.IgnoreRange = true
	c = newTestClient(t, srv)
	inc = c.blobPath(ref, hubtest.SHA256(w)) + ".incomplete"
	os.MkdirAll(filepath.Dir(inc), 0o755)
	os.WriteFile(inc, w[:1000], 0o644)
	s, err = c.Download(context.Background(), ref, DownloadOptions{Include: []string{"model.safetensors"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(s.Dir, "model.safetensors")); !bytes.Equal(got, w) {
		t.Fatal("restarted file differs")
	}
}

func TestDownloadDroppedConnection(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	srv.DropAfter["model.safetensors"] = 100_000
	srv.DropTimes["model.safetensors"] = 2
	srv.DropAfter["tokenizer.json"] = 3 // a small file served by the Hub itself
	c := newTestClient(t, srv)
	s, err := c.ResolveModel(context.Background(), "Qwen/Qwen3-Tiny", DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"model.safetensors", "tokenizer.json"} {
		if got, _ := os.ReadFile(filepath.Join(s.Dir, p)); !bytes.Equal(got, repo.Files[p]) {
			t.Errorf("%s differs after resume", p)
		}
	}
	var ranges []string
	for _, r := range srv.Requests() {
		if r.Server == "cdn" {
			ranges = append(ranges, r.Range)
		}
	}
	// Dropped at 100000, then at 200000 (100000 bytes into the resumed reply), then done.
	if !slices.Equal(ranges, []string{"", "bytes=100000-", "bytes=200000-"}) {
		t.Errorf("CDN ranges %q", ranges)
	}
	if srv.Count("GET", "/tokenizer.json") != 2 {
		t.Errorf("tokenizer.json: %d GETs, want 2", srv.Count("GET", "/tokenizer.json"))
	}

	// A server that keeps dropping: an error that says how to resume; the partial blob stays.
	srv.DropAfter["model.safetensors"] = 10
	srv.DropTimes["model.safetensors"] = 100
	c = newTestClient(t, srv)
	_, err = c.ResolveModel(context.Background(), "Qwen/Qwen3-Tiny", DownloadOptions{Include: []string{"model.safetensors"}})
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "hub: Qwen/Qwen3-Tiny: model.safetensors: connection lost after 50 bytes") ||
		!strings.HasSuffix(err.Error(), "(5 tries; run again to resume from 50 B)") {
		t.Errorf("error %v", err)
	}
	ref := Ref{Type: Model, ID: "Qwen/Qwen3-Tiny", Revision: "main"}
	if st, err := os.Stat(c.blobPath(ref, hubtest.SHA256(repo.Files["model.safetensors"])) + ".incomplete"); err != nil || st.Size() != 50 {
		t.Errorf("partial blob: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.SnapshotDir(ref, repo.Commit("main")), "model.safetensors")); err == nil {
		t.Error("snapshot link to a partial file")
	}
}

func TestDownloadChecksum(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	ref := Ref{Type: Model, ID: "Qwen/Qwen3-Tiny", Revision: "main"}
	w := repo.Files["model.safetensors"]

	// Corrupted once: discarded, fetched again, right; a warning says so.
	srv.Corrupt["model.safetensors"] = 1
	srv.Corrupt["config.json"] = 1
	c := newTestClient(t, srv)
	s, err := c.Download(context.Background(), ref, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(s.Dir, "model.safetensors")); !bytes.Equal(got, w) {
		t.Error("model.safetensors differs")
	}
	slices.Sort(c.warns)
	if len(c.warns) != 2 || !strings.HasPrefix(c.warns[0], "hub: Qwen/Qwen3-Tiny: config.json: git blob sha1 mismatch (got ") ||
		!strings.HasPrefix(c.warns[1], "hub: Qwen/Qwen3-Tiny: model.safetensors: sha256 mismatch (got ") {
		t.Errorf("warnings %q", c.warns)
	}

	// Corrupted twice: an error, and nothing under the blob's name or in the snapshot.
	srv.Corrupt["model.safetensors"] = 2
	c = newTestClient(t, srv)
	_, err = c.Download(context.Background(), ref, DownloadOptions{Include: []string{"model.safetensors"}})
	want := fmt.Sprintf("hub: Qwen/Qwen3-Tiny: model.safetensors: sha256 mismatch: got %s, want %s (downloaded twice; the file was discarded)", "", hubtest.SHA256(w))
	if !errors.Is(err, ErrChecksum) || !strings.HasPrefix(err.Error(), want[:strings.Index(want, "got ")+4]) || !strings.HasSuffix(err.Error(), want[strings.Index(want, ", want"):]) {
		t.Errorf("error %v\nwant %s", err, want)
	}
	blobs, _ := os.ReadDir(filepath.Join(c.RepoDir(ref), "blobs"))
	if len(blobs) != 0 {
		t.Errorf("blobs left: %v", blobs)
	}
	if _, err := os.Lstat(filepath.Join(c.SnapshotDir(ref, repo.Commit("main")), "model.safetensors")); err == nil {
		t.Error("snapshot has the file")
	}
}

func TestDownloadHeadFallback(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	srv.NoBlobIDs = true // a mirror whose info has no blob ids: HEAD each file
	c := newTestClient(t, srv)
	s, err := c.ResolveModel(context.Background(), "Qwen/Qwen3-Tiny", DownloadOptions{Include: []string{"config.json", "*.safetensors"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"config.json", "model.safetensors"} {
		link, _ := os.Readlink(filepath.Join(s.Dir, p))
		if want := "../../blobs/" + hubtest.Etag(p, repo.Files[p]); link != want {
			t.Errorf("%s -> %s, want %s", p, link, want)
		}
		if srv.Count("HEAD", "/"+p) != 1 {
			t.Errorf("%s: %d HEADs", p, srv.Count("HEAD", "/"+p))
		}
	}
	if s.Bytes != int64(len(repo.Files["config.json"])+len(repo.Files["model.safetensors"])) {
		t.Errorf("bytes %d", s.Bytes)
	}
}

func TestDownloadErrors(t *testing.T) {
	gated := &hubtest.Repo{ID: "meta-llama/Llama-Tiny", Gated: true, Files: map[string][]byte{"config.json": []byte("{}"), "model.safetensors": weights(100, 1)}}
	pickles := &hubtest.Repo{ID: "old/bert", Files: map[string][]byte{"config.json": []byte("{}"), "pytorch_model.bin": weights(100, 1)}}
	ggufs := &hubtest.Repo{ID: "Qwen/Qwen3-GGUF", Files: map[string][]byte{"a-Q4_K_M.gguf": weights(100, 1)}}
	private := &hubtest.Repo{ID: "me/private", Private: true, Files: map[string][]byte{"model.safetensors": weights(100, 1)}}
	srv := hubtest.New(qwenRepo(), gated, pickles, ggufs, private)
	srv.Token = "hf_good"
	defer srv.Close()
	tests := []struct {
		id, token string
		include   []string
		kind      error
		want      string
	}{
		{id: "Qwen/Qwen3-Nope", kind: ErrNotFound, want: "hub: repository not found: Qwen/Qwen3-Nope (check the id, or set HF_TOKEN if it is private)"},
		{id: "Qwen/Qwen3-Nope", token: "hf_good", kind: ErrNotFound, want: "hub: repository not found: Qwen/Qwen3-Nope (check the id, or check that HF_TOKEN may read it if it is private)"},
		{id: "me/private", kind: ErrNotFound, want: "hub: repository not found: me/private (check the id, or set HF_TOKEN if it is private)"},
		{id: "Qwen/Qwen3-Tiny@v9", kind: ErrNotFound, want: "hub: revision not found: Qwen/Qwen3-Tiny@v9 (a branch, tag or commit of Qwen/Qwen3-Tiny)"},
		{id: "meta-llama/Llama-Tiny", kind: ErrGated, want: "hub: meta-llama/Llama-Tiny is gated: accept its licence on the Hub (" + srv.URL + "/meta-llama/Llama-Tiny) and set HF_TOKEN"},
		{id: "meta-llama/Llama-Tiny", token: "hf_other", kind: ErrGated, want: "hub: meta-llama/Llama-Tiny is gated: accept its licence on the Hub (" + srv.URL + "/meta-llama/Llama-Tiny) with the account of HF_TOKEN"},
		{id: "old/bert", kind: ErrNoWeights, want: "hub: old/bert has only PyTorch pickle weights (pytorch_model.bin): tune never downloads pickles; use a safetensors version of this model"},
		{id: "old/bert", include: []string{"*.bin"}, kind: ErrNotFound, want: "hub: old/bert: --include *.bin matches no file of the 2 in the repo (1 PyTorch pickle files matched; tune never downloads pickles)"},
		{id: "Qwen/Qwen3-GGUF", kind: ErrNoWeights, want: "hub: Qwen/Qwen3-GGUF has GGUF files but no safetensors (a-Q4_K_M.gguf): fetch one with `tune download Qwen/Qwen3-GGUF --include FILE.gguf` and pass its path"},
		{id: "Qwen/Qwen3-Tiny", token: "hf_invalid", kind: ErrAuth, want: "hub: HF_TOKEN was refused (Invalid credentials in Authorization header): make a new token at " + srv.URL + "/settings/tokens"},
		{id: "Qwen/Qwen3-Tiny", include: []string{"[abc"}, want: `hub: glob "[abc": '[' without ']'`},
	}
	for _, tt := range tests {
		t.Run(tt.id+tt.token, func(t *testing.T) {
			c := newTestClient(t, srv)
			c.Token = tt.token
			_, err := c.ResolveModel(context.Background(), tt.id, DownloadOptions{Include: tt.include})
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error\n got %v\nwant %s", err, tt.want)
			}
			if tt.kind != nil && !errors.Is(err, tt.kind) {
				t.Errorf("not a %v", tt.kind)
			}
		})
	}
	// With the right token, the gated and private repos download.
	for _, id := range []string{"meta-llama/Llama-Tiny", "me/private"} {
		c := newTestClient(t, srv)
		c.Token = "hf_good"
		if _, err := c.ResolveModel(context.Background(), id, DownloadOptions{}); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
}

func TestOfflineAndUnreachable(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	c := newTestClient(t, srv)
	ctx := context.Background()

	// Offline with nothing cached.
	c.Offline = true
	_, err := c.ResolveModel(ctx, "Qwen/Qwen3-Tiny", DownloadOptions{})
	want := "hub: Qwen/Qwen3-Tiny is not in the cache " + c.CacheDir + " (HF_HUB_OFFLINE is set): download it once with network access (tune download Qwen/Qwen3-Tiny)"
	if !errors.Is(err, ErrNotCached) || err.Error() != want {
		t.Errorf("error\n got %v\nwant %s", err, want)
	}
	if len(srv.Requests()) != 0 {
		t.Errorf("offline made requests")
	}

	// Cached once, then offline: the same snapshot without a request.
	c.Offline = false
	online, err := c.ResolveModel(ctx, "Qwen/Qwen3-Tiny", DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srv.Reset()
	c.Offline = true
	s, err := c.ResolveModel(ctx, "Qwen/Qwen3-Tiny", DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Dir != online.Dir || !s.FromCache || !slices.Equal(fileNames(s), fileNames(online)) || len(srv.Requests()) != 0 {
		t.Errorf("offline snapshot %s %v, online %s %v", s.Dir, fileNames(s), online.Dir, fileNames(online))
	}
	if s, err := c.ResolveModel(ctx, "Qwen/Qwen3-Tiny", DownloadOptions{Include: []string{"*.json"}}); err != nil || len(s.Files) != 4 {
		t.Errorf("offline --include *.json: %v %v", s, err)
	}
	if _, err := c.ResolveModel(ctx, "Qwen/Qwen3-Tiny@dev", DownloadOptions{}); !errors.Is(err, ErrNotCached) {
		t.Errorf("offline @dev (never fetched): %v", err)
	}

	// The Hub out of reach: the cached snapshot with a warning; an uncached repo fails
	// pointing to HF_HUB_OFFLINE.
	srv.Close()
	c.Offline = false
	s, err = c.ResolveModel(ctx, "Qwen/Qwen3-Tiny", DownloadOptions{})
	if err != nil || s.Dir != online.Dir {
		t.Fatalf("unreachable with a cache: %v", err)
	}
	if len(c.warns) != 1 || !strings.Contains(c.warns[0], "using the cached snapshot "+online.Dir) {
		t.Errorf("warnings %q", c.warns)
	}
	_, err = c.ResolveModel(ctx, "Qwen/Other", DownloadOptions{})
	if !errors.Is(err, ErrUnreachable) || !strings.HasPrefix(err.Error(), "hub: cannot reach "+srv.URL+" (") ||
		!strings.HasSuffix(err.Error(), "): check the network, or set HF_HUB_OFFLINE=1 to use only the cache in "+c.CacheDir) {
		t.Errorf("error %v", err)
	}
}

// Files placed by huggingface_hub (the same layout, written here by hand) are used
// as they are: offline, and online without fetching them again.
func TestReusesPythonCache(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	c := newTestClient(t, srv)
	commit := repo.Commit("main")
	root := filepath.Join(c.CacheDir, "models--Qwen--Qwen3-Tiny")
	for _, p := range []string{"config.json", "model.safetensors"} {
		etag := hubtest.Etag(p, repo.Files[p])
		os.MkdirAll(filepath.Join(root, "blobs"), 0o755)
		os.MkdirAll(filepath.Join(root, "snapshots", commit), 0o755)
		os.WriteFile(filepath.Join(root, "blobs", etag), repo.Files[p], 0o644)
		if err := os.Symlink("../../blobs/"+etag, filepath.Join(root, "snapshots", commit, p)); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(root, "refs"), 0o755)
	os.WriteFile(filepath.Join(root, "refs", "main"), []byte(commit), 0o644)

	c.Offline = true
	s, err := c.ResolveModel(context.Background(), "Qwen/Qwen3-Tiny", DownloadOptions{})
	if err != nil || !slices.Equal(fileNames(s), []string{"config.json", "model.safetensors"}) {
		t.Fatalf("offline: %v %v", s, err)
	}
	c.Offline = false
	s, err = c.ResolveModel(context.Background(), "Qwen/Qwen3-Tiny", DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if srv.Count("GET", "/model.safetensors") != 0 || srv.Count("GET", "/config.json") != 0 {
		t.Errorf("fetched cached files again: %v", srv.Requests())
	}
	if s.Fetched != int64(len(repo.Files["tokenizer.json"])+len(repo.Files["tokenizer_config.json"])+len(repo.Files["generation_config.json"])+len(repo.Files["README.md"])) {
		t.Errorf("fetched %d", s.Fetched)
	}
}

func TestDownloadDiskFull(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	repo := qwenRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	c := newTestClient(t, srv)
	ref := Ref{Type: Model, ID: "Qwen/Qwen3-Tiny", Revision: "main"}
	blob := c.blobPath(ref, hubtest.SHA256(repo.Files["model.safetensors"]))
	os.MkdirAll(filepath.Dir(blob), 0o755)
	// Writes to the partial file fail with ENOSPC.
	if err := os.Symlink("/dev/full", blob+".incomplete"); err != nil {
		t.Fatal(err)
	}
	_, err := c.Download(context.Background(), ref, DownloadOptions{Include: []string{"model.safetensors"}})
	want := "hub: Qwen/Qwen3-Tiny: disk full writing " + blob + ".incomplete (300.0 kB still to write): free some space and run again to resume, or set HF_HUB_CACHE to a larger disk"
	if !errors.Is(err, ErrDiskFull) || err.Error() != want {
		t.Errorf("error\n got %v\nwant %s", err, want)
	}
	if _, err := os.Stat(blob); err == nil {
		t.Error("a blob under the final name")
	}
	if _, err := os.Lstat(filepath.Join(c.SnapshotDir(ref, repo.Commit("main")), "model.safetensors")); err == nil {
		t.Error("a snapshot link")
	}
}

func TestDownloadDataset(t *testing.T) {
	ds := &hubtest.Repo{Dataset: true, ID: "org/legal-qa", Branches: []string{"main", "refs/convert/parquet"}, Files: map[string][]byte{
		"README.md":                             []byte("---\nconfigs: []\n---\n"),
		"data/train-00000-of-00002.parquet":     weights(2000, 1),
		"data/train-00001-of-00002.parquet":     weights(2000, 2),
		"data/test-00000-of-00001.parquet":      weights(500, 3),
		"dataset_infos.json":                    []byte(`{}`),
		"raw/notes.jsonl":                       []byte("{}\n"),
		".gitattributes":                        []byte(""),
		"default/train/0000.parquet.incomplete": []byte("x"),
	}}
	jsonl := &hubtest.Repo{Dataset: true, ID: "org/chats", Files: map[string][]byte{"train.jsonl": []byte("{}\n"), "dataset_infos.json": []byte("{}")}}
	empty := &hubtest.Repo{Dataset: true, ID: "org/scripts", Files: map[string][]byte{"loader.py": []byte("")}}
	srv := hubtest.New(ds, jsonl, empty, qwenRepo())
	defer srv.Close()
	c := newTestClient(t, srv)
	ctx := context.Background()
	s, err := c.ResolveDataset(ctx, "org/legal-qa", DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"data/test-00000-of-00001.parquet", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"}
	if got := fileNames(s); !slices.Equal(got, want) {
		t.Errorf("files %v, want %v", got, want)
	}
	if !strings.HasSuffix(s.Dir, filepath.Join("datasets--org--legal-qa", "snapshots", ds.Commit("main"))) {
		t.Errorf("dir %s", s.Dir)
	}
	if srv.Count("GET", "/datasets/org/legal-qa/resolve/"+ds.Commit("main")+"/data/test-00000-of-00001.parquet") != 1 {
		t.Errorf("requests %v", srv.Requests())
	}
	// A revision with slashes is one path segment in the API and nested folders in refs/.
	s, err = c.ResolveDataset(ctx, "org/legal-qa@refs/convert/parquet", DownloadOptions{Include: []string{"data/train-*"}})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(c.CacheDir, "datasets--org--legal-qa", "refs", "refs", "convert", "parquet")); string(b) != ds.Commit("refs/convert/parquet") || len(s.Files) != 2 {
		t.Errorf("refs/refs/convert/parquet = %q, %d files", b, len(s.Files))
	}
	if s, err := c.ResolveDataset(ctx, "org/chats", DownloadOptions{}); err != nil || !slices.Equal(fileNames(s), []string{"train.jsonl"}) {
		t.Errorf("jsonl dataset: %v %v", s, err)
	}
	_, err = c.ResolveDataset(ctx, "org/scripts", DownloadOptions{})
	if !errors.Is(err, ErrNoWeights) || err.Error() != "hub: dataset org/scripts has no Parquet, JSONL or Arrow files; the Hub's Parquet conversion may have them: org/scripts@refs/convert/parquet" {
		t.Errorf("error %v", err)
	}
	// A model id is not a dataset id.
	_, err = c.ResolveDataset(ctx, "Qwen/Qwen3-Tiny", DownloadOptions{})
	if err == nil || err.Error() != "hub: dataset not found: Qwen/Qwen3-Tiny (check the id, or check that HF_TOKEN may read it if it is private)" {
		t.Errorf("error %v", err)
	}
}

// Two downloads of one repo at once (two processes sharing the cache, or two
// goroutines): each blob is fetched once, under huggingface_hub's lock.
func TestConcurrentDownloads(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	a := newTestClient(t, srv)
	b := newTestClient(t, srv)
	b.CacheDir = a.CacheDir
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, c := range []*testClient{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.ResolveModel(context.Background(), "Qwen/Qwen3-Tiny", DownloadOptions{})
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if n := srv.Count("GET", "/model.safetensors"); n != 1 {
		t.Errorf("model.safetensors fetched %d times", n)
	}
}

func TestDiskSpaceCheck(t *testing.T) {
	repo := qwenRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	c := newTestClient(t, srv)
	defer func(f func(string) (int64, bool)) { diskFreeFn = f }(diskFreeFn)
	diskFreeFn = func(string) (int64, bool) { return 200_000, true }
	_, err := c.ResolveModel(context.Background(), "Qwen/Qwen3-Tiny", DownloadOptions{Include: []string{"model.safetensors"}})
	want := "hub: Qwen/Qwen3-Tiny needs 300.0 kB more but " + c.CacheDir + " has 200.0 kB free: free some space, or set HF_HUB_CACHE to a larger disk"
	if !errors.Is(err, ErrDiskFull) || err.Error() != want {
		t.Errorf("error\n got %v\nwant %s", err, want)
	}
	if len(srv.Requests()) != 1 {
		t.Errorf("requests %v, want the info only", srv.Requests())
	}
}
