package cpu

import (
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/qblock"
)

// Dot products of one quantized weight row with one 8-bit activation row
// (q8act.go), llama.cpp's vec_dot_<type>_q8_<0|K>. The integer part of each
// block is exact, so any SIMD order gives the same integers; the float32
// combine is fixed here and the assembly (qint8_amd64.s) does the very same
// operations in the same order, so both agree bit for bit:
//
//   - Q8_0 and Q4_0 (× Q8_0): for each 32-block b in order, s = the integer
//     dot product of the block, acc = acc + float32(s)*(dw*da) (each
//     operation rounded to float32, no FMA).
//   - Q4_K, Q5_K (× Q8_K), per 256-super-block: isum = Σj sc_j·(q·a over
//     sub-block j), imin = Σj m_j·(a's sum over sub-block j); acc = acc +
//     float32(isum)*(d*da), then acc = acc - float32(imin)*(dmin*da).
//   - Q6_K (× Q8_K): isum = Σs sc_s·(q·a over the 16-element sub-block s) -
//     32·Σs sc_s·bsums_s, acc = acc + float32(isum)*(d*da).
//
// The K-quant scales (6-bit scales and mins, Q6_K's int8 scales) are decoded
// once per weight row (kRow.prep, or kScales*AVX2) and reused for every
// activation row. On amd64 the kernels are: one weight row × 1 or 4
// activation rows (AVX2, or AVX-512 VNNI vpdpbusd for Q8_0/Q4_0), and for
// prompts with AVX-512 VNNI eight weight rows × four activation rows whose
// lanes are the rows (kDot8x4VNNI, q8Dot8x4VNNI). Every kernel computes each
// output's integers and float32 chain exactly as the Go functions below.
//
// NaN and infinite activations give garbage, as in llama.cpp, but the same
// garbage in Go and assembly (the block maximum ignores NaN).

// kRow is one weight row's decoded K-quant scales: per super-block 16 int16
// (Q4_K/Q5_K: 8 scales then 8 mins; Q6_K: the 16 scales). The halves d and
// dmin are read from the row where they are used.
type kRow struct {
	sc []int16 // [16*nsb]
	// For the assembly: mv[16i+s] weighs the activation's bsums[s] in the
	// min term (Q4_K/Q5_K: the min of sub-block s/2; Q6_K: 32*scale s), and
	// lev holds the row's levels unpacked to one byte each, in element order.
	mv  []int16 // [16*nsb]
	lev []byte  // [256*nsb]
}

func (k *kRow) prep(dt kernels.DType, row []byte, nsb int) {
	k.sc = growI16(&k.sc, 16*nsb)
	k.mv = growI16(&k.mv, 16*nsb)
	switch dt {
	case kernels.Q4_K, kernels.Q5_K:
		bb := qblock.Q4_KBytes
		if dt == kernels.Q5_K {
			bb = qblock.Q5_KBytes
		}
		for i := 0; i < nsb; i++ {
			b := row[i*bb:]
			s := k.sc[16*i : 16*i+16]
			mv := k.mv[16*i : 16*i+16]
			q := b[4:16:16]
			// qblock.ScaleMinK4, unrolled: j < 4 from the low 6 bits of
			// q[j], q[j+4]; j >= 4 from the nibbles of q[j+4] and the top
			// bits of q[j-4], q[j].
			for j := 0; j < 4; j++ {
				sc, m := int16(q[j]&63), int16(q[j+4]&63)
				s[j], s[8+j], mv[2*j], mv[2*j+1] = sc, m, m, m
				sc, m = int16(q[j+8]&0xF|(q[j]>>6)<<4), int16(q[j+8]>>4|(q[j+4]>>6)<<4)
				s[4+j], s[12+j], mv[8+2*j], mv[9+2*j] = sc, m, m, m
			}
		}
	case kernels.Q6_K:
		for i := 0; i < nsb; i++ {
			b := row[i*qblock.Q6_KBytes:]
			s := k.sc[16*i : 16*i+16]
			mv := k.mv[16*i : 16*i+16]
			for j := range s {
				s[j] = int16(int8(b[192+j]))
				mv[j] = 32 * s[j]
			}
		}
	}
}

// dotQ8_0Go: w is nb Q8_0 blocks, a/da the activation's nb blocks.
func dotQ8_0Go(w []byte, a []int8, da []float32) float32 {
	var acc float32
	for b := range da {
		blk := w[b*qblock.Q8_0Bytes : (b+1)*qblock.Q8_0Bytes]
		dd := qblock.F16(blk) * da[b]
		q := blk[2:34]
		x := a[32*b : 32*b+32]
		var s int32
		for i, v := range q {
			s += int32(int8(v)) * int32(x[i])
		}
		acc = float32(acc + float32(float32(s)*dd))
	}
	return acc
}

