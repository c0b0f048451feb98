package cuda

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/tunellm/tune/kernels"
)

// Threads per block of the row kernels (one block per row) and of the
// elementwise kernels; attention runs attnWarps warps (one (row, head) each)
// per block.
const (
	rowThreads = 256
	ewThreads  = 256
	attnWarps  = 4
)

// Scratch slot use: 0-5 op operands, 6 int32 ids, 7 weight conversion,
// 8-9 the uncached F32 weight of the op (fp32, bf16).

func (b *Backend) EmbeddingForward(out []float32, tokens []int, table kernels.Weight) {
	if b.record(traceCall{op: "embedding", w: table}) {
		return
	}
	T, C := len(tokens), table.Cols
	need("embedding", "out", len(out), T*C)
	for t, id := range tokens {
		if id < 0 || id >= table.Rows {
			panic(fmt.Sprintf("cuda: embedding: tokens[%d] = %d outside [0,%d)", t, id, table.Rows))
		}
	}
	defer b.enter()()
	o := b.slot(0, uint64(T*C)*4)
	ids := b.putInts(6, tokens)
	if table.DType == kernels.BF16 {
		// Gathered from the table as stored (half an fp32 copy's memory).
		tab := b.mustWeight("embedding", table, true)
		b.launch("embedding_fwd_bf16", T, rowThreads, o, ids, tab, T, C)
	} else {
		tab := b.mustWeight("embedding", table, false)
		b.launch("embedding_fwd", T, rowThreads, o, ids, tab, T, C)
	}
	b.get(out[:T*C], o)
}

func (b *Backend) EmbeddingBackward(dtable, dout []float32, tokens []int, C int) {
	T := len(tokens)
	need("embedding_back", "dout", len(dout), T*C)
	V := len(dtable) / max(C, 1)
	for t, id := range tokens {
		if id < 0 || id >= V {
			panic(fmt.Sprintf("cuda: embedding_back: tokens[%d] = %d outside [0,%d)", t, id, V))
		}
	}
	defer b.enter()()
	dt := b.put(0, dtable[:V*C])
	d := b.put(1, dout[:T*C])
	ids := b.putInts(6, tokens)
	b.launch("embedding_bwd", blocks(C, ewThreads), ewThreads, dt, d, ids, T, C)
	b.get(dtable[:V*C], dt)
}

// gemm runs C = alpha*op(A)*op(B) + beta*C in cuBLAS's column-major terms,
// with A and B fp32 or bf16 (dt) and C fp32.
func (b *Backend) gemm(op string, ta, tb int32, m, n, k int, A uint64, lda int, B uint64, ldb int, beta float32, C uint64, ldc int, dt int32) {
	if m == 0 || n == 0 {
		return
	}
	// fp32 GEMMs run in pedantic mode (no TF32 even with
	// NVIDIA_TF32_OVERRIDE: they must match the CPU); bf16 ones in the
	// default mode, which lets cuBLAS use tensor cores.
	mode := int32(mathPedantic)
	if dt != dtR32F {
		mode = mathDefault
	}
	if mode != b.mathMode {
		if err := blasCheck("cublasSetMathMode", b.bl.setMathMode(b.blas, mode)); err != nil {
			panic(err)
		}
		b.mathMode = mode
	}
	alpha := float32(1)
	err := blasCheck("cublasGemmEx ("+op+")", b.bl.gemmEx(b.blas, ta, tb, int32(m), int32(n), int32(k),
		unsafe.Pointer(&alpha), A, dt, int32(lda), B, dt, int32(ldb), unsafe.Pointer(&beta), C, dtR32F, int32(ldc), compute32F, gemmDefault))
	if err != nil {
		panic(err)
	}
}

// toBF16 converts n floats at src into scratch slot i as bf16.
func (b *Backend) toBF16(i int, src uint64, n int) uint64 {
	p := b.slot(i, uint64(n)*2)
	b.launch("f32_to_bf16", blocks(n, ewThreads), ewThreads, p, src, int64(n))
	return p
}

