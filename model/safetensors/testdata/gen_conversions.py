#!/usr/bin/python3
"""Reference float32 <-> bfloat16/float16 conversions from PyTorch.

Writes conversions.json, read by conversion_test.go. Run from this folder with
the system interpreter that has torch: /usr/bin/python3 gen_conversions.py

- "cases": hand-picked float32 inputs (edge cases: zeros, subnormals, ties,
  f16 max and overflow, inf, nan) with torch's bf16 and f16 bits, each converted
  as a one-element tensor. torch 1.13 turns every NaN into bf16 0xffff on
  this path (c10::BFloat16's scalar path gives 0x7fc0); tests only require
  a NaN there.
- "f16_to_f32_sha256", "bf16_to_f32_sha256": sha256 of the little-endian
  float32 bits torch produces for all 65536 half bit patterns, in order.
- "f32_to_bf16_sha256", "f32_to_f16_sha256": sha256 of the little-endian
  uint16 results for the float32 bit patterns u = i * 2654435761 mod 2^32,
  i = 0..2^20-1, skipping NaN patterns (torch's vectorised and scalar paths
  disagree on NaN bits; NaNs are covered by "cases").
"""
import hashlib
import json
import struct

import numpy as np
import torch


def f32(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def one(bits, dtype):
    t = torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32)
    return int(t.to(dtype).view(torch.int16).item()) & 0xFFFF


case_bits = [
    0x00000000, 0x80000000,  # +-0
    0x3F800000, 0xBF800000,  # +-1
    0x40490FDB,  # pi
    0x3F808000,  # 1 + 2^-8: bf16 tie, lsb 0 -> down
    0x3F818000,  # 1 + 3*2^-8: bf16 tie, lsb 1 -> up
    0x3F808001,  # just above a bf16 tie
    0x3F807FFF,  # just below a bf16 tie
    0x3F801000,  # 1 + 2^-11: f16 tie, lsb 0 -> down
    0x3F803000,  # 1 + 3*2^-11: f16 tie, lsb 1 -> up
    0x3F801001, 0x3F800FFF,
    0x477FE000,  # 65504 = f16 max
    0x477FEFFF,  # just below the f16 overflow tie
    0x477FF000,  # 65520: tie between f16 max and inf -> inf
    0x47800000,  # 65536 -> f16 inf
    0x7F7FFFFF, 0xFF7FFFFF,  # f32 max: bf16 rounds to inf
    0x7F7F0000,  # bf16 max
    0x7F800000, 0xFF800000,  # +-inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000, 0xFFFFFFFF,  # NaNs
    0x00000001, 0x80000001,  # smallest f32 subnormal
    0x007FFFFF,  # largest f32 subnormal
    0x00400000,
    0x00800000,  # smallest f32 normal
    0x38800000,  # 2^-14: smallest f16 normal
    0x387FE000,  # largest f16 subnormal
    0x387FF000,  # tie between largest f16 subnormal and smallest normal
    0x33800000,  # 2^-24: smallest f16 subnormal
    0x33000000,  # 2^-25: tie between 0 and smallest subnormal -> 0
    0x33000001,  # just above -> smallest subnormal
    0x33C00000,  # 1.5 * 2^-24: tie -> 2 * 2^-24
    0xB3C00000,
    0x32FFFFFF,  # below half the smallest subnormal -> 0
    0x38000000,  # 2^-15
    0x37C00000,  # 1.5 * 2^-16
    0x3DCCCCCD,  # 0.1
    0xC2F6E979,  # -123.456
    0x4B7FFFFF,  # 16777215
    0x3EAAAAAB,  # 1/3
    0x4effffff,
]

cases = []
for b in case_bits:
    cases.append({
        "f32": "%08x" % b,
        "bf16": "%04x" % one(b, torch.bfloat16),
        "f16": "%04x" % one(b, torch.float16),
    })

halves = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16)
f16_to_f32 = halves.view(torch.float16).to(torch.float32).numpy().astype("<f4").tobytes()
bf16_to_f32 = halves.view(torch.bfloat16).to(torch.float32).numpy().astype("<f4").tobytes()

i = np.arange(1 << 20, dtype=np.uint64)
u = ((i * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
isnan = ((u & 0x7F800000) == 0x7F800000) & ((u & 0x007FFFFF) != 0)
u = u[~isnan]
x = torch.from_numpy(u.view(np.int32).copy()).view(torch.float32)
to_bf16 = x.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
to_f16 = x.to(torch.float16).view(torch.int16).numpy().astype("<i2").tobytes()

out = {
    "generator": "gen_conversions.py, torch " + torch.__version__,
    "cases": cases,
    "f16_to_f32_sha256": hashlib.sha256(f16_to_f32).hexdigest(),
    "bf16_to_f32_sha256": hashlib.sha256(bf16_to_f32).hexdigest(),
    "f32_sample_count": int(len(u)),
    "f32_to_bf16_sha256": hashlib.sha256(to_bf16).hexdigest(),
    "f32_to_f16_sha256": hashlib.sha256(to_f16).hexdigest(),
}
# One case per line keeps diffs of the golden file readable.
lines = ["{"]
for k, v in out.items():
    if k != "cases":
        lines.append(" %s: %s," % (json.dumps(k), json.dumps(v)))
lines.append(' "cases": [')
lines.append(",\n".join("  " + json.dumps(c) for c in cases))
lines.append(" ]")
lines.append("}")
with open("conversions.json", "w") as f:
    f.write("\n".join(lines) + "\n")
