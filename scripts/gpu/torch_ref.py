#!/usr/bin/env python3
"""PyTorch oracle for the CUDA backend (run by scripts/gpu-check.sh).

Writes random inputs and float64 PyTorch results for a few ops into OUTDIR,
one folder per case (params.json plus raw little-endian .f32 / .i32 files);
kernels/cuda's TestTorchRef (TUNE_TORCH_REF=OUTDIR) runs the same inputs
through the cuda backend and compares. Then, when a GPU is present, times
torch's own bf16 GEMM and scaled_dot_product_attention at the shapes
TestBench uses, as the ceiling to compare against.

usage: python3 scripts/gpu/torch_ref.py OUTDIR [--bench]
Independent of tune: only torch and the op definitions in kernels/backend.go.
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

dev = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator().manual_seed(1234)


def rnd(*shape, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float32) * scale)


def save(case, params, **tensors):
    d = os.path.join(OUT, case)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "params.json"), "w") as f:
        json.dump(params, f)
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype in (torch.int64, torch.int32):
            t.to(torch.int32).numpy().tofile(os.path.join(d, name + ".i32"))
        else:
            t.to(torch.float32).numpy().tofile(os.path.join(d, name + ".f32"))


def rmsnorm(N, C, eps):
    x, w, dout = rnd(N, C, scale=2), rnd(C), rnd(N, C)
    x64, w64 = x.double().to(dev).requires_grad_(), w.double().to(dev).requires_grad_()
    out = w64 * (x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps))
    out.backward(dout.double().to(dev))
    save(f"rmsnorm_{N}x{C}", {"op": "rmsnorm", "N": N, "C": C, "eps": eps}, x=x, w=w, dout=dout, out=out,
         din=x64.grad, dw=w64.grad)


def attention_cache(pos0, T, NH, KVH, HD, window):
    """T new queries at positions pos0.. over a cache of pos0+T keys."""
    S = pos0 + T
    q, k, v = rnd(T, NH, HD), rnd(S, KVH, HD), rnd(S, KVH, HD)
    p = torch.arange(pos0, S)
    s_ = torch.arange(S)
    allowed = s_[None, :] <= p[:, None]
    if window > 0:
        allowed &= s_[None, :] > p[:, None] - window
    rep = NH // KVH
    kk = k.double().repeat_interleave(rep, dim=1).to(dev)
    vv = v.double().repeat_interleave(rep, dim=1).to(dev)
    sc = torch.einsum("thd,shd->hts", q.double().to(dev), kk) / math.sqrt(HD)
    sc = sc.masked_fill(~allowed.to(dev)[None], float("-inf"))
    out = torch.einsum("hts,shd->thd", torch.softmax(sc, -1), vv)
    save(f"attncache_{pos0}_{T}_{NH}x{KVH}x{HD}_w{window}",
         {"op": "attention_cache", "pos0": pos0, "T": T, "NH": NH, "KVH": KVH, "HD": HD, "window": window},
         q=q, k=k, v=v, out=out)


def softmax(N, C):
    x = rnd(N, C, scale=4)
    save(f"softmax_{N}x{C}", {"op": "softmax", "N": N, "C": C}, x=x, out=torch.softmax(x.double().to(dev), -1))


def rope(T, NH, HD):
    x = rnd(T, NH, HD)
    ang = torch.rand(T, HD // 2, generator=g, dtype=torch.float64) * 2 * math.pi
    cos, sin = ang.cos().float(), ang.sin().float()
    x64 = x.double()
    a, b = x64[..., : HD // 2], x64[..., HD // 2:]
    c, s = cos.double()[:, None, :], sin.double()[:, None, :]
    out = torch.cat([a * c - b * s, b * c + a * s], -1)
    save(f"rope_{T}x{NH}x{HD}", {"op": "rope", "T": T, "NH": NH, "HD": HD}, x=x, cos=cos, sin=sin, out=out)


def attention(lens, NH, KVH, HD, window):
    T = sum(lens)
    q, k, v, dout = rnd(T, NH, HD), rnd(T, KVH, HD), rnd(T, KVH, HD), rnd(T, NH, HD)
    seg = torch.cat([torch.full((n,), sum(lens[:i]), dtype=torch.int64) for i, n in enumerate(lens)])
    t = torch.arange(T)
    # query t sees key s iff segStart[t] <= s <= t and (window <= 0 or s > t - window)
    allowed = (t[None, :] <= t[:, None]) & (t[None, :] >= seg[:, None])
    if window > 0:
        allowed &= t[None, :] > t[:, None] - window
    q64, k64, v64 = (x.double().to(dev).requires_grad_() for x in (q, k, v))
    rep = NH // KVH
    kk, vv = k64.repeat_interleave(rep, dim=1), v64.repeat_interleave(rep, dim=1)
    s = torch.einsum("thd,shd->hts", q64, kk) / math.sqrt(HD)
    s = s.masked_fill(~allowed.to(dev)[None], float("-inf"))
    p = torch.softmax(s, -1)
    out = torch.einsum("hts,shd->thd", p, vv)
    out.backward(dout.double().to(dev))
    save(f"attention_{'-'.join(map(str, lens))}_{NH}x{KVH}x{HD}_w{window}",
         {"op": "attention", "T": T, "NH": NH, "KVH": KVH, "HD": HD, "window": window},
         q=q, k=k, v=v, dout=dout, segStart=seg, out=out, dq=q64.grad, dk=k64.grad, dv=v64.grad)


def swiglu(n):
    gate, up, dout = rnd(n, scale=3), rnd(n), rnd(n)
    g64, u64 = gate.double().to(dev).requires_grad_(), up.double().to(dev).requires_grad_()
    out = F.silu(g64) * u64
    out.backward(dout.double().to(dev))
    save(f"swiglu_{n}", {"op": "swiglu", "N": n}, gate=gate, up=up, dout=dout, out=out, dgate=g64.grad, dup=u64.grad)


def nll(N, V, dloss):
    x = rnd(N, V, scale=4)
    tg = torch.randint(0, V, (N,), generator=g)
    x64 = x.double().to(dev).requires_grad_()
    loss = F.cross_entropy(x64, tg.to(dev), reduction="none")
    (loss.sum() * dloss).backward()
    save(f"nll_{N}x{V}", {"op": "nll", "N": N, "V": V, "dloss": dloss}, logits=x, targets=tg, nll=loss, dlogits=x64.grad)


def matmul(T, C, OC):
    x = rnd(T, C)
    w = rnd(OC, C, scale=0.05).to(torch.bfloat16).float()  # bf16-exact weights, as checkpoints hold
    bias = rnd(OC)
    out = x.double().to(dev) @ w.double().to(dev).T + bias.double().to(dev)
    save(f"matmul_{T}x{C}x{OC}", {"op": "matmul", "T": T, "C": C, "OC": OC}, x=x, w=w, bias=bias, out=out)


def bench():
    if dev != "cuda":
        print("torch bench: no GPU, skipped")
        return
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")

    def timeit(f, iters):
        f()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            f()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / iters * 1e3

    for M, N, K in [(4096, 4096, 4096), (8192, 8192, 8192), (2048, 12288, 4096)]:
        for dt in (torch.float32, torch.bfloat16):
            a = torch.randn(M, K, device="cuda", dtype=dt)
            b = torch.randn(K, N, device="cuda", dtype=dt)
            torch.backends.cuda.matmul.allow_tf32 = False
            ms = timeit(lambda: a @ b, 10)
            print(f"torch gemm {str(dt)[6:]:8s} M={M} N={N} K={K}: {ms:.3f} ms, {2*M*N*K/ms/1e9:.1f} TFLOP/s")
    T, NH, KVH, HD = 2048, 32, 8, 128
    for dt in (torch.float32, torch.bfloat16):
        q = torch.randn(1, NH, T, HD, device="cuda", dtype=dt, requires_grad=True)
        k = torch.randn(1, NH, T, HD, device="cuda", dtype=dt, requires_grad=True)
        v = torch.randn(1, NH, T, HD, device="cuda", dtype=dt, requires_grad=True)
        flops = 4 * T * (T + 1) / 2 * NH * HD
        ms = timeit(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), 10)
        print(f"torch sdpa fwd {str(dt)[6:]} T={T} NH={NH} HD={HD} causal: {ms:.3f} ms, {flops/ms/1e9:.2f} TFLOP/s")
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        do = torch.randn_like(o)
        ms = timeit(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), do), 5)
        print(f"torch sdpa fwd+bwd {str(dt)[6:]} T={T} NH={NH} HD={HD} causal: {ms:.3f} ms, {3.5*flops/ms/1e9:.2f} TFLOP/s")


if __name__ == "__main__":
    OUT = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    rmsnorm(7, 4096, 1e-6)
    rope(11, 4, 128)
    attention([37, 90], 8, 2, 128, 0)
    attention([5, 1, 64], 4, 4, 64, 16)
    attention_cache(20, 3, 6, 2, 64, 0)
    attention_cache(40, 1, 8, 1, 128, 16)
    softmax(3, 777)
    swiglu(10007)
    nll(5, 1000, 0.25)
    matmul(33, 257, 129)
    print(f"torch oracle cases written to {OUT} (device {dev})")
    if "--bench" in sys.argv:
        bench()
