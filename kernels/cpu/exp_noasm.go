//go:build !amd64 || noasm

package cpu

// expAffine sets dst[i] = e^(float32(a*src[i]) + b) (exp.go).
func expAffine(dst, src []float32, a, b float32) { expAffineGo(dst, src, a, b) }
