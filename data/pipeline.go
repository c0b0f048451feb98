package data

// The training-data pipeline: rows (source.go) -> format and mask
// (format.go, mask.go) -> truncate -> cache (cache.go) -> pack (pack.go) ->
// shuffled batches (shuffle.go, batch.go). Prepare runs the row stage on a
// worker per CPU and writes examples to the cache in stream order, so the
// output is the same whatever the number of workers.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/tunellm/tune/tokenizer"
)

// Config is the dataset part of a recipe.
type Config struct {
	Path    string            // dataset.path: a file, folder or glob (see Open)
	Format  string            // dataset.format: text, instruction, completion, chat (default)
	Columns map[string]string // dataset.columns: field -> column name (text, instruction, input, output, prompt, completion, messages)
	// SystemPrompt is prepended as a system message to conversations that
	// have none.
	SystemPrompt string
	AddEOS       *bool             // dataset.add_eos: nil means true
	TrainOn      string            // dataset.train_on: "assistant" (default; the completion for completion rows) or "all"
	RoleMap      map[string]string // ShareGPT "from" -> role, over the defaults (human, gpt, system, ...)
	MaxSeqLen    int               // train.max_seq_len
	Packing      bool              // train.packing
	Seed         uint64            // train.seed: shuffling and the validation split
	ValFraction  float64           // dataset.validation as a fraction in [0, 1)
	ValPath      string            // dataset.validation as a path
	SkipBadRows  bool              // count rows that cannot become examples instead of failing
	CacheDir     string            // "" is DefaultCacheDir()
	// ChatTemplate, when set, replaces the tokenizer's chat template.
	ChatTemplate string
	// TokenizerDir, when set, adds the tokenizer files' bytes to the cache
	// key (the tokenizer's behaviour is in it anyway).
	TokenizerDir string
}

// Splits of a Dataset.
const (
	SplitTrain      = "train"
	SplitValidation = "validation"
)

// Stats describe a prepared dataset.
type Stats struct {
	Rows          int64    `json:"rows"`
	BadRows       int64    `json:"bad_rows"`                 // skipped (SkipBadRows)
	BadRowErrors  []string `json:"bad_row_errors,omitempty"` // the first few
	Examples      int64    `json:"examples"`
	Tokens        int64    `json:"tokens"`         // after truncation
	TrainedTokens int64    `json:"trained_tokens"` // tokens with a label
	Truncated     int64    `json:"truncated"`      // examples cut to max_seq_len
	// Dropped counts examples left with no trained token (after
	// truncation): they would only cost compute.
	Dropped           int64   `json:"dropped"`
	TrainExamples     int64   `json:"train_examples"`
	ValExamples       int64   `json:"validation_examples"`
	TrainSequences    int     `json:"train_sequences"`
	ValSequences      int     `json:"validation_sequences"`
	MaxSeqLen         int     `json:"max_seq_len"`
	Packed            bool    `json:"packed"`
	PackingEfficiency float64 `json:"packing_efficiency"` // tokens / (sequences * max_seq_len), packed only
	// Lengths is a histogram of example lengths (after truncation): Count
	// examples with length in (previous UpTo, UpTo].
	Lengths   []LengthBucket `json:"lengths"`
	FromCache bool           `json:"-"`
	CacheDir  string         `json:"-"`
}

// LengthBucket is one bar of Stats.Lengths.
type LengthBucket struct {
	UpTo  int   `json:"up_to"`
	Count int64 `json:"count"`
}

// Dataset is a prepared (tokenized, cached, packed) dataset. Batches reads
// tokens from the cache files on demand; only the example and sequence
// indexes are in memory.
type Dataset struct {
	dir          string
	stats        Stats
	files        []string
	examples     []exampleRec
	seqs         map[string][][]uint32
	tokens, mask *os.File
	maxLen       int
	packed       bool
	seed         uint64
	pad          int32

	mu  sync.Mutex
	err error
}

// rowsTokenized counts rows through the row stage, for tests that check a
// cached Prepare tokenizes nothing.
var rowsTokenized atomic.Int64

