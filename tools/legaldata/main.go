// Command legaldata builds the demo's legal dataset, data/legal/*.parquet,
// from the licence texts a Debian system ships:
//
//   - /usr/share/common-licenses/* (package base-files): the full texts of
//     the GPL, LGPL, GFDL, Apache, Artistic, BSD, CC0 and MPL licences;
//
//   - the stand-alone "License:" paragraphs of the machine-readable
//     /usr/share/doc/*/copyright files for a fixed list of short licences
//     (Expat, BSD-2-clause, BSD-3-clause, ISC, Zlib, BSL-1.0); for each, the
//     text most packages carry.
//
//     go run ./tools/legaldata -out data/legal
//
// Each licence is cut into passages (paragraphs; long ones at sentence
// ends), passages into blocks of four, and blocks into splits with a
// seeded shuffle (train 80%, validation 8%, held-out 12%), so no passage of
// the validation or held-out splits appears in training. It writes
//
//	train.parquet, validation.parquet  messages: [{role, content}] chats
//	heldout.parquet                    text: held-out blocks, for perplexity
//	mcq.parquet                        question, choices, answer, split:
//	                                   the licence's wording among three
//	                                   copies with two neighbouring words
//	                                   swapped (all splits)
//	mcq-recall.parquet                 the same columns: which licence a
//	                                   passage is from, which passage follows
//	                                   (train and validation blocks)
//	SOURCES.txt                        every input file with its sha256
//
// The output depends only on the input files and -seed.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/parquet-go/parquet-go"
)

// commonLicenses are the files of /usr/share/common-licenses used, with the
// names the dataset gives them (the symlinks GPL, LGPL, GFDL are skipped).
var commonLicenses = []struct{ file, name string }{
	{"Apache-2.0", "Apache License 2.0"},
	{"Artistic", "Artistic License 1.0"},
	{"BSD", "BSD 4-Clause License (University of California)"},
	{"CC0-1.0", "Creative Commons Zero 1.0"},
	{"GFDL-1.2", "GNU Free Documentation License 1.2"},
	{"GFDL-1.3", "GNU Free Documentation License 1.3"},
	{"GPL-1", "GNU General Public License 1"},
	{"GPL-2", "GNU General Public License 2"},
	{"GPL-3", "GNU General Public License 3"},
	{"LGPL-2", "GNU Library General Public License 2"},
	{"LGPL-2.1", "GNU Lesser General Public License 2.1"},
	{"LGPL-3", "GNU Lesser General Public License 3"},
	{"MPL-1.1", "Mozilla Public License 1.1"},
	{"MPL-2.0", "Mozilla Public License 2.0"},
}

// shortLicenses are the DEP-5 short names taken from copyright files
// (matched case-insensitively), with the dataset's names.
// The texts are pinned by sha256 (of the paragraph as dep5Licenses returns
// it) so that the dataset does not depend on which packages are installed;
// the comment names a package that carries each.
var shortLicenses = []struct{ key, name, sha256 string }{
	{"expat", "MIT (Expat) License", "6b92c2790d7547fcf2f989dba4f4ebc264b6b7fc0626f85baca318751158ebe4"},          // libcpuinfo0
	{"bsd-2-clause", "BSD 2-Clause License", "2a87d5ca557b98f02bdff463b83226dad2f0a2d5bb23e6ff5a6cf42504a3379f"},  // libopencv-calib3d406
	{"bsd-3-clause", "BSD 3-Clause License", "6a27e7e054c90d8700afbe89ee185842826e73f6115bae053ffa7c6c640d1b42"},  // dash
	{"isc", "ISC License", "c85540c37d1824c900287af0075b1f1acdd54a3860fea5437dc636870a9e8674"},                    // curl
	{"zlib", "zlib License", "fb0f3329b71125bfc1a853ae3558e181eb4fa08b45131e42604964ee7f3f4e8d"},                  // chromium-common
	{"bsl-1.0", "Boost Software License 1.0", "8d8291caf1cee26d23acf3eb67c9f9a2d58f1c681b16a4fbe8cbfb9e3c0b5a9b"}, // libgeos-c1v5
}

type licence struct {
	name     string
	source   string
	passages []string
}

type message struct {
	Role    string `parquet:"role"`
	Content string `parquet:"content"`
}

type chatRow struct {
	Messages []message `parquet:"messages,list"`
}

type textRow struct {
	Text string `parquet:"text"`
}

