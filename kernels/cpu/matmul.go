package cpu

import "github.com/tunellm/tune/kernels"

// matmulTask computes out[T,OC] = in[T,C] · W[OC,C]ᵀ (+ bias) with gemm, one
// (column tile, row block) per chunk. gemm decodes W to fp32 one packed block
// at a time into the worker's buffer and reuses it for every input row of the
// block, so a 512-token prompt pays the bf16→fp32 conversion once per weight
// (per row block), and no fp32 copy of the model ever exists.
type matmulTask struct {
	out, in, bias []float32
	b             gemmB
	T, C, OC      int
	mb, nt        int // rows per block, column tiles
}

// MatMulForward: out[t,o] = sum_c in[t,c]*w[o,c] + bias[o].
func (b *Backend) MatMulForward(out, in []float32, w kernels.Weight, bias []float32, T int) {
	checkWeight("matmul", w)
	OC, C := w.Rows, w.Cols
	need("matmul", "out", len(out), T*OC)
	need("matmul", "in", len(in), T*C)
	if bias != nil {
		need("matmul", "bias", len(bias), OC)
	}
	if T == 0 || OC == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if useInt8(w) {
		b.qmatmul(out, in, w, bias, T) // qint8mm.go
		return
	}
	if b.matmulBF16(out, in, w, bias, T) { // gemm_bf16.go: bf16 compute mode
		return
	}
	m := &b.mm
	mb, n := gemmSplit(T, OC, len(b.pool.workers))
	*m = matmulTask{out: out, in: in, bias: bias, b: gemmB{kind: bWeightT, w: w}, T: T, C: C, OC: OC, mb: mb, nt: (OC + gemmNC - 1) / gemmNC}
	b.pool.do(m, n)
	*m = matmulTask{}
}

func (m *matmulTask) run(wk *worker, chunk int) {
	C, OC := m.C, m.OC
	n0 := chunk % m.nt * gemmNC
	n1 := min(n0+gemmNC, OC)
	t0 := chunk / m.nt * m.mb
	t1 := min(t0+m.mb, m.T)
	g0 := n0
	if t1-t0 == 1 && m.b.w.DType == kernels.BF16 {
		// One row (a decoding step) is bound by streaming the weight: read
		// it straight, in the same fma chains as gemm, without packing.
		g0 += gemvBF16(m.out[t0*OC+n0:t0*OC+n1], m.in[t0*C:(t0+1)*C], m.b.w.Data[n0*C*2:n1*C*2], n1-n0, C)
	}
	if t1-t0 == 1 && m.b.w.DType.Quantized() {
		// The same for block-quantized weights (qmatmul.go), in another
		// summation order.
		gemvQuant(wk, m.out[t0*OC+n0:t0*OC+n1], m.in[t0*C:(t0+1)*C], m.b.w, n0)
		g0 = n1
	}
	gemm(wk, m.out[t0*OC:], OC, m.in[t0*C:], C, t1-t0, C, &m.b, g0, n1, false)
	if m.bias != nil {
		bias := m.bias[n0:n1]
		for t := t0; t < t1; t++ {
			o := m.out[t*OC+n0 : t*OC+n1]
			for i, v := range bias {
				o[i] += v
			}
		}
	}
}

// mmBackRows is the doutT rows per transpose chunk.
const mmBackRows = 64

type matmulBackTask struct {
	din, dw, dbias, dout, in []float32
	b                        gemmB
	T, C, OC                 int
	mb, nt                   int       // gemm chunking of the phase
	doutT                    []float32 // [OC,T] transposed dout for dw
	phase                    int       // 0: din, 1: dw, 2: transpose (and dbias)
}

