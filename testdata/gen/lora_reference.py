#!/usr/bin/python3
"""Independent PyTorch reference for tune's LoRA training.

Run:  /usr/bin/python3 testdata/gen/lora_reference.py      (torch 1.13 + numpy; no peft)

It reuses reference.py's model pieces (imported, unchanged: the forward pass there was
validated against the Go model) and adds what PEFT adds on top of transformers:

  - LoRA linear          peft src/peft/tuners/lora/layer.py (v0.19.1) Linear.forward:
                         result = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling, with
                         lora_A.weight [r, in], lora_B.weight [out, r], no LoRA bias;
                         LoraLayer.update_layer: scaling = lora_alpha / r, or
                         lora_alpha / sqrt(r) with use_rslora (a Python double, applied to
                         the f32 tensor as float32); reset_lora_parameters(init True):
                         kaiming_uniform_(A, a=sqrt(5)), zeros_(B).
  - merge                Linear.get_delta_weight: W += (B @ A) * scaling (fan_in_fan_out
                         false), in the weight's dtype.
  - DoRA (use_dora)      peft tuners/lora/dora.py DoraLinearLayer + variants.py
                         DoraLinearVariant.forward: lora_weight = lora_B(lora_A(eye)).T,
                         weight_norm = ||W + scaling*lora_weight||_2 over dim 1, detached;
                         mag_norm_scale = m / weight_norm; with no dropout base_result =
                         result - bias; result += (mag_norm_scale - 1) * base_result +
                         mag_norm_scale * lora_B(lora_A(x)) * scaling. update_layer: m =
                         weight_norm at init. Merge: W' = (m / ||W + delta||)[:, None] *
                         (W + delta), delta = (B @ A) * scaling. Saved as
                         base_model.model.<module>.lora_magnitude_vector [out] (save_and_load.py
                         strips the ".weight" of lora_magnitude_vector.default.weight).
  - rank_pattern,        LoraModel._create_and_replace: r = rank_pattern.get(get_pattern_key(rank_pattern
    alpha_pattern        keys, name), r), alpha likewise; get_pattern_key (peft utils/other.py) returns the
                         first key, in dict order, with re.match(rf"(.*\.)?({key})$", name), name being
                         the module's full name ("model.layers.1.self_attn.q_proj"); the module's scaling
                         then uses its own r and alpha (rsLoRA: alpha / sqrt(r)).
  - targeting            tuners_utils.check_target_module_exists: a module is wrapped when its
                         name ends in one of target_modules and, with layers_to_transform, its
                         "layers.<i>." index is listed.
  - adapter folder       PeftModel.save_pretrained: adapter_config.json = LoraConfig.to_dict()
                         (runtime_config dropped, sets -> lists) dumped with indent=2,
                         sort_keys=True; inference_mode forced true; adapter_model.safetensors
                         from get_peft_model_state_dict (adapter name "default" removed:
                         base_model.model.<module>.lora_A.weight), metadata {"format": "pt"}.
                         The key set is PEFT v0.19.1's.
  - packed batch         transformers DataCollatorWithFlattening: samples back to back,
                         position_ids restarting at 0, labels -100 on each sample's first token;
                         with position_ids the flash-attention varlen path keeps attention
                         inside each sample, here an explicit block-diagonal causal mask.
  - loss                 transformers loss_utils.ForCausalLMLoss: logits upcast to f32,
                         shift (logits[t] predicts labels[t+1]), cross_entropy with
                         ignore_index -100 and reduction "sum" (divided by the item count for
                         the mean).
  - optimizer            torch.optim.AdamW (1.13, single-tensor path) and
                         torch.nn.utils.clip_grad_norm_, as transformers' Trainer calls them.

Outputs (deterministic: fixed seeds, one thread):
  testdata/adapters/<adapter>/{adapter_config.json, adapter_model.safetensors}
  testdata/golden/lora-<model>.json
Nothing here comes from tune.
"""

import json
import math
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as R  # noqa: E402  (sets torch to one thread)

ADAPTERS = os.path.join(R.REPO, "testdata", "adapters")
GENERATOR = "testdata/gen/lora_reference.py, torch %s" % torch.__version__.split("a")[0]
PEFT_VERSION = "0.19.1"

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR = list(ATTN + MLP)

OPTIM = {"name": "torch.optim.AdamW", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
         "amsgrad": False}
MAX_GRAD_NORM = 1.0
STEPS = 3
ADAPTER_STD = 0.1  # initial A and B ~ N(0, 0.1^2): B must be nonzero, else dL/dA = 0


def qwen3_samples():
    ims, ime = R.special_id("qwen3", "<|im_start|>"), R.special_id("qwen3", "<|im_end|>")
    return [
        ([ims] + list(b"user\n2+3="), list(b"5") + [ime]),
        ([ims] + list("Héllo ".encode()), list("wörld!".encode()) + [ime]),
        ([ims] + list(b"ab"), list(b"cdefgh") + [ime]),
    ]


