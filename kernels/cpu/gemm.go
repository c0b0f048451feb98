package cpu

import "github.com/tunellm/tune/kernels"

// The matmuls (forward, dX = dY·W, dW = dYᵀ·X) all run through gemm below, a
// packed GEMM in the BLIS style: a [kc, nc] block of B is decoded to fp32 once
// into the worker's buffer as panels of gemmNR columns ([k][gemmNR] each), and
// a register-blocked micro-kernel then computes gemmMR rows × gemmNR columns of
// the output per call, reusing every loaded B vector for gemmMR rows and every
// broadcast A element for gemmNR columns.
//
// Every output is ONE chain over k in ascending order, started from 0 (or
// from the output's current value when accumulating), with each step
// s = fma(a[k], b[k], s) in the assembly kernels. Blocking stores s exactly in
// fp32 between k blocks and every kernel (the row kernel for leftover rows
// included) does the same per output, so results depend neither on the block
// sizes, nor on T, nor on the worker count, nor on AVX2 versus AVX-512. The
// pure-Go kernels (-tags noasm, or a CPU without FMA) round the product and
// the sum separately and so differ in the last bits only.

const (
	gemmNR = 32  // columns per packed panel
	gemmKC = 256 // k rows per packed block: an A micro-panel (gemmMR×kc) stays in L1
	gemmNC = 128 // columns per tile: the packed block (kc×nc, 128 KiB) stays in L2
	gemmMB = 240 // rows per chunk when rows are split too: a multiple of every gemmMR
)

// B sources: where B[k, n] comes from.
const (
	bWeightT = iota // B[k,n] = W[n,k]: forward, W [OC,C] decoded
	bWeight         // B[k,n] = W[k,n]: din, W [OC,C] decoded
	bF32            // B[k,n] = f[k*ldb+n]: dw, the fp32 input
)

type gemmB struct {
	kind int
	w    kernels.Weight
	f    []float32
	ldb  int
}

// pack writes B[k0:k0+kc, n0:n0+nv] into dst as np panels of gemmNR columns
// (panel p at dst[p*kc*gemmNR:], row k at +k*gemmNR) and zeroes the padding
// columns nv..np*gemmNR.
func (g *gemmB) pack(wk *worker, dst []float32, k0, kc, n0, nv, np int) {
	const nr = gemmNR
	pb := kc * nr
	switch g.kind {
	case bWeightT:
		if g.w.DType.Quantized() {
			packQuantT(wk, g.w, dst, k0, kc, n0, nv)
			break
		}
		es := g.w.DType.Size()
		C := g.w.Cols
		row := grow(&wk.row, kc)
		n := 0
		for ; n+8 <= nv; n += 8 {
			src := g.w.Data[((n0+n)*C+k0)*es:]
			d := dst[(n/nr)*pb+n%nr:]
			m := packT8(d, src, C*es, kc, g.w.DType)
			if m == kc {
				continue
			}
			for j := 0; j < 8; j++ {
				convertRow(row[:kc-m], src[(j*C+m)*es:], g.w.DType)
				scatterCol(d[m*nr+j:], row[:kc-m])
			}
		}
		for ; n < nv; n++ {
			convertRow(row, g.w.Data[((n0+n)*C+k0)*es:], g.w.DType)
			scatterCol(dst[(n/nr)*pb+n%nr:], row)
		}
	case bWeight:
		if g.w.DType.Quantized() {
			packQuant(wk, g.w, dst, k0, kc, n0, nv) // qback.go
			break
		}
		es := g.w.DType.Size()
		C := g.w.Cols
		for p := 0; p*nr < nv; p++ {
			cols := min(nr, nv-p*nr)
			d := dst[p*pb:]
			if cols == nr && packRows(d, g.w.Data[(k0*C+n0+p*nr)*es:], C*es, kc, g.w.DType) {
				continue
			}
			for k := 0; k < kc; k++ {
				convertRow(d[k*nr:k*nr+cols], g.w.Data[((k0+k)*C+n0+p*nr)*es:], g.w.DType)
			}
		}
	case bF32:
		for p := 0; p*nr < nv; p++ {
			cols := min(nr, nv-p*nr)
			d := dst[p*pb:]
			for k := 0; k < kc; k++ {
				o := (k0+k)*g.ldb + n0 + p*nr
				copy(d[k*nr:k*nr+cols], g.f[o:o+cols])
			}
		}
	}
	if nv < np*nr { // zero padding: partial last panel, then whole padding panels
		p := nv / nr
		if j := nv % nr; j > 0 {
			d := dst[p*pb : (p+1)*pb]
			for k := 0; k < kc; k++ {
				clear(d[k*nr+j : (k+1)*nr])
			}
			p++
		}
		clear(dst[p*pb : np*pb])
	}
}

// scatterCol: dst[k*gemmNR] = col[k], one column of a panel.
func scatterCol(dst, col []float32) {
	if len(col) == 0 {
		return
	}
	dst = dst[:(len(col)-1)*gemmNR+1]
	for k, v := range col {
		dst[k*gemmNR] = v
	}
}

