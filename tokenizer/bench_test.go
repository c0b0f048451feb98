package tokenizer

import (
	"encoding/json"
	"flag"
	"os"
	"testing"
)

var benchCorpusOut = flag.String("benchcorpus", "", "TestWriteBenchCorpus writes the benchmark corpus (JSON list of strings) to this file, for testdata/bench_encode.mjs")

// benchCorpus is ~8 MB of mixed text: the lines of testdata/corpus.json
// (prose in many scripts, code, numbers, emoji) repeated, interleaved with
// generated lines (random mixes, so many rare pieces that miss the cache).
func benchCorpus(t testing.TB) []string {
	fixed := oracleCorpus(t, 0)
	gen := generateLines(fixed, 20000, 7)
	var out []string
	size := 0
	for i := 0; size < 8<<20; i++ {
		s := fixed[i%len(fixed)]
		if i%4 == 3 {
			s = gen[(i/4)%len(gen)]
		}
		out = append(out, s)
		size += len(s)
	}
	return out
}

func TestWriteBenchCorpus(t *testing.T) {
	if *benchCorpusOut == "" {
		t.Skip("no -benchcorpus")
	}
	b, _ := json.Marshal(benchCorpus(t))
	if err := os.WriteFile(*benchCorpusOut, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkLoadQwen3(b *testing.B) {
	dir := oracleDir(b, "qwen3")
	for b.Loop() {
		if _, err := Load(dir); err != nil {
			b.Fatal(err)
		}
	}
}

func benchmarkEncode(b *testing.B, name string) {
	tk := loadOracleTokenizer(b, name)
	corpus := benchCorpus(b)
	size := 0
	for _, s := range corpus {
		size += len(s)
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	tokens := 0
	for b.Loop() {
		tokens = 0
		for _, s := range corpus {
			tokens += len(tk.Encode(s, false))
		}
	}
	b.ReportMetric(float64(tokens)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}

func BenchmarkEncodeQwen3(b *testing.B)  { benchmarkEncode(b, "qwen3") }
func BenchmarkEncodeLlama3(b *testing.B) { benchmarkEncode(b, "llama3_1") }
func BenchmarkEncodeLlama2(b *testing.B) { benchmarkEncode(b, "llama2") }
