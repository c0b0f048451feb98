#!/usr/bin/python3
"""Writes torch_written.safetensors by hand from torch tensors, independently
of our writer, plus torch_written.json with the expected values.

Run from this folder: /usr/bin/python3 gen_torch_file.py

The data is laid out in a deliberately odd order (neither sorted by name nor
by dtype alignment, as old writers did) and the header is padded with spaces,
both of which readers must accept. Values are exact in float64, so the test
compares with == (values are written as repr() strings).
"""
import json
import struct

import torch

torch.manual_seed(0)
specials = [0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf"), 65504.0, 6e-8, 1e-40, 3.0e38]
tensors = [
    ("model.layers.0.mlp.up_proj.weight", torch.randn(3, 4, dtype=torch.float32).to(torch.bfloat16)),
    ("lm_head.weight", torch.randn(2, 5, dtype=torch.float32)),
    ("a.bool", torch.tensor([True, False, True])),
    ("model.norm.weight", torch.randn(6).to(torch.float16)),
    ("specials.bf16", torch.tensor(specials, dtype=torch.float32).to(torch.bfloat16)),
    ("specials.f16", torch.tensor(specials, dtype=torch.float32).to(torch.float16)),
    ("f64", torch.randn(2, 2, dtype=torch.float64)),
    ("i64", torch.tensor([-(2**62), -1, 0, 2**62 + 7], dtype=torch.int64)),
    ("i32", torch.tensor([[-(2**31), 2**31 - 1], [5, -6]], dtype=torch.int32)),
    ("i16", torch.tensor([-32768, 32767, 3], dtype=torch.int16)),
    ("i8", torch.tensor([-128, 127, -1], dtype=torch.int8)),
    ("u8", torch.tensor([0, 255, 17], dtype=torch.uint8)),
    ("empty", torch.zeros(0, 3, dtype=torch.float32)),
    ("scalar", torch.tensor(1.5, dtype=torch.float32)),
]
names = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def raw(t):
    # bfloat16 has no numpy dtype: reinterpret as int16 first.
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.contiguous().numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()


header = {"__metadata__": {"format": "pt", "source": "gen_torch_file.py"}}
data = b""
expect = {}
for name, t in tensors:
    b = raw(t)
    header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [len(data), len(data) + len(b)]}
    data += b
    vals = t.double() if t.dtype.is_floating_point else t.long()
    # Values as strings: repr() of a float64 round-trips exactly and spells
    # infinities ("inf"), which JSON numbers cannot.
    expect[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "values": [repr(v) for v in vals.flatten().tolist()]}

# Reverse the key order relative to the data order, to show the reader does
# not rely on it, then pad with spaces to a multiple of 8 plus some more.
items = list(header.items())
hjson = json.dumps(dict([items[0]] + items[:0:-1]), separators=(",", ":")).encode()
hjson += b" " * ((8 - len(hjson) % 8) % 8 + 8)
with open("torch_written.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(hjson)))
    f.write(hjson)
    f.write(data)
with open("torch_written.json", "w") as f:
    json.dump({"metadata": header["__metadata__"], "tensors": expect}, f, indent=1)
    f.write("\n")
