package train

// A run folder:
//
//	<dir>/metrics.jsonl            one JSON object per step and per eval
//	<dir>/checkpoints/step-N/      complete checkpoints (the last K)
//	<dir>/checkpoints/.tmp-*       a checkpoint being written (never read)
//	<dir>/adapter/                 the final adapter (model/ in full training)
//
// A checkpoint folder is written under a temporary name, its files synced,
// and renamed to step-N: rename is atomic, so a step-N folder is always
// complete, whenever the process dies. Old checkpoints are renamed to a
// temporary name before they are removed, for the same reason.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

const (
	checkpointsDir = "checkpoints"
	stateFile      = "trainer_state.json"
	paramsFile     = "params.f32"
	adamMFile      = "adam_m.f32"
	adamVFile      = "adam_v.f32"
	adapterDir     = "adapter"
	modelDir       = "model"
	metricsName    = "metrics.jsonl"
	tmpPrefix      = ".tmp-"
	stateFormat    = 1
)

// checkpointState is trainer_state.json.
type checkpointState struct {
	Format        int      `json:"format"`
	Position      position `json:"position"` // the next step's data position; Position.Step steps are done
	OptimizerStep int64    `json:"optimizer_step"`
	SchedulerStep int      `json:"scheduler_step"`
	Seed          uint64   `json:"seed"` // dropout masks are a function of (seed, step, sequence)
	TotalSteps    int      `json:"total_steps"`
	BatchSize     int      `json:"batch_size"`
	GradAccum     int      `json:"grad_accum"`
	NumParams     int      `json:"num_params"`
	AdamW         AdamWCfg `json:"adamw"`
}

// AdamWCfg records the optimizer's settings next to its state.
type AdamWCfg struct {
	Beta1       float64 `json:"beta1"`
	Beta2       float64 `json:"beta2"`
	Eps         float64 `json:"eps"`
	WeightDecay float64 `json:"weight_decay"`
}

// compatible refuses a resume whose data order or step count would differ.
func (s *checkpointState) compatible(c Config) error {
	if s.BatchSize != c.BatchSize {
		return fmt.Errorf("the checkpoint used train.batch_size %d, the recipe says %d", s.BatchSize, c.BatchSize)
	}
	if s.GradAccum != c.GradAccum {
		return fmt.Errorf("the checkpoint used train.grad_accum %d, the recipe says %d", s.GradAccum, c.GradAccum)
	}
	if s.Seed != c.Seed {
		return fmt.Errorf("the checkpoint used train.seed %d, the recipe says %d", s.Seed, c.Seed)
	}
	return nil
}

func checkpointDir(dir string, step int) string {
	return filepath.Join(dir, checkpointsDir, "step-"+strconv.Itoa(step))
}

// prepareDir makes the run folder, refusing one that holds another run
// unless resuming or forced (which removes that run's files).
func prepareDir(dir string, resume, force bool) error {
	if dir == "" {
		return errors.New("train: no output folder (output.dir)")
	}
	var held []string
	for _, name := range []string{metricsName, checkpointsDir, adapterDir, modelDir} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			held = append(held, name)
		}
	}
	switch {
	case resume:
	case len(held) > 0 && !force:
		return fmt.Errorf("train: %s holds a run (%s): continue it with --resume, or start over with --force", dir, strings.Join(held, ", "))
	case len(held) > 0:
		for _, name := range held {
			if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
				return fmt.Errorf("train: --force: %w", err)
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, checkpointsDir), 0o755); err != nil {
		return fmt.Errorf("train: %w", err)
	}
	// Leftovers of checkpoints that were being written or removed.
	ents, _ := os.ReadDir(filepath.Join(dir, checkpointsDir))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			os.RemoveAll(filepath.Join(dir, checkpointsDir, e.Name()))
		}
	}
	return nil
}

