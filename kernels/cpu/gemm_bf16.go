package cpu

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/tunellm/tune/kernels"
)

// The bf16-compute path of the frozen base's matmuls: the forward
// out = in·Wᵀ and the backward din += dout·W on a BF16 weight, computed as
// torch autocast does on the CPU: the fp32 activations are rounded to bf16
// (nearest even), multiplied by the bf16 weight as stored, and summed in fp32
// with AVX512_BF16's VDPBF16PS (32 products per instruction, twice the fp32
// FMA rate). Weight grads (dW) and every other op stay fp32.
//
// Layout: the activations are rounded once per call into rows of bf16 pairs
// (k, k+1) — the row-major bf16 copy itself, K padded to even —, and gemmBF16
// packs B in blocks of gemmBF16KC k as panels of gemmNR columns of pairs
// ([k/2][32][2] bf16), the layout VDPBF16PS reads: one dword of A broadcast
// times one ZMM of B gives 16 columns × 2 products. An 8×32 micro-kernel
// covers blocks of 8 rows, a 1×64 row kernel the leftover rows.
//
// Every output is ONE chain over the k pairs in ascending order, each step
// s = bf16Dot(s, a pair, b pair), started from 0 (forward) or the output's
// value (din): the blocking, the worker count, T and the kernel (micro or
// row) do not change results, and the pure-Go kernels (gemmBF16MicroGo,
// gemmBF16RowGo) equal the assembly bit for bit. The fp32 path's results
// are unchanged when the mode is off.
//
// The mode is process-wide and off by default: SetComputeBF16 or the
// environment (TUNE_COMPUTE=bf16|f32) turn it on; it applies only to BF16
// weights on a CPU with AVX512_BF16, and otherwise the fp32 path runs.

const gemmBF16KC = 512 // k per packed block (256 pairs): 8 A rows × kc bf16 = 8 KiB

var computeBF16 atomic.Bool

func init() {
	if s := os.Getenv("TUNE_COMPUTE"); s != "" {
		on, err := ParseComputeDType(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "tune: TUNE_COMPUTE: %v; using f32\n", err)
		}
		computeBF16.Store(on)
	}
}

// ParseComputeDType maps "f32" (also "fp32", "float32", "") to false and
// "bf16" (also "bfloat16") to true.
func ParseComputeDType(s string) (bf16 bool, err error) {
	switch s {
	case "", "f32", "fp32", "float32":
		return false, nil
	case "bf16", "bfloat16":
		return true, nil
	}
	return false, fmt.Errorf("compute dtype %q: expected f32 or bf16", s)
}

// SetComputeBF16 turns the bf16-compute matmuls on or off process-wide and
// returns the previous setting. On a CPU without AVX512_BF16 the setting is
// kept but has no effect (see HasBF16).
func SetComputeBF16(on bool) (prev bool) { return computeBF16.Swap(on) }

// ComputeBF16 is the current setting.
func ComputeBF16() bool { return computeBF16.Load() }

// HasBF16 reports whether this CPU runs the bf16-compute kernels.
func HasBF16() bool { return hasBF16 }

// useBF16 reports whether a matmul on w takes the bf16-compute path.
func useBF16(w kernels.Weight) bool {
	return hasBF16 && w.DType == kernels.BF16 && computeBF16.Load()
}

// roundBF16 is VCVTNEPS2BF16 on one value: zero and denormals go to a signed
// zero, infinities stay, a NaN is truncated and quieted, and a normal number
// rounds to nearest even (carrying into the exponent, up to infinity).
func roundBF16(f float32) uint16 {
	x := math.Float32bits(f)
	switch x & 0x7f800000 {
	case 0:
		return uint16(x>>16) & 0x8000
	case 0x7f800000:
		if x&0x7fffff != 0 {
			return uint16(x>>16) | 0x40
		}
		return uint16(x >> 16)
	}
	return uint16((x + 0x7fff + (x>>16)&1) >> 16)
}

// bf16DAZ widens a bf16 to fp32, denormals treated as zero.
func bf16DAZ(h uint32) float64 {
	if h&0x7f80 == 0 {
		h &= 0x8000
	}
	return float64(math.Float32frombits(h << 16))
}

// fmaFTZ returns s + x*y rounded once to fp32 (nearest even), a denormal
// result flushed to a signed zero. x*y (two bf16) is exact in float64 and
// needs at most 16 bits, so float64 addition followed by rounding to fp32 is
// correctly rounded (53 >= 2·24+2).
func fmaFTZ(s float32, x, y float64) float32 {
	r := float32(float64(s) + x*y)
	if math.Float32bits(r)&0x7f800000 == 0 {
		r = math.Float32frombits(math.Float32bits(r) & 0x80000000)
	}
	return r
}

