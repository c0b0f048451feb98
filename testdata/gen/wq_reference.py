#!/usr/bin/env python3
"""Independent reference for tune's weight-only INT8/INT4 safetensors (quantize/wq).

Run by hand (CI has no torch):

    WQ_DUMP=/tmp/wqf go test ./quantize -run TestQuantizeSafetensorsGolden
    /usr/bin/python3 testdata/gen/wq_reference.py /tmp/wqf

For each tiny model of testdata/models (qwen3-tied F32, llama3 F16) and each case
(int4 g32/g128 sym/asym, int8 per-channel sym/asym) x (gptq, compressed-tensors):

1. re-quantizes the original weights with GPTQ's Quantizer round-to-nearest semantics
   (IST-DASLab/gptq quant.py and GPTQModel quantization/quantizer.py: find_params min/max
   including 0, symmetric uses max(|min|, max) on both sides, an all-zero group gets
   [-1, 1], zero = round(-xmin/scale), q = clamp(round(x/scale) + zero, 0, maxq)), with the
   scale rounded to fp16 (the dtype every layout stores) before the zero point and codes
   are computed from it. GPTQ v1 files store zero-1, so for the gptq layout an
   asymmetric zero point is clamped to >= 1 (a 0 cannot be stored);
2. packs those codes as the writers do: GPTQModel/AutoGPTQ QuantLinear.pack (qweight
   int32 [in/pf, out] packed along the input dim, qzeros int32 [G, out/pf] holding zero-1,
   scales fp16 [G, out], g_idx int32 [in]) and compressed-tensors pack_to_int32 (codes
   offset to unsigned, packed along dim 1; zero points packed along dim 0) and hashes every
   tensor; dense tensors are hashed from the original file;
3. unpacks the folder tune wrote and dequantizes it exactly as the loaders do
   (vLLM gptq q_gemm / GPTQModel dequantize_weight: scales[g_idx] * (q - (qzeros + 1));
   compressed-tensors unpack_from_int32 + dequantize: scale * (q - zp)) and hashes the
   float32 result (products of an fp16 scale and a small integer are exact in float32).

It writes quantize/wq/testdata/golden.json, which quantize/safetensors_int_test.go
compares with what tune writes and reads. Safetensors are parsed with json + numpy.
"""
import hashlib
import json
import os
import re
import struct
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = ["qwen3-tied", "llama3"]
LINEAR = re.compile(r"^model\.layers\.[0-9]+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$")
NP = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I32": "<i4", "I64": "<i8"}


def cases():
    out = []
    for layout in ["gptq", "compressed-tensors"]:
        for bits, gs, sym in [(4, 32, True), (4, 32, False), (4, 128, True), (4, 128, False), (8, -1, True), (8, -1, False)]:
            g = "ch" if gs < 0 else "g%d" % gs
            out.append(("int%d-%s-%s-%s" % (bits, g, "sym" if sym else "asym", layout), bits, gs, sym, layout))
    return out


def read_st(path):
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], body[a:b])
    return out


def arr(entry):
    dt, shape, raw = entry
    return np.frombuffer(raw, dtype=NP[dt]).reshape(shape)


def to_f32(entry):
    dt, shape, raw = entry
    a = np.frombuffer(raw, dtype=NP[dt])
    if dt == "BF16":
        a = (a.astype(np.uint32) << 16).view(np.float32)
    return torch.from_numpy(a.astype(np.float32).copy()).reshape(shape)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def f16(x):
    return x.to(torch.float16).to(torch.float32)


# ---------------------------------------------------------------------------------------
# GPTQ Quantizer round-to-nearest, per group of input columns
# ---------------------------------------------------------------------------------------