const maxBadRowErrors = 5

// Prepare reads, renders, tokenizes, masks, truncates and packs the dataset
// of cfg, or reuses the cache a previous Prepare with the same key wrote.
// progress, if not nil, is called now and then with rows done and the total
// (0 when the source cannot tell without reading it). It streams: memory
// holds the example index (24 bytes an example) and a few chunks of rows in
// flight, whatever the dataset's size.
func Prepare(cfg Config, tok *tokenizer.Tokenizer, progress func(done, total int64)) (*Dataset, error) {
	if cfg.MaxSeqLen <= 0 {
		return nil, fmt.Errorf("data: train.max_seq_len must be positive, found %d", cfg.MaxSeqLen)
	}
	if cfg.ValFraction < 0 || cfg.ValFraction >= 1 {
		return nil, fmt.Errorf("data: dataset.validation fraction must be in [0, 1), found %g", cfg.ValFraction)
	}
	if cfg.ValFraction > 0 && cfg.ValPath != "" {
		return nil, errors.New("data: dataset.validation: set a fraction or a path, not both")
	}
	f, err := newFormatter(cfg, tok)
	if err != nil {
		return nil, err
	}
	src, err := Open(cfg.Path)
	if err != nil {
		return nil, err
	}
	sources := []*Source{src}
	files := src.Files()
	if cfg.ValPath != "" {
		vs, err := Open(cfg.ValPath)
		if err != nil {
			return nil, err
		}
		sources = append(sources, vs)
		files = append(files, vs.Files()...)
	}
	if len(files) > 1<<16 {
		return nil, fmt.Errorf("data: %s: %d files, at most 65536 supported", cfg.Path, len(files))
	}
	key, err := cacheKey(cfg, f, tok, files)
	if err != nil {
		return nil, err
	}
	root := cfg.CacheDir
	if root == "" {
		root = DefaultCacheDir()
	}
	final := filepath.Join(root, key)
	pad := padID(tok)
	if d, err := openCache(final, key); err == nil {
		d.setup(cfg, pad)
		return d, nil
	} else if _, statErr := os.Stat(final); statErr == nil {
		// Present but not whole: never trusted.
		if err := os.RemoveAll(final); err != nil {
			return nil, fmt.Errorf("data: cache %s is unusable and cannot be removed: %v", final, err)
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("data: cache: %v", err)
	}
	tmp, err := os.MkdirTemp(root, key+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("data: cache: %v", err)
	}
	// MkdirTemp makes it private; the cache is as shareable as its parent.
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("data: cache: %v", err)
	}
	w, err := newCacheWriter(tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	stats, err := build(cfg, f, sources, w, progress)
	if err != nil {
		w.abort()
		return nil, err
	}
	seqs := map[string][][]uint32{}
	var seqTokens int64
	for si, split := range []string{SplitTrain, SplitValidation} {
		var idx []uint32
		var lens []uint32
		for i, e := range w.examples {
			if int(e.split) == si {
				idx = append(idx, uint32(i))
				lens = append(lens, e.n)
			}
		}
		var ss [][]uint32
		if cfg.Packing {
			for _, bin := range packBFD(lens, cfg.MaxSeqLen) {
				for k := range bin {
					bin[k] = idx[bin[k]]
				}
				ss = append(ss, bin)
			}
		} else {
			for _, i := range idx {
				ss = append(ss, []uint32{i})
			}
		}
		for _, l := range lens {
			seqTokens += int64(l)
		}
		seqs[split] = ss
	}
	stats.TrainSequences, stats.ValSequences = len(seqs[SplitTrain]), len(seqs[SplitValidation])
	if n := stats.TrainSequences + stats.ValSequences; cfg.Packing && n > 0 {
		stats.PackingEfficiency = float64(seqTokens) / float64(int64(n)*int64(cfg.MaxSeqLen))
	}
	if err := w.finish(key, files, seqs, stats); err != nil {
		w.abort()
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		// Another process may have finished the same key first.
		os.RemoveAll(tmp)
	}
	d, err := openCache(final, key)
	if err != nil {
		return nil, fmt.Errorf("data: cache %s: just written, unreadable: %v", final, err)
	}
	d.stats.FromCache = false
	d.setup(cfg, pad)
	return d, nil
}

func (d *Dataset) setup(cfg Config, pad int32) {
	d.maxLen, d.packed, d.seed, d.pad = cfg.MaxSeqLen, cfg.Packing, cfg.Seed, pad
}

// padID is the pad token, else the EOS token (Qwen3's pad is
// <|endoftext|>; Llama 3 has none and pads with EOS, as TRL does), else 0.
// Padding carries label -100 and a SegID of -1, so its id never matters to
// the loss.
func padID(tok *tokenizer.Tokenizer) int32 {
	if p := tok.Config().PadToken; p != "" {
		if id, ok := tok.TokenID(p); ok {
			return int32(id)
		}
	}
	if id, ok := tok.EOS(); ok {
		return int32(id)
	}
	return 0
}

type rowJob struct {
	seq   int
	refs  []RowRef
	rows  []Row
	files []uint16
	split []uint8
}

type rowResult struct {
	seq   int
	exs   [][]Example
	errs  []error
	files []uint16
	split []uint8
}

const chunkRows = 64

// build runs the row stage over every source with a worker per CPU and
// writes the examples to w in stream order.
func build(cfg Config, f *formatter, sources []*Source, w *cacheWriter, progress func(done, total int64)) (Stats, error) {
	stats := Stats{MaxSeqLen: cfg.MaxSeqLen, Packed: cfg.Packing}
	var total int64
	for _, s := range sources {
		n, ok := s.NumRows()
		if !ok {
			total = 0
			break
		}
		total += n
	}
	workers := max(1, runtime.GOMAXPROCS(0))
	jobs := make(chan rowJob, 2*workers)
	results := make(chan rowResult, 2*workers)
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				r := rowResult{seq: j.seq, exs: make([][]Example, len(j.rows)), errs: make([]error, len(j.rows)), files: j.files, split: j.split}
				for i, row := range j.rows {
					r.exs[i], r.errs[i] = f.examples(j.refs[i], row)
					rowsTokenized.Add(1)
				}
				select {
				case results <- r:
				case <-stop:
				}
			}
		}()
	}
	// The writer puts results back in stream order.
	writeErr := make(chan error, 1)
	go func() {
		pending := map[int]rowResult{}
		next := 0
		var err error
		hist := newHist(cfg.MaxSeqLen)
		for r := range results {
			if err != nil {
				continue
			}
			pending[r.seq] = r
			for {
				r, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				next++
				if err = consume(cfg, &stats, hist, w, r); err != nil {
					halt()
					break
				}
				if progress != nil {
					progress(stats.Rows, total)
				}
			}
		}
		stats.Lengths = hist.buckets()
		writeErr <- err
	}()
	var readErr error
	seq := 0
	for si, src := range sources {
		fileIdx := map[string]uint16{}
		base := 0
		for _, s := range sources[:si] {
			base += len(s.Files())
		}
		for i, p := range src.Files() {
			fileIdx[p] = uint16(base + i)
		}
		job := rowJob{}
		flush := func() bool {
			if len(job.rows) == 0 {
				return true
			}
			job.seq = seq
			seq++
			select {
			case jobs <- job:
			case <-stop:
				return false
			}
			job = rowJob{}
			return true
		}
		errStopped := errors.New("stopped")
		err := src.Rows(f.columns(src.Columns()), func(ref RowRef, row Row) error {
			fi := fileIdx[ref.File]
			split := uint8(si)
			if si == 0 && isValidation(cfg.Seed, int(fi), ref.Index, cfg.ValFraction) {
				split = 1
			}
			job.refs = append(job.refs, ref)
			job.rows = append(job.rows, row)
			job.files = append(job.files, fi)
			job.split = append(job.split, split)
			if len(job.rows) == chunkRows && !flush() {
				return errStopped
			}
			return nil
		})
		if err == nil && !flush() {
			err = errStopped
		}
		if err != nil {
			if err != errStopped {
				readErr = err
			}
			break
		}
	}
	close(jobs)
	wg.Wait()
	close(results)
	if err := <-writeErr; err != nil {
		return stats, err
	}
	if readErr != nil {
		return stats, readErr
	}
	if stats.TrainExamples == 0 {
		return stats, fmt.Errorf("data: %s: empty dataset: no training examples from %d rows (%d bad rows skipped, %d examples with nothing to train, %d to validation)", cfg.Path, stats.Rows, stats.BadRows, stats.Dropped, stats.ValExamples)
	}
	return stats, nil
}

