package cuda

import (
	"fmt"
	"testing"
)

// TestDeviceWindowerGPU is TestDeviceWindower on the GPU: the device
// windower's NLL sums (the device pass's Eval, real kernels and cuBLAS)
// against model.Model.WindowNLL on the CPU backend, every tiny model, with
// and without an adapter, windows of 1 to 12 tokens, in the backend's GEMM
// mode (TUNE_CUDA_GEMM).
func TestDeviceWindowerGPU(t *testing.T) {
	g := openOrSkip(t)
	for _, name := range tinyModels {
		for _, adapter := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/adapter=%v", name, adapter), func(t *testing.T) {
				worst := compareWindows(t, g, nil, name, adapter)
				report(fmt.Sprintf("deveval %-18s adapter=%-5v gemm %s: window NLL max rel err %.2e (tolerance %.0e)\n",
					name, adapter, gemmMode(g), worst, windowNLLTol(g.bf16)))
			})
		}
	}
}
