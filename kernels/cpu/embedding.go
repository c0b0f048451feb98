package cpu

import (
	"fmt"

	"github.com/tunellm/tune/kernels"
)

type embeddingTask struct {
	out    []float32
	tokens []int
	table  kernels.Weight
	rows   int // tokens per chunk
}

// EmbeddingForward: out[t,:] = table[tokens[t],:], decoded to fp32.
func (b *Backend) EmbeddingForward(out []float32, tokens []int, table kernels.Weight) {
	checkWeight("embedding", table)
	need("embedding", "out", len(out), len(tokens)*table.Cols)
	for i, id := range tokens {
		if id < 0 || id >= table.Rows {
			panic(fmt.Sprintf("cpu: embedding: tokens[%d] = %d outside vocab [0,%d)", i, id, table.Rows))
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e := &b.emb
	*e = embeddingTask{out: out, tokens: tokens, table: table, rows: max(1, 16384/max(table.Cols, 1))}
	b.pool.do(e, (len(tokens)+e.rows-1)/e.rows)
	*e = embeddingTask{}
}

func (e *embeddingTask) run(_ *worker, chunk int) {
	C, es := e.table.Cols, e.table.DType.Size()
	for t := chunk * e.rows; t < min((chunk+1)*e.rows, len(e.tokens)); t++ {
		id := e.tokens[t]
		convertRow(e.out[t*C:(t+1)*C], e.table.Data[id*C*es:(id+1)*C*es], e.table.DType)
	}
}
