//go:build !amd64 || noasm

package cpu

import "github.com/tunellm/tune/kernels"

const (
	isaGo = iota
	isaAVX2
	isaAVX512
)

// Without assembly only the portable kernels exist.
const gemmISA = isaGo

func gemmMR() int { return 4 }

func gemmMicro(a []float32, lda int, b, c []float32, ldc, kc int, load bool) {
	gemmMicroGo(4, a, lda, b, c, ldc, kc, load)
}

func gemmRow(a, b []float32, bs int, c []float32, kc int, load bool) {
	gemmRowGo(a, b, bs, c, kc, load)
}

func packT8(dst []float32, src []byte, stride, kc int, dt kernels.DType) int { return 0 }

func packRows(dst []float32, src []byte, stride, kc int, dt kernels.DType) bool { return false }

func gemvBF16(out, a []float32, w []byte, rows, C int) int { return 0 }
