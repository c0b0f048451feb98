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
		if e.table.DType.Quantized() {
			dequantRow(e.out[t*C:(t+1)*C], e.table, id, 0)
			continue
		}
		convertRow(e.out[t*C:(t+1)*C], e.table.Data[id*C*es:(id+1)*C*es], e.table.DType)
	}
}

// embeddingBackCols is the table columns per chunk (fixed: determinism).
const embeddingBackCols = 256

type embeddingBackTask struct {
	dtable, dout []float32
	tokens       []int
	C            int
}

// EmbeddingBackward differentiates out[t,:] = table[tokens[t],:]:
// dtable[tokens[t],c] += dout[t,c]. A chunk owns a band of columns and walks
// t in ascending order, so repeated tokens always sum in the same order.
func (b *Backend) EmbeddingBackward(dtable, dout []float32, tokens []int, C int) {
	need("embedding_back", "dout", len(dout), len(tokens)*C)
	for i, id := range tokens {
		if id < 0 || (id+1)*C > len(dtable) {
			panic(fmt.Sprintf("cpu: embedding_back: tokens[%d] = %d outside dtable's %d rows", i, id, len(dtable)/max(C, 1)))
		}
	}
	if C == 0 || len(tokens) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e := &b.embB
	*e = embeddingBackTask{dtable: dtable, dout: dout, tokens: tokens, C: C}
	b.pool.do(e, (C+embeddingBackCols-1)/embeddingBackCols)
	*e = embeddingBackTask{}
}

func (e *embeddingBackTask) run(_ *worker, chunk int) {
	C := e.C
	c0 := chunk * embeddingBackCols
	c1 := min(c0+embeddingBackCols, C)
	for t, id := range e.tokens {
		d := e.dtable[id*C+c0 : id*C+c1]
		g := e.dout[t*C+c0 : t*C+c1]
		g = g[:len(d)]
		for i, v := range g {
			d[i] += v
		}
	}
}
