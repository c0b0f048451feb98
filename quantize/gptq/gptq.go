// Package gptq is GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training
// Quantization for Generative Pre-trained Transformers"): weight-only INT4/INT8
// quantization of each linear layer that picks codes column by column and
// spreads each column's rounding error over the columns not yet quantized,
// through the inverse Hessian of the layer's reconstruction loss ‖WX − QX‖²,
// H = 2/n Σ xxᵀ over n calibration tokens. Run drives it through a model
// sequentially, layer by layer (optionally GPTQModel's true_sequential inside
// a layer), so that quantized earlier layers feed the calibration inputs of
// later ones.
//
// QuantizeMatrix (Factorize, then Factor.Quantize) follows the reference
// implementations (IST-DASLab gptq.py fasterquant, GPTQModel's GPTQ.quantize)
// step by step: dead inputs (H_ii = 0: H_ii = 1, column zeroed), act-order
// (desc_act, g_idx[perm[k]] = k/group), damping with GPTQModel's automatic
// increase, the upper Cholesky factor of (H+λI)⁻¹, blocks of BlockSize
// columns with error feedback inside and lazy updates across, per-channel
// parameters from the weights as given, and group parameters found at each
// group start from W as updated by earlier blocks only (static_groups=False;
// the reference reads W, not the block's working copy). Deliberate
// differences: H is summed and factored in float64 (the references use fp32;
// the column loop stays fp32 as theirs), act-order ties go by column index
// (torch.argsort leaves them unspecified), scales are rounded to fp16 before
// codes are chosen (wq.Scheme.FindParams), and the cross-block update's fp32
// summation order is our GEMM's, not cuBLAS's.
//
// It is not AWQ, not GPTQ's static groups or MSE grid search, and not a
// checkpoint writer: it produces wq.QTensor, which package wq stores.
package gptq

import (
	"fmt"
	"math"
	"runtime"
	"sort"
	"sync"
	"unsafe"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/quantize/wq"
)

// Options configures GPTQ.
type Options struct {
	Scheme    wq.Scheme
	Damp      float64 // fraction of mean(diag H) added to H's diagonal; 0: 0.01
	ActOrder  bool    // quantize columns by decreasing H_ii (desc_act), g_idx records the groups
	BlockSize int     // columns per lazy-update block; 0: 128
	Workers   int     // goroutines over output rows; 0: GOMAXPROCS. Results do not depend on it.
	// TrueSequential makes Run capture each input of a layer only after the
	// modules before it are quantized (q/k/v, then o, then gate/up, then
	// down), as GPTQModel's true_sequential (its default) does: 5 passes of
	// the calibration set through each layer instead of 2.
	TrueSequential bool
	// Progress, when set, is called by Run after each decoder layer.
	Progress func(layer, layers int)
	// Backend runs the fp32 matrix products; nil: the model's (Run) or kernels.Get("").
	Backend kernels.Backend
	// Comm, when set with more than one rank, splits Run's calibration
	// across a data-parallel group (see Run); nil: one process.
	Comm Comm
}

// Comm is the part of a data-parallel group (dist.Comm) Run uses.
type Comm interface {
	Rank() int
	Size() int
	// AllReduceF64 replaces buf by the element-wise sum over ranks, the
	// same bits on every rank.
	AllReduceF64(buf []float64) error
}

// dampStep is GPTQModel's damp_auto_increment: when H + damp·mean(diag H)·I
// is not positive definite, damp grows by this much and the factorization is
// retried, until damp reaches 1.
const dampStep = 0.0015