// dotQ4_0Go: as dotQ8_0Go with Q4_0 weights (q-8).
func dotQ4_0Go(w []byte, a []int8, da []float32) float32 {
	var acc float32
	for b := range da {
		blk := w[b*qblock.Q4_0Bytes : (b+1)*qblock.Q4_0Bytes]
		dd := qblock.F16(blk) * da[b]
		x := a[32*b : 32*b+32]
		var s int32
		for j := 0; j < 16; j++ {
			s += (int32(blk[2+j]&15) - 8) * int32(x[j])
			s += (int32(blk[2+j]>>4) - 8) * int32(x[16+j])
		}
		acc = float32(acc + float32(float32(s)*dd))
	}
	return acc
}

// kCombine adds one Q4_K/Q5_K super-block's integers to acc.
func kCombine(acc float32, isum, imin int32, d, dmin, da float32) float32 {
	dd, dm := float32(d*da), float32(dmin*da)
	acc = float32(acc + float32(float32(isum)*dd))
	return float32(acc - float32(float32(imin)*dm))
}

// dotQ4_KGo: w is nsb Q4_K super-blocks with decoded scales k.
func dotQ4_KGo(w []byte, k *kRow, a []int8, da []float32, bp []int16) float32 {
	var acc float32
	for i := range da {
		b := w[i*qblock.Q4_KBytes:]
		s := k.sc[16*i:]
		x := a[256*i:]
		var isum, imin int32
		for j := 0; j < 8; j++ {
			qs := b[16+32*(j/2):]
			sh := uint(4 * (j & 1))
			var dot int32
			for l := 0; l < 32; l++ {
				dot += int32(qs[l]>>sh&15) * int32(x[32*j+l])
			}
			isum += int32(s[j]) * dot
			imin += int32(s[8+j]) * int32(bp[8*i+j])
		}
		acc = kCombine(acc, isum, imin, qblock.F16(b), qblock.F16(b[2:]), da[i])
	}
	return acc
}

// dotQ5_KGo: as dotQ4_KGo with Q5_K's fifth bits.
func dotQ5_KGo(w []byte, k *kRow, a []int8, da []float32, bp []int16) float32 {
	var acc float32
	for i := range da {
		b := w[i*qblock.Q5_KBytes:]
		s := k.sc[16*i:]
		x := a[256*i:]
		qh := b[16:48]
		var isum, imin int32
		for j := 0; j < 8; j++ {
			qs := b[48+32*(j/2):]
			sh := uint(4 * (j & 1))
			var dot int32
			for l := 0; l < 32; l++ {
				q := int32(qs[l]>>sh&15) | int32(qh[l]>>uint(j)&1)<<4
				dot += q * int32(x[32*j+l])
			}
			isum += int32(s[j]) * dot
			imin += int32(s[8+j]) * int32(bp[8*i+j])
		}
		acc = kCombine(acc, isum, imin, qblock.F16(b), qblock.F16(b[2:]), da[i])
	}
	return acc
}

// q6Level is element e (< 256) of a Q6_K super-block b, 0..63.
func q6Level(b []byte, e int) int32 {
	h, e := e/128, e%128
	ql, qh := b[64*h:], b[128+32*h:]
	k, l := e/32, e%32
	switch k {
	case 0:
		return int32(ql[l]&15 | (qh[l]&3)<<4)
	case 1:
		return int32(ql[l+32]&15 | (qh[l]>>2&3)<<4)
	case 2:
		return int32(ql[l]>>4 | (qh[l]>>4&3)<<4)
	}
	return int32(ql[l+32]>>4 | (qh[l]>>6&3)<<4)
}

// dotQ6_KGo: w is nsb Q6_K super-blocks with decoded scales k.
func dotQ6_KGo(w []byte, k *kRow, a []int8, da []float32, bs []int16) float32 {
	var acc float32
	for i := range da {
		b := w[i*qblock.Q6_KBytes:]
		s := k.sc[16*i:]
		x := a[256*i:]
		var isum, ib int32
		for sb := 0; sb < 16; sb++ {
			var dot int32
			for e := 16 * sb; e < 16*sb+16; e++ {
				dot += q6Level(b, e) * int32(x[e])
			}
			isum += int32(s[sb]) * dot
			ib += int32(s[sb]) * int32(bs[16*i+sb])
		}
		isum -= 32 * ib
		acc = float32(acc + float32(float32(isum)*float32(qblock.F16(b[208:])*da[i])))
	}
	return acc
}
