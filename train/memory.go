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
	// QLoRA (lora.base_quant): the decoder's linear layers live in memory in
	// BaseQuant form (BaseQuantized bytes, counted in Total); their mapped
	// originals (BaseDense bytes) are no longer read and leave Weights.
	BaseQuant     string `json:"base_quant,omitempty"`
	BaseDense     int64  `json:"base_dense,omitempty"`
	BaseQuantized int64  `json:"base_quantized,omitempty"`
}

// EstimateMemory adds up the three parts; the weights count in full
// because every step reads every layer.
func EstimateMemory(weights, activations, trainableParams int64) MemoryEstimate {
	m := MemoryEstimate{Weights: weights, Activations: activations, Trainable: 4 * 4 * trainableParams}
	m.Total = m.Weights + m.Activations + m.Trainable
	return m
}

// WithQuantizedBase is m for a run whose base linears (dense bytes as
// mapped) are held quantized as mode (quantized bytes): Weights drops the
// dense linears, Total counts the quantized copy.
func (m MemoryEstimate) WithQuantizedBase(mode string, dense, quantized int64) MemoryEstimate {
	m.BaseQuant, m.BaseDense, m.BaseQuantized = mode, dense, quantized
	m.Weights = max(0, m.Weights-dense)
	m.Total = m.Weights + m.BaseQuantized + m.Activations + m.Trainable
	return m
}

// Check refuses a run whose own allocations (activations, trainable parameters,
// their gradients and AdamW state, a quantized base: memory that cannot be
// paged back to a file)
// exceed available bytes of memory. The mapped weights are not counted: the
// kernel pages them in and out of the page cache as the layers are read.
func (m MemoryEstimate) Check(available int64) error {
	need := m.Activations + m.Trainable + m.BaseQuantized
	if available <= 0 || need <= available {
		return nil
	}
	base := ""
	if m.BaseQuantized > 0 {
		base = fmt.Sprintf(", %s base %s", m.BaseQuant, gib(m.BaseQuantized))
	}
	return fmt.Errorf("train: this run needs %s of memory (activations %s, trainable parameters with gradients and AdamW state %s%s) but %s is available; lower train.max_seq_len, set train.gradient_checkpointing: true, or lower lora.r",
		gib(need), gib(m.Activations), gib(m.Trainable), base, gib(available))
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
