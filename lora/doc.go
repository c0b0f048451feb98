// Package lora holds LoRA adapters for the decoder in package model: the
// adapter configuration (PEFT's LoraConfig fields that matter), parameter
// initialisation, the low-rank forward and backward on one linear layer,
// PEFT-compatible save and load (adapter_config.json +
// adapter_model.safetensors), and merging an adapter into a base model folder.
//
// It mirrors huggingface/peft (src/peft/tuners/lora/{config,layer,model}.py,
// src/peft/utils/save_and_load.py): an adapted linear layer computes
//
//	y = x·Wᵀ + scaling · dropout(x)·Aᵀ·Bᵀ,  scaling = lora_alpha/r (or /√r with rsLoRA)
//
// with A [R,in] and B [out,R]. PEFT's rank_pattern and alpha_pattern give
// a module its own r and lora_alpha (and so its own scaling), resolved as
// peft.utils.other.get_pattern_key does (Config.RankPattern). The low-rank
// products run on the model's kernels.Backend (fp32 GEMM: MatMulForward and
// MatMulBackward with the adapter matrices as F32 weights). With use_dora (DoRA, PEFT's dora.py) a
// trained magnitude m [out] rescales each output row by m/‖W + scaling·B·A‖
// (see dora.go); the adapter then reads the frozen W, which the model hands it
// through model.BaseAware. Parameters and gradients live in one fp32
// slab each (Params, Grads) with named views (Tensors). Random numbers are
// this package's own (PCG for the init, a counter-based hash for dropout
// masks, a pure function of seed, step, layer, module, row and column), so
// they follow torch's distributions but not its streams.
//
// It is not a trainer (package train owns the
// loop and the optimizer) and it does not run the base layers: the model calls
// Forward and Backward through its Adapter hook. Bias training and LoRA on
// embeddings or lm_head are not supported.
//
// Shape legend: T rows (tokens), C in_features, OC out_features, R rank,
// L layers.
package lora