def find_params(x, bits, sym, zmin):
    """x [rows, n] float32 -> fp16-exact scale [rows], zero [rows] (float)."""
    maxq = 2 ** bits - 1
    zero_t = torch.zeros(x.shape[0])
    xmin = torch.minimum(x.min(1).values, zero_t)
    xmax = torch.maximum(x.max(1).values, zero_t)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        tmp = xmin < 0
        if torch.any(tmp):
            xmin[tmp] = -xmax[tmp]
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp] = -1
    xmax[tmp] = +1
    scale = f16((xmax - xmin) / maxq)
    scale[scale == 0] = 2.0 ** -24  # fp16's smallest subnormal
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.clamp(torch.round(-xmin / scale), zmin, maxq)
    return scale, zero


def rtn(W, bits, gs, sym, zmin):
    R, C = W.shape
    if gs < 0:
        gs = C
    G = C // gs
    maxq = 2 ** bits - 1
    Q = torch.zeros(R, C, dtype=torch.int64)
    S = torch.zeros(R, G)
    Z = torch.zeros(R, G, dtype=torch.int64)
    for g in range(G):
        x = W[:, g * gs:(g + 1) * gs]
        scale, zero = find_params(x, bits, sym, zmin)
        q = torch.clamp(torch.round(x / scale[:, None]) + zero[:, None], 0, maxq)
        Q[:, g * gs:(g + 1) * gs] = q.to(torch.int64)
        S[:, g] = scale
        Z[:, g] = zero.to(torch.int64)
    return Q, S, Z


# ---------------------------------------------------------------------------------------
# Packing as the writers pack
# ---------------------------------------------------------------------------------------

