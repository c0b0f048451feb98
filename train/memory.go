package train

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// MemoryEstimate is a pre-flight guess of a run's memory, in bytes.
type MemoryEstimate struct {
	Weights     int64 `json:"weights"`     // the model's safetensors files, memory-mapped (paged in as read)
	Activations int64 `json:"activations"` // the training pass's slabs (activations, their grads, scratch)
	Trainable   int64 `json:"trainable"`   // parameters, gradients and AdamW m and v: 4 float32 each
	Total       int64 `json:"total"`
}

// EstimateMemory adds up the three parts; the weights count in full
// because every step reads every layer.
func EstimateMemory(weights, activations, trainableParams int64) MemoryEstimate {
	m := MemoryEstimate{Weights: weights, Activations: activations, Trainable: 4 * 4 * trainableParams}
	m.Total = m.Weights + m.Activations + m.Trainable
	return m
}

// Check refuses a run whose own allocations (activations, trainable parameters,
// their gradients and AdamW state: memory that cannot be paged back to a file)
// exceed available bytes of memory. The mapped weights are not counted: the
// kernel pages them in and out of the page cache as the layers are read.
func (m MemoryEstimate) Check(available int64) error {
	need := m.Activations + m.Trainable
	if available <= 0 || need <= available {
		return nil
	}
	return fmt.Errorf("train: this run needs %s of memory (activations %s, trainable parameters with gradients and AdamW state %s) but %s is available; lower train.max_seq_len, set train.gradient_checkpointing: true, or lower lora.r",
		gib(need), gib(m.Activations), gib(m.Trainable), gib(available))
}

// AvailableMemory is MemAvailable from /proc/meminfo, in bytes; false where it
// cannot be read (not Linux).
func AvailableMemory() (int64, bool) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, false
			}
			return kb * 1024, true
		}
	}
	return 0, false
}

func gib(n int64) string { return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30)) }
