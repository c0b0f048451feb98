package cpu

import (
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/qblock"
)

// The int8-activation matmul (QInt8 mode, qmode.go): out = in·Wᵀ (+ bias)
// on a quantized W. Phase 0 quantizes every activation row once (Q8_0 or
// Q8_K, q8act.go), phase 1 computes the outputs in chunks of qmmRows weight
// rows × qmmT activation rows: each weight row (or group of eight) is
// decoded once per chunk and stays in L1 while the chunk's activation rows
// (at most qmmT rows of about 1.2*C bytes, in L2) stream past. Every output
// is one dot product of qint8.go, so results do not depend on T, the
// chunking, the kernel or the worker count.
const (
	qmmRows = 16
	qmmT    = 256
)

type qmmTask struct {
	out, in, bias []float32
	w             kernels.Weight
	act           *q8Rows
	T, C, OC      int
	kq            bool // Q8_K activations
	rb            int  // bytes per weight row
	phase         int
	nt            int // activation-row blocks
}

// actKind reports whether dt's activations are Q8_K (else Q8_0).
func actKind(dt kernels.DType) bool {
	return dt == kernels.Q4_K || dt == kernels.Q5_K || dt == kernels.Q6_K
}

func (b *Backend) qmatmul(out, in []float32, w kernels.Weight, bias []float32, T int) {
	m := &b.qmm
	kq := actKind(w.DType)
	b.qact.resize(T, w.Cols, kq)
	*m = qmmTask{out: out, in: in, bias: bias, w: w, act: &b.qact, T: T, C: w.Cols, OC: w.Rows, kq: kq, rb: w.RowBytes()}
	b.pool.do(m, T)
	m.phase = 1
	m.nt = (T + qmmT - 1) / qmmT
	b.pool.do(m, (m.OC+qmmRows-1)/qmmRows*m.nt)
	*m = qmmTask{}
}

// quantRow quantizes activation row t.
func (m *qmmTask) quantRow(t int) {
	if m.quantRowFast(t) {
		return
	}
	C, a := m.C, m.act
	x := m.in[t*C : (t+1)*C]
	if m.kq {
		quantQ8_KRow(a.qs(t), a.d(t), a.bs(t), a.bp(t), x)
		return
	}
	qs := a.qs(t)
	quantQ8_0Row(qs, a.d(t), x)
	n128, n8 := a.n128(t), a.n8(t)
	for b := range n128 {
		var s int32
		for _, v := range qs[32*b : 32*b+32] {
			s += int32(v)
		}
		n128[b], n8[b] = -128*s, -8*s
	}
}

func (m *qmmTask) run(wk *worker, chunk int) {
	if m.phase == 0 {
		m.quantRow(chunk)
		return
	}
	r0 := chunk / m.nt * qmmRows
	r1 := min(r0+qmmRows, m.OC)
	t0 := chunk % m.nt * qmmT
	t1 := min(t0+qmmT, m.T)
	m.qdotChunk(wk, r0, r1, t0, t1)
}

// store writes out[t, r0+i] = v[i] (+ bias).
func (m *qmmTask) store(t, r0 int, v []float32) {
	o := m.out[t*m.OC+r0 : t*m.OC+r0+len(v)]
	if m.bias == nil {
		copy(o, v)
		return
	}
	for i, x := range v {
		o[i] = x + m.bias[r0+i]
	}
}

// rowsChunk is qdotChunk one weight row at a time.
func (m *qmmTask) rowsChunk(wk *worker, r0, r1, t0, t1 int) {
	rb := m.rb
	dst := grow(&wk.qd, t1-t0)
	for r := r0; r < r1; r++ {
		row := m.w.Data[r*rb : (r+1)*rb]
		qdotRows(m.w.DType, row, &wk.kr, m.act, m.C, t0, dst)
		for i, v := range dst {
			m.store(t0+i, r, []float32{v})
		}
	}
}

// qdotRowsGo is qdotRows in pure Go: dst[i] = the dot product of the weight
// row with activation row t0+i.
func qdotRowsGo(dt kernels.DType, row []byte, kr *kRow, a *q8Rows, C, t0 int, dst []float32) {
	if actKind(dt) {
		kr.prep(dt, row, C/qblock.QK_K)
		for i := range dst {
			t := t0 + i
			qs, d := a.qs(t), a.d(t)
			switch dt {
			case kernels.Q4_K:
				dst[i] = dotQ4_KGo(row, kr, qs, d, a.bp(t))
			case kernels.Q5_K:
				dst[i] = dotQ5_KGo(row, kr, qs, d, a.bp(t))
			case kernels.Q6_K:
				dst[i] = dotQ6_KGo(row, kr, qs, d, a.bs(t))
			}
		}
		return
	}
	for i := range dst {
		t := t0 + i
		qs, d := a.qs(t), a.d(t)
		if dt == kernels.Q8_0 {
			dst[i] = dotQ8_0Go(row, qs, d)
		} else {
			dst[i] = dotQ4_0Go(row, qs, d)
		}
	}
}
