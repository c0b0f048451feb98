package cuda

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// bf16Peaks are dense (no 2:4 sparsity) bf16 tensor-core peaks with fp32
// accumulation, in TFLOP/s, from NVIDIA's datasheets (which quote the
// sparse figure, twice these):
//
//	H100 SXM / H200 SXM / GH200: 989 (H100 datasheet "BF16 Tensor Core 1,979
//	  teraFLOPS*", *with sparsity; H200 datasheet the same figure). Measured
//	  on the H200 lent to this project: an 8192³ bf16 GEMM through PyTorch
//	  runs at ~790 (docs/GPU.md), the practical ceiling.
//	H100 NVL / H200 NVL: 835; H100 PCIe: 756
//	A100 (SXM and PCIe) / A800: 312 (A100 datasheet "BF16 Tensor Core 312 | 624*")
//	A30: 165; A10: 125; A40: 149.7; L4: 121 (L4 datasheet "242*")
//	L40: 181; L40S: 362 (L40S datasheet "733*")
//	RTX 4090: 165.2 (Ada whitepaper, appendix: "Peak BF16 Tensor TFLOPS
//	  with FP32 Accumulate 165.2/330.4")
//	B200: 2250 (B200 datasheet "4.5 PFLOPS*" for the HGX B200 per GPU)
//
// Names are matched as substrings of the driver's device name, in order
// (the first match wins, so "H100 NVL" precedes "H100").
var bf16Peaks = []struct {
	name   string
	tflops float64
}{
	{"H200 NVL", 835}, {"H200", 989}, {"GH200", 989},
	{"H100 NVL", 835}, {"H100 PCIe", 756}, {"H100", 989}, {"H800", 989},
	{"A100", 312}, {"A800", 312}, {"A30", 165}, {"A40", 149.7}, {"A10", 125},
	{"L40S", 362}, {"L40", 181}, {"L4", 121},
	{"RTX 4090", 165.2},
	{"B200", 2250},
}

// bf16PerSMClock is the dense bf16 FLOPs one SM does per clock by compute
// capability, for devices the table does not name: peak = SMs × clock ×
// this. 8.0 (A100: 108 SMs × 1.41 GHz × 2048 = 312 T), 8.6/8.9 data-center
// parts (A10: 72 × 1.695 GHz × 1024 = 125 T; L4: 58 × 2.04 GHz × 1024 =
// 121 T; GeForce parts run fp32-accumulate at half that), 9.0 (H100 SXM:
// 132 × 1.83 GHz × 4096 = 989 T), 10.0 (B200: 148 × 1.85 GHz × 8192).
var bf16PerSMClock = map[int]float64{80: 2048, 86: 1024, 87: 1024, 89: 1024, 90: 4096, 100: 8192}

// PeakFLOPS is the dense bf16 tensor-core peak of the device, what MFU is
// measured against (train.Peaker): the datasheet figure for a
// device the table names, else SMs × clock × FLOPs per SM and clock for its
// compute capability, else 0. TUNE_PEAK_TFLOPS overrides it (for example
// 790, the measured bf16 GEMM ceiling of an H200).
func (b *Backend) PeakFLOPS() (float64, string) { return devicePeak(b.dev) }

func devicePeak(d Device) (float64, string) {
	if s := os.Getenv("TUNE_PEAK_TFLOPS"); s != "" {
		if v, err := strconv.ParseFloat(s, 64); err == nil && v > 0 {
			return v * 1e12, fmt.Sprintf("%g TFLOP/s (TUNE_PEAK_TFLOPS)", v)
		}
	}
	for _, p := range bf16Peaks {
		if strings.Contains(d.Name, p.name) {
			return p.tflops * 1e12, fmt.Sprintf("%g TFLOP/s (%s bf16 dense, datasheet)", p.tflops, p.name)
		}
	}
	if per, ok := bf16PerSMClock[d.Major*10+d.Minor]; ok && d.SMs > 0 && d.ClockKHz > 0 {
		v := float64(d.SMs) * float64(d.ClockKHz) * 1e3 * per
		return v, fmt.Sprintf("%.0f TFLOP/s (%s: %d SMs × %.2f GHz × %g bf16 FLOP/clock, compute capability %s)",
			v/1e12, d.Name, d.SMs, float64(d.ClockKHz)/1e6, per, d.CC())
	}
	return 0, ""
}

// MemStats are the backend's device memory: what its buffers and cached
// weights hold now and at most since Open (or ResetPeak), and the device's
// used and total memory as the driver reports them (every process, the
// context and cuBLAS's workspace included).
type MemStats struct {
	Live, Peak        uint64
	DeviceUsed, Total uint64
}

// Memory reports MemStats.
func (b *Backend) Memory() MemStats {
	defer b.enter()()
	var free, total uint64
	b.d.cuMemGetInfo(&free, &total)
	return MemStats{Live: b.live, Peak: b.peak, DeviceUsed: total - min(free, total), Total: total}
}

// ResetPeak starts a new peak from what is allocated now.
func (b *Backend) ResetPeak() {
	defer b.enter()()
	b.peak = b.live
}