// Checkpoints lists the complete checkpoints of a run folder, oldest first.
func Checkpoints(dir string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(dir, checkpointsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	type ck struct {
		step int
		path string
	}
	var cks []ck
	for _, e := range ents {
		s, ok := strings.CutPrefix(e.Name(), "step-")
		if !ok || !e.IsDir() {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || strconv.Itoa(n) != s {
			continue
		}
		cks = append(cks, ck{n, filepath.Join(dir, checkpointsDir, e.Name())})
	}
	sort.Slice(cks, func(i, j int) bool { return cks[i].step < cks[j].step })
	out := make([]string, len(cks))
	for i, c := range cks {
		out[i] = c.path
	}
	return out, nil
}

func latestCheckpoint(dir string) (string, error) {
	cks, err := Checkpoints(dir)
	if err != nil {
		return "", err
	}
	if len(cks) == 0 {
		return "", fmt.Errorf("train: --resume: no checkpoint in %s", filepath.Join(dir, checkpointsDir))
	}
	return cks[len(cks)-1], nil
}

// writeCheckpoint writes step st.Position.Step and removes all but the last
// keep checkpoints.
func writeCheckpoint(dir, artifact string, st *checkpointState, p Params, params [][]float32, opt *AdamW, keep int) (string, error) {
	root := filepath.Join(dir, checkpointsDir)
	final := checkpointDir(dir, st.Position.Step)
	tmp, err := os.MkdirTemp(root, tmpPrefix+"step-"+strconv.Itoa(st.Position.Step)+"-")
	if err != nil {
		return "", fmt.Errorf("train: checkpoint: %w", err)
	}
	fail := func(err error) (string, error) {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("train: checkpoint %s: %w", final, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fail(err)
	}
	n := 0
	for _, s := range params {
		n += len(s)
	}
	st.Format = stateFormat
	st.NumParams = n
	st.AdamW = AdamWCfg(opt.Cfg)
	if err := p.Save(filepath.Join(tmp, artifact), "f32"); err != nil {
		return fail(err)
	}
	if err := writeF32(filepath.Join(tmp, paramsFile), params...); err != nil {
		return fail(err)
	}
	if err := writeF32(filepath.Join(tmp, adamMFile), opt.M); err != nil {
		return fail(err)
	}
	if err := writeF32(filepath.Join(tmp, adamVFile), opt.V); err != nil {
		return fail(err)
	}
	js, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := writeSynced(filepath.Join(tmp, stateFile), append(js, '\n')); err != nil {
		return fail(err)
	}
	if err := syncDir(filepath.Join(tmp, artifact)); err != nil {
		return fail(err)
	}
	if err := syncDir(tmp); err != nil {
		return fail(err)
	}
	if _, err := os.Stat(final); err == nil {
		// A checkpoint of this step exists (a resumed run redoing it): the
		// new one replaces it.
		if err := removeAtomically(final); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		return fail(err)
	}
	if err := syncDir(root); err != nil {
		return "", fmt.Errorf("train: checkpoint %s: %w", final, err)
	}
	cks, err := Checkpoints(dir)
	if err != nil {
		return final, nil
	}
	for i := 0; i < len(cks)-max(keep, 1); i++ {
		if err := removeAtomically(cks[i]); err != nil {
			return final, fmt.Errorf("train: remove old checkpoint: %w", err)
		}
	}
	return final, nil
}

// removeAtomically renames a checkpoint out of the step-N namespace first,
// so a kill during RemoveAll never leaves a partial step-N folder.
func removeAtomically(path string) error {
	trash := filepath.Join(filepath.Dir(path), tmpPrefix+"old-"+filepath.Base(path))
	os.RemoveAll(trash)
	if err := os.Rename(path, trash); err != nil {
		return err
	}
	return os.RemoveAll(trash)
}

// loadCheckpoint restores parameters and optimizer state in place.
func loadCheckpoint(dir string, params [][]float32, opt *AdamW) (*checkpointState, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("train: checkpoint: %w", err)
	}
	var st checkpointState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("train: checkpoint %s: %s: %v", dir, stateFile, err)
	}
	if st.Format != stateFormat {
		return nil, fmt.Errorf("train: checkpoint %s: %s format %d, want %d", dir, stateFile, st.Format, stateFormat)
	}
	n := 0
	for _, s := range params {
		n += len(s)
	}
	if st.NumParams != n {
		return nil, fmt.Errorf("train: checkpoint %s: %d parameters, the run has %d (different lora settings?)", dir, st.NumParams, n)
	}
	if err := readF32(filepath.Join(dir, paramsFile), params...); err != nil {
		return nil, fmt.Errorf("train: checkpoint %s: %w", dir, err)
	}
	if err := readF32(filepath.Join(dir, adamMFile), opt.M); err != nil {
		return nil, fmt.Errorf("train: checkpoint %s: %w", dir, err)
	}
	if err := readF32(filepath.Join(dir, adamVFile), opt.V); err != nil {
		return nil, fmt.Errorf("train: checkpoint %s: %w", dir, err)
	}
	opt.Step = st.OptimizerStep
	return &st, nil
}

// CheckCheckpoint verifies that a checkpoint folder is complete: its state
// parses and its raw files have the sizes the state promises.
func CheckCheckpoint(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return err
	}
	var st checkpointState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%s: %s: %v", dir, stateFile, err)
	}
	for _, f := range []string{paramsFile, adamMFile, adamVFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			return err
		}
		if fi.Size() != int64(st.NumParams)*4 {
			return fmt.Errorf("%s: %s is %d bytes, want %d", dir, f, fi.Size(), st.NumParams*4)
		}
	}
	_, errA := os.Stat(filepath.Join(dir, adapterDir))
	_, errM := os.Stat(filepath.Join(dir, modelDir))
	if errA != nil && errM != nil {
		return fmt.Errorf("%s: neither %s/ nor %s/ is there", dir, adapterDir, modelDir)
	}
	return nil
}