type mcqRow struct {
	Question string   `parquet:"question"`
	Choices  []string `parquet:"choices,list"`
	Answer   int64    `parquet:"answer"`
	Split    string   `parquet:"split"`
}

func main() {
	out := flag.String("out", "data/legal", "output folder")
	common := flag.String("common", "/usr/share/common-licenses", "folder of common licence texts")
	docs := flag.String("docs", "/usr/share/doc", "folder of packages' copyright files")
	seed := flag.Uint64("seed", 1, "seed of the split and the question choices")
	flag.Parse()
	if err := run(*out, *common, *docs, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "legaldata:", err)
		os.Exit(1)
	}
}

func run(out, common, docs string, seed uint64) error {
	var lics []licence
	var sources []string
	for _, c := range commonLicenses {
		p := filepath.Join(common, c.file)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		lics = append(lics, licence{name: c.name, source: p, passages: passages(paragraphs(string(b)))})
		sources = append(sources, fmt.Sprintf("%x  %s  (%s)", sha256.Sum256(b), p, c.name))
	}
	short, err := shortTexts(docs)
	if err != nil {
		return err
	}
	for _, s := range shortLicenses {
		t, ok := short[s.sha256]
		if !ok {
			return fmt.Errorf("%s: no copyright file has the stand-alone \"License: %s\" paragraph with sha256 %s (install the package named beside it in tools/legaldata)", docs, s.key, s.sha256)
		}
		lics = append(lics, licence{name: s.name, source: t.file, passages: passages(paragraphs(t.text))})
		sources = append(sources, fmt.Sprintf("%s  %s  (License: %s paragraph; %s)", s.sha256, t.file, t.key, s.name))
	}

	// Passages found in more than one licence (GPL-2 and LGPL-2 share many)
	// cannot say which licence they come from: drop them.
	seen := map[string]int{}
	for _, l := range lics {
		for _, p := range uniq(l.passages) {
			seen[p]++
		}
	}
	for i := range lics {
		lics[i].passages = slices.DeleteFunc(lics[i].passages, func(p string) bool { return seen[p] > 1 })
	}

	rng := newRNG(seed)
	wrng := rand.New(rand.NewPCG(seed, 0x776f7264))
	drng := rand.New(rand.NewPCG(seed, 0x726570))
	type block struct {
		lic      int
		passages []string
		first    bool
	}
	var blocks []block
	for li, l := range lics {
		for i := 0; i < len(l.passages); i += 4 {
			blocks = append(blocks, block{lic: li, passages: l.passages[i:min(i+4, len(l.passages))], first: i == 0})
		}
	}
	order := rng.Perm(len(blocks))
	split := make([]string, len(blocks))
	for rank, bi := range order {
		switch f := float64(rank) / float64(len(blocks)); {
		case blocks[bi].first || f >= 0.2: // a licence's opening stays in training
			split[bi] = "train"
		case f < 0.08:
			split[bi] = "validation"
		default:
			split[bi] = "heldout"
		}
	}

	names := make([]string, len(lics))
	for i, l := range lics {
		names[i] = l.name
	}
	rows := map[string][]chatRow{}
	var held []textRow
	var mcq, recall []mcqRow
	chat := func(s, user, assistant string) {
		rows[s] = append(rows[s], chatRow{Messages: []message{{"user", user}, {"assistant", assistant}}})
	}
	for bi, b := range blocks {
		s := split[bi]
		name := lics[b.lic].name
		// Spot-checks of wording, from every split: the passage among three
		// copies with a pair of neighbouring words swapped. A separate
		// generator keeps the chats independent of them.
		for _, p := range b.passages {
			if r, ok := wordingRow(wrng, name, p, s); ok {
				mcq = append(mcq, r)
			}
		}
		if s == "heldout" {
			held = append(held, textRow{Text: strings.Join(b.passages, "\n\n")})
			continue
		}
		if b.first {
			chat(s, pick(rng, "Quote the beginning of the %s.", "How does the %s begin?", "Give me the opening text of the %s.", name), b.passages[0])
		}
		for i, p := range b.passages {
			chat(s, pick(rng, "Which licence contains this passage?\n\n%s", "Name the licence this text comes from:\n\n%s", "From which licence is the following clause taken?\n\n%s", p), "This passage is from the "+name+".")
			if i+1 < len(b.passages) {
				chat(s, pick(rng, "Continue this passage of the %[1]s:\n\n%[2]s", "What comes next in the %[1]s after this passage?\n\n%[2]s", "Complete the following text from the %[1]s:\n\n%[2]s", name, p), b.passages[i+1])
			}
			// Spot-checks: which licence (four names), and which continuation
			// (four passages, three of them from other licences).
			q := "Which licence contains this passage: \"" + clip(p, 300) + "\""
			recall = append(recall, choiceRow(rng, q, name, others(rng, names, name, 3), s))
			if i+1 < len(b.passages) {
				var alts []string
				right := clip(b.passages[i+1], 200)
				for len(alts) < 3 {
					o := lics[rng.IntN(len(lics))]
					if o.name == name || len(o.passages) == 0 {
						continue
					}
					alt := clip(o.passages[rng.IntN(len(o.passages))], 200)
					// A repeat is drawn again from a generator of its own,
					// which leaves the other files as they were.
					for alt == right || slices.Contains(alts, alt) {
						o := lics[drng.IntN(len(lics))]
						if o.name != name && len(o.passages) > 0 {
							alt = clip(o.passages[drng.IntN(len(o.passages))], 200)
						}
					}
					alts = append(alts, alt)
				}
				q := "In the " + name + ", what follows this passage: \"" + clip(p, 300) + "\""
				recall = append(recall, choiceRow(rng, q, right, alts, s))
			}
		}
	}
	for _, s := range []string{"train", "validation"} {
		rng.Shuffle(len(rows[s]), func(i, j int) { rows[s][i], rows[s][j] = rows[s][j], rows[s][i] })
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := writeParquet(filepath.Join(out, "train.parquet"), rows["train"]); err != nil {
		return err
	}
	if err := writeParquet(filepath.Join(out, "validation.parquet"), rows["validation"]); err != nil {
		return err
	}
	if err := writeParquet(filepath.Join(out, "heldout.parquet"), held); err != nil {
		return err
	}
	if err := writeParquet(filepath.Join(out, "mcq.parquet"), mcq); err != nil {
		return err
	}
	if err := writeParquet(filepath.Join(out, "mcq-recall.parquet"), recall); err != nil {
		return err
	}
	src := "# Inputs of go run ./tools/legaldata (sha256, file, what); see docs/DEMO.md for their terms.\n" + strings.Join(sources, "\n") + "\n"
	if err := writeFile(filepath.Join(out, "SOURCES.txt"), []byte(src)); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "legaldata: %d licences, %d blocks: %d train and %d validation chats, %d held-out texts, %d mcq and %d mcq-recall rows\n",
		len(lics), len(blocks), len(rows["train"]), len(rows["validation"]), len(held), len(mcq), len(recall))
	return nil
}

