// Package collect computes an importance matrix from calibration tokens the
// way llama-imatrix (llama.cpp tools/imatrix) does: the token stream is cut
// into chunks of Ctx tokens, each run from position 0 with an empty cache
// (its first token replaced by BOS when the tokenizer adds one), and for
// every matrix multiplication by a weight of a decoder block the squares of
// the input activations are summed per input column, with the number of
// input rows (tokens) as the count. The LM head's input (output.weight)
// is collected only on request (llama-imatrix --process-output) and only for
// an untied head: a tied head multiplies by token_embd.weight, which
// llama-imatrix never collects. Token embeddings are a lookup, not a matrix
// multiplication, and have no entry.
//
// The activations are captured with a model.Adapter that reads each
// projection's input and adds nothing, so the forward is the model's own.
// Sums accumulate in float64 (llama-imatrix uses float32) and are stored as
// float32.
package collect

import (
	"fmt"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/quantize/imatrix"
)

// Options configure Run.
type Options struct {
	Ctx    int // tokens per chunk (llama-imatrix -c, default 512)
	Chunks int // at most this many chunks; <= 0: all whole chunks
	// BOS, when >= 0, replaces the first token of every chunk, as
	// llama-imatrix does for a vocab that adds BOS (Llama 3; not Qwen3).
	BOS int
	// ProcessOutput also collects output.weight (untied heads only).
	ProcessOutput bool
	// Dataset is recorded in the matrix (imatrix.datasets).
	Dataset string
	// Progress, when set, is called after each chunk.
	Progress func(done, total int)
}

// ggufModules maps model.AdapterModules to llama.cpp tensor names.
var ggufModules = map[string]string{
	"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
	"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}

// GGUFName is the llama.cpp name of the weight of (layer, module).
func GGUFName(layer int, module string) string {
	return fmt.Sprintf("blk.%d.%s.weight", layer, ggufModules[module])
}

// acc sums x² per column of one weight's inputs.
type acc struct {
	sum   []float64
	count int64
}

func (a *acc) add(in []float32, T int) {
	C := len(in) / T
	if a.sum == nil {
		a.sum = make([]float64, C)
	}
	for t := 0; t < T; t++ {
		row := in[t*C : (t+1)*C]
		for j, x := range row {
			a.sum[j] += float64(x) * float64(x)
		}
	}
	a.count += int64(T)
}

// capture is the read-only adapter.
type capture struct {
	accs map[string]*acc // by GGUF name
}

func (c *capture) Has(layer int, module string) bool { return true }

func (c *capture) Forward(layer int, module string, out, in []float32, T int, train bool) {
	name := GGUFName(layer, module)
	a := c.accs[name]
	if a == nil {
		a = &acc{}
		c.accs[name] = a
	}
	a.add(in[:len(in)/T*T], T)
}

func (c *capture) Backward(layer int, module string, din, dout, in []float32, T int) {}

// Run computes the importance matrix of m over tokens. As llama-imatrix, it
// needs at least 2·Ctx tokens and uses only whole chunks. m's adapter is
// replaced during the run and removed at the end.
func Run(m *model.Model, tokens []int, opts Options) (*imatrix.Matrix, error) {
	ctx := opts.Ctx
	if ctx <= 0 {
		return nil, fmt.Errorf("imatrix: context %d, want > 0", ctx)
	}
	if len(tokens) < 2*ctx {
		return nil, fmt.Errorf("imatrix: %d tokens, need at least %d (2 × ctx %d); give more text or a smaller --ctx", len(tokens), 2*ctx, ctx)
	}
	n := len(tokens) / ctx
	if opts.Chunks > 0 {
		n = min(n, opts.Chunks)
	}
	capt := &capture{accs: map[string]*acc{}}
	var head acc
	collectHead := opts.ProcessOutput && !m.Config.TieEmbeddings
	m.SetAdapter(capt)
	defer m.SetAdapter(nil)
	cache := m.NewCache(ctx)
	hidden := make([]float32, ctx*m.Config.Hidden)
	chunk := make([]int, ctx)
	for i := 0; i < n; i++ {
		copy(chunk, tokens[i*ctx:(i+1)*ctx])
		if opts.BOS >= 0 {
			chunk[0] = opts.BOS
		}
		cache.Reset()
		if err := m.Forward(cache, chunk, hidden); err != nil {
			return nil, fmt.Errorf("imatrix: chunk %d: %w", i+1, err)
		}
		if collectHead {
			head.add(hidden, ctx)
		}
		if opts.Progress != nil {
			opts.Progress(i+1, n)
		}
	}
	if collectHead {
		capt.accs["output.weight"] = &head
	}
	mat := imatrix.New()
	mat.ChunkCount, mat.ChunkSize = n, ctx
	if opts.Dataset != "" {
		mat.Datasets = []string{opts.Dataset}
	}
	for name, a := range capt.accs {
		e := &imatrix.Entry{Sum2: make([]float32, len(a.sum)), Counts: []float32{float32(a.count)}}
		for j, s := range a.sum {
			e.Sum2[j] = float32(s)
		}
		mat.Entries[name] = e
	}
	return mat, nil
}
