//go:build amd64 && !noasm

package cpu

//go:noescape
func fmaLoopAVX512(n int)

//go:noescape
func fmaLoopAVX2(n int)

// fmaLoop runs n iterations of 12 independent FMAs with the widest vectors
// the GEMM uses and returns the fp32 FLOPs done (0 without FMA kernels).
func fmaLoop(n int) float64 {
	switch gemmISA {
	case isaAVX512:
		fmaLoopAVX512(n)
		return float64(n) * 12 * 16 * 2
	case isaAVX2:
		fmaLoopAVX2(n)
		return float64(n) * 12 * 8 * 2
	}
	return 0
}