// saveArtifact writes the final adapter (or model) to <dir>/<name>
// atomically.
func saveArtifact(p Params, dir, name, dtype string) (string, error) {
	if dtype == "" {
		dtype = "f32"
	}
	final := filepath.Join(dir, name)
	tmp, err := os.MkdirTemp(dir, tmpPrefix+name+"-")
	if err != nil {
		return "", fmt.Errorf("train: save adapter: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("train: save adapter: %w", err)
	}
	if err := p.Save(tmp, dtype); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("train: save adapter: %w", err)
	}
	if err := syncDir(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("train: save adapter: %w", err)
	}
	if _, err := os.Stat(final); err == nil {
		old := filepath.Join(dir, tmpPrefix+"old-"+name)
		os.RemoveAll(old)
		if err := os.Rename(final, old); err != nil {
			os.RemoveAll(tmp)
			return "", fmt.Errorf("train: save adapter: %w", err)
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("train: save adapter: %w", err)
	}
	return final, nil
}

// writeF32 writes slabs back to back as little-endian float32, synced.
func writeF32(path string, slabs ...[]float32) error {
	n := 0
	for _, s := range slabs {
		n += len(s)
	}
	b := make([]byte, 0, 4*n)
	for _, s := range slabs {
		for _, x := range s {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
		}
	}
	return writeSynced(path, b)
}

func readF32(path string, slabs ...[]float32) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	n := 0
	for _, s := range slabs {
		n += len(s)
	}
	if len(b) != 4*n {
		return fmt.Errorf("%s: %d bytes, want %d (%d float32)", filepath.Base(path), len(b), 4*n, n)
	}
	off := 0
	for _, s := range slabs {
		for i := range s {
			s[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[off:]))
			off += 4
		}
	}
	return nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncDir fsyncs a folder's files and the folder itself, so that a rename
// after it publishes data that is on disk.
func syncDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			if f, err := os.Open(filepath.Join(dir, e.Name())); err == nil {
				f.Sync()
				f.Close()
			}
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// metricsFile appends JSON lines to <dir>/metrics.jsonl.
type metricsFile struct {
	f *os.File
	w *bufio.Writer
}

// openMetrics opens the run's metrics, keeping only lines of steps <= upTo
// (a resumed run rewrites what came after its checkpoint).
func openMetrics(dir string, upTo int) (*metricsFile, error) {
	path := filepath.Join(dir, metricsName)
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("train: %w", err)
	}
	var keep bytes.Buffer
	for line := range bytes.Lines(old) {
		var m struct {
			Step int `json:"step"`
		}
		if json.Unmarshal(line, &m) == nil && m.Step <= upTo && bytes.HasSuffix(line, []byte("\n")) {
			keep.Write(line)
		}
	}
	if err := os.WriteFile(path, keep.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	return &metricsFile{f: f, w: bufio.NewWriter(f)}, nil
}

func (m *metricsFile) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("train: metrics: %w", err)
	}
	m.w.Write(b)
	m.w.WriteByte('\n')
	if err := m.w.Flush(); err != nil {
		return fmt.Errorf("train: metrics: %w", err)
	}
	return nil
}

func (m *metricsFile) Close() error {
	m.w.Flush()
	return m.f.Close()
}