// bf16Dot is one lane of VDPBF16PS (Intel SDM): s += a.hi*b.hi, then
// s += a.lo*b.lo, each step a fused multiply-add rounded to fp32 nearest even,
// denormal inputs read as zero and denormal results flushed to zero.
func bf16Dot(s float32, a, b uint32) float32 {
	if math.Float32bits(s)&0x7f800000 == 0 {
		s = math.Float32frombits(math.Float32bits(s) & 0x80000000)
	}
	s = fmaFTZ(s, bf16DAZ(a>>16), bf16DAZ(b>>16))
	return fmaFTZ(s, bf16DAZ(a&0xffff), bf16DAZ(b&0xffff))
}

// gemmBF16MicroGo is the portable micro-kernel: 8 rows × gemmNR columns,
//
//	c[i*ldc+j] = chain over p < kp of bf16Dot(., a[i*lda+p], b[p*gemmNR+j]),
//
// started from c[i*ldc+j] when load, else 0.
func gemmBF16MicroGo(a []uint32, lda int, b []uint32, c []float32, ldc, kp int, load bool) {
	const nr = gemmNR
	b = b[:kp*nr]
	for i := 0; i < 8; i++ {
		ar := a[i*lda : i*lda+kp]
		cr := c[i*ldc : i*ldc+nr]
		for j := 0; j < nr; j++ {
			var s float32
			if load {
				s = cr[j]
			}
			for p, x := range ar {
				s = bf16Dot(s, x, b[p*nr+j])
			}
			cr[j] = s
		}
	}
}

// gemmBF16RowGo is the portable row kernel: one row × 2 panels (2*gemmNR
// columns), panel 1 at b[bs:], each output the chain of gemmBF16MicroGo.
func gemmBF16RowGo(a, b []uint32, bs int, c []float32, kp int, load bool) {
	const nr = gemmNR
	a = a[:kp]
	for p := 0; p < 2; p++ {
		bp := b[p*bs : p*bs+kp*nr]
		cp := c[p*nr : p*nr+nr]
		for j := range cp {
			var s float32
			if load {
				s = cp[j]
			}
			for q, x := range a {
				s = bf16Dot(s, x, bp[q*nr+j])
			}
			cp[j] = s
		}
	}
}

// u32 views a float32 scratch buffer as dwords (bf16 pairs).
func u32(f []float32) []uint32 {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*uint32)(unsafe.Pointer(&f[0])), len(f))
}

// packBF16 writes the pairs of B[k0:k0+kc, n0:n0+nv] (W bf16, [Rows, Cols])
// into dst as np panels of gemmNR columns: panel p at dst[p*kp*gemmNR:], pair
// q, column j at +q*gemmNR+j, low half B[k0+2q, n], high half B[k0+2q+1, n]
// (0 past K). Padding columns nv..np*gemmNR are zeroed.
func packBF16(kind int, w kernels.Weight, dst []uint32, k0, kc, n0, nv, np int) {
	const nr = gemmNR
	kp := (kc + 1) / 2
	pb := kp * nr
	C := w.Cols
	data := w.Data
	le := binary.LittleEndian
	switch kind {
	case bWeightT: // B[k,n] = W[n,k]: a pair is one dword of weight row n
		full := kc / 2
		n := 0
		for ; n+16 <= nv; n += 16 { // 16 rows at a time, transposed in registers
			d := dst[(n/nr)*pb+n%nr:]
			src := data[((n0+n)*C+k0)*2:]
			m := packT16(d, src, C*2, full)
			for j := 0; j < 16 && m < kp; j++ {
				row := src[j*C*2 : (j*C+kc)*2]
				for q := m; q < full; q++ {
					d[q*nr+j] = le.Uint32(row[4*q:])
				}
				if kc&1 != 0 {
					d[full*nr+j] = uint32(le.Uint16(row[4*full:]))
				}
			}
		}
		for ; n < nv; n++ {
			row := data[((n0+n)*C+k0)*2 : ((n0+n)*C+k0+kc)*2]
			d := dst[(n/nr)*pb+n%nr:]
			d = d[:(kp-1)*nr+1]
			for q := 0; q < full; q++ {
				d[q*nr] = le.Uint32(row[4*q:])
			}
			if kc&1 != 0 {
				d[full*nr] = uint32(le.Uint16(row[4*full:]))
			}
		}
	case bWeight: // B[k,n] = W[k,n]: a pair interleaves weight rows k, k+1
		for q := 0; q < kp; q++ {
			k := k0 + 2*q
			r0 := data[(k*C+n0)*2 : (k*C+n0+nv)*2]
			var r1 []byte
			p := 0
			if k+1 < k0+kc {
				r1 = data[((k+1)*C+n0)*2 : ((k+1)*C+n0+nv)*2]
				if packPairs(dst[q*nr:], pb, r0, r1, nv/nr) {
					p = nv / nr
				}
			}
			for ; p*nr < nv; p++ {
				cols := min(nr, nv-p*nr)
				d := dst[p*pb+q*nr : p*pb+q*nr+cols]
				s0 := r0[p*nr*2 : (p*nr+cols)*2]
				if r1 == nil {
					for j := range d {
						d[j] = uint32(le.Uint16(s0[2*j:]))
					}
					continue
				}
				s1 := r1[p*nr*2 : (p*nr+cols)*2]
				for j := range d {
					d[j] = uint32(le.Uint16(s0[2*j:])) | uint32(le.Uint16(s1[2*j:]))<<16
				}
			}
		}
	default:
		panic("cpu: packBF16: B must be a weight")
	}
	if nv < np*nr {
		p := nv / nr
		if j := nv % nr; j > 0 {
			d := dst[p*pb : (p+1)*pb]
			for q := 0; q < kp; q++ {
				clear(d[q*nr+j : (q+1)*nr])
			}
			p++
		}
		clear(dst[p*pb : np*pb])
	}
}

