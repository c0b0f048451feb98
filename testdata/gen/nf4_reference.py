#!/usr/bin/python3
"""Independent NumPy reference of bitsandbytes' NF4 (quantize_4bit with
quant_type="nf4", blocksize=64, compress_statistics=True) for
kernels/qblock/nf4_test.go. Written from bitsandbytes' definition
(csrc/kernels.cu kQuantizeBlockwise / dQuantizeNF4 / dQuantize<0>,
functional.py quantize_4bit / create_dynamic_map), not from our Go code.

Differences in formulation from the Go code, on purpose:
  - NF4 level = number of float32 midpoint thresholds strictly below x
    (vectorized), instead of the decision tree;
  - the dynamic 8-bit map is built with torch (as bitsandbytes builds it);
  - the mean of the absmax is a float64 sum rounded to float32 (stated in
    the Go doc: torch's float32 reduction may differ in the last bit).

Run: /usr/bin/python3 testdata/gen/nf4_reference.py
Writes kernels/qblock/testdata/nf4_golden.json.gz
"""
import base64, gzip, json, os
import numpy as np
import torch

F = np.float32
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float64)
# dQuantizeNF4's thresholds, as the float32 literals of the CUDA source. A C++
# "...f" literal rounds the decimal straight to float32; going through a
# double first rounds -0.8480964004993439 one ulp differently, so round the
# exact decimal with Fractions.
def f32_literal(s):
    from fractions import Fraction
    exact = Fraction(s)
    c = F(float(s))
    cands = [np.nextafter(c, F(-2)), c, np.nextafter(c, F(2))]
    dist = [abs(Fraction(float(v)) - exact) for v in cands]
    best = min(dist)
    ties = [v for v, d in zip(cands, dist) if d == best]
    return ties[0] if len(ties) == 1 else [v for v in ties if v.view(np.uint32) % 2 == 0][0]


THR = np.array([f32_literal(s) for s in ["-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
                "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
                "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
                "0.5016634166240692", "0.6427869200706482", "0.8614784181118011"]], dtype=F)


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    data = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += (10 ** (-(max_exponent_bits - 1) + i) * means).tolist()
        data += (-10 ** (-(max_exponent_bits - 1) + i) * means).tolist()
    data.append(0)
    data.append(1.0)
    data.sort()
    return torch.tensor(data).numpy().astype(F)


CODE = create_dynamic_map()


def dquantize(code, x):
    # bitsandbytes dQuantize<0>: binary search from pivot 127, midpoint rounding.
    pivot, up, lo = 127, 255, 0
    lower, upper = F(-1), F(1)
    val = code[pivot]
    i = 64
    while i > 0:
        if x > val:
            lo, lower = pivot, val
            pivot += i
        else:
            up, upper = pivot, val
            pivot -= i
        val = code[pivot]
        i >>= 1
    if up == 255:
        upper = code[255]
    if lo == 0:
        lower = code[0]
    if x > val:
        return up if x > F((upper + val) * F(0.5)) else pivot
    return lo if x < F((lower + val) * F(0.5)) else pivot


def quantize_nf4(x):
    x = x.astype(F).reshape(-1, 64)
    with np.errstate(divide="ignore", invalid="ignore"):
        absmax = np.abs(x).max(axis=1).astype(F)
        inv = (F(1) / absmax).astype(F)
        y = (x * inv[:, None]).astype(F)
    q = (y[..., None] > THR).sum(axis=-1).astype(np.uint8)  # NaN -> 0
    packed = (q[:, 0::2] << 4) | q[:, 1::2]
    offset = F(absmax.astype(np.float64).mean())
    a = (absmax - offset).astype(F)
    ng = (len(a) + 255) // 256
    qa = np.zeros(len(a), np.uint8)
    a2 = np.zeros(ng, F)
    for g in range(ng):
        blk = a[g * 256:(g + 1) * 256]
        m = F(np.abs(blk).max())
        a2[g] = m
        r = F(F(1) / m)
        for j, v in enumerate(blk):
            qa[g * 256 + j] = dquantize(CODE, F(v * r))
    scale = ((CODE[qa] * a2[np.arange(len(a)) // 256]).astype(F) + offset).astype(F)
    deq = (NF4[q] * scale[:, None]).astype(F)
    return packed.reshape(-1), absmax, qa, a2, offset, scale, deq.reshape(-1)


def bf16(x):
    b = np.asarray(x, F).view(np.uint32)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return b


def case(name, x):
    x = np.asarray(x, F)
    packed, absmax, qa, a2, off, scale, deq = quantize_nf4(x)
    b64 = lambda a: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()
    return {"name": name, "n": int(x.size), "x_f32": b64(x), "codes": b64(packed), "absmax": b64(absmax),
            "qabsmax": b64(qa), "absmax2": b64(a2), "offset": b64(np.array([off], F)),
            "scale": b64(scale), "deq": b64(deq)}


NF4 = np.array([f32_literal(repr(v)) for v in NF4], dtype=F)  # dDequantizeNF4's "...f" literals
rng = np.random.default_rng(11)
# 1. hand-made blocks: zeros, exact midpoint ties, +-1 ulp around each
#    threshold, an outlier, negative absmax element, all levels.
blocks = []
blocks.append(np.zeros(64, F))
t = np.concatenate([THR, np.nextafter(THR, F(2)), np.nextafter(THR, F(-2)), [F(1.0), F(-1.0), F(0.0), F(-0.0)]])
blocks.append(np.concatenate([t, np.zeros(64 - len(t), F)]).astype(F))
o = rng.standard_normal(64).astype(F) * F(0.02)
o[17] = F(100.0)
blocks.append(o)
o = rng.standard_normal(64).astype(F)
o[5] = -F(4.0)
blocks.append(o)
blocks.append((NF4[np.arange(64) % 16] * F(0.37)).astype(F))
small = np.concatenate(blocks)
# 2. 300 blocks (two double-quant groups), bf16-representable like real
#    weights, with per-row scales spanning 3 decades.
sc = np.exp(rng.uniform(-7, -1, 300)).astype(F)
big = (rng.standard_normal((300, 64)).astype(F) * sc[:, None]).astype(F)
big = (bf16(big).astype(np.uint32) << 16).view(F)
out = {"dynamic_map": base64.b64encode(CODE.tobytes()).decode(),
       "cases": [case("handmade", small), case("bf16_300_blocks", big.reshape(-1))]}
path = os.path.join(os.path.dirname(__file__), "..", "..", "kernels", "qblock", "testdata", "nf4_golden.json.gz")
with gzip.open(path, "wt") as f:
    json.dump(out, f)
print("wrote", path, os.path.getsize(path), "bytes")
