#!/usr/bin/python3
"""PyTorch CPU speed of one LoRA training step: the anchor `make bench` compares tune with.

Run:  /usr/bin/python3 testdata/gen/lora_bench.py [--threads N]

Model: bench-qwen3-small as bench/gen_model.go describes it (qwen3, hidden 1024,
intermediate 3072, 8 layers, 16 heads / 8 kv heads, head_dim 64, vocab 32000, untied
lm_head, rope_theta 1e6), built in memory with N(0, 0.02^2) weights and unit norms (the
weights' values do not change the speed). Base weights and activations are float32 by
default; --dtype bfloat16 runs them in bf16 (the LoRA tensors and AdamW stay f32, the loss
is taken on f32 logits). Which one is faster depends on the CPU: f32 matmuls go to the
system BLAS, bf16 ones to oneDNN, which is fast only where the CPU has AVX512-BF16 (here:
bf16 ~2.3x faster than f32 on OpenBLAS).

Step: LoRA r=16, lora_alpha 32, on all 7 linear modules of every layer (PEFT init:
kaiming-uniform A, zero B; dropout 0), one sequence of --seq tokens (random ids, every
next token a target), forward through lora_reference.forward (the same eager computation
the goldens use: full T x V logits, f32 softmax attention), cross-entropy mean, backward
(grads for the LoRA tensors only), torch.optim.AdamW step. Timing: --warmup steps, then
the median of --iters steps. Prints one JSON line: tokens/s = seq / median step time, and
peak RSS from getrusage(RUSAGE_SELF).ru_maxrss (the whole process: weights included).

BLAS: Debian's python3-torch calls the system libblas.so.3, which is the netlib reference
BLAS unless an optimized one is selected (~2.5 GFLOP/s against ~175 with OpenBLAS on two
cores here). Run it on OpenBLAS without touching the system, e.g.
    apt-get download libopenblas0-openmp && dpkg -x libopenblas0-openmp_*.deb /tmp/openblas
    LD_LIBRARY_PATH=/tmp/openblas/usr/lib/x86_64-linux-gnu/openblas-openmp \
        /usr/bin/python3 testdata/gen/lora_bench.py --threads 2
The JSON line names the BLAS library that was loaded.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lora_reference as L  # noqa: E402
import reference as R  # noqa: E402

BENCH_CONFIG = dict(
    R.QWEN3_BASE,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=8,
    max_window_layers=8,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=32000,
    tie_word_embeddings=False,
    max_position_embeddings=4096,
)


def blas_library():
    """The BLAS shared object torch's matmuls run on (Debian's torch calls libblas.so.3)."""
    with open("/proc/self/maps") as f:
        libs = sorted({ln.split()[-1] for ln in f if "blas" in ln.lower() and ".so" in ln})
    return libs[0] if libs else "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="base weights and activations; the LoRA tensors and AdamW stay float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = BENCH_CONFIG

    g = torch.Generator().manual_seed(1)
    W = {}
    for name, shape, kind in R.tensor_shapes(cfg):
        W[name] = torch.ones(shape) if kind == "norm" else torch.randn(shape, generator=g) * 0.02
    dtype = getattr(torch, args.dtype)
    W = {k: v.to(dtype) for k, v in W.items()}
    params = sum(t.numel() for t in W.values())
    spec = {"r": args.rank, "lora_alpha": 2 * args.rank, "use_rslora": False, "target_modules": L.ALL_LINEAR,
            "layers_to_transform": None}
    adapter = {k: v.requires_grad_(True) for k, v in L.peft_init_like(spec, cfg, W, 3).items()}
    lora_params = sum(t.numel() for t in adapter.values())
    scale = L.scaling_of(spec)
    opt = torch.optim.AdamW(list(adapter.values()), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    T = args.seq
    ids = torch.randint(0, 256, (T,), generator=g).tolist()
    batch = {"tokens": ids, "positions": list(range(T)), "seg_ids": [0] * T, "labels": ids}
    n = T - 1

    def step():
        opt.zero_grad(set_to_none=True)
        loss = L.loss_sum(cfg, W, batch, adapter, scale, dtype) / n
        loss.backward()
        opt.step()
        return float(loss)

    times = []
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
    med = statistics.median(times)
    if dtype == torch.float32 and "openblas" not in blas_library() and "mkl" not in blas_library():
        print("lora_bench: warning: torch runs on %s (the reference BLAS is ~50x slower than OpenBLAS; "
              "see testdata/gen/README.md)" % blas_library(), file=sys.stderr)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({
        "bench": "lora train step (forward + backward + AdamW)",
        "impl": "pytorch %s eager, CPU" % torch.__version__.split("a")[0],
        "model": "bench-qwen3-small",
        "blas": blas_library(),
        "base_dtype": args.dtype,
        "base_params": params,
        "lora_rank": args.rank,
        "lora_targets": "q,k,v,o,gate,up,down x %d layers" % cfg["num_hidden_layers"],
        "lora_params": lora_params,
        "seq": T,
        "threads": args.threads,
        "warmup": args.warmup,
        "iters": args.iters,
        "step_s": [round(t, 4) for t in times],
        "step_s_median": round(med, 4),
        "tokens_per_s": round(T / med, 2),
        "peak_rss_mb": round(rss / 1e6, 1),
        "last_loss": round(loss, 4),
    }))


if __name__ == "__main__":
    main()
