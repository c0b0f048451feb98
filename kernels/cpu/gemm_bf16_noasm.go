//go:build !amd64 || noasm

package cpu

// Without assembly there is no bf16-compute kernel: the mode falls back to
// fp32 (gemm_bf16.go), and the pure-Go reference serves the tests.
const hasBF16 = false

var bf16UseAsm = false

func gemmBF16Micro(a []uint32, lda int, b []uint32, c []float32, ldc, kp int, load bool) {
	gemmBF16MicroGo(a, lda, b, c, ldc, kp, load)
}

func gemmBF16Row(a, b []uint32, bs int, c []float32, kp int, load bool) {
	gemmBF16RowGo(a, b, bs, c, kp, load)
}

func roundRowBF16(dst []uint16, src []float32) {
	for i, v := range src {
		dst[i] = roundBF16(v)
	}
}

func packPairs(dst []uint32, pstride int, r0, r1 []byte, np int) bool { return false }

func packT16(dst []uint32, src []byte, stride, nq int) int { return 0 }