// MatMulForward: out[T,OC] = in[T,C] · w[OC,C]ᵀ. Row-major out is the
// column-major OC×T matrix wᵀ... so cuBLAS computes out = op(W)·In with W
// the column-major C×OC view of w, transposed.
func (b *Backend) MatMulForward(out, in []float32, w kernels.Weight, bias []float32, T int) {
	if b.record(traceCall{op: "matmul", w: w, vec: bias}) {
		return
	}
	C, OC := w.Cols, w.Rows
	need("matmul", "out", len(out), T*OC)
	need("matmul", "in", len(in), T*C)
	if bias != nil {
		need("matmul", "bias", len(bias), OC)
	}
	defer b.enter()()
	q := b.deviceDequant(w) // quantized: dequantized tile by tile (dequant.go)
	var wp uint64
	if !q {
		wp = b.mustWeight("matmul", w, b.bf16)
	}
	x := b.put(0, in[:T*C])
	o := b.slot(1, uint64(T*OC)*4)
	dt := int32(dtR32F)
	if b.bf16 {
		x, dt = b.toBF16(2, x, T*C), dtR16BF
	}
	if q {
		b.qForward(o, x, w, T, dt)
	} else {
		b.gemm("matmul", opT, opN, OC, T, C, wp, C, x, C, 0, o, OC, dt)
	}
	if bias != nil {
		bp := b.put(3, bias[:OC])
		b.launch("bias_add", blocks(T*OC, ewThreads), ewThreads, o, bp, T, OC)
	}
	b.get(out[:T*OC], o)
}

// MatMulBackward: din[T,C] += dout[T,OC]·w (column-major: Din = W·Dout);
// dw[OC,C] += doutᵀ·in (column-major: dWᵀ = In·Doutᵀ); dbias += Σ_t dout.
func (b *Backend) MatMulBackward(din, dw, dbias, dout, in []float32, w kernels.Weight, T int) {
	C, OC := w.Cols, w.Rows
	need("matmul_back", "dout", len(dout), T*OC)
	defer b.enter()()
	d := b.put(0, dout[:T*OC])
	dt := int32(dtR32F)
	dd := d
	if b.bf16 {
		dd, dt = b.toBF16(4, d, T*OC), dtR16BF
	}
	if din != nil {
		need("matmul_back", "din", len(din), T*C)
		if b.deviceDequant(w) {
			di := b.put(1, din[:T*C])
			b.qDin(di, dd, w, T, dt)
			b.get(din[:T*C], di)
		} else {
			wp := b.mustWeight("matmul_back", w, b.bf16)
			di := b.put(1, din[:T*C])
			b.gemm("matmul_back din", opN, opN, C, T, OC, wp, C, dd, OC, 1, di, C, dt)
			b.get(din[:T*C], di)
		}
	}
	if dw != nil {
		need("matmul_back", "dw", len(dw), OC*C)
		need("matmul_back", "in", len(in), T*C)
		x := b.put(2, in[:T*C])
		if b.bf16 {
			x = b.toBF16(5, x, T*C)
		}
		g := b.put(3, dw[:OC*C])
		b.gemm("matmul_back dw", opN, opT, C, OC, T, x, C, dd, OC, 1, g, C, dt)
		b.get(dw[:OC*C], g)
	}
	if dbias != nil {
		need("matmul_back", "dbias", len(dbias), OC)
		g := b.put(3, dbias[:OC])
		b.launch("bias_bwd", blocks(OC, ewThreads), ewThreads, g, d, T, OC)
		b.get(dbias[:OC], g)
	}
}

func (b *Backend) RMSNormForward(out, in, w []float32, eps float64, N, C int) {
	if b.record(traceCall{op: "rmsnorm", vec: w, N: N, C: C}) {
		return
	}
	need("rmsnorm", "out", len(out), N*C)
	need("rmsnorm", "in", len(in), N*C)
	need("rmsnorm", "w", len(w), C)
	defer b.enter()()
	x := b.put(0, in[:N*C])
	wp := b.put(1, w[:C])
	b.launch("rmsnorm_fwd", N, rowThreads, x, x, wp, float32(eps), N, C)
	b.get(out[:N*C], x)
}

