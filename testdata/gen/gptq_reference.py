#!/usr/bin/python3
"""Golden outputs for quantize/gptq: an independent PyTorch implementation of
GPTQ's fasterquant (Frantar et al. 2022; written from the paper and the
structure of IST-DASLab gptq.py / GPTQModel GPTQ.quantize), run on a fixed
weight matrix and calibration inputs made here from a fixed seed.

Conventions shared with tune (stated, not copied from its code):
  - H = 2/T * X^T X computed in float64 from the fp16-exact inputs, then
    rounded to fp32 (both sides start from identical H);
  - damping 0.01*mean(diag H) and the inverse's upper Cholesky factor in
    float64 (cholesky -> cholesky_inverse -> cholesky(upper)), then fp32;
  - the column loop, the error feedback and the cross-block update in fp32;
  - group parameters from W (not the in-block copy) at each group start;
    scales rounded to fp16 before codes are chosen; zero = round(-min/scale)
    clamped to [0, maxq]; symmetric zero = 2^(bits-1);
  - act-order: stable descending sort of diag(H) (ties by column index);
    g_idx[perm[k]] = k // group_size.

Writes quantize/gptq/testdata/{x.f16.bin, w.f32.bin, codes.bin, golden.json}.
Run: /usr/bin/python3 testdata/gen/gptq_reference.py
"""
import json
import os

import numpy as np
import torch

ROWS, COLS, T = 16, 256, 320
DEAD = [5, 77, 200]
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "quantize", "gptq", "testdata")


def make_inputs():
    rng = np.random.default_rng(20221031)
    z = rng.standard_normal((T, 48))
    a = rng.standard_normal((48, COLS)) / 6
    x = z @ a + 0.3 * rng.standard_normal((T, COLS))
    x *= np.exp(0.6 * rng.standard_normal(COLS))[None, :]  # uneven channel scales
    x[:, [3, 100, 180]] *= 12  # outlier channels
    x[:, DEAD] = 0
    x = x.astype(np.float16)
    w = (0.05 * rng.standard_normal((ROWS, COLS))).astype(np.float32)
    w[2, 17] = 0.9  # an outlier weight
    w[4, 64:96] = 0  # an all-zero g32 group
    w[7, :] *= 4
    return x, w


def fp16r(v):
    return v.half().float()


def find_params(x, bits, sym):
    """x [rows, k] fp32 -> scale [rows] (fp16-exact fp32), zero [rows]."""
    maxq = 2 ** bits - 1
    zeros = torch.zeros(x.shape[0])
    xmin = torch.minimum(x.min(1).values, zeros)
    xmax = torch.maximum(x.max(1).values, zeros)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        neg = xmin < 0
        xmin[neg] = -xmax[neg]
    both = (xmin == 0) & (xmax == 0)
    xmin[both] = -1
    xmax[both] = 1
    scale = fp16r((xmax - xmin) / maxq)
    assert (scale > 0).all()
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.clamp(torch.round(-xmin / scale), 0, maxq)
    return scale, zero


def fasterquant(W, H, bits, group_size, sym, act_order, block_size, percdamp=0.01):
    rows, cols = W.shape
    maxq = 2 ** bits - 1
    W = W.clone().float()
    scale = zero = None
    if group_size == -1:
        scale, zero = find_params(W, bits, sym)  # from the weights as given
    H = H.clone().double()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.arange(cols)
    if act_order:
        perm = torch.sort(torch.diag(H), descending=True, stable=True).indices
        W = W[:, perm]
        H = H[perm][:, perm]
    idx = torch.arange(cols)
    H[idx, idx] += percdamp * torch.mean(torch.diag(H))
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()

    codes = torch.zeros((rows, cols), dtype=torch.int64)
    scales, zeros = [], []
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        n = i2 - i1
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(n):
            c = i1 + i
            if group_size != -1 and c % group_size == 0:
                scale, zero = find_params(W[:, c:c + group_size], bits, sym)
                scales.append(scale)
                zeros.append(zero)
            w = W1[:, i]
            code = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
            q = scale * (code - zero)
            codes[:, c] = code.long()
            err1 = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if group_size == -1:
        scales, zeros = [scale], [zero]
    gs = group_size if group_size != -1 else cols
    g_idx = torch.zeros(cols, dtype=torch.int64)
    out = torch.zeros_like(codes)
    out[:, perm] = codes
    g_idx[perm] = torch.arange(cols) // gs
    return out, torch.stack(scales, 1), torch.stack(zeros, 1), g_idx


