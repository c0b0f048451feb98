package cpu

import "math"

// A float32 e^x for the softmax, attention and SiLU loops, where
// float32(math.Exp(float64(x))) was an eighth of a LoRA training step
// (math.Exp is scalar and float64). It is Cephes' expf: n = round(x/ln 2),
// r = x - n*ln 2 in two parts (C1 exact in 9 bits, so n*C1 is exact),
// e^r by a degree-6 polynomial, scaled by 2^n in two halves so that n in
// [-150, 128] needs no special case (gradual underflow rounds once, in the
// last multiply). Every operation is a separately rounded float32 operation
// (no fused multiply-add; the float32 conversions stop the Go compiler from
// fusing), so expAffineGo and the AVX2 kernel (exp_amd64.s) give the same
// bits, lane for lane. Error against the correctly rounded e^x: at most 2
// ulp over the normal range (TestExpf measures it), and the correctly
// rounded value's neighbourhood in the denormal range.
//
// x > 88.72283 (the largest float32 whose e^x is finite) gives +Inf, x <
// -104 gives 0, NaN stays NaN.

const (
	expHi    = 88.72283 // 0x42b17217
	expLo    = -104.0
	expLog2e = 1.44269504088896341
	expC1    = 0.693359375
	expC2    = -2.12194440e-4
	expP0    = 1.9875691500e-4
	expP1    = 1.3981999507e-3
	expP2    = 8.3334519073e-3
	expP3    = 4.1665795894e-2
	expP4    = 1.6666665459e-1
	expP5    = 5.0000001201e-1
)

// expf is e^x (see above).
func expf(x float32) float32 {
	switch {
	case x != x:
		return x
	case x > expHi:
		return float32(math.Inf(1))
	}
	c := max(x, expLo)
	n := float32(math.Floor(float64(float32(c*expLog2e) + 0.5)))
	r := c - float32(n*expC1)
	r = r - float32(n*expC2)
	z := float32(r * r)
	y := float32(expP0*r) + expP1
	y = float32(y*r) + expP2
	y = float32(y*r) + expP3
	y = float32(y*r) + expP4
	y = float32(y*r) + expP5
	y = float32(y*z) + r
	y = y + 1
	ni := int32(n)
	n1 := ni >> 1
	n2 := ni - n1
	y = float32(y * math.Float32frombits(uint32(n1+127)<<23))
	return float32(y * math.Float32frombits(uint32(n2+127)<<23))
}

// expAffineGo sets dst[i] = e^(float32(a*src[i]) + b).
func expAffineGo(dst, src []float32, a, b float32) {
	src = src[:len(dst)]
	for i, s := range src {
		dst[i] = expf(float32(a*s) + b)
	}
}
