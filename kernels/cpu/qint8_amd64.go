//go:build amd64 && !noasm

package cpu

import (
	"encoding/binary"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/qblock"
)

// Assembly of qint8.go's dots (qint8_amd64.s), AVX2.

//go:noescape
func q8Dot4AVX2(w *byte, nb int, a *byte, stride, dOff int, out *float32)

//go:noescape
func q4Dot4AVX2(w *byte, nb int, a *byte, stride, dOff int, out *float32)

//go:noescape
func q8Dot4VNNI(w *byte, nb int, a *byte, stride, dOff int, out *float32)

//go:noescape
func q4Dot4VNNI(w *byte, nb int, a *byte, stride, dOff int, out *float32)

//go:noescape
func q8Dot1AVX2(w *byte, nb int, a *byte, dOff int, out *float32)

//go:noescape
func q4Dot1AVX2(w *byte, nb int, a *byte, dOff int, out *float32)

//go:noescape
func q8Dot1VNNI(w *byte, nb int, a *byte, dOff int, out *float32)

//go:noescape
func q4Dot1VNNI(w *byte, nb int, a *byte, dOff int, out *float32)

//go:noescape
func kDot4AVX2(lev *byte, nsb int, sc, mv *int16, w *byte, wstep int, a *byte, stride, dOff, bsOff int, out *float32, six int)

//go:noescape
func kDot1AVX2(lev *byte, nsb int, sc, mv *int16, w *byte, wstep int, a *byte, dOff, bsOff int, out *float32, six int)

//go:noescape
func unpackQ4KAVX2(dst, src *byte, nsb int)

//go:noescape
func unpackQ5KAVX2(dst, src *byte, nsb int)

//go:noescape
func unpackQ6KAVX2(dst, src *byte, nsb int)

//go:noescape
func kScalesQ4KAVX2(src *byte, bstep, nsb int, sc, mv *int16)

//go:noescape
func kScalesQ6KAVX2(src *byte, bstep, nsb int, sc, mv *int16)

//go:noescape
func quantQ8_0AVX2(qs *int8, d *float32, n128, n8 *int32, x *float32, nb int)

//go:noescape
func quantQ8_KAVX2(qs *int8, d *float32, bs, bp *int16, x *float32, nsb int)

// quantRowFast quantizes activation row t of m with the assembly, or
// reports false.
func (m *qmmTask) quantRowFast(t int) bool {
	if !qint8ASM {
		return false
	}
	C, a := m.C, m.act
	x := m.in[t*C : (t+1)*C]
	if m.kq {
		quantQ8_KAVX2(&a.qs(t)[0], &a.d(t)[0], &a.bs(t)[0], &a.bp(t)[0], &x[0], C/qblock.QK_K)
		return true
	}
	quantQ8_0AVX2(&a.qs(t)[0], &a.d(t)[0], &a.n128(t)[0], &a.n8(t)[0], &x[0], C/32)
	return true
}

// prepFast is kRow.prep in assembly.
func (k *kRow) prepFast(dt kernels.DType, row []byte, nsb int) {
	k.sc = growI16(&k.sc, 16*nsb)
	k.mv = growI16(&k.mv, 16*nsb)
	bb := len(row) / nsb
	_ = row[nsb*bb-1]
	if dt == kernels.Q6_K {
		kScalesQ6KAVX2(&row[0], bb, nsb, &k.sc[0], &k.mv[0])
		return
	}
	kScalesQ4KAVX2(&row[0], bb, nsb, &k.sc[0], &k.mv[0])
}

// qint8ASM selects the assembly dots; tests clear it to compare.
var qint8ASM = useAVX2

// qint8VNNI: AVX-512 VNNI and VL (EVEX vpdpbusd on YMM) with OS support
// for the AVX-512 state; tests clear it to compare with the AVX2 kernels.
var qint8VNNI = func() bool {
	if !useAVX2 {
		return false
	}
	_, ebx7, ecx7, _ := cpuid(7, 0)
	return ebx7&(1<<31) != 0 && ecx7&(1<<11) != 0 && xgetbv0()&0xe6 == 0xe6
}()