// MatMulBackward differentiates MatMulForward's out[t,o] = sum_c in[t,c]*w[o,c] + bias[o]:
//
//	din[t,c]  += sum_o dout[t,o]*w[o,c]   (dX = dY·W)
//	dw[o,c]   += sum_t dout[t,o]*in[t,c]  (dW = dYᵀ·X)
//	dbias[o]  += sum_t dout[t,o]
//
// din and dw are gemms accumulating onto the existing values (each element
// one fma chain over o, resp. t, starting from its old value). For din, gemm
// decodes W block by block like the forward, so a frozen bf16/f16 weight never
// gets an fp32 copy; its rows are already contiguous along din's columns. A
// block-quantized W (GGUF types, NF4) is dequantized while packing (qback.go),
// and din equals the F32 computation on the dequantized W bit for bit; dw
// must be nil for it.
// dw runs over a transposed copy of dout (scratch [OC, T]).
func (b *Backend) MatMulBackward(din, dw, dbias, dout, in []float32, w kernels.Weight, T int) {
	checkWeight("matmul_back", w)
	if dw != nil && w.DType.Quantized() {
		panic("cpu: matmul_back: dw of a quantized weight (" + w.DType.String() + ") is not supported: a quantized base is frozen (pass dw = nil)")
	}
	OC, C := w.Rows, w.Cols
	need("matmul_back", "dout", len(dout), T*OC)
	if din != nil {
		need("matmul_back", "din", len(din), T*C)
	}
	if dw != nil {
		need("matmul_back", "dw", len(dw), OC*C)
		need("matmul_back", "in", len(in), T*C)
	}
	if dbias != nil {
		need("matmul_back", "dbias", len(dbias), OC)
	}
	if T == 0 || OC == 0 || C == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	m := &b.mmB
	workers := len(b.pool.workers)
	*m = matmulBackTask{din: din, dw: dw, dbias: dbias, dout: dout, in: in, T: T, C: C, OC: OC}
	if din != nil && !b.matmulBackBF16(din, dout, w, T) { // gemm_bf16.go: bf16 compute mode
		mb, n := gemmSplit(T, C, workers)
		m.b = gemmB{kind: bWeight, w: w}
		m.mb, m.nt, m.phase = mb, (C+gemmNC-1)/gemmNC, 0
		b.pool.do(m, n)
	}
	if dw != nil || dbias != nil {
		m.doutT = grow(&b.doutT, OC*T)
		m.phase = 2
		b.pool.do(m, (OC+mmBackRows-1)/mmBackRows)
		if dw != nil {
			mb, n := gemmSplit(OC, C, workers)
			m.b = gemmB{kind: bF32, f: in, ldb: C}
			m.mb, m.nt, m.phase = mb, (C+gemmNC-1)/gemmNC, 1
			b.pool.do(m, n)
		}
	}
	*m = matmulBackTask{}
}

func (m *matmulBackTask) run(wk *worker, chunk int) {
	if m.phase == 2 {
		m.runTranspose(chunk)
		return
	}
	C, OC, T := m.C, m.OC, m.T
	c0 := chunk % m.nt * gemmNC
	c1 := min(c0+gemmNC, C)
	r0 := chunk / m.nt * m.mb
	if m.phase == 0 {
		r1 := min(r0+m.mb, T)
		gemm(wk, m.din[r0*C:], C, m.dout[r0*OC:], OC, r1-r0, OC, &m.b, c0, c1, true)
		return
	}
	r1 := min(r0+m.mb, OC)
	gemm(wk, m.dw[r0*C:], C, m.doutT[r0*T:], T, r1-r0, T, &m.b, c0, c1, true)
}

// runTranspose writes rows [r0, r0+mmBackRows) of doutT [OC,T] and adds their
// sums to dbias.
func (m *matmulBackTask) runTranspose(chunk int) {
	T, OC := m.T, m.OC
	r0 := chunk * mmBackRows
	r1 := min(r0+mmBackRows, OC)
	dst := m.doutT
	// t outer: each step reads a contiguous run of dout and appends one
	// element to each of the block's rows, which all stay in L1.
	for t := 0; t < T; t++ {
		s := m.dout[t*OC+r0 : t*OC+r1]
		for i, v := range s {
			dst[(r0+i)*T+t] = v
		}
	}
	if m.dbias != nil {
		for o := r0; o < r1; o++ {
			var s float32
			for _, v := range dst[o*T : (o+1)*T] {
				s += v
			}
			m.dbias[o] += s
		}
	}
}