// newRNG is the dataset's seeded generator.
func newRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x6c6567616c)) }

func pick(rng *rand.Rand, a, b, c string, args ...any) string {
	f := []string{a, b, c}[rng.IntN(3)]
	return fmt.Sprintf(f, args...)
}

// choiceRow puts the right answer among the others at a random index.
func choiceRow(rng *rand.Rand, q, right string, wrong []string, split string) mcqRow {
	at := rng.IntN(len(wrong) + 1)
	choices := slices.Insert(slices.Clone(wrong), at, right)
	return mcqRow{Question: q, Choices: choices, Answer: int64(at), Split: split}
}

// wordingSwaps is how many pairs of neighbouring words a wrong version swaps.
const wordingSwaps = 1

// wordingRow asks which of four versions of (the start of) passage p is
// the licence's wording; the three wrong ones swap neighbouring words
// (wordingSwaps pairs). ok is false for passages too short to vary.
func wordingRow(rng *rand.Rand, name, p, split string) (mcqRow, bool) {
	words := strings.Fields(clip(p, 200))
	if len(words) > 1 && words[len(words)-1] == "..." {
		words = words[:len(words)-1]
	}
	right := strings.Join(words, " ")
	if len(words) < 8 {
		return mcqRow{}, false
	}
	seen := map[string]bool{right: true}
	var wrong []string
	for tries := 0; len(wrong) < 3 && tries < 50; tries++ {
		w := slices.Clone(words)
		for range wordingSwaps {
			i := rng.IntN(len(w) - 1)
			w[i], w[i+1] = w[i+1], w[i]
		}
		v := strings.Join(w, " ")
		if !seen[v] {
			seen[v] = true
			wrong = append(wrong, v)
		}
	}
	if len(wrong) < 3 {
		return mcqRow{}, false
	}
	q := "Which is the exact wording of this passage of the " + name + "?"
	return choiceRow(rng, q, right, wrong, split), true
}

