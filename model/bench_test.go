package model

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/tunellm/tune/model/safetensors"
)

// benchConfig is "bench-qwen3-small": a fixed Qwen3-shaped model, big enough
// that matmuls dominate as in real models, small enough to build in memory.
func benchConfig() *Config {
	c := &Config{ModelType: "qwen3", Hidden: 1024, Intermediate: 3072, Layers: 8, Heads: 16, KVHeads: 8, HeadDim: 64,
		Vocab: 32000, MaxPositions: 4096, RMSNormEps: 1e-6, RopeTheta: 1e6, QKNorm: true, TieEmbeddings: true}
	c.Windows = make([]int, c.Layers)
	return c
}

var benchModel = sync.OnceValues(func() (*Model, error) {
	c := benchConfig()
	return New(c, randomSource(c, safetensors.BF16, 1), LoadOptions{})
})

func getBenchModel(b *testing.B) *Model {
	m, err := benchModel()
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// BenchmarkPrefill512: one 512-token forward from position 0 plus the last
// token's logits, as a prompt or a perplexity window costs.
func BenchmarkPrefill512(b *testing.B) {
	m := getBenchModel(b)
	const T = 512
	tokens := randTokens(rand.New(rand.NewPCG(1, 2)), T, m.Config.Vocab)
	c := m.NewCache(T)
	hidden := make([]float32, T*m.Config.Hidden)
	logits := make([]float32, m.Config.Vocab)
	b.ResetTimer()
	for b.Loop() {
		c.Reset()
		if err := m.Forward(c, tokens, hidden); err != nil {
			b.Fatal(err)
		}
		m.Logits(logits, hidden[(T-1)*m.Config.Hidden:])
	}
	b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkGenerate: one decoding step (one token through the KV cache plus
// its logits) at 128 tokens of context.
func BenchmarkGenerate(b *testing.B) {
	m := getBenchModel(b)
	const ctx = 128
	tokens := randTokens(rand.New(rand.NewPCG(3, 4)), ctx+1, m.Config.Vocab)
	c := m.NewCache(ctx + 1)
	hidden := make([]float32, ctx*m.Config.Hidden)
	if err := m.Forward(c, tokens[:ctx], hidden); err != nil {
		b.Fatal(err)
	}
	logits := make([]float32, m.Config.Vocab)
	b.ResetTimer()
	for b.Loop() {
		c.n = ctx // keep the context at 128
		if err := m.Forward(c, tokens[ctx:], hidden[:m.Config.Hidden]); err != nil {
			b.Fatal(err)
		}
		m.Logits(logits, hidden[:m.Config.Hidden])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}