func (b *Backend) RMSNormBackward(din, dw, dout, in, w []float32, eps float64, N, C int) {
	need("rmsnorm_back", "din", len(din), N*C)
	need("rmsnorm_back", "dout", len(dout), N*C)
	need("rmsnorm_back", "in", len(in), N*C)
	need("rmsnorm_back", "w", len(w), C)
	defer b.enter()()
	di := b.put(0, din[:N*C])
	d := b.put(1, dout[:N*C])
	x := b.put(2, in[:N*C])
	wp := b.put(3, w[:C])
	rstd := b.slot(4, uint64(N)*4)
	b.launch("rmsnorm_bwd_din", N, rowThreads, di, rstd, d, x, wp, float32(eps), N, C)
	b.get(din[:N*C], di)
	if dw != nil {
		need("rmsnorm_back", "dw", len(dw), C)
		g := b.put(5, dw[:C])
		b.launch("rmsnorm_bwd_dw", blocks(C, ewThreads), ewThreads, g, rstd, d, x, N, C)
		b.get(dw[:C], g)
	}
}

func (b *Backend) rope(op string, x, cos, sin []float32, T, NH, HD, dir int) {
	if HD%2 != 0 {
		panic(fmt.Sprintf("cuda: %s: head dim %d is odd", op, HD))
	}
	need(op, "x", len(x), T*NH*HD)
	need(op, "cos", len(cos), T*HD/2)
	need(op, "sin", len(sin), T*HD/2)
	defer b.enter()()
	xp := b.put(0, x[:T*NH*HD])
	cp := b.put(1, cos[:T*HD/2])
	sp := b.put(2, sin[:T*HD/2])
	b.launch("rope", T*NH, min(rowThreads, (HD/2+31)/32*32), xp, cp, sp, T, NH, HD, dir)
	b.get(x[:T*NH*HD], xp)
}

func (b *Backend) RoPEForward(x, cos, sin []float32, T, NH, HD int) {
	if b.record(traceCall{op: "rope", cos: cos, sin: sin}) {
		return
	}
	b.rope("rope", x, cos, sin, T, NH, HD, 1)
}

func (b *Backend) RoPEBackward(dx, cos, sin []float32, T, NH, HD int) {
	b.rope("rope_back", dx, cos, sin, T, NH, HD, -1)
}

func checkHeads(op string, NH, KVH, HD int) {
	if KVH <= 0 || NH%KVH != 0 {
		panic(fmt.Sprintf("cuda: %s: NH %d must be a multiple of KVH %d", op, NH, KVH))
	}
	if HD <= 0 || HD > maxHD {
		panic(fmt.Sprintf("cuda: %s: head dim %d outside [1,%d]", op, HD, maxHD))
	}
}

func checkSegStart(op string, segStart []int, T int) {
	need(op, "segStart", len(segStart), T)
	for t, s := range segStart[:T] {
		if s < 0 || s > t {
			panic(fmt.Sprintf("cuda: %s: segStart[%d] = %d outside [0,%d]", op, t, s, t))
		}
	}
}

func (b *Backend) AttentionForward(out, q, k, v []float32, pos0, T, NH, KVH, HD, window int) {
	b.attention(out, q, k, v, nil, pos0, T, NH, KVH, HD, window)
}

func (b *Backend) PackedAttentionForward(out, q, k, v []float32, segStart []int, T, NH, KVH, HD, window int) {
	if b.record(traceCall{op: "attention", window: window}) {
		return
	}
	checkSegStart("attention", segStart, T)
	b.attention(out, q, k, v, segStart[:T], 0, T, NH, KVH, HD, window)
}

func (b *Backend) attention(out, q, k, v []float32, segStart []int, pos0, T, NH, KVH, HD, window int) {
	checkHeads("attention", NH, KVH, HD)
	S := pos0 + T
	need("attention", "out", len(out), T*NH*HD)
	need("attention", "q", len(q), T*NH*HD)
	need("attention", "k", len(k), S*KVH*HD)
	need("attention", "v", len(v), S*KVH*HD)
	defer b.enter()()
	qp := b.put(0, q[:T*NH*HD])
	kp := b.put(1, k[:S*KVH*HD])
	vp := b.put(2, v[:S*KVH*HD])
	o := b.slot(3, uint64(T*NH*HD)*4)
	var seg uint64
	if segStart != nil {
		seg = b.putInts(6, segStart)
	}
	scale := float32(1 / math.Sqrt(float64(HD)))
	b.launch("attention_fwd", blocks(T*NH, attnWarps), attnWarps*32, o, qp, kp, vp, seg, pos0, T, NH, KVH, HD, window, scale)
	b.get(out[:T*NH*HD], o)
}