def llama3_samples():
    sid = lambda c: R.special_id("llama3", c)  # noqa: E731
    bos, sh, eh, eot = sid("<|begin_of_text|>"), sid("<|start_header_id|>"), sid("<|end_header_id|>"), sid("<|eot_id|>")
    return [
        ([bos, sh] + list(b"user") + [eh] + list(b"\n\n1+1="), list(b"2") + [eot]),
        ([bos] + list("Ça ".encode()), list(b"va?") + [eot]),
        ([bos] + list(b"abc"), list(b"defghij") + [eot]),
    ]


LORA_SPECS = [
    {
        "model": "qwen3-tied",
        "adapter": "qwen3-tied-r4",
        "seed": 2001,
        "r": 4,
        "lora_alpha": 8,
        "use_rslora": False,
        "target_modules": ALL_LINEAR,
        "layers_to_transform": None,
        "samples": qwen3_samples,
    },
    {
        "model": "llama3",
        "adapter": "llama3-r8-rslora",
        "seed": 2002,
        "r": 8,
        "lora_alpha": 16,
        "use_rslora": True,
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "layers_to_transform": [1],
        "samples": llama3_samples,
    },
    {
        "model": "qwen3-tied",
        "adapter": "qwen3-tied-r4-dora",
        "golden": "lora-dora-qwen3-tied",
        "seed": 2003,
        "r": 4,
        "lora_alpha": 8,
        "use_rslora": False,
        "use_dora": True,
        "target_modules": ALL_LINEAR,
        "layers_to_transform": None,
        "samples": qwen3_samples,
    },
    {
        # Per-module ranks and alphas with rsLoRA. Keys in sorted order, as save_pretrained
        # (sort_keys=True) writes them; layer 1's q_proj matches two rank keys and takes the
        # first one's r.
        "model": "qwen3-tied",
        "adapter": "qwen3-tied-patterns-rslora",
        "golden": "lora-patterns-qwen3-tied",
        "seed": 2004,
        "r": 4,
        "lora_alpha": 8,
        "use_rslora": True,
        "rank_pattern": {"layers\\.1\\.self_attn\\.(q|k)_proj": 2, "mlp.down_proj": 8, "q_proj": 6},
        "alpha_pattern": {"o_proj": 3, "up_proj|gate_proj": 16},
        "target_modules": ALL_LINEAR,
        "layers_to_transform": None,
        "samples": qwen3_samples,
    },
    {
        # DoRA with per-module ranks and alphas: the weight norm uses each module's scaling.
        "model": "qwen3-tied",
        "adapter": "qwen3-tied-patterns-dora",
        "golden": "lora-patterns-dora-qwen3-tied",
        "seed": 2005,
        "r": 4,
        "lora_alpha": 8,
        "use_rslora": False,
        "use_dora": True,
        "rank_pattern": {"k_proj": 2, "layers\\.0\\.mlp\\..*": 6},
        "alpha_pattern": {"v_proj": 2},
        "target_modules": ALL_LINEAR,
        "layers_to_transform": None,
        "samples": qwen3_samples,
    },
]


# ---------------------------------------------------------------------------------------
# Adapter: targeting, names, scaling
# ---------------------------------------------------------------------------------------


def get_pattern_key(pattern_keys, key_to_match):
    """peft utils/other.py get_pattern_key: the first key (dict order) whose regex matches."""
    for key in pattern_keys:
        if re.match(r"(.*\.)?(%s)$" % key, key_to_match):
            return key
    return key_to_match


def r_alpha_of(spec, mod):
    """LoraModel._create_and_replace: the module's r and lora_alpha."""
    rp, ap = spec.get("rank_pattern", {}), spec.get("alpha_pattern", {})
    r = rp.get(get_pattern_key(rp.keys(), mod), spec["r"])
    alpha = ap.get(get_pattern_key(ap.keys(), mod), spec["lora_alpha"])
    return r, alpha


def scaling_of(spec, cfg=None):
    """LoraLayer.update_layer's scaling: one float, or {module: float} with patterns."""
    if spec.get("rank_pattern") or spec.get("alpha_pattern"):
        out = {}
        for mod in target_modules(spec, cfg):
            r, alpha = r_alpha_of(spec, mod)
            out[mod] = alpha / math.sqrt(r) if spec["use_rslora"] else alpha / r
        return out
    if spec["use_rslora"]:
        return spec["lora_alpha"] / math.sqrt(spec["r"])
    return spec["lora_alpha"] / spec["r"]


def scale_for(scale, mod):
    return scale[mod] if isinstance(scale, dict) else scale


