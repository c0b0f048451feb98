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

// Backward tiling: fixed constants (never the worker count), so every grad
// element is summed in the same order on any machine.
const (
	mmBackMaxRows = 1024 // weight rows per transposed tile, at most
	mmBackDW      = 8    // dw rows per chunk
)

// backTile picks the din tile: ob weight rows (the dot length) by cw columns,
// ~256 KiB of fp32 as in the forward. It depends on the shape only.
func backTile(C, OC int) (cw, ob int) {
	ob = min(OC, mmBackMaxRows)
	cw = max(8, min(64, (64<<10)/ob)) &^ 3
	return min(cw, C), ob
}

type matmulBackTask struct {
	din, dw, dbias, dout, in []float32
	w                        kernels.Weight
	T, C, OC                 int
	cw, ob                   int       // din tile: columns per chunk, weight rows per tile
	doutT, inT               []float32 // [OC,T], [C,T] transposed copies for dw
	phase                    int       // 0: din, 1: dw and dbias, 2: transpose
}

// MatMulBackward differentiates MatMulForward's out[t,o] = sum_c in[t,c]*w[o,c] + bias[o]:
//
//	din[t,c]  += sum_o dout[t,o]*w[o,c]   (dX = dY·W)
//	dw[o,c]   += sum_t dout[t,o]*in[t,c]  (dW = dYᵀ·X)
//	dbias[o]  += sum_t dout[t,o]
//
// For din, W is decoded tile by tile ([ob, cw] from backTile, transposed to
// fp32 in the worker's buffer) like the forward decodes it, so a frozen
// bf16/f16 weight never gets an fp32 copy. Each din element is owned by the
// chunk of its column and summed over the tiles of o in ascending order.
func (b *Backend) MatMulBackward(din, dw, dbias, dout, in []float32, w kernels.Weight, T int) {
	checkWeight("matmul_back", w)
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
	cw, ob := backTile(C, OC)
	*m = matmulBackTask{din: din, dw: dw, dbias: dbias, dout: dout, in: in, w: w, T: T, C: C, OC: OC, cw: cw, ob: ob}
	if din != nil {
		b.pool.do(m, (C+cw-1)/cw)
	}
	if dw != nil || dbias != nil {
		// dW = doutᵀ·in as a forward-style matmul over transposed copies
		// (scratch [OC+C, T]), so each element is one dot over t.
		const rows = mmBackDW * 8
		m.doutT = grow(&b.doutT, OC*T)
		nT := (OC + rows - 1) / rows
		if dw != nil {
			m.inT = grow(&b.inT, C*T)
			nT += (C + rows - 1) / rows
		}
		m.phase = 2
		b.pool.do(m, nT)
		m.phase = 1
		b.pool.do(m, (OC+mmBackDW-1)/mmBackDW)
	}
	*m = matmulBackTask{}
}

func (m *matmulBackTask) run(wk *worker, chunk int) {
	switch m.phase {
	case 1:
		m.runDW(chunk)
		return
	case 2:
		m.runTranspose(chunk)
		return
	}
	C, OC, T := m.C, m.OC, m.T
	c0 := chunk * m.cw
	c1 := min(c0+m.cw, C)
	cw := c1 - c0
	es := m.w.DType.Size()
	row := grow(&wk.row, cw)
	din, dout := m.din, m.dout
	for o0 := 0; o0 < OC; o0 += m.ob {
		o1 := min(o0+m.ob, OC)
		ob := o1 - o0
		wt := wk.tile(cw * ob) // wt[c*ob+o] = w[o0+o, c0+c]
		for o := o0; o < o1; o++ {
			convertRow(row, m.w.Data[(o*C+c0)*es:], m.w.DType)
			for c, v := range row {
				wt[c*ob+o-o0] = v
			}
		}
		t := 0
		for ; t+4 <= T; t += 4 {
			x0 := dout[t*OC+o0 : t*OC+o1]
			x1 := dout[(t+1)*OC+o0 : (t+1)*OC+o1]
			x2 := dout[(t+2)*OC+o0 : (t+2)*OC+o1]
			x3 := dout[(t+3)*OC+o0 : (t+3)*OC+o1]
			d0, d1, d2, d3 := din[t*C+c0:t*C+c1], din[(t+1)*C+c0:(t+1)*C+c1], din[(t+2)*C+c0:(t+2)*C+c1], din[(t+3)*C+c0:(t+3)*C+c1]
			c := 0
			for ; c+2 <= cw; c += 2 {
				s00, s01, s10, s11, s20, s21, s30, s31 := mmDot4x2(x0, x1, x2, x3, wt[c*ob:(c+1)*ob], wt[(c+1)*ob:(c+2)*ob])
				d0[c] += s00
				d0[c+1] += s01
				d1[c] += s10
				d1[c+1] += s11
				d2[c] += s20
				d2[c+1] += s21
				d3[c] += s30
				d3[c+1] += s31
			}
			for ; c < cw; c++ {
				w0 := wt[c*ob : (c+1)*ob]
				d0[c] += mmDot1(x0, w0)
				d1[c] += mmDot1(x1, w0)
				d2[c] += mmDot1(x2, w0)
				d3[c] += mmDot1(x3, w0)
			}
		}
		for ; t < T; t++ {
			x := dout[t*OC+o0 : t*OC+o1]
			d := din[t*C+c0 : t*C+c1]
			c := 0
			for ; c+4 <= cw; c += 4 {
				s0, s1, s2, s3 := mmDot1x4(x, wt[c*ob:(c+1)*ob], wt[(c+1)*ob:(c+2)*ob], wt[(c+2)*ob:(c+3)*ob], wt[(c+3)*ob:(c+4)*ob])
				d[c] += s0
				d[c+1] += s1
				d[c+2] += s2
				d[c+3] += s3
			}
			for ; c < cw; c++ {
				d[c] += mmDot1(x, wt[c*ob:(c+1)*ob])
			}
		}
	}
}