func (o Options) withDefaults() (Options, error) {
	if o.Damp == 0 {
		o.Damp = 0.01
	}
	if o.BlockSize == 0 {
		o.BlockSize = 128
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	switch {
	case o.Damp < 0 || o.Damp >= 1:
		return o, fmt.Errorf("gptq: damp: want a fraction in (0,1), got %v", o.Damp)
	case o.BlockSize < 1:
		return o, fmt.Errorf("gptq: block size: want > 0, got %d", o.BlockSize)
	}
	if o.Backend == nil {
		be, err := kernels.Get("")
		if err != nil {
			return o, fmt.Errorf("gptq: %w", err)
		}
		o.Backend = be
	}
	return o, nil
}

// Result is one quantized matrix with what GPTQ found on the way.
type Result struct {
	*wq.QTensor
	Damp float64 // the damping fraction that made H positive definite
	Dead int     // input columns with H_ii = 0 (never active), quantized as zeros
}

// Factor is what GPTQ derives from one Hessian alone: the dead columns, the
// column order and the upper Cholesky factor of the damped inverse. Modules
// that read the same input (q/k/v, gate/up) share it.
type Factor struct {
	Cols     int
	Dead     int     // input columns with H_ii = 0
	Damp     float64 // the damping fraction that made H positive definite
	ActOrder bool
	perm     []int     // perm[k]: the original column quantized k-th
	dead     []bool    // [Cols]
	u        []float32 // [Cols*Cols] U, UᵀU = (H+λI)⁻¹ in quantization order
}

// Factorize prepares h [cols*cols] (2/n Σ xxᵀ of a layer's inputs; its scale
// is irrelevant) for Quantize, with opts' Damp, ActOrder and Workers. h is
// not modified.
func Factorize(name string, h []float64, cols int, opts Options) (*Factor, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if cols <= 0 || len(h) != cols*cols {
		return nil, fmt.Errorf("gptq: %s: Hessian has %d entries, want %d×%d", name, len(h), cols, cols)
	}
	for i, v := range h {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("gptq: %s: Hessian [%d,%d] is %v (calibration activations overflowed?)", name, i/cols, i%cols, v)
		}
	}
	f := &Factor{Cols: cols, ActOrder: o.ActOrder, perm: make([]int, cols), dead: make([]bool, cols)}
	diag := make([]float64, cols)
	for i := range cols {
		diag[i] = h[i*cols+i]
		if diag[i] == 0 {
			diag[i] = 1
			f.dead[i] = true
			f.Dead++
		}
	}
	for i := range f.perm {
		f.perm[i] = i
	}
	if o.ActOrder {
		sort.SliceStable(f.perm, func(a, b int) bool { return diag[f.perm[a]] > diag[f.perm[b]] })
	}
	Hp := make([]float64, cols*cols)
	for i, pi := range f.perm {
		for j, pj := range f.perm {
			Hp[i*cols+j] = h[pi*cols+pj]
		}
		Hp[i*cols+i] = diag[pi]
	}
	f.u, f.Damp, err = invUpperCholesky(Hp, cols, o.Damp, o.Workers)
	if err != nil {
		return nil, fmt.Errorf("gptq: %s: %w", name, err)
	}
	return f, nil
}

// QuantizeMatrix quantizes w [rows*cols] (an nn.Linear weight, out × in) with
// the Hessian h [cols*cols]: Factorize, then Quantize. w and h are not
// modified.
func QuantizeMatrix(name string, w []float32, rows, cols int, h []float64, opts Options) (*Result, error) {
	if err := opts.Scheme.Check(cols); err != nil {
		return nil, fmt.Errorf("gptq: %s: %w", name, err)
	}
	f, err := Factorize(name, h, cols, opts)
	if err != nil {
		return nil, err
	}
	return f.Quantize(name, w, rows, opts)
}

