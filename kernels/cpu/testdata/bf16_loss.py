#!/usr/bin/python3
"""Golden losses for the bf16-compute mode of kernels/cpu (gemm_bf16.go).

Run:  /usr/bin/python3 kernels/cpu/testdata/bf16_loss.py   (writes bf16_loss.json next to it)

Model: testdata/models/qwen3-untied-bf16 (bf16 weights), one 96-token sequence of fixed
ids, every next token scored (the first token unscored), no adapter. The forward is
testdata/gen/lora_reference.forward (PyTorch, eager), computed four ways:

  f64     float64 everything (the exact reference)
  f32     float32 everything (tune's default mode)
  bf16in  float32, but every linear layer (q,k,v,o,gate,up,down and lm_head) takes its
          input rounded to bf16 first (torch .to(bfloat16), nearest even): the arithmetic
          of tune's bf16-compute mode (bf16 x bf16 products, fp32 sums; attention, norms,
          softmax and the loss stay fp32)
  bf16in_f64  the same in float64 arithmetic: how far fp32 summation noise moves the
          bf16in loss (an activation near a bf16 rounding boundary rounds the other way),
          the tolerance of the comparison in gemm_bf16_model_test.go
  bf16    torch's own bf16 run (weights and activations bf16, as lora_bench.py --dtype
          bfloat16): for scale only, tune does not compute this
Prints and writes the mean losses.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "testdata", "gen"))
import lora_reference as L  # noqa: E402
import reference as R  # noqa: E402

MODEL = os.path.join(ROOT, "testdata", "models", "qwen3-untied-bf16")
T = 96


def tokens(vocab):
    return [(i * 37 + 11) % vocab for i in range(T)]


def main():
    with open(os.path.join(MODEL, "config.json")) as f:
        cfg = json.load(f)
    W = R.read_safetensors(os.path.join(MODEL, "model.safetensors"))
    ids = tokens(cfg["vocab_size"])
    batch = {"tokens": ids, "positions": list(range(T)), "seg_ids": [0] * T, "labels": [-100] + ids[1:]}
    n = T - 1
    out = {"model": "qwen3-untied-bf16", "tokens": ids}
    out["f64"] = float(L.loss_sum(cfg, W, batch, None, 0.0, torch.float64)) / n
    out["f32"] = float(L.loss_sum(cfg, W, batch, None, 0.0, torch.float32)) / n
    linear = F.linear

    def bf16_input_linear(x, w, b=None):
        return linear(x.to(torch.bfloat16).to(x.dtype), w, b)

    F.linear = bf16_input_linear
    try:
        out["bf16in"] = float(L.loss_sum(cfg, W, batch, None, 0.0, torch.float32)) / n
        out["bf16in_f64"] = float(L.loss_sum(cfg, W, batch, None, 0.0, torch.float64)) / n
    finally:
        F.linear = linear
    out["bf16"] = float(L.loss_sum(cfg, W, batch, None, 0.0, torch.bfloat16)) / n
    print(json.dumps(out))
    with open(os.path.join(HERE, "bf16_loss.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