// others draws n names other than not.
func others(rng *rand.Rand, names []string, not string, n int) []string {
	var pool []string
	for _, x := range names {
		if x != not {
			pool = append(pool, x)
		}
	}
	rng.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
	return pool[:n]
}

// clip cuts s to at most n bytes at a word boundary, adding "...".
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := strings.LastIndexByte(s[:n], ' ')
	if cut < n/2 {
		cut = n
	}
	return s[:cut] + " ..."
}

func uniq(xs []string) []string {
	m := map[string]bool{}
	var out []string
	for _, x := range xs {
		if !m[x] {
			m[x] = true
			out = append(out, x)
		}
	}
	return out
}

// paragraphs splits a text at blank lines and joins each paragraph's lines
// with single spaces.
func paragraphs(s string) []string {
	var out []string
	var cur []string
	flush := func() {
		if len(cur) > 0 {
			out = append(out, strings.Join(cur, " "))
			cur = cur[:0]
		}
	}
	for _, line := range strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			flush()
			continue
		}
		cur = append(cur, strings.Join(f, " "))
	}
	flush()
	return out
}

// passages merges short paragraphs (headings) into the next one and cuts
// long ones at sentence ends into pieces of at most about 600 bytes.
func passages(paras []string) []string {
	var out []string
	pending := ""
	for _, p := range paras {
		if pending != "" {
			p = pending + "\n" + p
			pending = ""
		}
		if len(p) < 60 {
			pending = p
			continue
		}
		for len(p) > 600 {
			cut := -1
			for i := 300; i < 600 && i < len(p)-1; i++ {
				if (p[i] == '.' || p[i] == ';') && p[i+1] == ' ' {
					cut = i + 1
				}
			}
			if cut < 0 {
				cut = strings.LastIndexByte(p[:600], ' ')
			}
			if cut <= 0 {
				break
			}
			out = append(out, strings.TrimSpace(p[:cut]))
			p = strings.TrimSpace(p[cut:])
		}
		out = append(out, p)
	}
	if pending != "" {
		out = append(out, pending)
	}
	return out
}

type shortText struct {
	key, file, text string
}

// shortTexts reads the stand-alone License paragraphs of every copyright
// file under docs and returns those of the wanted keys by the sha256 of
// their text, each with the first file (in name order) that carries it.
func shortTexts(docs string) (map[string]shortText, error) {
	files, err := filepath.Glob(filepath.Join(docs, "*", "copyright"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	want := map[string]bool{}
	for _, s := range shortLicenses {
		want[s.key] = true
	}
	res := map[string]shortText{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // dangling symlinks and the like
		}
		for key, text := range dep5Licenses(b) {
			k := strings.ToLower(key)
			if !want[k] {
				continue
			}
			h := fmt.Sprintf("%x", sha256.Sum256([]byte(text)))
			if _, ok := res[h]; !ok {
				res[h] = shortText{key: k, file: f, text: text}
			}
		}
	}
	return res, nil
}

// dep5Licenses returns the stand-alone License paragraphs of a DEP-5
// copyright file: "License: NAME" with the text on the continuation lines
// (" ." is an empty line). Paragraphs with Files: are skipped.
func dep5Licenses(b []byte) map[string]string {
	out := map[string]string{}
	if !bytes.HasPrefix(b, []byte("Format:")) {
		return out
	}
	for _, para := range strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n\n") {
		sc := bufio.NewScanner(strings.NewReader(para))
		var key string
		var text []string
		files, in := false, false
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "Files:"):
				files = true
			case strings.HasPrefix(line, "License:"):
				key, in = strings.TrimSpace(strings.TrimPrefix(line, "License:")), true
			case in && (strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")):
				t := strings.TrimSpace(line)
				if t == "." {
					t = ""
				}
				text = append(text, t)
			default:
				in = false
			}
		}
		if !files && key != "" && len(text) > 0 {
			if _, dup := out[key]; !dup {
				out[key] = strings.TrimSpace(strings.Join(text, "\n"))
			}
		}
	}
	return out
}

func writeParquet[T any](path string, rows []T) error {
	var buf bytes.Buffer
	w := parquet.NewGenericWriter[T](&buf, parquet.Compression(&parquet.Zstd))
	if _, err := w.Write(rows); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	return writeFile(path, buf.Bytes())
}

// writeFile writes b to a temporary name beside path and renames it.
func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
