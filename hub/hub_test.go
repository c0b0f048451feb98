package hub

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRef(t *testing.T) {
	tests := []struct {
		in      string
		want    Ref
		wantErr string
	}{
		{in: "Qwen/Qwen3-8B", want: Ref{Model, "Qwen/Qwen3-8B", "main"}},
		{in: "meta-llama/Llama-3.1-8B-Instruct@v1.0", want: Ref{Model, "meta-llama/Llama-3.1-8B-Instruct", "v1.0"}},
		{in: "a_b/c.d@refs/pr/1", want: Ref{Model, "a_b/c.d", "refs/pr/1"}},
		{in: "org/name@0123456789abcdef0123456789abcdef01234567", want: Ref{Model, "org/name", "0123456789abcdef0123456789abcdef01234567"}},
		{in: "gpt2", wantErr: `hub: "gpt2": want a Hub id org/name`},
		{in: "a/b/c", wantErr: "want a Hub id org/name"},
		{in: "./models/x", wantErr: "want a Hub id org/name"},
		{in: "./x", wantErr: "want a Hub id org/name of letters"},
		{in: "/abs", wantErr: "want a Hub id org/name of letters"},
		{in: "org/na me", wantErr: "of letters"},
		{in: "org/name@", wantErr: "empty revision"},
		{in: "org--x/name", wantErr: "without '--'"},
		{in: "org/name.git", wantErr: "without '--', '..' or a .git suffix"},
		{in: "org/name@../../etc", wantErr: `invalid revision "../../etc"`},
		{in: "org/" + strings.Repeat("x", 97), wantErr: "of letters"},
	}
	for _, tt := range tests {
		got, err := ParseRef(Model, tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	if s := (Ref{Model, "a/b", "main"}).String(); s != "a/b" {
		t.Errorf("String %q", s)
	}
	if s := (Ref{Model, "a/b", "dev"}).String(); s != "a/b@dev" {
		t.Errorf("String %q", s)
	}
}

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern string
		match   []string
		nomatch []string
	}{
		{"*.safetensors", []string{"model.safetensors", "sub/dir/x.safetensors"}, []string{"model.safetensors.index.json"}},
		{"config.json", []string{"config.json"}, []string{"a/config.json", "config.jsonl"}},
		{"model-0000?-of-*.safetensors", []string{"model-00001-of-00004.safetensors"}, []string{"model-001-of-4.safetensors"}},
		{"data/", []string{"data/train.parquet", "data/a/b"}, []string{"data", "xdata/a"}},
		{"[!.]*.json", []string{"config.json"}, []string{".hidden.json"}},
		{"[]x]a", []string{"]a", "xa"}, []string{"ya"}},
		{"a+b(c).json", []string{"a+b(c).json"}, []string{"aab(c).json"}},
		{"*Q4_K_M.gguf", []string{"qwen3-Q4_K_M.gguf"}, []string{"qwen3-Q4_K_S.gguf"}},
		{"模型*.json", []string{"模型-a.json"}, []string{"模-a.json"}},
	}
	for _, tt := range tests {
		g, err := CompileGlob(tt.pattern)
		if err != nil {
			t.Fatalf("%q: %v", tt.pattern, err)
		}
		for _, s := range tt.match {
			if !g.Match(s) {
				t.Errorf("%q does not match %q", tt.pattern, s)
			}
		}
		for _, s := range tt.nomatch {
			if g.Match(s) {
				t.Errorf("%q matches %q", tt.pattern, s)
			}
		}
	}
	for _, bad := range []string{"[abc", "x[!"} {
		if _, err := CompileGlob(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParseInfo(t *testing.T) {
	ref := Ref{Model, "a/b", "main"}
	sha := `"sha":"0123456789abcdef0123456789abcdef01234567"`
	info, err := parseInfo(ref, []byte(`{`+sha+`,"gated":"manual","siblings":[
		{"rfilename":"config.json","size":6,"blobId":"ce013625030ba8dba906f756967f9e9ca394464a"},
		{"rfilename":"model.safetensors","size":10,"blobId":"ce013625030ba8dba906f756967f9e9ca394464a",
		 "lfs":{"sha256":"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03","size":1000,"pointerSize":134}},
		{"rfilename":"README.md"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if !info.Gated || len(info.Files) != 3 {
		t.Fatalf("%+v", info)
	}
	if f := info.Files[1]; f.Size != 1000 || f.Etag() != helloSHA256 {
		t.Errorf("lfs file %+v", f)
	}
	if f := info.Files[0]; f.Etag() != helloBlobID || f.Size != 6 {
		t.Errorf("git file %+v", f)
	}
	if f := info.Files[2]; f.Etag() != "" || f.Size != -1 {
		t.Errorf("bare file %+v", f)
	}
	bad := map[string]string{
		`{"sha":"main"}`: `repo info has commit "main", want 40 hex digits`,
		`{` + sha + `,"siblings":[{"rfilename":"../../../etc/passwd"}]}`:    `lists file "../../../etc/passwd": not a clean relative path`,
		`{` + sha + `,"siblings":[{"rfilename":"/etc/passwd"}]}`:            "not a relative path",
		`{` + sha + `,"siblings":[{"rfilename":"a//b"}]}`:                   "not a clean relative path",
		`{` + sha + `,"siblings":[{"rfilename":"a"},{"rfilename":"a"}]}`:    `lists file "a" twice`,
		`{` + sha + `,"siblings":[{"rfilename":"a","blobId":"../x"}]}`:      `blobId "../x", want 40 hex digits`,
		`{` + sha + `,"siblings":[{"rfilename":"a","lfs":{"sha256":"x"}}]}`: `lfs sha256 "x", want 64 hex digits`,
		`{` + sha + `,"siblings":[{"rfilename":"a","size":-5}]}`:            "size -5",
		`[1,2]`: "not valid JSON",
	}
	for in, want := range bad {
		_, err := parseInfo(ref, []byte(in))
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: error %v, want %q", in, err, want)
		}
	}
}

// FuzzParseInfo: the info reply decides file names in the cache; whatever it says,
// paths stay inside the snapshot and blob names are plain hex.
func FuzzParseInfo(f *testing.F) {
	f.Add([]byte(`{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[{"rfilename":"a/b.json","size":3,"blobId":"ce013625030ba8dba906f756967f9e9ca394464a"}]}`))
	f.Add([]byte(`{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[{"rfilename":"..","lfs":{"sha256":"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03","size":1}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := parseInfo(Ref{Model, "a/b", "main"}, b)
		if err != nil {
			return
		}
		for _, file := range info.Files {
			clean := filepath.ToSlash(filepath.Clean(file.Path))
			if clean != file.Path || strings.HasPrefix(clean, "../") || clean == ".." || filepath.IsAbs(file.Path) {
				t.Fatalf("path %q escapes", file.Path)
			}
			if e := file.Etag(); e != "" && (!hexRE.MatchString(e) || (len(e) != 40 && len(e) != 64)) {
				t.Fatalf("etag %q", e)
			}
		}
	})
}

func TestNewFromEnv(t *testing.T) {
	home := t.TempDir()
	for _, k := range []string{"HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "XDG_CACHE_HOME"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", home)
	t.Setenv("HF_HOME", "")
	c := NewFromEnv()
	if c.Endpoint != DefaultEndpoint || c.Token != "" || c.Offline || c.CacheDir != filepath.Join(home, ".cache", "huggingface", "hub") {
		t.Errorf("defaults %+v", c)
	}
	t.Setenv("XDG_CACHE_HOME", filepath.Join(home, "xdg"))
	if c := NewFromEnv(); c.CacheDir != filepath.Join(home, "xdg", "huggingface", "hub") {
		t.Errorf("XDG cache %s", c.CacheDir)
	}
	t.Setenv("HF_HOME", filepath.Join(home, "hf"))
	os.MkdirAll(filepath.Join(home, "hf"), 0o755)
	os.WriteFile(filepath.Join(home, "hf", "token"), []byte("hf_file\n"), 0o600)
	t.Setenv("HF_ENDPOINT", "http://mirror.local:8080/")
	t.Setenv("HF_HUB_OFFLINE", "yes")
	c = NewFromEnv()
	if c.Endpoint != "http://mirror.local:8080" || c.Token != "hf_file" || !c.Offline || c.CacheDir != filepath.Join(home, "hf", "hub") {
		t.Errorf("HF_HOME %+v", c)
	}
	t.Setenv("HF_TOKEN", " hf_env ")
	t.Setenv("HF_HUB_CACHE", "~/elsewhere")
	t.Setenv("HF_HUB_OFFLINE", "0")
	c = NewFromEnv()
	if c.Token != "hf_env" || c.Offline || c.CacheDir != filepath.Join(home, "elsewhere") {
		t.Errorf("HF_TOKEN, HF_HUB_CACHE %+v", c)
	}
}

func TestRepoDir(t *testing.T) {
	c := &Client{CacheDir: "/c"}
	if d := c.RepoDir(Ref{Model, "Qwen/Qwen3-8B", "main"}); d != "/c/models--Qwen--Qwen3-8B" {
		t.Error(d)
	}
	if d := c.RepoDir(Ref{Dataset, "org/x.y", "main"}); d != "/c/datasets--org--x.y" {
		t.Error(d)
	}
}

// FuzzCompileGlob: any --include pattern compiles or fails cleanly, and a pattern
// without wildcards matches exactly itself.
func FuzzCompileGlob(f *testing.F) {
	for _, s := range []string{"*.safetensors", "[!.]*", "[]x]", "data/", "a?b", "[", "x[!"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		g, err := CompileGlob(p)
		if err != nil {
			return
		}
		g.Match(p)
		if !strings.ContainsAny(p, "*?[") && !strings.HasSuffix(p, "/") && !g.Match(p) {
			t.Fatalf("%q does not match itself", p)
		}
	})
}

func TestSplitOf(t *testing.T) {
	for p, want := range map[string]string{
		"data/train-00000-of-00002.parquet":     "train",
		"data/train_sft-00001-of-00003.parquet": "train_sft",
		"default/validation/0000.parquet":       "validation",
		"default/partial-train/0003.parquet":    "train",
		"train.jsonl":                           "train",
		"data/test.parquet":                     "test",
		"dev.json":                              "dev",
		"chats.jsonl":                           "",
		"0000.parquet":                          "",
		"data/trainer-notes.parquet":            "",
	} {
		if got := SplitOf(p); got != want {
			t.Errorf("SplitOf(%q) = %q, want %q", p, got, want)
		}
	}
}

func TestDataPath(t *testing.T) {
	dir := t.TempDir()
	mk := func(paths ...string) *Snapshot {
		s := &Snapshot{Ref: Ref{Dataset, "o/d", "main"}, Dir: dir}
		for _, p := range paths {
			os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
			os.WriteFile(filepath.Join(dir, p), nil, 0o644)
			s.Files = append(s.Files, SnapshotFile{Path: p})
		}
		return s
	}
	mk("data/test-00000-of-00001.parquet", "default/train/0000.parquet", "default/test/0000.parquet", "x/[a]-1.jsonl", "x/[a]-2.jsonl", "x/[a]-x.jsonl2")
	tests := []struct {
		files   []string
		want    string
		wantErr string
	}{
		{[]string{"data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"}, "data/train-*.parquet", ""},
		{[]string{"data/test-00000-of-00001.parquet"}, "data/test-00000-of-00001.parquet", ""},
		{[]string{"default/train/0000.parquet", "default/train/0001.parquet"}, "default/train/000*.parquet", ""},
		{[]string{"x/[a]-1.jsonl", "x/[a]-2.jsonl"}, `x/\[a]-*.jsonl`, ""},
		{[]string{"a/1.parquet", "b/2.parquet"}, "", "the files are in several folders (a, b)"},
		{[]string{"data/train-00000-of-00002.parquet", "data/trainx-00000-of-00002.parquet"}, "", "no glob names just these 2 files"},
	}
	for _, tt := range tests {
		got, err := mk(tt.files...).DataPath()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%v: error %v, want %q", tt.files, err, tt.wantErr)
			}
			continue
		}
		if want := filepath.Join(dir, tt.want); err != nil || got != want {
			t.Errorf("%v: %q, %v; want %q", tt.files, got, err, want)
		}
	}
}
