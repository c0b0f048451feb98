//go:build !amd64 || noasm

package cpu

// Without assembly, attention uses the pure-Go dot products of dot.go.

const useAVX2 = false

func mmDot1x4(x, w0, w1, w2, w3 []float32) (s0, s1, s2, s3 float32) {
	return dot1x4(x, w0, w1, w2, w3)
}

func mmDot1(x, w []float32) float32 { return dot1(x, w) }

func convertFast(dst []float32, src []byte, bf16 bool) int { return 0 }

// axpy: dst[i] += a*x[i].
func axpy(dst, x []float32, a float32) {
	x = x[:len(dst)]
	for i := range dst {
		dst[i] += a * x[i]
	}
}
