#!/usr/bin/python3
"""Independent reference for `tune imatrix` (package quantize/imatrix/collect).

Run:  /usr/bin/python3 testdata/gen/imatrix_reference.py      (torch 1.13 + numpy)

What llama-imatrix (llama.cpp tools/imatrix/imatrix.cpp, read by hand, nothing copied)
computes, re-written over the PyTorch forward of testdata/gen/reference.py:
  - the calibration text is tokenized with the model's special tokens (BOS for Llama 3,
    nothing for Qwen3); the stream is cut into n_chunk = len // ctx chunks of ctx tokens
    (at most --chunks); each chunk runs alone from position 0, its first token replaced
    by BOS when the vocab adds BOS;
  - for every matrix multiplication by a weight named blk.* (q/k/v/o, gate/up/down) the
    input rows x are collected: in_sum2[col] += x[col]^2 and counts += rows;
  - output.weight only with --process-output, and only for an untied head (a tied head
    multiplies by token_embd.weight, which is never collected).

The inputs of each projection are captured by wrapping torch.nn.functional.linear inside
reference.forward (a forward hook on the functional call, keyed by the weight tensor), so
the forward itself is reference.py's. Sums are float64 here.

Writes quantize/imatrix/testdata/<model>.json:
  {model, ctx, chunks, bos, process_output, tokens, entries: {gguf name: {sum2, count}}}
The tiny tokenizers map byte b to id b (reference.py), so tokens are the text's bytes.
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(REPO, "quantize", "imatrix", "testdata")

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

CASES = [
    # model, ctx, max chunks (None = all), process_output
    ("qwen3-tied", 64, None, True),   # tied head: output never collected
    ("llama3", 48, 4, True),          # BOS per chunk, untied head collected, chunk limit
]


def gguf_name(hf):
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    if parts[0] == "model" and parts[1] == "layers" and hf.endswith(".weight"):
        mod = ".".join(parts[3:-1])
        if mod in HF_TO_GGUF:
            return "blk.%s.%s.weight" % (parts[2], HF_TO_GGUF[mod])
    return None


def run(model, ctx, max_chunks, process_output):
    d = os.path.join(reference.MODELS, model)
    cfg = json.load(open(os.path.join(d, "config.json")))
    W = reference.read_safetensors(os.path.join(d, "model.safetensors"))
    W = {k: v.to(torch.float32) for k, v in W.items()}  # .to(f32) in forward keeps these objects
    by_id = {id(t): name for name, t in W.items()}
    tc = json.load(open(os.path.join(d, "tokenizer_config.json")))
    tj = json.load(open(os.path.join(d, "tokenizer.json")))
    bos = -1
    if reference.adds_bos(model):
        bos = [a["id"] for a in tj["added_tokens"] if a["content"] == tc["bos_token"]][0]
    text = open(reference.PPL_TEXT, "rb").read()
    tokens = ([bos] if bos >= 0 else []) + list(text)
    assert len(tokens) >= 2 * ctx
    n = len(tokens) // ctx
    if max_chunks:
        n = min(n, max_chunks)

    sums, counts = {}, {}
    real_linear = reference.F.linear

    def hooked(x, w, b=None):
        name = gguf_name(by_id.get(id(w), ""))
        if name == "output.weight" and not (process_output and not cfg["tie_word_embeddings"]):
            name = None
        if name is not None:
            x2 = x.detach().double().reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + (x2 * x2).sum(0)
            counts[name] = counts.get(name, 0) + x2.shape[0]
        return real_linear(x, w, b)

    reference.F.linear = hooked
    try:
        for i in range(n):
            chunk = list(tokens[i * ctx:(i + 1) * ctx])
            if bos >= 0:
                chunk[0] = bos
            reference.forward(cfg, W, chunk)
    finally:
        reference.F.linear = real_linear

    return {
        "generator": "testdata/gen/imatrix_reference.py, torch %s" % torch.__version__.split("a")[0],
        "model": model, "ctx": ctx, "chunks": n, "bos": bos, "process_output": process_output,
        "tokens": tokens,
        "entries": {k: {"sum2": [float(v) for v in sums[k]], "count": counts[k]} for k in sorted(sums)},
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    for model, ctx, max_chunks, po in CASES:
        g = run(model, ctx, max_chunks, po)
        path = os.path.join(OUT, model + ".json")
        with open(path, "w") as f:
            json.dump(g, f, separators=(",", ":"))
            f.write("\n")
        print("%s: %d chunks of %d, %d entries -> %s" % (model, g["chunks"], ctx, len(g["entries"]), path))


if __name__ == "__main__":
    main()
