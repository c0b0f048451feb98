package quantize

// GGUFTensorName maps a Hugging Face tensor name of a supported decoder
// (model.layers.3.self_attn.q_proj.weight, model.embed_tokens.weight, ...)
// to its GGUF name (blk.3.attn_q.weight, token_embd.weight) as llama.cpp's
// gguf-py tensor_mapping.py does, with the layer (-1 for global tensors).
// skip reports tensors the converter drops (rotary inv_freq, ...). It is the
// mapping ExportGGUF uses, exported so other writers of llama.cpp files
// (LoRA adapters) name tensors the same way.
func GGUFTensorName(hf string) (name string, layer int, skip bool, err error) {
	return ggufTensorName(hf)
}
