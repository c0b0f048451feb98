package train

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
