#!/usr/bin/env python3
"""LoRA gradients from transformers + PEFT, the oracle of kernels/cuda's TestPEFTGrads.

Run by scripts/gpu-check.sh on the GPU machine (transformers, peft and torch are
installed there; not on the build machine or in CI):

    python3 scripts/gpu/peft_ref.py OUTDIR

Writes, from seeded random numbers and nothing of tune's:
  OUTDIR/model/      a tiny Qwen3 (transformers Qwen3ForCausalLM, fp32,
                     save_pretrained: config.json + model.safetensors)
  OUTDIR/adapter/    a PEFT LoRA adapter on it (r 8, alpha 16, all seven linear
                     modules, lora_B random so every gradient path is non-zero;
                     PeftModel.save_pretrained)
  OUTDIR/ref.json    two token rows with labels (-100 where not scored), and the
                     summed cross-entropy (transformers' shift: logits[t] predicts
                     labels[t+1], ignore_index -100, reduction sum) and the grad of
                     that sum for every lora_A / lora_B weight (PEFT's saved names),
                     computed in float64 from the same fp32 weights
The Go side loads model/ and adapter/ with tune, runs the LoRA training pass on the
CPU and the cuda backends, and compares.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
import transformers
import peft
from peft import LoraConfig, get_peft_model

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(1234)
torch.backends.cuda.matmul.allow_tf32 = False
dev = "cuda" if torch.cuda.is_available() else "cpu"

V, C, I, L, NH, KVH, HD = 320, 64, 160, 2, 4, 2, 16
kw = dict(vocab_size=V, hidden_size=C, intermediate_size=I, num_hidden_layers=L, num_attention_heads=NH,
          num_key_value_heads=KVH, head_dim=HD, max_position_embeddings=256, rms_norm_eps=1e-6,
          tie_word_embeddings=False, attention_bias=False, initializer_range=0.1)
try:  # transformers v5 spells the rope settings rope_parameters
    cfg = transformers.Qwen3Config(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **kw)
except TypeError:
    cfg = transformers.Qwen3Config(rope_theta=10000.0, **kw)
model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float()
with torch.no_grad():
    for n, p in model.named_parameters():
        if "norm" in n:  # ones by default: make them matter
            p.copy_(1 + 0.1 * torch.randn_like(p))
model.save_pretrained(os.path.join(OUT, "model"))

lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
pm = get_peft_model(model, lcfg)
with torch.no_grad():
    for n, p in pm.named_parameters():
        if "lora_B" in n:  # PEFT starts B at zero; random B exercises dA and din
            p.copy_(0.05 * torch.randn_like(p))
pm.save_pretrained(os.path.join(OUT, "adapter"))

T = 40
rows = []
for r in range(2):
    ids = torch.randint(0, V, (T,))
    labels = ids.clone()
    labels[torch.randperm(T)[:8]] = -100  # some positions not scored
    rows.append((ids, labels))
ids = torch.stack([r[0] for r in rows]).to(dev)
labels = torch.stack([r[1] for r in rows]).to(dev)

pm = pm.double().to(dev)
pm.train()
logits = pm(input_ids=ids).logits
loss_sum = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
n = int((labels[:, 1:] != -100).sum())
loss_sum.backward()
grads = {}
for name, p in pm.named_parameters():
    if "lora_" in name and p.grad is not None:
        grads[name.replace(".default", "")] = p.grad.detach().cpu().reshape(-1).tolist()
assert len(grads) == 2 * 7 * L, sorted(grads)
with open(os.path.join(OUT, "ref.json"), "w") as f:
    json.dump({"generator": "scripts/gpu/peft_ref.py", "torch": torch.__version__, "transformers": transformers.__version__,
               "peft": peft.__version__, "device": dev,
               "rows": [{"tokens": r[0].tolist(), "labels": r[1].tolist()} for r in rows],
               "loss_sum": float(loss_sum), "n": n, "grads": grads}, f)
print(f"peft_ref: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__} on {dev}: "
      f"loss_sum {float(loss_sum):.6f} over {n} tokens, {len(grads)} LoRA grads -> {OUT}")
