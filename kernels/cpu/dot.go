package cpu

// The dot kernels below all compute every output as ONE sequential sum
// s += x[i]*w[i] for i = 0..n-1. They differ only in how many outputs they
// interleave (to hide add latency and reuse loads), so an output's value is the
// same whichever kernel computes it. Do not split a sum into partial
// accumulators here: that would make results depend on T.

// dot1 = sum_i x[i]*w[i].
func dot1(x, w []float32) float32 {
	x = x[:len(w)]
	var s float32
	for i, v := range w {
		s += x[i] * v
	}
	return s
}

// dot1x4 returns x·w0, x·w1, x·w2, x·w3.
func dot1x4(x, w0, w1, w2, w3 []float32) (s0, s1, s2, s3 float32) {
	n := len(x)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	for i, v := range x {
		s0 += v * w0[i]
		s1 += v * w1[i]
		s2 += v * w2[i]
		s3 += v * w3[i]
	}
	return
}

// dot4x2 returns xj·wk for j=0..3, k=0..1 (sjk).
func dot4x2(x0, x1, x2, x3, w0, w1 []float32) (s00, s01, s10, s11, s20, s21, s30, s31 float32) {
	n := len(w0)
	w1 = w1[:n]
	x0, x1, x2, x3 = x0[:n], x1[:n], x2[:n], x3[:n]
	for i, a := range w0 {
		b := w1[i]
		v0, v1, v2, v3 := x0[i], x1[i], x2[i], x3[i]
		s00 += v0 * a
		s01 += v0 * b
		s10 += v1 * a
		s11 += v1 * b
		s20 += v2 * a
		s21 += v2 * b
		s30 += v3 * a
		s31 += v3 * b
	}
	return
}
