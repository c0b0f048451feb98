package cpu

import (
	"fmt"
	"runtime"
	"sync"
	"time"
)

// MeasurePeakFLOPS measures the fp32 FLOP/s that threads threads reach
// together running independent FMAs on registers (no memory traffic) for
// about dur: the machine's real peak at the clock it runs now (turbo
// included), which the clock /proc/cpuinfo reports (often the base clock
// on a VM) does not give. 0 without an FMA kernel (noasm builds).
func MeasurePeakFLOPS(threads int, dur time.Duration) float64 {
	if fmaLoop(1) == 0 {
		return 0
	}
	threads = max(1, threads)
	const chunk = 1 << 16 // iterations per check of the clock: ~0.2 ms
	var wg sync.WaitGroup
	flops := make([]float64, threads)
	start := time.Now()
	for i := 0; i < threads; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for time.Since(start) < dur {
				f := fmaLoop(chunk)
				if f == 0 {
					return
				}
				flops[i] += f
			}
		}()
	}
	wg.Wait()
	sec := time.Since(start).Seconds()
	var sum float64
	for _, f := range flops {
		sum += f
	}
	return sum / sec
}

var (
	peakOnce sync.Once
	peakVal  float64
)

// PeakFLOPS is the fp32 peak MFU divides by (train.Peaker): measured once
// per process with MeasurePeakFLOPS over the backend's workers (100 ms).
func (b *Backend) PeakFLOPS() (float64, string) {
	peakOnce.Do(func() { peakVal = MeasurePeakFLOPS(b.Workers(), 100*time.Millisecond) })
	if peakVal == 0 {
		return 0, ""
	}
	return peakVal, fmt.Sprintf("%.0f GFLOP/s fp32, measured (FMAs on %d threads)", peakVal/1e9, b.Workers())
}