// Quantize runs GPTQ's column loop on w [rows*Cols] with opts' Scheme,
// BlockSize and Workers (the order and damping are f's).
func (f *Factor) Quantize(name string, w []float32, rows int, opts Options) (*Result, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	cols := f.Cols
	s := o.Scheme
	if err := s.Check(cols); err != nil {
		return nil, fmt.Errorf("gptq: %s: %w", name, err)
	}
	if rows <= 0 || len(w) != rows*cols {
		return nil, fmt.Errorf("gptq: %s: %d weights, want %d×%d", name, len(w), rows, cols)
	}
	for i, v := range w {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("gptq: %s: weight [%d,%d] is %v", name, i/cols, i%cols, v)
		}
	}

	G := s.Groups(cols)
	gs := cols
	if s.GroupSize > 0 {
		gs = s.GroupSize
	}
	res := &Result{Damp: f.Damp, Dead: f.Dead, QTensor: &wq.QTensor{Name: name, Rows: rows, Cols: cols, Scheme: s,
		Q: make([]uint8, rows*cols), Scales: make([]float32, rows*G), Zeros: make([]uint8, rows*G)}}
	t := res.QTensor
	perm, U := f.perm, f.u

	// Per-channel parameters come from the weights as given, before dead
	// columns are zeroed (the reference calls find_params first).
	if s.GroupSize <= 0 {
		parallelRows(rows, o.Workers, func(r0, r1 int) {
			for r := r0; r < r1; r++ {
				t.Scales[r], t.Zeros[r] = s.FindParams(w[r*cols : (r+1)*cols])
			}
		})
	}
	W := make([]float32, rows*cols) // [rows, cols] in quantization order, dead columns zero
	parallelRows(rows, o.Workers, func(r0, r1 int) {
		for r := r0; r < r1; r++ {
			for k, c := range perm {
				if !f.dead[c] {
					W[r*cols+k] = w[r*cols+c]
				}
			}
		}
	})

	Qp := make([]uint8, rows*cols) // codes in quantization order
	B := o.BlockSize
	errBuf := make([]float32, rows*B) // [rows, B] scaled errors of the current block
	var upd []float32                 // [rows, cols-i2] the block's lazy update
	var Ut []float32                  // [cols-i2, count] U[i1:i2, i2:] transposed
	for i1 := 0; i1 < cols; i1 += B {
		i2 := min(i1+B, cols)
		n := i2 - i1
		parallelRows(rows, o.Workers, func(r0, r1 int) {
			w1 := make([]float32, n)
			var scale float32
			var zero uint8
			for r := r0; r < r1; r++ {
				row := W[r*cols : (r+1)*cols]
				copy(w1, row[i1:i2])
				e := errBuf[r*n : (r+1)*n]
				// The group in force at i1 (a group may straddle blocks); per
				// channel, the row's one group.
				g := r*G + i1/gs
				scale, zero = t.Scales[g], t.Zeros[g]
				for i := range n {
					c := i1 + i
					if s.GroupSize > 0 && c%gs == 0 {
						// From W, not w1: the in-block updates of this block are
						// not in W yet, as in the reference.
						g := c / gs
						scale, zero = s.FindParams(row[c:min(c+gs, cols)])
						t.Scales[r*G+g], t.Zeros[r*G+g] = scale, zero
					}
					x := w1[i]
					code := s.Code(x, scale, zero)
					Qp[r*cols+c] = code
					q := scale * float32(int(code)-int(zero))
					urow := U[c*cols+c : c*cols+i2]
					ei := (x - q) / urow[0]
					for j := i; j < n; j++ {
						p := float32(ei * urow[j-i]) // rounded: the reference's outer product
						w1[j] -= p
					}
					e[i] = ei
				}
			}
		})
		if i2 == cols {
			break
		}
		// W[:, i2:] -= Err · U[i1:i2, i2:], as one fp32 matrix product.
		m := cols - i2
		if cap(Ut) < m*n {
			Ut = make([]float32, m*n)
			upd = make([]float32, rows*m)
		}
		Ut, upd = Ut[:m*n], upd[:rows*m]
		for k := range n {
			for j := range m {
				Ut[j*n+k] = U[(i1+k)*cols+i2+j]
			}
		}
		o.Backend.MatMulForward(upd, errBuf[:rows*n], kernels.Weight{DType: kernels.F32, Data: f32Bytes(Ut), Rows: m, Cols: n}, nil, rows)
		parallelRows(rows, o.Workers, func(r0, r1 int) {
			for r := r0; r < r1; r++ {
				dst, u := W[r*cols+i2:(r+1)*cols], upd[r*m:(r+1)*m]
				for j := range dst {
					dst[j] -= u[j]
				}
			}
		})
	}

	// Back to the original column order; g_idx[perm[k]] = k / group size.
	for r := range rows {
		for k, c := range perm {
			t.Q[r*cols+c] = Qp[r*cols+k]
		}
	}
	if f.ActOrder && s.GroupSize > 0 {
		t.GIdx = make([]int32, cols)
		for k, c := range perm {
			t.GIdx[c] = int32(k / gs)
		}
	}
	return res, nil
}

// invUpperCholesky returns U (fp32, [n*n], upper triangular) with UᵀU = (H +
// λI)⁻¹, λ = damp·mean(diag H), the matrix GPTQ's updates read their rows
// from. The reference computes cholesky → cholesky_inverse → cholesky(upper);
// with J the order-reversing permutation the same factor is J·chol(J(H+λI)J)⁻¹·J,
// one factorization and one triangular inverse. On a failed factorization
// damp grows by dampStep (GPTQModel's damp_auto_increment).
func invUpperCholesky(H []float64, n int, damp float64, workers int) ([]float32, float64, error) {
	var mean float64
	for i := range n {
		mean += H[i*n+i]
	}
	mean /= float64(n)
	A := make([]float64, n*n) // J(H+λI)J, then its Cholesky factor L (lower)
	for ; damp < 1; damp += dampStep {
		lambda := damp * mean
		for i := range n {
			for j := range n {
				A[i*n+j] = H[(n-1-i)*n+(n-1-j)]
			}
			A[i*n+i] += lambda
		}
		if cholesky(A, n, workers) {
			break
		}
	}
	if damp >= 1 {
		return nil, damp, fmt.Errorf("Hessian is not positive definite even with damp %.4f (too few calibration tokens, or degenerate inputs?)", damp)
	}
	M := triInverse(A, n, workers) // M = L⁻¹ by column blocks
	U := make([]float32, n*n)
	for i := range n {
		for j := i; j < n; j++ {
			jj := n - 1 - j
			U[i*n+j] = float32(M[jj/cholBlock][(n-1-i)*cholBlock+jj%cholBlock])
		}
	}
	return U, damp, nil
}

// cholBlock is the tile width of the blocked factorization and inverse.
const cholBlock = 64