func (b *Backend) PackedAttentionBackward(dq, dk, dv, dout, q, k, v []float32, segStart []int, T, NH, KVH, HD, window int) {
	checkHeads("attention_back", NH, KVH, HD)
	checkSegStart("attention_back", segStart, T)
	need("attention_back", "dq", len(dq), T*NH*HD)
	need("attention_back", "dout", len(dout), T*NH*HD)
	need("attention_back", "q", len(q), T*NH*HD)
	for _, x := range []struct {
		name string
		s    []float32
	}{{"dk", dk}, {"dv", dv}, {"k", k}, {"v", v}} {
		need("attention_back", x.name, len(x.s), T*KVH*HD)
	}
	defer b.enter()()
	qd, kd := T*NH*HD, T*KVH*HD
	qp := b.put(0, q[:qd])
	kp := b.put(1, k[:kd])
	vp := b.put(2, v[:kd])
	dop := b.put(3, dout[:qd])
	seg := b.putInts(6, segStart[:T])
	// One allocation for dq, dk, dv, lse and D.
	n := uint64(qd+2*kd+2*T*NH) * 4
	g := b.slot(4, n)
	dqp, dkp := g, g+uint64(qd)*4
	dvp := dkp + uint64(kd)*4
	lse := dvp + uint64(kd)*4
	dsum := lse + uint64(T*NH)*4
	scale := float32(1 / math.Sqrt(float64(HD)))
	b.launch("attention_bwd_q", blocks(T*NH, attnWarps), attnWarps*32, dqp, lse, dsum, dop, qp, kp, vp, seg, T, NH, KVH, HD, window, scale)
	b.launch("attention_bwd_kv", blocks(T*KVH, attnWarps), attnWarps*32, dkp, dvp, lse, dsum, dop, qp, kp, vp, seg, T, NH, KVH, HD, window, scale)
	b.get(dq[:qd], dqp)
	b.get(dk[:kd], dkp)
	b.get(dv[:kd], dvp)
}

// elementwise runs a kernel over n elements with up to three inputs
// uploaded to slots 1.. and the output(s) in slot 0 (and 4).
func (b *Backend) SwiGLUForward(out, gate, up []float32) {
	if b.record(traceCall{op: "swiglu"}) {
		return
	}
	n := len(out)
	need("swiglu", "gate", len(gate), n)
	need("swiglu", "up", len(up), n)
	defer b.enter()()
	o := b.slot(0, uint64(n)*4)
	g := b.put(1, gate[:n])
	u := b.put(2, up[:n])
	b.launch("swiglu_fwd", blocks(n, ewThreads), ewThreads, o, g, u, int64(n))
	b.get(out, o)
}

func (b *Backend) SwiGLUBackward(dgate, dup, dout, gate, up []float32) {
	n := len(dout)
	need("swiglu_back", "dgate", len(dgate), n)
	need("swiglu_back", "dup", len(dup), n)
	need("swiglu_back", "gate", len(gate), n)
	need("swiglu_back", "up", len(up), n)
	defer b.enter()()
	dg := b.slot(0, uint64(n)*4)
	du := b.slot(4, uint64(n)*4)
	d := b.put(1, dout)
	g := b.put(2, gate[:n])
	u := b.put(3, up[:n])
	b.launch("swiglu_bwd", blocks(n, ewThreads), ewThreads, dg, du, d, g, u, int64(n))
	b.get(dgate[:n], dg)
	b.get(dup[:n], du)
}

