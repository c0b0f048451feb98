package data

// The tokenized cache. The first Prepare of a dataset writes, under
// CacheDir/<key>/:
//
//	tokens.bin      every example's token ids, end to end, int32 little-endian
//	mask.bin        one bit a token (LSB first): 1 where the loss covers it
//	examples.bin    24 bytes an example: token offset u64, length u32, file
//	                u16, split u8, 0 u8, row index i64 (little-endian)
//	seqs-<split>.bin  the sequences as example lists: count n u32, n+1
//	                offsets u32 into the members, members u32
//	meta.json       version, sizes and CRC-32C of the files above, stats
//
// into a temporary folder renamed into place when complete, so a crash leaves
// no half cache under the key. A later Prepare with the same key checks
// meta.json's sizes and checksums and reads the files instead of tokenizing;
// a cache that fails any check is deleted and rebuilt, never trusted.
//
// The key is a SHA-256 of everything that changes the output: the data
// settings, the tokenizer (its vocabulary, special tokens, config fields,
// chat template and the ids of a probe text, plus the bytes of
// tokenizer.json, tokenizer_config.json and chat_template.jinja when
// Config.TokenizerDir names the folder) and each data file's path, size,
// modification time and SHA-256 of its first and last MiB. Not a hash of the
// whole content: that would read a 100 GB dataset on every start; an edit
// that keeps size and mtime and touches neither end is the one change missed
// (delete the cache folder after such surgery).

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/tunellm/tune/tokenizer"
)

const cacheVersion = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// exampleRec is an example's entry in examples.bin.
type exampleRec struct {
	start uint64
	n     uint32
	file  uint16
	split uint8
	row   int64
}

const exampleRecSize = 24

func (e exampleRec) put(b []byte) {
	binary.LittleEndian.PutUint64(b[0:], e.start)
	binary.LittleEndian.PutUint32(b[8:], e.n)
	binary.LittleEndian.PutUint16(b[12:], e.file)
	b[14], b[15] = e.split, 0
	binary.LittleEndian.PutUint64(b[16:], uint64(e.row))
}

func getExampleRec(b []byte) exampleRec {
	return exampleRec{
		start: binary.LittleEndian.Uint64(b[0:]),
		n:     binary.LittleEndian.Uint32(b[8:]),
		file:  binary.LittleEndian.Uint16(b[12:]),
		split: b[14],
		row:   int64(binary.LittleEndian.Uint64(b[16:])),
	}
}

type cacheMeta struct {
	Version int               `json:"version"`
	Key     string            `json:"key"`
	Files   []string          `json:"files"`
	Sizes   map[string]int64  `json:"sizes"`
	CRC32C  map[string]uint32 `json:"crc32c"`
	Stats   Stats             `json:"stats"`
}

// DefaultCacheDir is $XDG_CACHE_HOME/tune/data, or ~/.cache/tune/data.
func DefaultCacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "tune", "data")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "tune", "data")
	}
	return filepath.Join(os.TempDir(), "tune-cache", "data")
}

// cacheKey hashes the settings, the tokenizer and the data files.
func cacheKey(cfg Config, f *formatter, tok *tokenizer.Tokenizer, files []string) (string, error) {
	h := sha256.New()
	w := func(parts ...any) {
		for _, p := range parts {
			s := fmt.Sprint(p)
			fmt.Fprintf(h, "%d:%s;", len(s), s)
		}
	}
	// The seed matters to the cache only through the validation split; the
	// shuffle happens at read time.
	seed := uint64(0)
	if cfg.ValFraction > 0 {
		seed = cfg.Seed
	}
	w("tune-data", cacheVersion, f.format, f.tmpl, f.system, f.addEOS, f.trainAll, cfg.MaxSeqLen, cfg.Packing, seed, cfg.ValFraction, cfg.SkipBadRows)
	for _, m := range []map[string]string{f.cols, f.roles} {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			w(k, m[k])
		}
	}
	// The tokenizer as it behaves: vocabulary, special tokens, config and
	// the ids of a probe text that goes through normalizer, pre-tokenizer
	// and merges.
	c := tok.Config()
	w("tok", tok.VocabSize(), c.BOSToken, c.EOSToken, c.PadToken, c.UnkToken, c.ChatTemplate, tok.AddsBOS())
	th := sha256.New()
	for id := 0; id < tok.VocabSize(); id++ {
		fmt.Fprintf(th, "%d %q %v\n", id, tok.Token(id), tok.IsSpecial(id))
	}
	w(hex.EncodeToString(th.Sum(nil)))
	w(fmt.Sprint(tok.Encode(probeText, true)))
	if cfg.TokenizerDir != "" {
		for _, name := range []string{"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} {
			b, err := os.ReadFile(filepath.Join(cfg.TokenizerDir, name))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return "", fmt.Errorf("data: cache key: %v", err)
			}
			sum := sha256.Sum256(b)
			w(name, hex.EncodeToString(sum[:]))
		}
	}
	for _, p := range files {
		fp, err := fileFingerprint(p)
		if err != nil {
			return "", err
		}
		w(fp)
	}
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