def rtn(W, bits, group_size, sym):
    gs = group_size if group_size != -1 else COLS
    maxq = 2 ** bits - 1
    codes, scales, zeros = torch.zeros(W.shape, dtype=torch.int64), [], []
    for c in range(0, COLS, gs):
        scale, zero = find_params(W[:, c:c + gs], bits, sym)
        codes[:, c:c + gs] = torch.clamp(torch.round(W[:, c:c + gs] / scale[:, None]) + zero[:, None], 0, maxq).long()
        scales.append(scale)
        zeros.append(zero)
    return codes, torch.stack(scales, 1), torch.stack(zeros, 1), None


def dequant(codes, scales, zeros, g_idx):
    s = scales[:, g_idx]
    z = zeros[:, g_idx]
    return s * (codes.float() - z)


def rel_error(W, Q, H):
    W, Q, H = W.double(), Q.double(), H.double()
    D = W - Q
    return (torch.trace(D @ H @ D.T) / torch.trace(W @ H @ W.T)).item()


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    x16, w = make_inputs()
    x64 = x16.astype(np.float64)
    H = torch.from_numpy(((2.0 / T) * (x64.T @ x64)).astype(np.float32)).double()
    W = torch.from_numpy(w)
    cases = []
    blob = bytearray()
    configs = []
    for bits in (4, 8):
        for sym in (True, False):
            for gs in (32, 128, -1):
                for act in (False, True):
                    configs.append((bits, gs, sym, act, 128))
    configs += [(4, 32, False, True, 64), (4, 128, True, False, 96), (4, 64, False, False, 40)]
    for bits, gs, sym, act, bs in configs:
        codes, scales, zeros, g_idx = fasterquant(W, H, bits, gs, sym, act, bs)
        Q = dequant(codes, scales, zeros, g_idx)
        cases.append({
            "bits": bits, "group_size": gs, "sym": sym, "act_order": act, "block_size": bs,
            "codes_offset": len(blob),
            "scales": [float(v) for v in scales.flatten()],
            "zeros": [int(v) for v in zeros.flatten()],
            "g_idx": [int(v) for v in g_idx],
            "error": rel_error(W, Q, H),
        })
        blob += codes.to(torch.uint8).numpy().tobytes()
        # Self-checks of the reference: GPTQ beats round-to-nearest on its own
        # objective, and lazy batching is exact math: per channel (where no
        # group parameters are searched mid-block) one block of all columns
        # gives nearly the same codes.
        rc, rs, rz, _ = rtn(W, bits, gs, sym)
        rtn_err = rel_error(W, dequant(rc, rs, rz, torch.arange(COLS) // (gs if gs != -1 else COLS)), H)
        assert cases[-1]["error"] < rtn_err, (cases[-1]["error"], rtn_err)
        if gs == -1:
            one = fasterquant(W, H, bits, gs, sym, act, COLS)[0]
            assert (one == codes).float().mean() > 0.99
        print(f"int{bits} g{gs} sym={sym} act={act} bs={bs}: rel error {cases[-1]['error']:.6g}")
    with open(os.path.join(OUT, "x.f16.bin"), "wb") as f:
        f.write(x16.astype("<f2").tobytes())
    with open(os.path.join(OUT, "w.f32.bin"), "wb") as f:
        f.write(w.astype("<f4").tobytes())
    with open(os.path.join(OUT, "codes.bin"), "wb") as f:
        f.write(bytes(blob))
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump({"rows": ROWS, "cols": COLS, "tokens": T, "dead": DEAD, "damp": 0.01,
                   "torch": torch.__version__, "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
