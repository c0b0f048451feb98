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