const probeText = "Hello, world! 你好 123 4567 — «ça va?»\n\n  tabs\tand  spaces <|im_end|> don't 'll \U0001F600"

func fileFingerprint(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("data: %s: %v", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("data: %v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("data: %v", err)
	}
	const mib = 1 << 20
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, min(st.Size(), mib))); err != nil {
		return "", fmt.Errorf("data: %s: %v", path, err)
	}
	if st.Size() > mib {
		off := max(mib, st.Size()-mib)
		if _, err := io.Copy(h, io.NewSectionReader(f, off, st.Size()-off)); err != nil {
			return "", fmt.Errorf("data: %s: %v", path, err)
		}
	}
	return fmt.Sprintf("%s %d %d %x", abs, st.Size(), st.ModTime().UnixNano(), h.Sum(nil)), nil
}

// cacheWriter writes a cache into a temporary folder.
type cacheWriter struct {
	dir             string
	tokF, maskF     *os.File
	tokW, maskW     *bufio.Writer
	tokCRC, maskCRC hash.Hash32
	nTok            uint64
	maskByte        byte
	examples        []exampleRec
	sizes           map[string]int64
	crcs            map[string]uint32
	tokBuf          []byte
}

func newCacheWriter(dir string) (*cacheWriter, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("data: cache: %v", err)
	}
	w := &cacheWriter{dir: dir, tokCRC: crc32.New(castagnoli), maskCRC: crc32.New(castagnoli), sizes: map[string]int64{}, crcs: map[string]uint32{}}
	var err error
	if w.tokF, err = os.Create(filepath.Join(dir, "tokens.bin")); err != nil {
		return nil, fmt.Errorf("data: cache: %v", err)
	}
	if w.maskF, err = os.Create(filepath.Join(dir, "mask.bin")); err != nil {
		w.tokF.Close()
		return nil, fmt.Errorf("data: cache: %v", err)
	}
	w.tokW = bufio.NewWriterSize(io.MultiWriter(w.tokF, w.tokCRC), 1<<20)
	w.maskW = bufio.NewWriterSize(io.MultiWriter(w.maskF, w.maskCRC), 1<<16)
	return w, nil
}

func (w *cacheWriter) add(ex Example, file uint16, split uint8) error {
	w.examples = append(w.examples, exampleRec{start: w.nTok, n: uint32(len(ex.IDs)), file: file, split: split, row: ex.Ref.Index})
	w.tokBuf = slices.Grow(w.tokBuf[:0], 4*len(ex.IDs))[:4*len(ex.IDs)]
	for i, id := range ex.IDs {
		binary.LittleEndian.PutUint32(w.tokBuf[4*i:], uint32(id))
		if ex.Labels[i] != IgnoreIndex {
			w.maskByte |= 1 << (w.nTok % 8)
		}
		w.nTok++
		if w.nTok%8 == 0 {
			if err := w.maskW.WriteByte(w.maskByte); err != nil {
				return fmt.Errorf("data: cache: %v", err)
			}
			w.maskByte = 0
		}
	}
	if _, err := w.tokW.Write(w.tokBuf); err != nil {
		return fmt.Errorf("data: cache: %v", err)
	}
	return nil
}

// finish writes the remaining files; seqs holds each split's sequences.
func (w *cacheWriter) finish(key string, files []string, seqs map[string][][]uint32, stats Stats) error {
	if w.nTok%8 != 0 {
		if err := w.maskW.WriteByte(w.maskByte); err != nil {
			return fmt.Errorf("data: cache: %v", err)
		}
	}
	for _, x := range []struct {
		name string
		bw   *bufio.Writer
		f    *os.File
		crc  hash.Hash32
	}{{"tokens.bin", w.tokW, w.tokF, w.tokCRC}, {"mask.bin", w.maskW, w.maskF, w.maskCRC}} {
		if err := x.bw.Flush(); err != nil {
			return fmt.Errorf("data: cache: %v", err)
		}
		st, err := x.f.Stat()
		if err != nil {
			return fmt.Errorf("data: cache: %v", err)
		}
		if err := x.f.Close(); err != nil {
			return fmt.Errorf("data: cache: %v", err)
		}
		w.sizes[x.name], w.crcs[x.name] = st.Size(), x.crc.Sum32()
	}
	b := make([]byte, exampleRecSize*len(w.examples))
	for i, e := range w.examples {
		e.put(b[i*exampleRecSize:])
	}
	if err := w.writeFile("examples.bin", b); err != nil {
		return err
	}
	for _, split := range []string{"train", "validation"} {
		if err := w.writeFile("seqs-"+split+".bin", encodeSeqs(seqs[split])); err != nil {
			return err
		}
	}
	m := cacheMeta{Version: cacheVersion, Key: key, Files: files, Sizes: w.sizes, CRC32C: w.crcs, Stats: stats}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("data: cache: %v", err)
	}
	return os.WriteFile(filepath.Join(w.dir, "meta.json"), mb, 0o644)
}

