//go:build amd64 && !noasm

package cpu

import "unsafe"

// The AVX2/FMA kernels (dot_amd64.s) keep 8 lanes per output: lane j sums
// x[i]*w[i] for i ≡ j (mod 8) with FMA, the lanes are reduced in one fixed
// order (HSUM), and the n%8 tail is added here in Go. Every kernel does
// exactly this per output, so results still do not depend on which kernel ran
// (i.e. on T) or on the worker count. They differ from the pure-Go order
// (-tags noasm) in the last bits only.

// dot1x4AVX computes out[k] = sum_i x[i]*wk[i] for k = 0..3, n a multiple of 8.
//
//go:noescape
func dot1x4AVX(x, w0, w1, w2, w3 *float32, n int, out *[4]float32)

// bf16ToF32AVX: dst[i] = float32frombits(uint32(src16[i]) << 16) for i < n&^7.
//
//go:noescape
func bf16ToF32AVX(dst *float32, src *byte, n int)

// f16ToF32AVX: dst[i] = half src16[i] widened (VCVTPH2PS) for i < n&^7.
//
//go:noescape
func f16ToF32AVX(dst *float32, src *byte, n int)

func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
func xgetbv0() (eax uint32)

// useAVX2 reports AVX2, FMA and F16C with OS support for YMM state.
var useAVX2 = func() bool {
	maxLeaf, _, _, _ := cpuid(0, 0)
	if maxLeaf < 7 {
		return false
	}
	_, _, ecx1, _ := cpuid(1, 0)
	const fma, osxsave, f16c = 1 << 12, 1 << 27, 1 << 29
	if ecx1&(fma|osxsave|f16c) != fma|osxsave|f16c {
		return false
	}
	if xgetbv0()&6 != 6 { // XMM and YMM state enabled
		return false
	}
	_, ebx7, _, _ := cpuid(7, 0)
	return ebx7&(1<<5) != 0
}()

func mmDot1x4(x, w0, w1, w2, w3 []float32) (s0, s1, s2, s3 float32) {
	if !useAVX2 {
		return dot1x4(x, w0, w1, w2, w3)
	}
	n := len(x)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	m := n &^ 7
	var o [4]float32
	if m > 0 {
		dot1x4AVX(&x[0], &w0[0], &w1[0], &w2[0], &w3[0], m, &o)
	}
	for i := m; i < n; i++ {
		v := x[i]
		o[0] += v * w0[i]
		o[1] += v * w1[i]
		o[2] += v * w2[i]
		o[3] += v * w3[i]
	}
	return o[0], o[1], o[2], o[3]
}

// mmDot1 is one output computed exactly as one lane of mmDot1x4.
func mmDot1(x, w []float32) float32 {
	if !useAVX2 {
		return dot1(x, w)
	}
	s, _, _, _ := mmDot1x4(x, w, w, w, w)
	return s
}

// convertFast decodes the leading multiple of 8 elements with AVX2 and
// returns how many it did.
func convertFast(dst []float32, src []byte, bf16 bool) int {
	m := len(dst) &^ 7
	if !useAVX2 || m == 0 || len(src) < 2*m {
		return 0
	}
	if bf16 {
		bf16ToF32AVX(&dst[0], unsafe.SliceData(src), m)
	} else {
		f16ToF32AVX(&dst[0], unsafe.SliceData(src), m)
	}
	return m
}

// axpyAVX: dst[i] = fma(a, x[i], dst[i]) for i < n&^7.
//
//go:noescape
func axpyAVX(dst, x *float32, a float32, n int)

// axpy: dst[i] += a*x[i].
func axpy(dst, x []float32, a float32) {
	x = x[:len(dst)]
	i := 0
	if useAVX2 && len(dst) >= 8 {
		axpyAVX(&dst[0], &x[0], a, len(dst))
		i = len(dst) &^ 7
	}
	for ; i < len(dst); i++ {
		dst[i] += a * x[i]
	}
}