def target_modules(spec, cfg):
    """HF module names ("model.layers.1.self_attn.q_proj") that get a LoRA pair, in layer order."""
    out = []
    for i in range(cfg["num_hidden_layers"]):
        if spec["layers_to_transform"] is not None and i not in spec["layers_to_transform"]:
            continue
        for m in ATTN + MLP:
            if m in spec["target_modules"]:
                out.append("model.layers.%d.%s.%s" % (i, "self_attn" if m in ATTN else "mlp", m))
    return out


def peft_key(module, ab):
    return "base_model.model.%s.lora_%s.weight" % (module, ab)


def mag_key(module):
    return "base_model.model.%s.lora_magnitude_vector" % module


def dora_weight_norm(w, a, b, scale):
    """DoraLinearLayer.get_weight_norm(W, lora_B(lora_A(eye)).T, scaling), as forward calls it."""
    eye = torch.eye(a.shape[1], dtype=w.dtype)
    lora_weight = F.linear(F.linear(eye, a), b).T
    return torch.linalg.norm(w + scale * lora_weight, dim=1).to(w.dtype)


def init_adapter(spec, cfg, W):
    """{peft name: f32 tensor}, A [r,in] and B [out,r] both N(0, ADAPTER_STD^2)."""
    g = torch.Generator().manual_seed(spec["seed"])
    out = {}
    for mod in target_modules(spec, cfg):
        o, i = W[mod + ".weight"].shape
        r, _ = r_alpha_of(spec, mod)
        out[peft_key(mod, "A")] = torch.randn(r, i, generator=g) * ADAPTER_STD
        out[peft_key(mod, "B")] = torch.randn(o, r, generator=g) * ADAPTER_STD
    if spec.get("use_dora"):
        # PEFT's init m = ||W + s B A|| per row, then scaled by 1 + N(0, 0.1^2) so that
        # m / ||W + s B A|| != 1 and every term of the DoRA gradient is exercised.
        for mod in target_modules(spec, cfg):
            a, b = out[peft_key(mod, "A")], out[peft_key(mod, "B")]
            n = dora_weight_norm(W[mod + ".weight"].to(torch.float32), a, b, scale_for(scaling_of(spec, cfg), mod))
            out[mag_key(mod)] = n * (1 + torch.randn(n.shape, generator=g) * ADAPTER_STD)
    return out


def peft_init_like(spec, cfg, W, seed):
    """PEFT's own init (init_lora_weights=True), used only to check that B=0 leaves the model alone."""
    torch.manual_seed(seed)
    out = {}
    for mod in target_modules(spec, cfg):
        o, i = W[mod + ".weight"].shape
        r, _ = r_alpha_of(spec, mod)
        a = torch.empty(r, i)
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        out[peft_key(mod, "A")] = a
        out[peft_key(mod, "B")] = torch.zeros(o, r)
        if spec.get("use_dora"):  # DoraLinearLayer.update_layer: m = ||W + s B A|| = ||W||
            out[mag_key(mod)] = dora_weight_norm(W[mod + ".weight"].to(torch.float32), a, out[peft_key(mod, "B")],
                                                 scale_for(scaling_of(spec, cfg), mod))
    return out


def adapter_config(spec):
    """adapter_config.json as PEFT v0.19.1 save_pretrained writes it for a LoraConfig."""
    return {
        "alora_invocation_tokens": None,
        "alpha_pattern": spec.get("alpha_pattern", {}),
        "arrow_config": None,
        "auto_mapping": None,
        "base_model_name_or_path": "testdata/models/" + spec["model"],
        "bias": "none",
        "corda_config": None,
        "ensure_weight_tying": False,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": spec["layers_to_transform"],
        "loftq_config": {},
        "lora_alpha": spec["lora_alpha"],
        "lora_bias": False,
        "lora_dropout": 0.0,
        "lora_ga_config": None,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "peft_version": PEFT_VERSION,
        "qalora_group_size": 16,
        "r": spec["r"],
        "rank_pattern": spec.get("rank_pattern", {}),
        "revision": None,
        "target_modules": sorted(spec["target_modules"]),
        "target_parameters": None,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": None,
        "use_bdlora": None,
        "use_dora": bool(spec.get("use_dora", False)),
        "use_qalora": False,
        "use_rslora": spec["use_rslora"],
    }


