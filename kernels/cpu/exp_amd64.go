//go:build amd64 && !noasm

package cpu

//go:noescape
func expAffineAVX(dst, src *float32, a, b float32, n int)

// expAffine sets dst[i] = e^(float32(a*src[i]) + b) (exp.go), eight lanes
// at a time with AVX2, bit-identical to expAffineGo.
func expAffine(dst, src []float32, a, b float32) {
	src = src[:len(dst)]
	n := 0
	if useAVX2 {
		n = len(dst) &^ 7
		if n > 0 {
			expAffineAVX(&dst[0], &src[0], a, b, n)
		}
	}
	expAffineGo(dst[n:], src[n:], a, b)
}