// qdotRows: dst[i] = the dot product of the weight row with activation row
// t0+i (qint8.go).
func qdotRows(dt kernels.DType, row []byte, kr *kRow, a *q8Rows, C, t0 int, dst []float32) {
	n := len(dst)
	if !qint8ASM || n == 0 {
		qdotRowsGo(dt, row, kr, a, C, t0, dst)
		return
	}
	_ = row[len(row)-1] // the whole row (the caller slices it)
	_ = a.buf[(t0+n)*a.stride-1]
	a0 := a.buf[t0*a.stride:]
	switch dt {
	case kernels.Q8_0, kernels.Q4_0:
		nb := C / 32
		dot4, dot1 := q8Dot4AVX2, q8Dot1AVX2
		switch {
		case dt == kernels.Q4_0 && qint8VNNI:
			dot4, dot1 = q4Dot4VNNI, q4Dot1VNNI
		case dt == kernels.Q4_0:
			dot4, dot1 = q4Dot4AVX2, q4Dot1AVX2
		case qint8VNNI:
			dot4, dot1 = q8Dot4VNNI, q8Dot1VNNI
		}
		i := 0
		for ; i+4 <= n; i += 4 {
			dot4(&row[0], nb, &a0[i*a.stride], a.stride, a.dOff, &dst[i])
		}
		for ; i < n; i++ {
			dot1(&row[0], nb, &a0[i*a.stride], a.dOff, &dst[i])
		}
		return
	}
	nsb := C / qblock.QK_K
	kr.prepFast(dt, row, nsb)
	if cap(kr.lev) < C {
		kr.lev = make([]byte, C)
	}
	lev := kr.lev[:C]
	six := 0
	switch dt {
	case kernels.Q4_K:
		unpackQ4KAVX2(&lev[0], &row[0], nsb)
	case kernels.Q5_K:
		unpackQ5KAVX2(&lev[0], &row[0], nsb)
	case kernels.Q6_K:
		unpackQ6KAVX2(&lev[0], &row[0], nsb)
		six = 1
	}
	i := 0
	for ; i+4 <= n; i += 4 {
		kDot4AVX2(&lev[0], nsb, &kr.sc[0], &kr.mv[0], &row[0], len(row)/nsb, &a0[i*a.stride], a.stride, a.dOff, a.bsOff, &dst[i], six)
	}
	for ; i < n; i++ {
		kDot1AVX2(&lev[0], nsb, &kr.sc[0], &kr.mv[0], &row[0], len(row)/nsb, &a0[i*a.stride], a.dOff, a.bsOff, &dst[i], six)
	}
}

//go:noescape
func kDot8x4VNNI(ilev *byte, nsb int, scv, mnv *int32, dv, dmv *float32, a *byte, stride, dOff, pOff, npairs int, out *float32, six int)

//go:noescape
func interleave8AVX2(dst, src *byte, C int)

//go:noescape
func q8Dot8x4VNNI(ilev *byte, nb int, dv *float32, a *byte, stride, dOff, nOff int, out *float32)