func (b *Backend) AddForward(out, a, bb []float32) {
	if b.record(traceCall{op: "add"}) {
		return
	}
	n := len(out)
	need("add", "a", len(a), n)
	need("add", "b", len(bb), n)
	defer b.enter()()
	o := b.slot(0, uint64(n)*4)
	ap := b.put(1, a[:n])
	bp := b.put(2, bb[:n])
	b.launch("add_fwd", blocks(n, ewThreads), ewThreads, o, ap, bp, int64(n))
	b.get(out, o)
}

func (b *Backend) SoftmaxForward(out, in []float32, N, C int) {
	need("softmax", "out", len(out), N*C)
	need("softmax", "in", len(in), N*C)
	defer b.enter()()
	x := b.put(0, in[:N*C])
	b.launch("softmax_fwd", N, rowThreads, x, x, N, C)
	b.get(out[:N*C], x)
}

func checkTargets(op string, targets []int, N, V int) {
	need(op, "targets", len(targets), N)
	for i, id := range targets[:N] {
		if id < 0 || id >= V {
			panic(fmt.Sprintf("cuda: %s: targets[%d] = %d outside [0,%d)", op, i, id, V))
		}
	}
}

func (b *Backend) LogSoftmaxNLLForward(nll []float64, logits []float32, targets []int, N, V int) {
	if b.record(traceCall{op: "nll"}) {
		return
	}
	need("log_softmax_nll", "nll", len(nll), N)
	need("log_softmax_nll", "logits", len(logits), N*V)
	checkTargets("log_softmax_nll", targets, N, V)
	defer b.enter()()
	x := b.put(0, logits[:N*V])
	o := b.slot(1, uint64(N)*8)
	tg := b.putInts(6, targets[:N])
	b.launch("nll_fwd", N, rowThreads, o, x, tg, N, V)
	if N > 0 {
		b.must("cuMemcpyDtoH", b.d.cuMemcpyDtoH(unsafe.Pointer(&nll[0]), o, uint64(N)*8))
	}
}

func (b *Backend) LogSoftmaxNLLBackward(dlogits, logits []float32, targets []int, dloss float32, N, V int) {
	need("log_softmax_nll_back", "dlogits", len(dlogits), N*V)
	need("log_softmax_nll_back", "logits", len(logits), N*V)
	checkTargets("log_softmax_nll_back", targets, N, V)
	defer b.enter()()
	x := b.put(0, logits[:N*V])
	tg := b.putInts(6, targets[:N])
	b.launch("nll_bwd", N, rowThreads, x, x, tg, dloss, N, V)
	b.get(dlogits[:N*V], x)
}

// AdamW is train.AdamW.Update's arithmetic on the device for one slab
// (params, grads and the moments m, v, all [N]); the scalars are the ones
// Update derives from lr, the config and the step: decay = 1-lr*wd,
// a1 = 1-b1, a2 = 1-b2, bc2sqrt = sqrt(1-b2^step), step = -lr/(1-b1^step).
// Not part of kernels.Backend yet: the trainer's optimizer runs on the host.
func (b *Backend) AdamW(params, grads, m, v []float32, decay, b1, b2, a1, a2, bc2sqrt, step, eps float32) {
	n := len(params)
	need("adamw", "grads", len(grads), n)
	need("adamw", "m", len(m), n)
	need("adamw", "v", len(v), n)
	defer b.enter()()
	p := b.put(0, params)
	g := b.put(1, grads[:n])
	mp := b.put(2, m[:n])
	vp := b.put(3, v[:n])
	b.launch("adamw", blocks(n, ewThreads), ewThreads, p, g, mp, vp, decay, b1, b2, a1, a2, bc2sqrt, step, eps, int64(n))
	b.get(params, p)
	b.get(m[:n], mp)
	b.get(v[:n], vp)
}

// RoundBF16 rounds x to bf16 and back on the device (the f32_to_bf16 and
// bf16_to_f32 kernels), in place.
func (b *Backend) RoundBF16(x []float32) {
	n := len(x)
	defer b.enter()()
	p := b.put(0, x)
	h := b.toBF16(1, p, n)
	b.launch("bf16_to_f32", blocks(n, ewThreads), ewThreads, p, h, int64(n))
	b.get(x, p)
}
