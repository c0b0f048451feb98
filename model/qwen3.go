package model

// Qwen3 (Qwen3Config, modeling_qwen3.py): per-head RMSNorm on q and k before
// RoPE (q_norm, k_norm over HD); attention_bias adds q/k/v/o biases; windows as
// Qwen2. The class default head_dim is 128, not hidden/heads.
func init() {
	families["qwen3"] = family{
		defaultEps: 1e-6, defaultTheta: 10000, defaultHeadDim: 128,
		qkNorm: true, attentionBiasKey: true,
		window: qwenWindows,
	}
}
