package gptq

import "github.com/tunellm/tune/kernels"

// Hessian accumulates the GPTQ Hessian of one linear layer's input,
// H = 2/n Σ_t x_t x_tᵀ over n calibration tokens (GPTQModel's process_batch
// counts tokens; IST-DASLab's add_batch counts sequences: the scale does not
// change GPTQ's result). Each Add's XᵀX is one fp32 matrix product on the
// backend, summed across calls in float64.
type Hessian struct {
	Cols int
	n    int
	sum  []float64 // [Cols*Cols] Σ xxᵀ
	be   kernels.Backend
	xt   []float32 // [Cols, chunk] the transposed input chunk
	out  []float32 // [Cols, Cols]
}

// hessianChunk bounds the tokens one product takes, and so the scratch.
const hessianChunk = 512

// NewHessian returns an empty accumulator for inputs of width cols.
func NewHessian(cols int, be kernels.Backend) *Hessian {
	return &Hessian{Cols: cols, sum: make([]float64, cols*cols), be: be}
}

// Tokens is the number of input rows added so far.
func (h *Hessian) Tokens() int { return h.n }

// Add accumulates the T rows of x [T,Cols].
func (h *Hessian) Add(x []float32, T int) {
	C := h.Cols
	if h.out == nil {
		h.out = make([]float32, C*C)
		h.xt = make([]float32, C*hessianChunk)
	}
	for t0 := 0; t0 < T; t0 += hessianChunk {
		n := min(hessianChunk, T-t0)
		xt := h.xt[:C*n]
		for t := range n {
			row := x[(t0+t)*C : (t0+t+1)*C]
			for c, v := range row {
				xt[c*n+t] = v
			}
		}
		h.be.MatMulForward(h.out, xt, kernels.Weight{DType: kernels.F32, Data: f32Bytes(xt), Rows: C, Cols: n}, nil, C)
		for i, v := range h.out {
			h.sum[i] += float64(v)
		}
	}
	h.n += T
}

// AllReduce replaces the sums and the token count by their totals over the
// ranks of c (float64, the same bits on every rank).
func (h *Hessian) AllReduce(c Comm) error {
	n := []float64{float64(h.n)}
	if err := c.AllReduceF64(n); err != nil {
		return err
	}
	if err := c.AllReduceF64(h.sum); err != nil {
		return err
	}
	h.n = int(n[0])
	return nil
}

// Matrix returns 2/n Σ xxᵀ [Cols*Cols], symmetrized; all zeros before any Add
// (every input dead).
func (h *Hessian) Matrix() []float64 {
	C := h.Cols
	m := make([]float64, C*C)
	if h.n == 0 {
		return m
	}
	f := 2 / float64(h.n)
	for i := range C {
		for j := i; j < C; j++ {
			v := f * (h.sum[i*C+j] + h.sum[j*C+i]) / 2
			m[i*C+j], m[j*C+i] = v, v
		}
	}
	return m
}

// OutputErrors returns, for each q in qs, ‖(W−Q)X‖²/‖WX‖² over the inputs
// whose Hessian is h: tr(ΔHΔᵀ)/tr(WHWᵀ) with Δ = W−Q, from one fp32 product
// (rows·(1+len(qs)) × cols × cols) and float64 sums. A zero W·X gives 0.
func OutputErrors(be kernels.Backend, w []float32, qs [][]float32, rows, cols int, h []float64) []float64 {
	k := 1 + len(qs)
	in := make([]float32, k*rows*cols)
	copy(in, w)
	for i, q := range qs {
		d := in[(i+1)*rows*cols : (i+2)*rows*cols]
		for j := range d {
			d[j] = w[j] - q[j]
		}
	}
	hf := make([]float32, cols*cols)
	for i, v := range h {
		hf[i] = float32(v)
	}
	out := make([]float32, k*rows*cols)
	be.MatMulForward(out, in, kernels.Weight{DType: kernels.F32, Data: f32Bytes(hf), Rows: cols, Cols: cols}, nil, k*rows)
	sums := make([]float64, k)
	for i := range k {
		a, b := in[i*rows*cols:(i+1)*rows*cols], out[i*rows*cols:(i+1)*rows*cols]
		for j := range a {
			sums[i] += float64(a[j]) * float64(b[j])
		}
	}
	errs := make([]float64, len(qs))
	if sums[0] > 0 {
		for i := range errs {
			errs[i] = sums[i+1] / sums[0]
		}
	}
	return errs
}