def write_adapter(spec, adapter):
    d = os.path.join(ADAPTERS, spec["adapter"])
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    with open(os.path.join(d, "adapter_config.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(adapter_config(spec), indent=2, sort_keys=True))  # no trailing newline, as PEFT
    st = os.path.join(d, "adapter_model.safetensors")
    R.write_safetensors(st, adapter)
    back = R.read_safetensors(st)
    assert sorted(back) == sorted(adapter)
    for k in adapter:
        assert torch.equal(back[k], adapter[k]), k
    return d


def merge(W, adapter, scale):
    """PEFT merge_and_unload: W += (B @ A) * scaling, in f32 (DoRA: Linear.merge's dora branch)."""
    out = dict(W)
    for k in adapter:
        if not k.endswith(".lora_A.weight"):
            continue
        mod = k[len("base_model.model."):-len(".lora_A.weight")]
        a, b = adapter[k], adapter[peft_key(mod, "B")]
        out[mod + ".weight"] = W[mod + ".weight"].to(torch.float32) + (b @ a) * scale_for(scale, mod)
        if mag_key(mod) in adapter:
            w0, delta = W[mod + ".weight"].to(torch.float32), (b @ a) * scale_for(scale, mod)
            weight_norm = torch.linalg.norm(w0 + delta, dim=1)  # get_weight_norm(orig, delta, scaling=1)
            dora_factor = adapter[mag_key(mod)] / weight_norm
            out[mod + ".weight"] = dora_factor.view(-1, 1) * (w0 + delta)
    return out


# ---------------------------------------------------------------------------------------
# Forward: reference.forward plus packing and LoRA
# ---------------------------------------------------------------------------------------


def forward(cfg, W, ids, positions=None, seg=None, adapter=None, scale=0.0, dtype=torch.float32, norm_from=None):
    """Logits [T, V] of a packed sequence with an optional unmerged LoRA adapter.

    The same computation as reference.forward, op for op (checked bit for bit on one
    segment without adapter), with RoPE angles from positions[t] and attention limited to
    keys of the same segment. adapter maps PEFT names to tensors (which may require grad).
    norm_from (DoRA finite differences only): take A and B for the detached weight norm from
    this adapter instead, so that a perturbation moves only what autograd differentiates.
    """
    T = len(ids)
    positions = list(range(T)) if positions is None else positions
    seg = [0] * T if seg is None else seg
    W = {k: v.to(dtype) for k, v in W.items()}
    lora, mags = {}, {}
    if adapter:
        for k, a in adapter.items():
            if k.endswith(".lora_A.weight"):
                mod = k[len("base_model.model."):-len(".lora_A.weight")]
                lora[mod] = (a.to(dtype), adapter[peft_key(mod, "B")].to(dtype))
                if mag_key(mod) in adapter:
                    mags[mod] = adapter[mag_key(mod)].to(dtype)
    NH, KVH, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], R.head_dim_of(cfg)
    eps = cfg["rms_norm_eps"]

    def lin(mod, h):
        y = F.linear(h, W[mod + ".weight"], W.get(mod + ".bias"))
        s = scale_for(scale, mod) if mod in lora else 0.0
        if mod in mags:  # DoraLinearVariant.forward, dropout 0 (base_result = result)
            a, b = lora[mod]
            if norm_from is not None:
                a0 = norm_from[peft_key(mod, "A")].to(dtype)
                b0 = norm_from[peft_key(mod, "B")].to(dtype)
                weight_norm = dora_weight_norm(W[mod + ".weight"], a0, b0, s)
            else:
                weight_norm = dora_weight_norm(W[mod + ".weight"], a.detach(), b.detach(), s).detach()
            mag_norm_scale = (mags[mod] / weight_norm).view(1, -1)
            lora_result = F.linear(F.linear(h, a), b)
            base_result = y
            if W.get(mod + ".bias") is not None:
                base_result = base_result - W[mod + ".bias"]
            return y + ((mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * s)
        if mod in lora:
            a, b = lora[mod]
            y = y + F.linear(F.linear(h, a), b) * s  # lora_B(lora_A(dropout(x))) * scaling
        return y

    x = F.embedding(torch.tensor(ids, dtype=torch.long), W["model.embed_tokens.weight"])

    inv_freq = R.rope_inv_freq(cfg)
    pos = torch.tensor(positions, dtype=torch.long).float()
    freqs = (inv_freq[:, None] @ pos[None, :]).transpose(0, 1)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    if dtype == torch.float64:
        freqs64 = inv_freq.double()[:, None] @ pos.double()[None, :]
        emb64 = torch.cat((freqs64.T, freqs64.T), dim=-1)
        cos, sin = emb64.cos(), emb64.sin()

    q_idx = torch.arange(T)[:, None]
    kv_idx = torch.arange(T)[None, :]
    seg_t = torch.tensor(seg)
    same = seg_t[:, None] == seg_t[None, :]
    scaling = HD ** -0.5
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        allowed = (kv_idx <= q_idx) & same
        win = R.layer_window(cfg, i)
        if win is not None:
            allowed = allowed & (kv_idx > q_idx - win)

        h = R.rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(p + "self_attn.q_proj", h).view(T, NH, HD)
        k = lin(p + "self_attn.k_proj", h).view(T, KVH, HD)
        v = lin(p + "self_attn.v_proj", h).view(T, KVH, HD)
        if R.has_qk_norm(cfg):
            q = R.rms_norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = R.rms_norm(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        q = q * cos + R.rotate_half(q) * sin
        k = k * cos + R.rotate_half(k) * sin
        rep = NH // KVH
        k = k[:, None].expand(KVH, rep, T, HD).reshape(NH, T, HD)
        v = v[:, None].expand(KVH, rep, T, HD).reshape(NH, T, HD)
        att = torch.matmul(q, k.transpose(1, 2)) * scaling
        att = att.masked_fill(~allowed, float("-inf"))
        att = F.softmax(att, dim=-1, dtype=torch.float32 if dtype != torch.float64 else dtype).to(dtype)
        o = torch.matmul(att, v).transpose(0, 1).reshape(T, NH * HD)
        x = x + lin(p + "self_attn.o_proj", o)

        h = R.rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        m = F.silu(lin(p + "mlp.gate_proj", h)) * lin(p + "mlp.up_proj", h)
        x = x + lin(p + "mlp.down_proj", m)

    x = R.rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return F.linear(x, head)


# ---------------------------------------------------------------------------------------
# Packed batch and loss
# ---------------------------------------------------------------------------------------


def pack(samples):
    tokens, positions, seg, labels = [], [], [], []
    for s, (prompt, completion) in enumerate(samples):
        ids = prompt + completion
        tokens += ids
        positions += list(range(len(ids)))
        seg += [s] * len(ids)
        labels += [-100] * len(prompt) + completion  # prompt (and so the first token) unscored
    return {"tokens": tokens, "positions": positions, "seg_ids": seg, "labels": labels}


def shifted_targets(batch):
    """targets[t] = labels[t+1] inside a sample, -100 at a sample's last token."""
    lab, seg, T = batch["labels"], batch["seg_ids"], len(batch["labels"])
    return [lab[t + 1] if t + 1 < T and seg[t + 1] == seg[t] else -100 for t in range(T)]


def loss_sum(cfg, W, batch, adapter, scale, dtype=torch.float32, norm_from=None):
    logits = forward(cfg, W, batch["tokens"], batch["positions"], batch["seg_ids"], adapter, scale, dtype,
                     norm_from)
    tgt = torch.tensor(shifted_targets(batch))
    return F.cross_entropy(logits.float() if dtype != torch.float64 else logits, tgt, ignore_index=-100,
                           reduction="sum")


def grads(cfg, W, batch, adapter, scale, dtype):
    params = {k: v.detach().to(dtype).clone().requires_grad_(True) for k, v in adapter.items()}
    ls = loss_sum(cfg, W, batch, params, scale, dtype)
    ls.backward()
    return float(ls), {k: p.grad.detach() for k, p in params.items()}


def train(cfg, W, batch, adapter, scale, n, dtype=torch.float32):
    """STEPS AdamW steps on the mean loss, clipping the global grad norm to MAX_GRAD_NORM."""
    names = sorted(adapter)
    params = [adapter[k].detach().to(dtype).clone().requires_grad_(True) for k in names]
    opt = torch.optim.AdamW(params, lr=OPTIM["lr"], betas=tuple(OPTIM["betas"]), eps=OPTIM["eps"],
                            weight_decay=OPTIM["weight_decay"], amsgrad=False)
    steps = []
    for step in range(1, STEPS + 1):
        opt.zero_grad()
        loss = loss_sum(cfg, W, batch, dict(zip(names, params)), scale, dtype) / n
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM))
        opt.step()
        steps.append({"step": step, "loss": float(loss), "grad_norm": gn,
                      "clip_coef": min(1.0, MAX_GRAD_NORM / (gn + 1e-6))})
    with torch.no_grad():
        after = float(loss_sum(cfg, W, batch, dict(zip(names, params)), scale, dtype) / n)
    return steps, after, {k: p.detach() for k, p in zip(names, params)}


def adamw_by_hand(cfg, W, batch, adapter, scale, n):
    """The same 3 steps in float64 from the documented formulas (not torch.optim), to pin
    down what the golden's optimizer does: clip then decoupled decay, bias corrections."""
    names = sorted(adapter)
    p = {k: adapter[k].double().clone() for k in names}
    m = {k: torch.zeros_like(p[k]) for k in names}
    v = {k: torch.zeros_like(p[k]) for k in names}
    lr, (b1, b2), eps, wd = OPTIM["lr"], OPTIM["betas"], OPTIM["eps"], OPTIM["weight_decay"]
    norms = []
    for t in range(1, STEPS + 1):
        _, g = grads(cfg, W, batch, p, scale, torch.float64)
        g = {k: g[k] / n for k in names}
        norm = math.sqrt(sum(float((g[k] ** 2).sum()) for k in names))
        norms.append(norm)
        c = min(1.0, MAX_GRAD_NORM / (norm + 1e-6))
        for k in names:
            gk = g[k] * c
            p[k] = p[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk * gk
            mhat = m[k] / (1 - b1 ** t)
            denom = (v[k] / (1 - b2 ** t)).sqrt() + eps
            p[k] = p[k] - lr * mhat / denom
    return norms, p


# ---------------------------------------------------------------------------------------
# Output: float32 values printed as their shortest round-trip decimal
# ---------------------------------------------------------------------------------------


class F32:
    """A flat float32 list, printed compactly (str(np.float32) is the shortest decimal
    that parses back to the same float32)."""

    def __init__(self, t):
        self.v = t.detach().to(torch.float32).reshape(-1).numpy()
        assert np.isfinite(self.v).all()

    def dump(self):
        out = []
        for x in self.v:
            s = str(x)
            assert np.float32(s) == x, s
            out.append(s)
        return "[" + ",".join(out) + "]"


def dumps(v):
    if isinstance(v, F32):
        return v.dump()
    if isinstance(v, dict):
        return "{" + ",".join("%s:%s" % (json.dumps(k), dumps(x)) for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(dumps(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def tensor_map(ts):
    return {k: {"shape": list(t.shape), "data": F32(t)} for k, t in sorted(ts.items())}


def write_golden(path, g):
    """One top-level key per line; tensor maps one tensor per line, logits one row per line."""
    lines = ["{"]
    items = list(g.items())
    for i, (k, v) in enumerate(items):
        if isinstance(v, dict) and v and all(isinstance(x, dict) and "data" in x for x in v.values()):
            val = "{\n" + ",\n".join("  %s: %s" % (json.dumps(n), dumps(x)) for n, x in v.items()) + "\n }"
        elif isinstance(v, dict) and "logits" in v:
            rest = {a: b for a, b in v.items() if a != "logits"}
            val = dumps(rest)[:-1] + ',"logits":[\n' + ",\n".join("  " + dumps(r) for r in v["logits"]) + "\n ]}"
        else:
            val = dumps(v)
        lines.append(" %s: %s%s" % (json.dumps(k), val, "," if i < len(items) - 1 else ""))
    lines.append("}")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


def max_rel(a, b):
    """max |a - b| / max |b| over one tensor (a scale-aware relative error)."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def build(spec):
    name = spec["model"]
    mdir = os.path.join(R.MODELS, name)
    with open(os.path.join(mdir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    W = R.read_safetensors(os.path.join(mdir, "model.safetensors"))  # upcast to f32, as from_pretrained
    scale = scaling_of(spec, cfg)
    adapter = init_adapter(spec, cfg, W)
    adir = write_adapter(spec, adapter)
    notes = []

    batch = pack(spec["samples"]())
    T = len(batch["tokens"])
    tgt = shifted_targets(batch)
    n = sum(1 for t in tgt if t != -100)
    # HF's plain shift over the whole packed row gives the same targets, because every
    # sample's first label is -100 (DataCollatorWithFlattening): no loss crosses samples.
    assert tgt == batch["labels"][1:] + [-100]
    assert all(batch["labels"][t] == -100 for t in range(T) if batch["positions"][t] == 0)

    # 1. Without adapter, one segment: bit-identical to reference.forward.
    one = batch["tokens"][:len(spec["samples"]()[0][0])]
    assert torch.equal(forward(cfg, W, one), R.forward(cfg, W, one)), name
    # 2. Packed == each sample alone through reference.forward; loss with B = 0 (PEFT's
    #    init) == the base model's summed NLL of the samples run alone.
    packed = forward(cfg, W, batch["tokens"], batch["positions"], batch["seg_ids"])
    base_sum, off = 0.0, 0
    samp_diff = 0.0
    for prompt, completion in spec["samples"]():
        ids = prompt + completion
        lg = R.forward(cfg, W, ids)
        samp_diff = max(samp_diff, float((packed[off:off + len(ids)] - lg).abs().max()))
        lab = [-100] * len(prompt) + completion
        base_sum += float(F.cross_entropy(lg[:-1], torch.tensor(lab[1:]), ignore_index=-100, reduction="sum"))
        off += len(ids)
    assert samp_diff < 1e-6 * float(packed.abs().max()) * T, (name, samp_diff)
    notes.append("packed logits vs each sample alone through reference.forward: max |diff| %.2g" % samp_diff)
    zero = peft_init_like(spec, cfg, W, spec["seed"])
    ls0 = float(loss_sum(cfg, W, batch, zero, scale))
    assert abs(ls0 - base_sum) < 1e-5 * abs(base_sum), (name, ls0, base_sum)
    assert torch.equal(forward(cfg, W, batch["tokens"], batch["positions"], batch["seg_ids"], zero, scale), packed)
    notes.append("PEFT init (B = 0): logits bit-identical to no adapter; loss_sum %.6f vs %.6f from the samples "
                 "run alone" % (ls0, base_sum))

    # 3. Loss and gradients of loss_sum, f32 and f64.
    ls32, g32 = grads(cfg, W, batch, adapter, scale, torch.float32)
    ls64, g64 = grads(cfg, W, batch, adapter, scale, torch.float64)
    grad_rel = max(max_rel(g32[k], g64[k]) for k in g32)
    assert grad_rel < 1e-4, (name, grad_rel)
    assert all(float(g64[k].abs().max()) > 0 for k in g64)
    assert abs(ls0 - ls32) > 1e-3 * abs(ls32), "the adapter must move the loss"
    notes.append("float32 vs float64 gradients: max over tensors of max|g32-g64|/max|g64| = %.2g" % grad_rel)
    # finite differences in f64 on 3 random A entries and 3 random B entries
    g = torch.Generator().manual_seed(spec["seed"] + 7)
    keys = sorted(adapter)
    fd_worst = 0.0
    for ab in ("A", "B") + (("magnitude_vector",) if spec.get("use_dora") else ()):
        ks = [k for k in keys if ".lora_%s" % ab in k]
        for _ in range(3):
            k = ks[int(torch.randint(len(ks), (1,), generator=g))]
            j = int(torch.randint(adapter[k].numel(), (1,), generator=g))
            h = 1e-6
            vals = []
            for sgn in (1, -1):
                a = {kk: vv.double().clone() for kk, vv in adapter.items()}
                a[k].view(-1)[j] += sgn * h
                # DoRA: the weight norm is detached, so differentiate with it held at the point
                vals.append(float(loss_sum(cfg, W, batch, a, scale, torch.float64,
                                           adapter if spec.get("use_dora") else None)))
            fd = (vals[0] - vals[1]) / (2 * h)
            an = float(g64[k].view(-1)[j])
            err = abs(fd - an) / max(1.0, abs(an))
            fd_worst = max(fd_worst, err)
            assert err < 1e-6, (name, k, j, fd, an)
    notes.append("central differences (h=1e-6, float64) on 3 lora_A and 3 lora_B entries%s match autograd to %.2g"
                 % (" and 3 lora_magnitude_vector entries (weight norm held at the point, as detached)"
                    if spec.get("use_dora") else "", fd_worst))

    # 4. Three AdamW steps on the mean loss, with clipping.
    steps, after, final = train(cfg, W, batch, adapter, scale, n)
    steps64, after64, final64 = train(cfg, W, batch, adapter, scale, n, torch.float64)
    norms_hand, final_hand = adamw_by_hand(cfg, W, batch, adapter, scale, n)
    hand_diff = max(float((final64[k] - final_hand[k]).abs().max()) for k in final)
    assert hand_diff < 1e-12, (name, hand_diff)
    for s, nh in zip(steps64, norms_hand):
        assert abs(s["grad_norm"] - nh) < 1e-10 * nh
    w_diff = max(float((final[k].double() - final64[k]).abs().max()) for k in final)
    assert w_diff < 1e-5, (name, w_diff)
    assert any(s["grad_norm"] > MAX_GRAD_NORM for s in steps), "clipping should be exercised"
    assert after < steps[0]["loss"]
    notes.append("torch.optim.AdamW + clip_grad_norm_ in float64 == the hand-written update to %.2g" % hand_diff)
    notes.append("final weights: float32 vs float64 training max |diff| %.2g" % w_diff)

    lora_info = {"r": spec["r"], "lora_alpha": spec["lora_alpha"], "use_rslora": spec["use_rslora"],
                 "scaling": scale, "lora_dropout": 0.0, "target_modules": sorted(spec["target_modules"]),
                 "layers_to_transform": spec["layers_to_transform"],
                 "formula": "y = x W^T (+ b) + ((x A^T) B^T) * float32(scaling)"}
    if isinstance(scale, dict):
        lora_info["rank_pattern"] = spec.get("rank_pattern", {})
        lora_info["alpha_pattern"] = spec.get("alpha_pattern", {})
        lora_info["scaling"] = "per module, see module_r_alpha_scaling"
        lora_info["module_r_alpha_scaling"] = {m: [*r_alpha_of(spec, m), scale[m]] for m in target_modules(spec, cfg)}
        assert len({v[0] for v in lora_info["module_r_alpha_scaling"].values()}) >= 3  # the patterns bite
    initial = ("adapter_dir holds the adapter every computation here starts from: A [r,in] and B [out,r] "
               "both N(0, %g^2) (seeded), not PEFT's init, so that dL/dA != 0" % ADAPTER_STD)
    if spec.get("use_dora"):
        lora_info["use_dora"] = True
        lora_info["formula"] = ("n = ||W + scaling * (B A)||_2 per row (detached); y = x W^T (+ b) + (m/n - 1) * "
                                "(x W^T) + (m/n) * ((x A^T) B^T) * scaling")
        initial += ("; lora_magnitude_vector m = ||W + scaling B A|| per row times (1 + N(0, %g^2)) (PEFT's init "
                    "without the factor)" % ADAPTER_STD)
    g_out = {
        "model": name,
        "generator": GENERATOR,
        "model_dir": "testdata/models/" + name,
        "adapter_dir": os.path.relpath(adir, R.REPO),
        "adapter_initial": initial,
        "lora": lora_info,
        "compute_dtype": "float32",
        "notes": notes,
        "batch": dict(batch, T=T, samples=[len(p) + len(c) for p, c in spec["samples"]()],
                      tokens_text=[R.tokens_text("qwen3" if name.startswith("qwen") else name, p + c)
                                   for p, c in spec["samples"]()]),
        "label_convention": "labels aligned with tokens (HF, unshifted): logits[t] predicts labels[t+1] when "
                            "seg_ids[t+1] == seg_ids[t]; -100 takes no loss. Attention: t sees t' <= t with "
                            "seg_ids[t'] == seg_ids[t]; RoPE uses positions[t].",
        "loss": {"loss_sum": ls32, "n": n, "loss": ls32 / n, "loss_sum_float64": ls64,
                 "loss_sum_peft_init_b0": ls0},
        "grads_of": "loss_sum (the summed cross-entropy over the n counted targets, NOT the mean; the gradient "
                    "of the mean loss is grads / n), dropout 0, float32 autograd",
        "grad_max_rel_diff_vs_float64": grad_rel,
        "grads": tensor_map(g32),
        "train": {
            "objective": "mean loss = loss_sum / n over the same batch each step",
            "optimizer": OPTIM,
            "max_grad_norm": MAX_GRAD_NORM,
            "update": "g = grad(mean loss); total = sqrt(sum g^2) over all tensors; g *= min(1, max_norm / "
                      "(total + 1e-6)); p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; "
                      "p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)",
            "steps": steps,
            "loss_after": after,
            "steps_float64": [{"loss": s["loss"], "grad_norm": s["grad_norm"]} for s in steps64],
            "final_max_abs_diff_vs_float64": w_diff,
        },
        "final_weights": tensor_map(final),
    }

    # 5. Merge golden on the forward golden's tokens (from position 0, no packing).
    with open(os.path.join(R.GOLDEN, name + ".json"), encoding="utf-8") as f:
        fwd = json.load(f)
    toks = fwd["tokens"]
    base = forward(cfg, W, toks)
    # bit-identical with the BLAS the goldens were made with (Debian's reference libblas)
    golden_diff = float((base - torch.tensor(fwd["logits"], dtype=torch.float32)).abs().max())
    assert golden_diff < 1e-4, ("reference golden drifted", name, golden_diff)
    if golden_diff:
        notes.append("WARNING: forward differs from %s.json by %.2g (another BLAS?)" % (name, golden_diff))
    unmerged = forward(cfg, W, toks, adapter=adapter, scale=scale)
    merged = forward(cfg, merge(W, adapter, scale), toks)
    md = float((merged - unmerged).abs().max())
    moved = float((unmerged - base).abs().max())
    assert md < 1e-4 and moved > 0.1, (name, md, moved)
    g_out["merge"] = {
        "golden": "testdata/golden/%s.json" % name,
        "adapter_dir": g_out["adapter_dir"],
        "what": "logits of base + adapter_dir (unmerged LoRA branch, float32) on the golden's tokens from "
                "position 0; merging W += (B @ A) * scaling in float32 gives the same up to "
                "max_abs_diff_merged_vs_unmerged" if not spec.get("use_dora") else
                "logits of base + adapter_dir (unmerged DoRA, float32) on the golden's tokens from position 0; "
                "merging W' = (m / ||W + (B @ A) * scaling||)[:, None] * (W + (B @ A) * scaling) in float32 "
                "gives the same up to max_abs_diff_merged_vs_unmerged",
        "max_abs_diff_merged_vs_unmerged": md,
        "max_abs_diff_vs_base": moved,
        "tokens": toks,
        "logits": [F32(r) for r in unmerged],
    }
    path = os.path.join(R.GOLDEN, "%s.json" % spec.get("golden", "lora-" + name))
    write_golden(path, g_out)

    print("%-11s adapter %-17s r=%d scaling=%s  T=%d n=%d loss_sum=%.6f grads f32/f64 rel %.2g" % (
        name, spec["adapter"], spec["r"], scale, T, n, ls32, grad_rel))
    for s in steps:
        print("    step %d loss %.6f grad_norm %.4f" % (s["step"], s["loss"], s["grad_norm"]))
    print("    loss after %.6f; merge diff %.2g; %d B" % (after, md, os.path.getsize(path)))
    for x in notes:
        print("    " + x)
    return os.path.getsize(path) + sum(os.path.getsize(os.path.join(adir, f)) for f in os.listdir(adir))


def main():
    """Builds every spec, or only those whose adapter name is given on the command line."""
    os.makedirs(ADAPTERS, exist_ok=True)
    specs = [s for s in LORA_SPECS if not sys.argv[1:] or s["adapter"] in sys.argv[1:]]
    assert specs, "no spec named %s" % sys.argv[1:]
    total = sum(build(spec) for spec in specs)
    print("total bytes written: %d" % total)
    assert total < 2.5e6


if __name__ == "__main__":
    main()