// prep8Q8 fills g.ilev and g.dv from 8 Q8_0 or Q4_0 rows: the levels made
// unsigned (w+128, resp. q = w+8), interleaved in 4-byte chunks.
func (g *k8Group) prep8Q8(dt kernels.DType, rows *[8][]byte, nb int) {
	C := 32 * nb
	if cap(g.ilev) < 8*C {
		g.ilev = make([]byte, 8*C)
	}
	g.ilev = g.ilev[:8*C]
	if cap(g.lev8) < 8*C {
		g.lev8 = make([]byte, 8*C)
	}
	g.lev8 = g.lev8[:8*C]
	g.dv = grow(&g.dv, nb*8)
	for r := 0; r < 8; r++ {
		row := rows[r]
		lev := g.lev8[r*C : (r+1)*C]
		if dt == kernels.Q8_0 {
			_ = row[nb*qblock.Q8_0Bytes-1]
			for b := 0; b < nb; b++ {
				blk := row[b*qblock.Q8_0Bytes : (b+1)*qblock.Q8_0Bytes]
				g.dv[8*b+r] = qblock.F16(blk)
				o := lev[32*b : 32*b+32]
				for k := 0; k < 4; k++ {
					binary.LittleEndian.PutUint64(o[8*k:], binary.LittleEndian.Uint64(blk[2+8*k:])^0x8080808080808080)
				}
			}
			continue
		}
		_ = row[nb*qblock.Q4_0Bytes-1]
		for b := 0; b < nb; b++ {
			blk := row[b*qblock.Q4_0Bytes : (b+1)*qblock.Q4_0Bytes]
			g.dv[8*b+r] = qblock.F16(blk)
			o := lev[32*b : 32*b+32]
			for k := 0; k < 2; k++ {
				v := binary.LittleEndian.Uint64(blk[2+8*k:])
				binary.LittleEndian.PutUint64(o[8*k:], v&0x0F0F0F0F0F0F0F0F)
				binary.LittleEndian.PutUint64(o[16+8*k:], v>>4&0x0F0F0F0F0F0F0F0F)
			}
		}
	}
	interleave8AVX2(&g.ilev[0], &g.lev8[0], C)
}

// k8Group is eight K-quant weight rows prepared for kDot8x4VNNI.
type k8Group struct {
	lev8    []byte    // [8][C] the rows' levels
	ilev    []byte    // [nsb*64 chunks][8 rows][4 levels]
	scv     []int32   // [nsb*16 units][8]: the scale of each row's 16-element unit
	mnv     []int32   // [nsb*npairs][8]: two int16 min weights per row
	dv, dmv []float32 // [nsb][8]: d, dmin
	out     [32]float32
}

// prep8 fills g from the 8 rows rows[r] (levels unpacked through kr.lev).
func (g *k8Group) prep8(dt kernels.DType, rows *[8][]byte, kr *kRow, nsb int) (npairs int) {
	C := nsb * qblock.QK_K
	npairs = 4
	if dt == kernels.Q6_K {
		npairs = 8
	}
	if cap(g.ilev) < 8*C {
		g.ilev = make([]byte, 8*C)
	}
	g.ilev = g.ilev[:8*C]
	g.scv = growI32(&g.scv, nsb*16*8)
	g.mnv = growI32(&g.mnv, nsb*npairs*8)
	g.dv = grow(&g.dv, nsb*8)
	g.dmv = grow(&g.dmv, nsb*8)
	if cap(g.lev8) < 8*C {
		g.lev8 = make([]byte, 8*C)
	}
	g.lev8 = g.lev8[:8*C]
	for r := 0; r < 8; r++ {
		copy(g.lev8[r*C:(r+1)*C], kr.unpack(dt, rows[r], nsb))
		bb := len(rows[r]) / nsb
		for i := 0; i < nsb; i++ {
			b := rows[r][i*bb:]
			if npairs == 8 {
				g.dv[8*i+r] = qblock.F16(b[208:])
			} else {
				g.dv[8*i+r], g.dmv[8*i+r] = qblock.F16(b), qblock.F16(b[2:])
			}
			sc := kr.sc[16*i : 16*i+16]
			for u := 0; u < 16; u++ {
				s := sc[u]
				if npairs == 4 {
					s = sc[u/2]
				}
				g.scv[(16*i+u)*8+r] = int32(s)
			}
			for p := 0; p < npairs; p++ {
				var lo, hi int16
				if npairs == 4 {
					lo, hi = sc[8+2*p], sc[8+2*p+1]
				} else {
					lo, hi = 32*sc[2*p], 32*sc[2*p+1]
				}
				g.mnv[(npairs*i+p)*8+r] = int32(uint32(uint16(lo)) | uint32(uint16(hi))<<16)
			}
		}
	}
	interleave8AVX2(&g.ilev[0], &g.lev8[0], C)
	return npairs
}

func growI32(b *[]int32, n int) []int32 {
	if cap(*b) < n {
		*b = make([]int32, n)
	}
	return (*b)[:n]
}

