package cpu

import "github.com/tunellm/tune/kernels"

// matmulTask computes out[T,OC] = in[T,C] · W[OC,C]ᵀ (+ bias) one tile of
// weight rows per chunk. The tile is decoded to fp32 once into the worker's
// buffer and reused for all T input rows, so a 512-token prompt pays the
// bf16→fp32 conversion once per weight, not 512 times, and no fp32 copy of the
// model ever exists.
type matmulTask struct {
	out, in, bias []float32
	w             kernels.Weight
	T, C, OC      int
	rows          int // weight rows per tile
}

// tileRows picks rows per tile: the fp32 tile (~256 KiB) stays in L2 while
// all T input rows stream past it, so bigger tiles mean fewer passes over the
// input; but there should be a few tiles per worker for load balance.
// Results do not depend on it: every output is the same per-output sum
// whichever micro-kernel computes it.
func tileRows(C, OC, workers int) int {
	r := (64 << 10) / max(C, 1)
	r = min(r, (OC+4*workers-1)/(4*workers))
	return max(4, min(64, r)) &^ 3
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
	m := &b.mm
	*m = matmulTask{out: out, in: in, bias: bias, w: w, T: T, C: C, OC: OC, rows: tileRows(C, OC, len(b.pool.workers))}
	b.pool.do(m, (OC+m.rows-1)/m.rows)
	*m = matmulTask{}
}

func (m *matmulTask) run(wk *worker, chunk int) {
	C, OC, T := m.C, m.OC, m.T
	r0 := chunk * m.rows
	r1 := min(r0+m.rows, OC)
	nr := r1 - r0
	es := m.w.DType.Size()
	wt := wk.tile(nr * C)
	if C == 0 {
		clear(wt)
	} else {
		for r := 0; r < nr; r++ {
			convertRow(wt[r*C:(r+1)*C], m.w.Data[(r0+r)*C*es:], m.w.DType)
		}
	}
	out, in := m.out, m.in
	t := 0
	// Blocks of 4 input rows × 2 weight rows: 8 independent accumulators.
	for ; t+4 <= T; t += 4 {
		x0 := in[t*C : t*C+C]
		x1 := in[(t+1)*C : (t+1)*C+C]
		x2 := in[(t+2)*C : (t+2)*C+C]
		x3 := in[(t+3)*C : (t+3)*C+C]
		r := 0
		for ; r+2 <= nr; r += 2 {
			s00, s01, s10, s11, s20, s21, s30, s31 := mmDot4x2(x0, x1, x2, x3, wt[r*C:r*C+C], wt[(r+1)*C:(r+1)*C+C])
			o := r0 + r
			out[t*OC+o], out[t*OC+o+1] = s00, s01
			out[(t+1)*OC+o], out[(t+1)*OC+o+1] = s10, s11
			out[(t+2)*OC+o], out[(t+2)*OC+o+1] = s20, s21
			out[(t+3)*OC+o], out[(t+3)*OC+o+1] = s30, s31
		}
		for ; r < nr; r++ {
			w0 := wt[r*C : r*C+C]
			o := r0 + r
			out[t*OC+o] = mmDot1(x0, w0)
			out[(t+1)*OC+o] = mmDot1(x1, w0)
			out[(t+2)*OC+o] = mmDot1(x2, w0)
			out[(t+3)*OC+o] = mmDot1(x3, w0)
		}
	}
	// Remaining rows (all of them when generating one token): 1 input row × 4
	// weight rows, still one sequential sum per output.
	for ; t < T; t++ {
		x := in[t*C : t*C+C]
		o := out[t*OC+r0 : t*OC+r1]
		r := 0
		for ; r+4 <= nr; r += 4 {
			o[r], o[r+1], o[r+2], o[r+3] = mmDot1x4(x, wt[r*C:r*C+C], wt[(r+1)*C:(r+1)*C+C], wt[(r+2)*C:(r+2)*C+C], wt[(r+3)*C:(r+3)*C+C])
		}
		for ; r < nr; r++ {
			o[r] = mmDot1(x, wt[r*C:r*C+C])
		}
	}
	if m.bias != nil {
		bias := m.bias[r0:r1]
		for t := 0; t < T; t++ {
			o := out[t*OC+r0 : t*OC+r1]
			for i, v := range bias {
				o[i] += v
			}
		}
	}
}
