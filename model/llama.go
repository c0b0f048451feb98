package model

// Llama (LlamaConfig, modeling_llama.py): attention_bias adds biases to q, k, v
// and o; mlp_bias to the MLP; no sliding window.
func init() {
	families["llama"] = family{
		defaultEps: 1e-6, defaultTheta: 10000,
		attentionBiasKey: true, mlpBiasKey: true,
		window: noWindow,
	}
}

func noWindow(_ *rawConfig, layers int) ([]int, error) { return make([]int, layers), nil }