// unpack decodes the row's scales into k and its levels into k.lev.
func (k *kRow) unpack(dt kernels.DType, row []byte, nsb int) []byte {
	C := nsb * qblock.QK_K
	k.prepFast(dt, row, nsb)
	if cap(k.lev) < C {
		k.lev = make([]byte, C)
	}
	lev := k.lev[:C]
	_ = row[len(row)-1]
	switch dt {
	case kernels.Q4_K:
		unpackQ4KAVX2(&lev[0], &row[0], nsb)
	case kernels.Q5_K:
		unpackQ5KAVX2(&lev[0], &row[0], nsb)
	case kernels.Q6_K:
		unpackQ6KAVX2(&lev[0], &row[0], nsb)
	}
	return lev
}

// qdotChunk computes out[t, r] (+ bias) for weight rows [r0, r1) and
// activation rows [t0, t1): K-quants eight rows × four activation rows at a
// time with kDot8x4VNNI where the CPU has it, everything else row by row.
func (m *qmmTask) qdotChunk(wk *worker, r0, r1, t0, t1 int) {
	dt := m.w.DType
	rb := m.rb
	r := r0
	if qint8ASM && qint8VNNI && !actKind(dt) && t1-t0 >= 4 {
		nb := m.C / 32
		g := &wk.k8
		a := m.act
		nOff := a.n128Off
		if dt == kernels.Q4_0 {
			nOff = a.n8Off
		}
		var rows [8][]byte
		for ; r+8 <= r1; r += 8 {
			for j := range rows {
				rows[j] = m.w.Data[(r+j)*rb : (r+j+1)*rb]
			}
			g.prep8Q8(dt, &rows, nb)
			t := t0
			for ; t+4 <= t1; t += 4 {
				_ = a.buf[(t+4)*a.stride-1]
				q8Dot8x4VNNI(&g.ilev[0], nb, &g.dv[0], &a.buf[t*a.stride], a.stride, a.dOff, nOff, &g.out[0])
				for tt := 0; tt < 4; tt++ {
					m.store(t+tt, r, g.out[8*tt:8*tt+8])
				}
			}
			if t < t1 {
				dst := grow(&wk.qd, t1-t)
				for j := 0; j < 8; j++ {
					qdotRows(dt, rows[j], &wk.kr, a, m.C, t, dst)
					for i, v := range dst {
						m.store(t+i, r+j, []float32{v})
					}
				}
			}
		}
	}
	if qint8ASM && qint8VNNI && actKind(dt) && t1-t0 >= 4 {
		nsb := m.C / qblock.QK_K
		g := &wk.k8
		a := m.act
		pOff := a.bpOff
		if dt == kernels.Q6_K {
			pOff = a.bsOff
		}
		six := 0
		if dt == kernels.Q6_K {
			six = 1
		}
		var rows [8][]byte
		for ; r+8 <= r1; r += 8 {
			for j := range rows {
				rows[j] = m.w.Data[(r+j)*rb : (r+j+1)*rb]
			}
			npairs := g.prep8(dt, &rows, &wk.kr, nsb)
			t := t0
			for ; t+4 <= t1; t += 4 {
				_ = a.buf[(t+4)*a.stride-1]
				kDot8x4VNNI(&g.ilev[0], nsb, &g.scv[0], &g.mnv[0], &g.dv[0], &g.dmv[0], &a.buf[t*a.stride], a.stride, a.dOff, pOff, npairs, &g.out[0], six)
				for tt := 0; tt < 4; tt++ {
					m.store(t+tt, r, g.out[8*tt:8*tt+8])
				}
			}
			if t < t1 {
				dst := grow(&wk.qd, t1-t)
				for j := 0; j < 8; j++ {
					qdotRows(dt, rows[j], &wk.kr, a, m.C, t, dst)
					for i, v := range dst {
						m.store(t+i, r+j, []float32{v})
					}
				}
			}
		}
	}
	m.rowsChunk(wk, r, r1, t0, t1)
}

// useAVX2Default is qint8ASM's initial value (tests restore it).
var useAVX2Default = useAVX2