def pack_gptq(Q, S, Z, bits, gs):
    """GPTQModel/AutoGPTQ QuantLinear.pack, checkpoint_format gptq (v1)."""
    R, C = Q.shape
    pf = 32 // bits
    G = S.shape[1]
    intweight = Q.t().numpy().astype(np.uint32)  # [in, out]
    qweight = np.zeros((C // pf, R), dtype=np.uint32)
    for i in range(C // pf):
        for j in range(pf):
            qweight[i] |= intweight[i * pf + j] << np.uint32(bits * j)
    zeros = (Z.t().numpy() - 1).astype(np.uint32)  # [G, out], v1: zero - 1
    qzeros = np.zeros((G, R // pf), dtype=np.uint32)
    for k in range(R // pf):
        for j in range(pf):
            qzeros[:, k] |= zeros[:, k * pf + j] << np.uint32(bits * j)
    scales = S.t().contiguous().numpy().astype(np.float16)  # [G, out]
    g = C if gs < 0 else gs
    g_idx = np.array([i // g for i in range(C)], dtype=np.int32)
    return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32), "scales": scales, "g_idx": g_idx}


def pack_to_int32(v, bits, packed_dim):
    """compressed-tensors pack_to_int32 on signed codes v (int), 2-D."""
    u = (v + (1 << (bits - 1))).astype(np.uint32)
    pf = 32 // bits
    if packed_dim == 1:
        n = -(-u.shape[1] // pf)
        u = np.pad(u, [(0, 0), (0, n * pf - u.shape[1])])
        out = np.zeros((u.shape[0], n), dtype=np.uint32)
        for i in range(pf):
            out |= u[:, i::pf] << np.uint32(bits * i)
    else:
        n = -(-u.shape[0] // pf)
        u = np.pad(u, [(0, n * pf - u.shape[0]), (0, 0)])
        out = np.zeros((n, u.shape[1]), dtype=np.uint32)
        for i in range(pf):
            out |= u[i::pf, :] << np.uint32(bits * i)
    return out.view(np.int32)


def pack_ct(Q, S, Z, bits, sym):
    """compressed-tensors PackedQuantizationCompressor.compress_weight."""
    off = 1 << (bits - 1)
    out = {
        "weight_packed": pack_to_int32(Q.numpy() - off, bits, 1),
        "weight_scale": S.numpy().astype(np.float16),
        "weight_shape": np.array(list(Q.shape), dtype=np.int64),
    }
    if not sym:
        out["weight_zero_point"] = pack_to_int32(Z.numpy() - off, bits, 0)
    return out


# ---------------------------------------------------------------------------------------
# Unpacking and dequantizing as the loaders do
# ---------------------------------------------------------------------------------------

def dequant_gptq(qweight, qzeros, scales, g_idx, bits):
    """GPTQModel TorchQuantLinear.dequantize_weight / vLLM gptq (v1: zeros + 1)."""
    maxq = 2 ** bits - 1
    wf = torch.arange(0, 32, bits, dtype=torch.int32)
    qz = torch.from_numpy(qzeros.astype(np.int32).copy())
    zeros = torch.bitwise_and(torch.bitwise_right_shift(qz[:, :, None], wf[None, None, :]), maxq)
    zeros = zeros.reshape(qz.shape[0], -1) + 1  # [G, out]
    qw = torch.from_numpy(qweight.astype(np.int32).copy())
    w = torch.bitwise_and(torch.bitwise_right_shift(qw[:, None, :], wf[None, :, None]), maxq)
    w = w.reshape(-1, qw.shape[1])  # [in, out]
    g = torch.from_numpy(g_idx.astype(np.int64))
    sc = torch.from_numpy(scales.astype(np.float32))
    W = sc[g] * (w - zeros[g]).to(torch.float32)  # [in, out]
    return W.t().contiguous(), w.t(), zeros


def unpack_from_int32(v, bits, shape, packed_dim):
    pf = 32 // bits
    mask = (1 << bits) - 1
    t = torch.from_numpy(v.astype(np.int32).copy())
    if packed_dim == 1:
        u = torch.zeros(t.shape[0], t.shape[1] * pf, dtype=torch.int32)
        for i in range(pf):
            u[:, i::pf] = torch.bitwise_and(torch.bitwise_right_shift(t, bits * i), mask)
        u = u[:, :shape[1]]
    else:
        u = torch.zeros(t.shape[0] * pf, t.shape[1], dtype=torch.int32)
        for i in range(pf):
            u[i::pf, :] = torch.bitwise_and(torch.bitwise_right_shift(t, bits * i), mask)
        u = u[:shape[0], :]
    return u - (1 << (bits - 1))


def dequant_ct(t, bits, sym):
    """compressed-tensors decompress_weight + forward.dequantize (group / channel)."""
    R, C = [int(x) for x in t["weight_shape"]]
    q = unpack_from_int32(t["weight_packed"], bits, (R, C), 1)
    scale = torch.from_numpy(t["weight_scale"].astype(np.float32))
    G = scale.shape[1]
    if sym:
        zp = torch.zeros(R, G, dtype=torch.int32)
    else:
        zp = unpack_from_int32(t["weight_zero_point"], bits, (R, G), 0)
    gs = C // G
    sc = scale.repeat_interleave(gs, dim=1)
    z = zp.repeat_interleave(gs, dim=1)
    return (sc * (q - z).to(torch.float32)).contiguous()


def le_bytes(a):
    return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()


# ---------------------------------------------------------------------------------------
# quantization_config as GPTQModel / llm-compressor write it
# ---------------------------------------------------------------------------------------

def skip_names(dense):
    s = set(dense)
    out = list(dense)
    for d in dense:
        if d.endswith(".self_attn.q_proj"):
            p = d[:-len(".self_attn.q_proj")]
            if p + ".self_attn.k_proj" in s and p + ".self_attn.v_proj" in s:
                out.append(p + ".self_attn.qkv_proj")
        if d.endswith(".mlp.gate_proj"):
            p = d[:-len(".mlp.gate_proj")]
            if p + ".mlp.up_proj" in s:
                out.append(p + ".mlp.gate_up_proj")
    return sorted(out)


def quant_config(layout, bits, gs, sym, dense):
    if layout == "gptq":
        qc = {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": bits, "group_size": gs,
              "desc_act": False, "sym": sym, "lm_head": False, "static_groups": False,
              "true_sequential": True, "pack_dtype": "int32", "meta": {"quantizer": ["tune"]}}
        if dense:
            qc["dynamic"] = {"-:" + re.escape(n) + "$": {} for n in skip_names(dense)}
        return qc
    w = {"num_bits": bits, "type": "int", "symmetric": sym, "dynamic": False, "observer": "minmax",
         "observer_kwargs": {}, "block_structure": None, "actorder": None,
         "strategy": "group" if gs > 0 else "channel", "group_size": gs if gs > 0 else None}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": w, "input_activations": None,
                                          "output_activations": None, "format": "pack-quantized"}},
            "ignore": ["lm_head"] + skip_names(dense), "quantization_status": "compressed",
            "kv_cache_scheme": None, "global_compression_ratio": None, "sparsity_config": {}}


def main():
    dump = sys.argv[1]
    golden = {}
    bad = 0
    for m in MODELS:
        src = read_st(os.path.join(ROOT, "testdata", "models", m))
        golden[m] = {}
        for name, bits, gs, sym, layout in cases():
            folder = read_st(os.path.join(dump, m, name))
            pf = 32 // bits
            g = {"tensors": {}, "dequant": {}, "sample": {}}
            dense = []
            for tn in sorted(src):
                entry = src[tn]
                ok = LINEAR.match(tn) is not None
                R, C = entry[1] if len(entry[1]) == 2 else (0, 0)
                if ok:
                    gcols = C if gs < 0 else gs
                    ok = C % gcols == 0 and (layout != "gptq" or (R % pf == 0 and C % pf == 0))
                    if not ok:
                        dense.append(tn[:-len(".weight")])
                if not ok:
                    g["tensors"][tn] = sha(entry[2])
                    continue
                W = to_f32(entry)
                Q, S, Z = rtn(W, bits, gs, sym, 1 if (layout == "gptq" and not sym) else 0)
                p = tn[:-len(".weight")]
                if layout == "gptq":
                    packed = pack_gptq(Q, S, Z, bits, gs)
                    ours = {k: arr(folder[p + "." + k]) for k in ["qweight", "qzeros", "scales", "g_idx"]}
                    Wd, _, _ = dequant_gptq(ours["qweight"], ours["qzeros"], ours["scales"], ours["g_idx"], bits)
                    Wp, _, _ = dequant_gptq(packed["qweight"], packed["qzeros"], packed["scales"], packed["g_idx"], bits)
                else:
                    packed = pack_ct(Q, S, Z, bits, sym)
                    ours = {k: arr(folder[p + "." + k]) for k in packed}
                    Wd = dequant_ct(ours, bits, sym)
                    Wp = dequant_ct(packed, bits, sym)
                for k, a in packed.items():
                    g["tensors"][p + "." + k] = sha(le_bytes(a))
                    if sha(le_bytes(a)) != sha(folder[p + "." + k][2]):
                        print("MISMATCH %s %s %s.%s" % (m, name, p, k))
                        bad += 1
                ref = S.repeat_interleave(C // S.shape[1], dim=1) * (Q - Z.repeat_interleave(C // Z.shape[1], dim=1)).to(torch.float32)
                if not torch.equal(Wp, ref):
                    print("SELF-CHECK FAILED: loader dequant of our own pack != scale*(q-z)", m, name, tn)
                    bad += 1
                if not torch.equal(Wd, Wp):
                    print("MISMATCH %s %s %s dequant, max diff %g" % (m, name, tn, (Wd - Wp).abs().max()))
                    bad += 1
                g["dequant"][tn] = sha(Wd.numpy().astype("<f4").tobytes())
                g["sample"][tn] = [float(x) for x in Wd.reshape(-1)[:8]]
                err = ((Wd - W).norm() / W.norm()).item()
                g.setdefault("rel_err", {})[tn] = err
            g["quantization_config"] = quant_config(layout, bits, gs, sym, dense)
            golden[m][name] = g
            errs = list(g.get("rel_err", {}).values())
            print("%-11s %-33s %2d quantized, %2d dense, weight rel err mean %.4f" % (
                m, name, len(g["dequant"]), len(dense), sum(errs) / max(1, len(errs))))
    out = os.path.join(ROOT, "quantize", "wq", "testdata", "golden.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", out, "mismatches with tune's folders:", bad)


if __name__ == "__main__":
    main()