// cholesky factors the symmetric matrix A [n*n] in place into its lower
// factor L (A = LLᵀ; the strict upper triangle is left as garbage) and reports
// whether A was positive definite. Blocked left-looking: each block column
// first takes the products of the finished columns tile by tile (rows in
// parallel, each entry's sum in a fixed order), then its diagonal tile is
// factored and the rows below it solved.
func cholesky(A []float64, n, workers int) bool {
	const b = cholBlock
	for J0 := 0; J0 < n; J0 += b {
		J1 := min(J0+b, n)
		// A[i, J0:J1] -= L[i, :J0] · L[J0:J1, :J0]ᵀ for i >= J0.
		if J0 > 0 {
			nb := (n - J0 + b - 1) / b
			parallelRange(0, nb, min(workers, nb), func(b0, b1 int) {
				for I0 := J0 + b0*b; I0 < min(J0+b1*b, n); I0 += b {
					I1 := min(I0+b, n)
					for K0 := 0; K0 < J0; K0 += b {
						K1 := min(K0+b, J0)
						for i := I0; i < I1; i++ {
							li := A[i*n+K0 : i*n+K1]
							for j := J0; j < min(J1, i+1); j++ {
								A[i*n+j] -= dot64(li, A[j*n+K0:j*n+K1])
							}
						}
					}
				}
			})
		}
		// The diagonal tile, then the rows below it.
		for j := J0; j < J1; j++ {
			d := A[j*n+j] - dot64(A[j*n+J0:j*n+j], A[j*n+J0:j*n+j])
			if !(d > 0) {
				return false
			}
			d = math.Sqrt(d)
			A[j*n+j] = d
			for i := j + 1; i < J1; i++ {
				A[i*n+j] = (A[i*n+j] - dot64(A[i*n+J0:i*n+j], A[j*n+J0:j*n+j])) / d
			}
		}
		parallelRange(J1, n, min(workers, max(1, (n-J1)/16)), func(i0, i1 int) {
			for i := i0; i < i1; i++ {
				for j := J0; j < J1; j++ {
					A[i*n+j] = (A[i*n+j] - dot64(A[i*n+J0:i*n+j], A[j*n+J0:j*n+j])) / A[j*n+j]
				}
			}
		})
	}
	return true
}

// triInverse returns M = L⁻¹ for the lower triangle L of A [n*n], by column
// blocks of width cholBlock: M[blk] is [n, cholBlock], row i holding M[i,
// blk·cholBlock : ...] (zero above the diagonal). Column blocks are
// independent (forward substitution of L·M = I), spread over workers.
func triInverse(A []float64, n, workers int) [][]float64 {
	const b = cholBlock
	nb := (n + b - 1) / b
	M := make([][]float64, nb)
	parallelStrided(nb, workers, func(J int, _ []float64) {
		J0, J1 := J*b, min(J*b+b, n)
		bw := J1 - J0
		m := make([]float64, n*b)
		for i := J0; i < n; i++ {
			// acc = Σ_{J0 <= k < i} L[i,k] M[k,:], then M[i,:] = (e_i - acc) / L[i,i].
			acc := m[i*b : i*b+bw]
			li := A[i*n : i*n+i]
			for k := J0; k < i; k++ {
				if l := li[k]; l != 0 {
					axpy64(acc, l, m[k*b:k*b+bw])
				}
			}
			d := A[i*n+i]
			for j := range acc {
				e := 0.0
				if J0+j == i {
					e = 1
				}
				acc[j] = (e - acc[j]) / d
			}
		}
		M[J] = m
	})
	return M
}

// dot64 is Σ a[i]·b[i] with four partial sums.
func dot64(a, b []float64) float64 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// axpy64 is y += a·x.
func axpy64(y []float64, a float64, x []float64) {
	x = x[:len(y)]
	for i := range y {
		y[i] += a * x[i]
	}
}

// parallelRows splits [0,n) into contiguous chunks over workers goroutines.
func parallelRows(n, workers int, f func(r0, r1 int)) { parallelRange(0, n, workers, f) }

func parallelRange(a, b, workers int, f func(r0, r1 int)) {
	n := b - a
	if workers > n {
		workers = n
	}
	if workers <= 1 {
		f(a, b)
		return
	}
	var wg sync.WaitGroup
	for k := range workers {
		r0, r1 := a+n*k/workers, a+n*(k+1)/workers
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(r0, r1)
		}()
	}
	wg.Wait()
}

// parallelStrided calls f(j, scratch) for j in [0,n), worker k taking j = k,
// k+workers, ...; scratch is a per-worker []float64 of length n.
func parallelStrided(n, workers int, f func(j int, scratch []float64)) {
	workers = max(1, min(workers, n))
	var wg sync.WaitGroup
	for k := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := make([]float64, n)
			for j := k; j < n; j += workers {
				f(j, x)
			}
		}()
	}
	wg.Wait()
}

// f32Bytes views v's memory as bytes (little-endian hosts, as the CPU
// backend's F32 weights assume).
func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}
