package pipeline

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tunellm/tune/internal/fsutil"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// ContentHashLimit is the largest file hashed by content. Bigger files (model
// weights of gigabytes) are fingerprinted by (relative path, size, mtime):
// reading 16 GB on every re-run to decide that nothing changed would cost
// more than some stages it saves. A file rewritten with the same size within
// the filesystem's mtime resolution would go unnoticed; --force redoes
// everything.
var ContentHashLimit int64 = 64 << 20

// HashMethod is written into the manifest so that a reader knows what the
// hashes mean.
const HashMethod = "sha256 of the bytes for files up to 64 MiB; above, sha256 of (relative path, size, mtime in ns); " +
	"a folder is sha256 of its sorted (relative path, file hash) list, validation.json and README.md (the model card) excluded"

// ManifestName is the manifest's file name in the run folder.
const ManifestName = "manifest.json"

// Manifest records every stage of a run folder: what went in, what came
// out, how it ended, and each artifact with its validation.
type Manifest struct {
	Version    int         `json:"version"`
	Recipe     string      `json:"recipe"`
	HashMethod string      `json:"hash_method"`
	Updated    time.Time   `json:"updated"`
	Stages     []*Stage    `json:"stages"`
	Artifacts  []*Artifact `json:"artifacts"`
}

// Stage is one step of the pipeline: train, merge, quantize:NAME,
// validate:NAME.
type Stage struct {
	Name     string            `json:"name"`
	Status   string            `json:"status"` // ok, failed (a gate failed), error
	Inputs   map[string]string `json:"inputs"`
	Outputs  map[string]string `json:"outputs,omitempty"`
	Error    string            `json:"error,omitempty"`
	Seconds  float64           `json:"seconds"`
	Finished time.Time         `json:"finished"`
	// Skipped is true for a stage this invocation did not redo (not saved).
	Skipped bool `json:"-"`
}

// Artifact is something a stage wrote that leaves the run: the adapter, the
// merged model, each quantized output.
type Artifact struct {
	Name          string      `json:"name"` // adapter, merged, model, gguf-q4_k_m, int4-g128-gptq
	Kind          string      `json:"kind"` // adapter, model, gguf, safetensors-int
	Path          string      `json:"path"` // relative to the run folder
	Bytes         int64       `json:"bytes"`
	BitsPerWeight float64     `json:"bits_per_weight,omitempty"`
	Status        string      `json:"status"` // pass, fail, error, unchecked
	Error         string      `json:"error,omitempty"`
	Validation    *Validation `json:"validation,omitempty"`
}

const manifestVersion = 1

// ReadManifest reads dir/manifest.json; a missing file is an empty manifest.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return &Manifest{Version: manifestVersion, HashMethod: HashMethod}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("pipeline: %s: %v", filepath.Join(dir, ManifestName), err)
	}
	if m.Version != manifestVersion {
		return nil, fmt.Errorf("pipeline: %s: version %d, want %d (remove it to start over)", filepath.Join(dir, ManifestName), m.Version, manifestVersion)
	}
	return &m, nil
}

// Write saves the manifest atomically.
func (m *Manifest) Write(dir string) error {
	m.Version, m.HashMethod, m.Updated = manifestVersion, HashMethod, time.Now().UTC()
	return writeJSON(filepath.Join(dir, ManifestName), m)
}

// Stage returns the recorded stage called name, or nil.
func (m *Manifest) Stage(name string) *Stage {
	for _, s := range m.Stages {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// setStage replaces or appends s.
func (m *Manifest) setStage(s *Stage) {
	for i, o := range m.Stages {
		if o.Name == s.Name {
			m.Stages[i] = s
			return
		}
	}
	m.Stages = append(m.Stages, s)
}

// Artifact returns the recorded artifact called name, or nil.
func (m *Manifest) Artifact(name string) *Artifact {
	for _, a := range m.Artifacts {
		if a.Name == name {
			return a
		}
	}
	return nil
}

func (m *Manifest) setArtifact(a *Artifact) {
	for i, o := range m.Artifacts {
		if o.Name == a.Name {
			m.Artifacts[i] = a
			return
		}
	}
	m.Artifacts = append(m.Artifacts, a)
}

// upToDate reports whether rec (the recorded stage) can stand for a stage
// with these inputs: it ended ok or failed a gate (an error is always
// retried), had the same inputs, and its outputs still hash the same.
func upToDate(rec *Stage, inputs map[string]string, runDir string) bool {
	if rec == nil || rec.Status == "error" || !maps.Equal(rec.Inputs, inputs) {
		return false
	}
	for p, h := range rec.Outputs {
		got, err := HashPath(filepath.Join(runDir, p))
		if err != nil || got != h {
			return false
		}
	}
	return true
}

// HashPath hashes a file or folder (see HashMethod); "" hashes to "none".
func HashPath(path string) (string, error) {
	if path == "" {
		return "none", nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("pipeline: hash: %w", err)
	}
	if !fi.IsDir() {
		h, err := hashFile(path, filepath.Base(path), fi)
		return "sha256:" + h, err
	}
	type entry struct{ rel, h string }
	var list []entry
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || d.Name() == "validation.json" || d.Name() == "README.md" || strings.HasPrefix(d.Name(), ".tmp") {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(path, p)
		h, err := hashFile(p, rel, info)
		if err != nil {
			return err
		}
		list = append(list, entry{filepath.ToSlash(rel), h})
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("pipeline: hash: %w", err)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].rel < list[j].rel })
	d := sha256.New()
	for _, e := range list {
		fmt.Fprintf(d, "%s\x00%s\n", e.rel, e.h)
	}
	return "sha256:" + hex.EncodeToString(d.Sum(nil)), nil
}

func hashFile(path, rel string, fi fs.FileInfo) (string, error) {
	d := sha256.New()
	if fi.Size() > ContentHashLimit {
		fmt.Fprintf(d, "stat\x00%s\x00%d\x00%d", filepath.ToSlash(rel), fi.Size(), fi.ModTime().UnixNano())
		return hex.EncodeToString(d.Sum(nil)), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := io.Copy(d, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(d.Sum(nil)), nil
}

// HashString hashes a configuration value.
func HashString(s string) string {
	d := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(d[:])
}

// writeJSON writes v indented to path through a temporary file and a rename.
func writeJSON(path string, v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // gates read "op": "<="
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("pipeline: %s: %w", path, err)
	}
	return writeAtomic(path, b.Bytes())
}

func writeAtomic(path string, b []byte) error {
	if err := fsutil.WriteFile(path, b); err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	return nil
}