// gemm computes, for t < M and n0 <= n < n1,
//
//	out[t*ldo+n] = (acc ? out[t*ldo+n] : 0) + sum_{k<K} a[t*lda+k]*B[k,n]
//
// each output one fma chain over k ascending (see the top of this file).
func gemm(wk *worker, out []float32, ldo int, a []float32, lda, M, K int, b *gemmB, n0, n1 int, acc bool) {
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
	mr := gemmMR()
	if M < mr && nv > 2*nr {
		for s := n0; s < n1; s += 2 * nr {
			gemm(wk, out, ldo, a, lda, M, K, b, s, min(s+2*nr, n1), acc)
		}
		return
	}
	KC := gemmKC
	if M < mr {
		// Too few rows to reuse a block much: longer weight-row runs stream
		// from memory better, and the row kernel's B panels stay in L2.
		KC = 4 * gemmKC
	}
	for k0 := 0; k0 < K; k0 += KC {
		kc := min(KC, K-k0)
		pb := kc * nr
		buf := wk.tile(np * pb)
		b.pack(wk, buf, k0, kc, n0, nv, np)
		load := acc || k0 > 0
		t := 0
		for ; t+mr <= M; t += mr {
			ar := a[t*lda+k0:]
			for p := 0; p*nr < nv; p++ {
				cols := min(nr, nv-p*nr)
				bp := buf[p*pb : (p+1)*pb]
				o := t*ldo + n0 + p*nr
				if cols == nr {
					gemmMicro(ar, lda, bp, out[o:], ldo, kc, load)
					continue
				}
				sc := grow(&wk.cs, mr*nr)
				if load {
					for i := 0; i < mr; i++ {
						copy(sc[i*nr:i*nr+cols], out[o+i*ldo:o+i*ldo+cols])
					}
				}
				gemmMicro(ar, lda, bp, sc, nr, kc, load)
				for i := 0; i < mr; i++ {
					copy(out[o+i*ldo:o+i*ldo+cols], sc[i*nr:i*nr+cols])
				}
			}
		}
		for ; t < M; t++ {
			ar := a[t*lda+k0 : t*lda+k0+kc]
			for p := 0; p*nr < nv; p += 2 {
				cols := min(2*nr, nv-p*nr)
				bp := buf[p*pb : (p+2)*pb]
				o := t*ldo + n0 + p*nr
				if cols == 2*nr {
					gemmRow(ar, bp, pb, out[o:o+2*nr], kc, load)
					continue
				}
				sc := grow(&wk.cs, max(mr*nr, 2*nr))[:2*nr]
				if load {
					copy(sc[:cols], out[o:o+cols])
				}
				gemmRow(ar, bp, pb, sc, kc, load)
				copy(out[o:o+cols], sc[:cols])
			}
		}
	}
}

// gemmSplit picks the chunking of an [M, N] output: column tiles of gemmNC,
// and row blocks of gemmMB when there are too few tiles to keep every worker
// busy. Results do not depend on it (see the top of this file); it only
// trades parallelism against decoding a B block once per row block.
func gemmSplit(M, N, workers int) (mb, nChunks int) {
	nt := (N + gemmNC - 1) / gemmNC
	mblocks := 1
	if workers > 1 && nt < 4*workers {
		mblocks = min((4*workers+nt-1)/nt, (M+gemmMB-1)/gemmMB)
	}
	mb = (M + mblocks - 1) / mblocks
	mb = (mb + gemmMB - 1) / gemmMB * gemmMB
	if mb >= M {
		mb = M
	}
	return max(mb, 1), nt * ((M + max(mb, 1) - 1) / max(mb, 1))
}

// gemmMicroGo is the portable micro-kernel: mr rows × gemmNR columns,
//
//	c[i*ldc+j] = (load ? c[i*ldc+j] : 0) + sum_{k<kc} a[i*lda+k]*b[k*gemmNR+j]
func gemmMicroGo(mr int, a []float32, lda int, b, c []float32, ldc, kc int, load bool) {
	const nr = gemmNR
	b = b[:kc*nr]
	for i := 0; i < mr; i++ {
		ar := a[i*lda : i*lda+kc]
		cr := c[i*ldc : i*ldc+nr]
		for j := 0; j < nr; j += 4 {
			var s0, s1, s2, s3 float32
			if load {
				s0, s1, s2, s3 = cr[j], cr[j+1], cr[j+2], cr[j+3]
			}
			for k, v := range ar {
				bk := b[k*nr+j : k*nr+j+4]
				s0 += v * bk[0]
				s1 += v * bk[1]
				s2 += v * bk[2]
				s3 += v * bk[3]
			}
			cr[j], cr[j+1], cr[j+2], cr[j+3] = s0, s1, s2, s3
		}
	}
}

// gemmRowGo is the portable row kernel: one row × 2 panels (2*gemmNR columns),
// panel 1 at b[bs:],
//
//	c[p*gemmNR+j] = (load ? c[..] : 0) + sum_{k<kc} a[k]*b[p*bs+k*gemmNR+j]
func gemmRowGo(a, b []float32, bs int, c []float32, kc int, load bool) {
	const nr = gemmNR
	a = a[:kc]
	for p := 0; p < 2; p++ {
		bp := b[p*bs : p*bs+kc*nr]
		cp := c[p*nr : p*nr+nr]
		for j := 0; j < nr; j += 4 {
			var s0, s1, s2, s3 float32
			if load {
				s0, s1, s2, s3 = cp[j], cp[j+1], cp[j+2], cp[j+3]
			}
			for k, v := range a {
				bk := bp[k*nr+j : k*nr+j+4]
				s0 += v * bk[0]
				s1 += v * bk[1]
				s2 += v * bk[2]
				s3 += v * bk[3]
			}
			cp[j], cp[j+1], cp[j+2], cp[j+3] = s0, s1, s2, s3
		}
	}
}
