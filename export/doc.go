// Package export turns tune's outputs into what serving stacks load: a PEFT
// LoRA adapter as a llama.cpp LoRA GGUF (lora_gguf.go), an ollama Modelfile
// with a TEMPLATE equivalent to the model's chat template (ollama.go), the
// template parity check that proves the equivalence token by token
// (parity.go), and Hub model cards (card.go).
//
// It does not convert base models (package quantize writes GGUF models) and
// it does not merge adapters (package lora does).
package export
