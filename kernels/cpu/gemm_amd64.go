//go:build amd64 && !noasm

package cpu

import "github.com/tunellm/tune/kernels"

// Micro-kernels of gemm.go in assembly (gemm_amd64.s): AVX-512F (8 rows ×
// 32 columns in 16 ZMM accumulators) where the CPU and OS support it, else
// AVX2+FMA (6 rows × 16 columns, called twice per panel). Both compute every
// output as the same fma chain, so they agree bit for bit.

// gemm8x32AVX512 computes, for i < 8, j < 32:
//
//	s := 0; if load != 0 { s = c[i*ldc+j] }
//	for k := 0; k < n; k++ { s = fma(a[i*lda+k], b[k*32+j], s) }
//	c[i*ldc+j] = s
//
// n >= 1.
//
//go:noescape
func gemm8x32AVX512(a *float32, lda int, b, c *float32, ldc, n, load int)

// gemm1x64AVX512 computes, for p < 2, j < 32 (bs in floats):
//
//	s := 0; if load != 0 { s = c[p*32+j] }
//	for k := 0; k < n; k++ { s = fma(a[k], b[p*bs+k*32+j], s) }
//	c[p*32+j] = s
//
//go:noescape
func gemm1x64AVX512(a, b *float32, bs int, c *float32, n, load int)

// gemm6x16AVX2 computes, for i < 6, j < 16 (b's rows are 32 floats apart):
//
//	s := 0; if load != 0 { s = c[i*ldc+j] }
//	for k := 0; k < n; k++ { s = fma(a[i*lda+k], b[k*32+j], s) }
//	c[i*ldc+j] = s
//
//go:noescape
func gemm6x16AVX2(a *float32, lda int, b, c *float32, ldc, n, load int)

// gemm1x64AVX2 is gemm1x64AVX512 with YMM registers.
//
//go:noescape
func gemm1x64AVX2(a, b *float32, bs int, c *float32, n, load int)

const (
	isaGo = iota
	isaAVX2
	isaAVX512
)

// gemmISA selects the micro-kernels; tests switch it to compare them.
var gemmISA = func() int {
	if !useAVX2 {
		return isaGo
	}
	_, ebx7, _, _ := cpuid(7, 0)
	// AVX512F, and the OS saves opmask, ZMM0-15 upper halves and ZMM16-31.
	if ebx7&(1<<16) != 0 && xgetbv0()&0xe6 == 0xe6 {
		return isaAVX512
	}
	return isaAVX2
}()

func gemmMR() int {
	switch gemmISA {
	case isaAVX512:
		return 8
	case isaAVX2:
		return 6
	}
	return 4
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// gemmMicro: gemmMR() rows × gemmNR columns, as gemmMicroGo.
func gemmMicro(a []float32, lda int, b, c []float32, ldc, kc int, load bool) {
	mr := gemmMR()
	// The assembly does not bounds-check: make Go do it once here.
	_ = a[(mr-1)*lda+kc-1]
	_ = b[kc*gemmNR-1]
	_ = c[(mr-1)*ldc+gemmNR-1]
	switch gemmISA {
	case isaAVX512:
		gemm8x32AVX512(&a[0], lda, &b[0], &c[0], ldc, kc, b2i(load))
	case isaAVX2:
		gemm6x16AVX2(&a[0], lda, &b[0], &c[0], ldc, kc, b2i(load))
		gemm6x16AVX2(&a[0], lda, &b[16], &c[16], ldc, kc, b2i(load))
	default:
		gemmMicroGo(mr, a, lda, b, c, ldc, kc, load)
	}
}

// gemmRow: one row × 2 panels, as gemmRowGo.
func gemmRow(a, b []float32, bs int, c []float32, kc int, load bool) {
	_ = a[kc-1]
	_ = b[bs+kc*gemmNR-1]
	_ = c[2*gemmNR-1]
	switch gemmISA {
	case isaAVX512:
		gemm1x64AVX512(&a[0], &b[0], bs, &c[0], kc, b2i(load))
	case isaAVX2:
		gemm1x64AVX2(&a[0], &b[0], bs, &c[0], kc, b2i(load))
	default:
		gemmRowGo(a, b, bs, c, kc, load)
	}
}

// packT8AVX transposes an 8×n block of a weight (8 rows stride bytes apart,
// dtype dt: 0 bf16, 1 f16, 2 f32) into 8 columns of a panel, decoding to fp32:
//
//	for k < n { for i < 8 { dst[k*32+i] = decode(src + i*stride + k*size) } }
//
// n a positive multiple of 8.
//
//go:noescape
func packT8AVX(dst *float32, src *byte, stride, n, dt int)

// packT8 does the leading multiple of 8 of k for 8 columns with packT8AVX
// and returns how many k it did.
func packT8(dst []float32, src []byte, stride, kc int, dt kernels.DType) int {
	m := kc &^ 7
	if !useAVX2 || m == 0 {
		return 0
	}
	code := dtCode(dt)
	_ = dst[(m-1)*gemmNR+7]
	_ = src[7*stride+m*dt.Size()-1]
	packT8AVX(&dst[0], &src[0], stride, m, code)
	return m
}

// packRowsAVX decodes n rows of 32 elements (stride bytes apart, dtype dt as
// in packT8AVX) into a panel: dst[k*32+j] = decode(src + k*stride + j*size).
// n >= 1.
//
//go:noescape
func packRowsAVX(dst *float32, src *byte, stride, n, dt int)

func dtCode(dt kernels.DType) int {
	switch dt {
	case kernels.F16:
		return 1
	case kernels.F32:
		return 2
	}
	return 0
}

// packRows fills a whole panel (kc rows of gemmNR) with packRowsAVX and
// reports whether it did.
func packRows(dst []float32, src []byte, stride, kc int, dt kernels.DType) bool {
	if !useAVX2 || kc == 0 {
		return false
	}
	_ = dst[kc*gemmNR-1]
	_ = src[(kc-1)*stride+gemmNR*dt.Size()-1]
	packRowsAVX(&dst[0], &src[0], stride, kc, dtCode(dt))
	return true
}

// gemv32BF16AVX512 computes 32 outputs of a one-row matmul straight from a
// bf16 weight (row r at w + r*stride bytes), for r < 32:
//
//	s := 0; for k := 0; k < n; k++ { s = fma(a[k], w[r][k], s) }; out[r] = s
//
// the chain of gemm, so it equals the packed path bit for bit. It reads each
// weight row contiguously and transposes 8×16 tiles in registers instead of
// packing a panel. n a positive multiple of 16.
//
//go:noescape
func gemv32BF16AVX512(out, a *float32, w *byte, stride, n int)

// gemvBF16 computes out[r] = sum_k a[k]*W[r,k] for the rows of w (bf16,
// [rows, C]) in multiples of 32 with gemv32BF16AVX512 and returns how many
// rows it did (0 when the kernel does not apply).
func gemvBF16(out, a []float32, w []byte, rows, C int) int {
	if gemmISA != isaAVX512 || C == 0 || C%16 != 0 {
		return 0
	}
	r := rows &^ 31
	if r == 0 {
		return 0
	}
	_ = out[r-1]
	_ = a[C-1]
	_ = w[r*C*2-1]
	for i := 0; i < r; i += 32 {
		gemv32BF16AVX512(&out[i], &a[0], &w[i*C*2], C*2, C)
	}
	return r
}
