package data

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// benchWords is the vocabulary of the synthetic chats: English words with
// some accents, digits and CJK so the tokenizer meets what real data has.
var benchWords = strings.Fields(`the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were their one all we can her has there been if more when will would who
so no model data train token loss layer weight attention gradient batch sequence learning rate value function
café naïve résumé 東京 数据 模型 2024 3.14 42 100% (see below) "quoted" e.g. i.e. x+y=z def return print`)

// writeSyntheticChat writes chat JSONL rows until size bytes and returns the
// row count. Rows are 1 to 3 user/assistant turns of 10 to 200 words.
func writeSyntheticChat(path string, size int64, seed uint64) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	r := rand.New(rand.NewPCG(seed, 1))
	text := func() string {
		n := 10 + r.IntN(190)
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(benchWords[r.IntN(len(benchWords))])
			if r.IntN(12) == 0 {
				b.WriteString(".\n")
			}
		}
		return b.String()
	}
	var written, rows int64
	for written < size {
		var msgs []any
		for range 1 + r.IntN(3) {
			msgs = append(msgs, map[string]any{"role": "user", "content": text()}, map[string]any{"role": "assistant", "content": text()})
		}
		j, err := json.Marshal(map[string]any{"messages": msgs})
		if err != nil {
			return 0, err
		}
		j = append(j, '\n')
		if _, err := w.Write(j); err != nil {
			return 0, err
		}
		written += int64(len(j))
		rows++
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	return rows, f.Close()
}

// BenchmarkPipeline: read -> render -> tokenize -> mask -> pack -> cache for
// synthetic chat JSONL with the real Qwen3 tokenizer (no cache reuse: each
// iteration has its own cache folder).
func BenchmarkPipeline(b *testing.B) {
	needOracle(b)
	tok := loadOracleTok(b, "qwen3")
	dir := b.TempDir()
	path := filepath.Join(dir, "chat.jsonl")
	rows, err := writeSyntheticChat(path, 4<<20, 1)
	if err != nil {
		b.Fatal(err)
	}
	var tokens int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := Prepare(Config{Path: path, MaxSeqLen: 4096, Packing: true, CacheDir: filepath.Join(dir, fmt.Sprint(i))}, tok, nil)
		if err != nil {
			b.Fatal(err)
		}
		tokens += d.Stats().Tokens
		d.Close()
	}
	s := b.Elapsed().Seconds()
	b.ReportMetric(float64(rows)*float64(b.N)/s, "rows/s")
	b.ReportMetric(float64(tokens)/s, "tokens/s")
}