// runTranspose writes rows [r0, r0+mmBackDW*8) of doutT [OC,T] and then of
// inT [C,T] (chunks beyond OC's count go to inT).
func (m *matmulBackTask) runTranspose(chunk int) {
	const rows = mmBackDW * 8
	T := m.T
	src, dst, w := m.dout, m.doutT, m.OC
	nOut := (m.OC + rows - 1) / rows
	if chunk >= nOut {
		chunk -= nOut
		src, dst, w = m.in, m.inT, m.C
	}
	if dst == nil {
		return
	}
	// t outer: each step reads a contiguous run of src and appends one
	// element to each of the block's rows, which all stay in L1.
	r0 := chunk * rows
	r1 := min(r0+rows, w)
	for t := 0; t < T; t++ {
		s := src[t*w+r0 : t*w+r1]
		for i, v := range s {
			dst[(r0+i)*T+t] = v
		}
	}
}

// runDW computes rows o0..o0+mmBackDW-1 of dw (and dbias) from the
// transposed copies: dw[o,c] += doutT[o,:]·inT[c,:], one dot over t per
// element, with the forward's dot kernels.
func (m *matmulBackTask) runDW(chunk int) {
	C, OC, T := m.C, m.OC, m.T
	o0 := chunk * mmBackDW
	o1 := min(o0+mmBackDW, OC)
	dT, xT := m.doutT, m.inT
	if m.dw != nil {
		o := o0
		for ; o+4 <= o1; o += 4 {
			x0, x1, x2, x3 := dT[o*T:(o+1)*T], dT[(o+1)*T:(o+2)*T], dT[(o+2)*T:(o+3)*T], dT[(o+3)*T:(o+4)*T]
			w0, w1, w2, w3 := m.dw[o*C:(o+1)*C], m.dw[(o+1)*C:(o+2)*C], m.dw[(o+2)*C:(o+3)*C], m.dw[(o+3)*C:(o+4)*C]
			c := 0
			for ; c+2 <= C; c += 2 {
				s00, s01, s10, s11, s20, s21, s30, s31 := mmDot4x2(x0, x1, x2, x3, xT[c*T:(c+1)*T], xT[(c+1)*T:(c+2)*T])
				w0[c] += s00
				w0[c+1] += s01
				w1[c] += s10
				w1[c+1] += s11
				w2[c] += s20
				w2[c+1] += s21
				w3[c] += s30
				w3[c+1] += s31
			}
			for ; c < C; c++ {
				y := xT[c*T : (c+1)*T]
				w0[c] += mmDot1(x0, y)
				w1[c] += mmDot1(x1, y)
				w2[c] += mmDot1(x2, y)
				w3[c] += mmDot1(x3, y)
			}
		}
		for ; o < o1; o++ {
			x, w := dT[o*T:(o+1)*T], m.dw[o*C:(o+1)*C]
			for c := range w {
				w[c] += mmDot1(x, xT[c*T:(c+1)*T])
			}
		}
	}
	if m.dbias != nil {
		for o := o0; o < o1; o++ {
			var s float32
			for _, v := range dT[o*T : (o+1)*T] {
				s += v
			}
			m.dbias[o] += s
		}
	}
}