// gemmBF16 computes, for t < M and n0 <= n < n1,
//
//	out[t*ldo+n] = (acc ? out[t*ldo+n] : 0) + sum over pairs of a[t*lda+q] · B[2q:2q+2, n]
//
// with a the rounded activations (rows of bf16 pairs, lda dwords apart) and B the weight (kind bWeightT or
// bWeight), each output one bf16Dot chain (see the top of this file).
func gemmBF16(wk *worker, out []float32, ldo int, a []uint32, lda, M, K int, kind int, w kernels.Weight, n0, n1 int, acc bool) {
	const nr = gemmNR
	nv := n1 - n0
	if M <= 0 || nv <= 0 {
		return
	}
	if K == 0 {
		if !acc {
			for t := 0; t < M; t++ {
				clear(out[t*ldo+n0 : t*ldo+n1])
			}
		}
		return
	}
	np := (nv + 2*nr - 1) / (2 * nr) * 2 // even: the row kernel takes panel pairs
	for k0 := 0; k0 < K; k0 += gemmBF16KC {
		kc := min(gemmBF16KC, K-k0)
		kp := (kc + 1) / 2
		pb := kp * nr
		buf := u32(wk.tile(np * pb))
		packBF16(kind, w, buf, k0, kc, n0, nv, np)
		load := acc || k0 > 0
		t := 0
		for ; t+8 <= M; t += 8 {
			ar := a[t*lda+k0/2:]
			for p := 0; p*nr < nv; p++ {
				cols := min(nr, nv-p*nr)
				bp := buf[p*pb : (p+1)*pb]
				o := t*ldo + n0 + p*nr
				if cols == nr {
					gemmBF16Micro(ar, lda, bp, out[o:], ldo, kp, load)
					continue
				}
				sc := grow(&wk.cs, 8*nr)
				if load {
					for i := 0; i < 8; i++ {
						copy(sc[i*nr:i*nr+cols], out[o+i*ldo:o+i*ldo+cols])
					}
				}
				gemmBF16Micro(ar, lda, bp, sc, nr, kp, load)
				for i := 0; i < 8; i++ {
					copy(out[o+i*ldo:o+i*ldo+cols], sc[i*nr:i*nr+cols])
				}
			}
		}
		for ; t < M; t++ { // leftover rows, one at a time: the same chains
			ar := a[t*lda+k0/2 : t*lda+k0/2+kp]
			for p := 0; p*nr < nv; p += 2 {
				cols := min(2*nr, nv-p*nr)
				bp := buf[p*pb : (p+2)*pb]
				o := t*ldo + n0 + p*nr
				if cols == 2*nr {
					gemmBF16Row(ar, bp, pb, out[o:o+2*nr], kp, load)
					continue
				}
				sc := grow(&wk.cs, 8*nr)[:2*nr]
				if load {
					copy(sc[:cols], out[o:o+cols])
				}
				gemmBF16Row(ar, bp, pb, sc, kp, load)
				copy(out[o:o+cols], sc[:cols])
			}
		}
	}
}