func (w *cacheWriter) abort() {
	w.tokF.Close()
	w.maskF.Close()
	os.RemoveAll(w.dir)
}

func (w *cacheWriter) writeFile(name string, b []byte) error {
	if err := os.WriteFile(filepath.Join(w.dir, name), b, 0o644); err != nil {
		return fmt.Errorf("data: cache: %v", err)
	}
	w.sizes[name], w.crcs[name] = int64(len(b)), crc32.Checksum(b, castagnoli)
	return nil
}

func encodeSeqs(seqs [][]uint32) []byte {
	total := 0
	for _, s := range seqs {
		total += len(s)
	}
	b := make([]byte, 0, 4*(2+len(seqs)+total))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(seqs)))
	off := uint32(0)
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, s := range seqs {
		off += uint32(len(s))
		b = binary.LittleEndian.AppendUint32(b, off)
	}
	for _, s := range seqs {
		for _, m := range s {
			b = binary.LittleEndian.AppendUint32(b, m)
		}
	}
	return b
}

func decodeSeqs(b []byte, nExamples int) ([][]uint32, error) {
	if len(b) < 8 {
		return nil, errors.New("short sequence index")
	}
	n := int(binary.LittleEndian.Uint32(b))
	if len(b) < 4*(2+n) {
		return nil, errors.New("short sequence index")
	}
	offs := b[4 : 4*(2+n)]
	members := b[4*(2+n):]
	out := make([][]uint32, n)
	all := make([]uint32, len(members)/4)
	for i := range all {
		all[i] = binary.LittleEndian.Uint32(members[4*i:])
		if int(all[i]) >= nExamples {
			return nil, fmt.Errorf("sequence member %d out of range", all[i])
		}
	}
	for i := 0; i < n; i++ {
		lo, hi := binary.LittleEndian.Uint32(offs[4*i:]), binary.LittleEndian.Uint32(offs[4*i+4:])
		if lo > hi || int(hi) > len(all) {
			return nil, errors.New("bad sequence offsets")
		}
		out[i] = all[lo:hi:hi]
	}
	return out, nil
}

// openCache reads and checks a complete cache folder.
func openCache(dir, key string) (*Dataset, error) {
	mb, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, err
	}
	var m cacheMeta
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("meta.json: %v", err)
	}
	if m.Version != cacheVersion || m.Key != key {
		return nil, fmt.Errorf("meta.json: version %d key %s, want %d %s", m.Version, m.Key, cacheVersion, key)
	}
	names := []string{"tokens.bin", "mask.bin", "examples.bin", "seqs-train.bin", "seqs-validation.bin"}
	small := map[string][]byte{}
	for _, name := range names {
		p := filepath.Join(dir, name)
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		h := crc32.New(castagnoli)
		var n int64
		if name == "tokens.bin" || name == "mask.bin" {
			n, err = io.Copy(h, bufio.NewReaderSize(f, 1<<20))
		} else {
			var b []byte
			b, err = io.ReadAll(f)
			n = int64(len(b))
			h.Write(b)
			small[name] = b
		}
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		if n != m.Sizes[name] || h.Sum32() != m.CRC32C[name] {
			return nil, fmt.Errorf("%s: size %d crc %08x, meta.json says %d %08x", name, n, h.Sum32(), m.Sizes[name], m.CRC32C[name])
		}
	}
	eb := small["examples.bin"]
	if len(eb)%exampleRecSize != 0 {
		return nil, errors.New("examples.bin: size not a multiple of 24")
	}
	d := &Dataset{dir: dir, stats: m.Stats, files: m.Files, examples: make([]exampleRec, len(eb)/exampleRecSize), seqs: map[string][][]uint32{}}
	tokSize := uint64(m.Sizes["tokens.bin"] / 4)
	for i := range d.examples {
		e := getExampleRec(eb[i*exampleRecSize:])
		if e.start+uint64(e.n) > tokSize {
			return nil, fmt.Errorf("examples.bin: example %d beyond tokens.bin", i)
		}
		d.examples[i] = e
	}
	for _, split := range []string{"train", "validation"} {
		s, err := decodeSeqs(small["seqs-"+split+".bin"], len(d.examples))
		if err != nil {
			return nil, fmt.Errorf("seqs-%s.bin: %v", split, err)
		}
		d.seqs[split] = s
	}
	if d.tokens, err = os.Open(filepath.Join(dir, "tokens.bin")); err != nil {
		return nil, err
	}
	if d.mask, err = os.Open(filepath.Join(dir, "mask.bin")); err != nil {
		d.tokens.Close()
		return nil, err
	}
	d.stats.FromCache = true
	d.stats.CacheDir = dir
	return d, nil
}
