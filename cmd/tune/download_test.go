package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tunellm/tune/hub"
	"github.com/tunellm/tune/hub/hubtest"
)

func TestNewCmdDownload(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    DownloadOptions
		wantErr string
	}{
		{name: "id", args: []string{"Qwen/Qwen3-8B"}, want: DownloadOptions{Ref: hub.Ref{Type: hub.Model, ID: "Qwen/Qwen3-8B", Revision: "main"}}},
		{name: "at rev", args: []string{"Qwen/Qwen3-8B@v2", "--json", "--include", "*.json", "--include", "model-*"},
			want: DownloadOptions{Ref: hub.Ref{Type: hub.Model, ID: "Qwen/Qwen3-8B", Revision: "v2"}, JSON: true, Include: []string{"*.json", "model-*"}}},
		{name: "revision flag", args: []string{"--revision", "dev", "Qwen/Qwen3-8B"},
			want: DownloadOptions{Ref: hub.Ref{Type: hub.Model, ID: "Qwen/Qwen3-8B", Revision: "dev"}, Revision: "dev"}},
		{name: "dataset", args: []string{"--dataset", "org/data@refs/convert/parquet"},
			want: DownloadOptions{Ref: hub.Ref{Type: hub.Dataset, ID: "org/data", Revision: "refs/convert/parquet"}}},
		{name: "split", args: []string{"--dataset", "org/data", "--split", "test"},
			want: DownloadOptions{Ref: hub.Ref{Type: hub.Dataset, ID: "org/data", Revision: "main"}, Split: "test"}},
		{name: "split without dataset", args: []string{"org/data", "--split", "test"}, wantErr: "--split needs --dataset"},
		{name: "no id", args: nil, wantErr: "want one Hub id org/name[@revision], got 0 arguments"},
		{name: "two ids", args: []string{"a/b", "c/d"}, wantErr: "got 2 arguments"},
		{name: "bad id", args: []string{"gpt2"}, wantErr: `hub: "gpt2": want a Hub id org/name`},
		{name: "disagree", args: []string{"a/b@v1", "--revision", "v2"}, wantErr: "--revision v2 and @v1 in the id disagree"},
		{name: "bad glob", args: []string{"a/b", "--include", "[x"}, wantErr: `--include: hub: glob "[x": '[' without ']'`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdDownload, tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				if exitCode(err) != 2 {
					t.Errorf("exit code %d, want 2", exitCode(err))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.IO = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("options\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// fakeHubEnv serves the tiny Qwen3 test model (and a gated copy) from a fake Hub and
// points the environment at it and at an empty cache.
func fakeHubEnv(t *testing.T) (*hubtest.Server, *hubtest.Repo, string) {
	t.Helper()
	files := map[string][]byte{}
	for _, n := range []string{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(modelDir("qwen3-tied"), n))
		if err != nil {
			t.Fatal(err)
		}
		files[n] = b
	}
	files["pytorch_model.bin"] = []byte("pickle")
	repo := &hubtest.Repo{ID: "tune-test/qwen3-tied", Files: files}
	gated := &hubtest.Repo{ID: "tune-test/gated", Gated: true, Files: files}
	ds := &hubtest.Repo{Dataset: true, ID: "tune-test/chats", Files: map[string][]byte{"data/train-00000-of-00001.parquet": []byte("PAR1"), "README.md": []byte("")}}
	splits := &hubtest.Repo{Dataset: true, ID: "tune-test/splits", Files: map[string][]byte{
		"data/train-00000-of-00002.parquet": []byte("PAR1a"), "data/train-00001-of-00002.parquet": []byte("PAR1b"),
		"data/test-00000-of-00001.parquet": []byte("PAR1c")}}
	plain := &hubtest.Repo{Dataset: true, ID: "tune-test/plain", Files: map[string][]byte{"chats-a.jsonl": []byte("{}\n"), "chats-b.jsonl": []byte("{}\n")}}
	srv := hubtest.New(repo, gated, ds, splits, plain)
	t.Cleanup(srv.Close)
	cache := filepath.Join(t.TempDir(), "hub")
	t.Setenv("HF_ENDPOINT", srv.URL)
	t.Setenv("HF_HUB_CACHE", cache)
	t.Setenv("HF_HOME", t.TempDir())
	t.Setenv("HF_TOKEN", "")
	t.Setenv("HUGGING_FACE_HUB_TOKEN", "")
	t.Setenv("HF_HUB_OFFLINE", "")
	return srv, repo, cache
}

func TestDownloadRun(t *testing.T) {
	srv, repo, cache := fakeHubEnv(t)
	snap := filepath.Join(cache, "models--tune-test--qwen3-tied", "snapshots", repo.Commit("main"))

	stdout, stderr, err := runCLI(t, "", "download", "tune-test/qwen3-tied")
	if err != nil {
		t.Fatal(err)
	}
	if stdout != snap+"\n" {
		t.Errorf("stdout %q, want %q", stdout, snap)
	}
	if !strings.HasPrefix(stderr, "tune-test/qwen3-tied (commit "+repo.Commit("main")[:12]+"): 4 files, 0.5 MB, 0.5 MB downloaded in ") {
		t.Errorf("stderr %q", stderr)
	}
	if srv.Count("GET", "/pytorch_model.bin") != 0 {
		t.Error("fetched the pickle")
	}
	// The downloaded folder is a model tune loads.
	out, _, err := runCLI(t, "", "inspect", snap, "--json")
	if err != nil || !strings.Contains(out, `"qwen3"`) {
		t.Errorf("inspect the snapshot: %v\n%s", err, out)
	}

	stdout, _, err = runCLI(t, "", "download", "tune-test/qwen3-tied", "--json", "--include", "*.json")
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Repo, Type, Revision, Commit, Dir string
		Files                             []hub.SnapshotFile
		Fetched                           int64 `json:"downloaded_bytes"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	if rep.Repo != "tune-test/qwen3-tied" || rep.Type != "model" || rep.Revision != "main" || rep.Commit != repo.Commit("main") ||
		rep.Dir != snap || len(rep.Files) != 3 || rep.Fetched != 0 || !rep.Files[0].Cached {
		t.Errorf("report %+v", rep)
	}

	// Offline: the cached snapshot; a repo never fetched is an error naming the cache.
	t.Setenv("HF_HUB_OFFLINE", "1")
	stdout, stderr, err = runCLI(t, "", "download", "tune-test/qwen3-tied")
	if err != nil || stdout != snap+"\n" || !strings.Contains(stderr, "from the cache, offline") {
		t.Errorf("offline: %v %q %q", err, stdout, stderr)
	}
	_, _, err = runCLI(t, "", "download", "tune-test/other")
	if want := "hub: tune-test/other is not in the cache " + cache + " (HF_HUB_OFFLINE is set): download it once with network access (tune download tune-test/other)"; err == nil || err.Error() != want {
		t.Errorf("error\n got %v\nwant %s", err, want)
	}
}

func TestDownloadRunErrors(t *testing.T) {
	srv, _, _ := fakeHubEnv(t)
	tests := []struct{ args, want string }{
		{"download tune-test/nope", "hub: repository not found: tune-test/nope (check the id, or set HF_TOKEN if it is private)"},
		{"download tune-test/gated", "hub: tune-test/gated is gated: accept its licence on the Hub (" + srv.URL + "/tune-test/gated) and set HF_TOKEN"},
		{"download tune-test/qwen3-tied@v3", "hub: revision not found: tune-test/qwen3-tied@v3 (a branch, tag or commit of tune-test/qwen3-tied)"},
		{"download tune-test/qwen3-tied --include *.bin", "hub: tune-test/qwen3-tied: --include *.bin matches no file of the 5 in the repo (1 PyTorch pickle files matched; tune never downloads pickles)"},
	}
	for _, tt := range tests {
		_, _, err := runCLI(t, "", strings.Fields(tt.args)...)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s:\n got %v\nwant %s", tt.args, err, tt.want)
		}
		if err != nil && exitCode(err) != 1 {
			t.Errorf("%s: exit code %d", tt.args, exitCode(err))
		}
	}
}