func consume(cfg Config, stats *Stats, hist *lengthHist, w *cacheWriter, r rowResult) error {
	for i, exs := range r.exs {
		stats.Rows++
		if err := r.errs[i]; err != nil {
			var re *rowError
			if !cfg.SkipBadRows || !errors.As(err, &re) {
				return err
			}
			stats.BadRows++
			if len(stats.BadRowErrors) < maxBadRowErrors {
				stats.BadRowErrors = append(stats.BadRowErrors, err.Error())
			}
			continue
		}
		for _, ex := range exs {
			if len(ex.IDs) > cfg.MaxSeqLen {
				ex.IDs, ex.Labels = ex.IDs[:cfg.MaxSeqLen], ex.Labels[:cfg.MaxSeqLen]
				stats.Truncated++
			}
			trained := int64(0)
			for k, l := range ex.Labels {
				// The first token's label is never used (nothing precedes
				// it), so it does not count as trained.
				if l != IgnoreIndex && k > 0 {
					trained++
				}
			}
			if trained == 0 {
				stats.Dropped++
				continue
			}
			stats.Examples++
			stats.Tokens += int64(len(ex.IDs))
			stats.TrainedTokens += trained
			if r.split[i] == 0 {
				stats.TrainExamples++
			} else {
				stats.ValExamples++
			}
			hist.add(len(ex.IDs))
			if err := w.add(ex, r.files[i], r.split[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

type lengthHist struct {
	edges  []int
	counts []int64
}

// newHist buckets lengths by powers of two from 32 up to maxLen.
func newHist(maxLen int) *lengthHist {
	var edges []int
	for e := 32; e < maxLen; e *= 2 {
		edges = append(edges, e)
	}
	edges = append(edges, maxLen)
	return &lengthHist{edges: edges, counts: make([]int64, len(edges))}
}

func (h *lengthHist) add(n int) {
	for i, e := range h.edges {
		if n <= e {
			h.counts[i]++
			return
		}
	}
	h.counts[len(h.counts)-1]++
}

func (h *lengthHist) buckets() []LengthBucket {
	out := make([]LengthBucket, len(h.edges))
	for i := range out {
		out[i] = LengthBucket{UpTo: h.edges[i], Count: h.counts[i]}
	}
	return out
}

// Stats returns what Prepare counted (stored in the cache, so a cached
// Prepare reports the same, with FromCache set).
func (d *Dataset) Stats() Stats { return d.stats }

// Sequences is the number of sequences in split ("train" or "validation").
func (d *Dataset) Sequences(split string) int { return len(d.seqs[split]) }

// Err is the first error a Batches iteration met (reading the cache files).
func (d *Dataset) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

func (d *Dataset) setErr(err error) {
	d.mu.Lock()
	if d.err == nil {
		d.err = err
	}
	d.mu.Unlock()
}

// Close releases the cache files.
func (d *Dataset) Close() error {
	return errors.Join(d.tokens.Close(), d.mask.Close())
}

// Example returns example i of the cache (both splits, in stream order).
func (d *Dataset) Example(i int) (Example, error) {
	if i < 0 || i >= len(d.examples) {
		return Example{}, fmt.Errorf("data: example %d out of range [0, %d)", i, len(d.examples))
	}
	e := d.examples[i]
	ex := Example{IDs: make([]int32, e.n), Labels: make([]int32, e.n), Ref: RowRef{File: d.files[e.file], Index: e.row}}
	if err := d.readExample(e, ex.IDs, ex.Labels); err != nil {
		return Example{}, err
	}
	return ex, nil
}