// bf16State is a backend's scratch for the bf16 path: the rounded
// activations and the task values (reused: dispatching does not allocate).
type bf16State struct {
	a  []uint32
	mm bf16Task
	cv bf16RoundTask
}

func (b *Backend) bf16() *bf16State { return &b.bf16s }

// bf16RoundRows is the rows per rounding chunk.
const bf16RoundRows = 16

// bf16RoundTask rounds src [M, K] (rows lds apart) into dst rows of lda pairs.
type bf16RoundTask struct {
	dst      []uint32
	src      []float32
	M, K     int
	lds, lda int
}

func (r *bf16RoundTask) run(_ *worker, chunk int) {
	t0 := chunk * bf16RoundRows
	t1 := min(t0+bf16RoundRows, r.M)
	h := unsafe.Slice((*uint16)(unsafe.Pointer(&r.dst[0])), 2*len(r.dst))
	for t := t0; t < t1; t++ {
		d := h[t*2*r.lda : (t+1)*2*r.lda]
		roundRowBF16(d[:r.K], r.src[t*r.lds:t*r.lds+r.K])
		clear(d[r.K:])
	}
}

// roundActs rounds x [M, K] to bf16 pair rows in the state's buffer and
// returns it with its row stride (in pairs).
func (b *Backend) roundActs(st *bf16State, x []float32, M, K int) ([]uint32, int) {
	lda := (K + 1) / 2
	if cap(st.a) < M*lda {
		st.a = make([]uint32, M*lda)
	}
	a := st.a[:M*lda]
	st.cv = bf16RoundTask{dst: a, src: x, M: M, K: K, lds: K, lda: lda}
	b.pool.do(&st.cv, (M+bf16RoundRows-1)/bf16RoundRows)
	st.cv = bf16RoundTask{}
	return a, lda
}

// bf16Task runs gemmBF16 over (column tile, row block) chunks.
type bf16Task struct {
	out, bias []float32
	a         []uint32
	lda       int
	w         kernels.Weight
	kind      int
	M, K, N   int
	mb, nt    int
	acc       bool
}

func (m *bf16Task) run(wk *worker, chunk int) {
	n0 := chunk % m.nt * gemmNC
	n1 := min(n0+gemmNC, m.N)
	t0 := chunk / m.nt * m.mb
	t1 := min(t0+m.mb, m.M)
	gemmBF16(wk, m.out[t0*m.N:], m.N, m.a[t0*m.lda:], m.lda, t1-t0, m.K, m.kind, m.w, n0, n1, m.acc)
	if m.bias != nil {
		bias := m.bias[n0:n1]
		for t := t0; t < t1; t++ {
			o := m.out[t*m.N+n0 : t*m.N+n1]
			for i, v := range bias {
				o[i] += v
			}
		}
	}
}

// matmulBF16 is MatMulForward's bf16 path (b.mu held, shapes checked): it
// reports false, doing nothing, when w does not take it.
func (b *Backend) matmulBF16(out, in []float32, w kernels.Weight, bias []float32, T int) bool {
	if !useBF16(w) || w.Cols == 0 { // C = 0: the fp32 path writes the bias
		return false
	}
	OC, C := w.Rows, w.Cols
	st := b.bf16()
	a, lda := b.roundActs(st, in, T, C)
	mb, n := gemmSplit(T, OC, len(b.pool.workers))
	st.mm = bf16Task{out: out, bias: bias, a: a, lda: lda, w: w, kind: bWeightT, M: T, K: C, N: OC, mb: mb, nt: (OC + gemmNC - 1) / gemmNC}
	b.pool.do(&st.mm, n)
	st.mm = bf16Task{}
	return true
}

// matmulBackBF16 is the din part of MatMulBackward on the bf16 path
// (din[t,c] += sum_o dout[t,o]*w[o,c]; b.mu held, shapes checked): it
// reports false, doing nothing, when w does not take it.
func (b *Backend) matmulBackBF16(din, dout []float32, w kernels.Weight, T int) bool {
	if !useBF16(w) {
		return false
	}
	OC, C := w.Rows, w.Cols
	st := b.bf16()
	a, lda := b.roundActs(st, dout, T, OC)
	mb, n := gemmSplit(T, C, len(b.pool.workers))
	st.mm = bf16Task{out: din, a: a, lda: lda, w: w, kind: bWeight, M: T, K: OC, N: C, mb: mb, nt: (C + gemmNC - 1) / gemmNC, acc: true}
	b.pool.do(&st.mm, n)
	st.mm = bf16Task{}
	return true
}
