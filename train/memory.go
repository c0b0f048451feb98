package train

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/tunellm/tune/kernels"
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

// Shape is a decoder's dimensions, for an estimate made from a config alone
// (no weights loaded).
type Shape struct {
	Layers, Hidden, Intermediate, Heads, KVHeads, HeadDim, Vocab int
	QKNorm, Tied                                                 bool
}

// LoRAStep is a LoRA or QLoRA training step to size: rank Rank on all seven
// linears of every layer, SeqLen packed rows per micro-batch.
type LoRAStep struct {
	Shape
	BaseDType     kernels.DType // the decoder linears as held: BF16 (plain LoRA), NF4, INT4, INT8, Q4_K, ...
	EmbedDType    kernels.DType // embeddings and lm_head (BF16)
	Rank          int
	SeqLen        int
	Checkpointing bool
	LossChunk     int // rows of logits at a time; 0: 256
}

// StepEstimate is what a LoRAStep holds in memory, in bytes.
type StepEstimate struct {
	BaseLinears int64 `json:"base_linears"` // the 7 projections of every layer, as BaseDType
	Embeddings  int64 `json:"embeddings"`   // embed_tokens, norms and lm_head (once when tied)
	Activations int64 `json:"activations"`  // the training pass's slab (model.Pass.ActivationBytes)
	Trainable   int64 `json:"trainable"`    // adapter parameters, gradients, AdamW m and v
	Scratch     int64 `json:"scratch"`      // the adapter's saved x·Aᵀ per module and shared buffers
	Total       int64 `json:"total"`
}

// EstimateLoRAStep sizes a step from the shape: the activation slab as
// model.Pass.carve lays it out (checked against a real pass by the tests),
// the adapter's parameters and state and its scratch (lora.Adapter.Reserve).
// Per-call backend scratch (attention scores, packed GEMM panels: a few MiB
// per core) is not counted.
func EstimateLoRAStep(s LoRAStep) (StepEstimate, error) {
	C, I, V, L := int64(s.Hidden), int64(s.Intermediate), int64(s.Vocab), int64(s.Layers)
	qd, kvd := int64(s.Heads*s.HeadDim), int64(s.KVHeads*s.HeadDim)
	T, half, R := int64(s.SeqLen), int64(s.HeadDim/2), int64(s.Rank)
	LC := int64(s.LossChunk)
	if LC == 0 {
		LC = 256
	}
	LC = min(LC, T)
	var e StepEstimate
	// in, out of the seven linears
	mods := [][2]int64{{C, qd}, {C, kvd}, {C, kvd}, {qd, C}, {C, I}, {C, I}, {I, C}}
	for _, m := range mods {
		rb := s.BaseDType.RowBytes(int(m[0]))
		if rb < 0 {
			return e, fmt.Errorf("train: estimate: %d input columns are not a whole number of %v blocks", m[0], s.BaseDType)
		}
		e.BaseLinears += L * m[1] * int64(rb)
		e.Trainable += L * R * (m[0] + m[1])
		e.Scratch += L * T * R
	}
	e.Trainable *= 4 * 4
	e.Scratch = 4 * (e.Scratch + 2*T*R + R*max(C, I))
	erb := s.EmbedDType.RowBytes(int(C))
	if erb < 0 {
		return e, fmt.Errorf("train: estimate: %d columns are not a whole number of %v blocks", C, s.EmbedDType)
	}
	e.Embeddings = V*int64(erb) + 4*C*(2*L+1)
	if !s.Tied {
		e.Embeddings += V * int64(erb)
	}
	if s.QKNorm {
		e.Embeddings += 4 * 2 * L * int64(s.HeadDim)
	}
	// model.Pass.carve: the residual stream at every layer boundary, one
	// layer's saved activations (all of them without checkpointing), the
	// scratch and grads of one layer, the loss chunk, the rope tables.
	perLayer := T*qd + 2*T*kvd + T*qd + T*C + 2*T*I
	if s.QKNorm {
		perLayer += T*qd + T*kvd
	}
	saved := L
	if s.Checkpointing {
		saved = 1
	}
	f := (L+1)*T*C + saved*perLayer + 3*T*C + T*I + 3*T*C + 3*T*I + 2*T*qd + 2*T*kvd + 2*LC*C + LC*V + 4*T*half
	if s.QKNorm {
		f += T*qd + T*kvd
	}
	e.Activations = 4 * f
	e.Total = e.BaseLinears + e.Embeddings + e.Activations + e.Trainable + e.Scratch
	return e, nil
}
