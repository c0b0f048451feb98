"""Reference numbers for `tune eval kld` and `tune eval bench` (package eval).

Independent of tune: PyTorch forward passes from reference.py (model) and
lora_reference.py (unmerged PEFT LoRA), statistics in numpy, prompt formats written
from lm-evaluation-harness's task files (mmlu/default/_default_template_yaml,
arc/arc_easy.yaml, hellaswag/utils.py, gsm8k) and llama.cpp's
tools/perplexity/perplexity.cpp (kl_divergence). Writes:

  testdata/golden/eval-kld-qwen3-tied-r4.json   KL(P_base || P_base+LoRA) per token and summary
  testdata/golden/eval-bench-qwen3-tied.json    choice log-likelihoods, acc, acc_norm

Run: /usr/bin/python3 testdata/gen/eval_reference.py
"""
import json
import math
import os
import re
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as R  # noqa: E402
import lora_reference as LR  # noqa: E402

GENERATOR = "testdata/gen/eval_reference.py, torch %s" % torch.__version__.split("a")[0]
MODEL = os.path.join(R.MODELS, "qwen3-tied")
ADAPTER = os.path.join(R.REPO, "testdata", "adapters", "qwen3-tied-r4")
FIXTURES = os.path.join(R.REPO, "eval", "testdata")


def load_model(d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    return cfg, R.read_safetensors(os.path.join(d, "model.safetensors"))


def load_adapter(d):
    with open(os.path.join(d, "adapter_config.json")) as f:
        ac = json.load(f)
    scale = ac["lora_alpha"] / (math.sqrt(ac["r"]) if ac.get("use_rslora") else ac["r"])
    return R.read_safetensors(os.path.join(d, "adapter_model.safetensors")), scale


# ---------------------------------------------------------------------------------------
# KL divergence, llama.cpp conventions
# ---------------------------------------------------------------------------------------


def mean_unc(s, s2, n):
    f = s / n
    df = s2 / n - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def kld_mode(cfg, W, adapter, scale, stream, ctx, all_tokens):
    if all_tokens:
        wins = [stream[s:s + ctx] for s in range(0, len(stream), ctx) if len(stream[s:s + ctx]) >= 2]
        first = 0
    else:  # full windows only, rows ctx/2 .. ctx-2 (qwen3 adds no BOS)
        wins = [stream[s:s + ctx] for s in range(0, len(stream) - ctx + 1, ctx)]
        first = ctx // 2
    kl, nll, nllb, same = [], [], [], []
    for w in wins:
        lb = torch.log_softmax(R.forward(cfg, W, w).double(), dim=-1)
        lq = torch.log_softmax(LR.forward(cfg, W, w, adapter=adapter, scale=scale).double(), dim=-1)
        for t in range(first, len(w) - 1):
            pb = lb[t].exp()
            kl.append(float((pb * (lb[t] - lq[t])).sum()))
            nll.append(-float(lq[t, w[t + 1]]))
            nllb.append(-float(lb[t, w[t + 1]]))
            same.append(R.argmax_lowest(lb[t]) == R.argmax_lowest(lq[t]))
    kl, nll, nllb = np.array(kl), np.array(nll), np.array(nllb)
    n = len(kl)
    dp = np.exp(-nll) - np.exp(-nllb)
    lq_, lqu = mean_unc(nll.sum(), (nll ** 2).sum(), n)
    lb_, lbu = mean_unc(nllb.sum(), (nllb ** 2).sum(), n)
    cov = ((nll * nllb).sum() / n - lq_ * lb_) / (n - 1) if n >= 10 else 0.0
    mse, mseu = mean_unc((dp ** 2).sum(), (dp ** 4).sum(), n)
    st = sum(same) / n

    def q(v):  # numpy's linear percentile is llama.cpp's interpolation at fraction*(n-1)
        return {"max": float(v.max()), "p99_9": float(np.percentile(v, 99.9)), "p99": float(np.percentile(v, 99)),
                "p95": float(np.percentile(v, 95)), "p90": float(np.percentile(v, 90)),
                "p75": float(np.percentile(v, 75)), "median": float(np.median(v)),
                "p25": float(np.percentile(v, 25)), "p10": float(np.percentile(v, 10)),
                "p5": float(np.percentile(v, 5)), "p1": float(np.percentile(v, 1)),
                "p0_1": float(np.percentile(v, 0.1)), "min": float(v.min())}

    kmean, kunc = mean_unc(kl.sum(), (kl ** 2).sum(), n)
    dmean, dunc = mean_unc(dp.sum(), (dp ** 2).sum(), n)
    return {
        "ctx": ctx, "scored": "all" if all_tokens else "second-half", "windows": len(wins), "tokens": n,
        "per_token_kld": kl.tolist(), "per_token_nll_model": nll.tolist(), "per_token_nll_base": nllb.tolist(),
        "summary": {
            "ppl_model": math.exp(lq_), "ppl_model_unc": math.exp(lq_) * lqu,
            "ppl_base": math.exp(lb_), "ppl_base_unc": math.exp(lb_) * lbu,
            "cor_ln_ppl": cov / (lqu * lbu) if lqu > 0 and lbu > 0 else 0.0,
            "ln_ppl_ratio": lq_ - lb_, "ln_ppl_ratio_unc": math.sqrt(max(0.0, lqu ** 2 + lbu ** 2 - 2 * cov)),
            "ppl_ratio": math.exp(lq_ - lb_),
            "kld_mean": kmean, "kld_unc": kunc, "kld": q(kl),
            "delta_p_mean": dmean, "delta_p_unc": dunc, "delta_p": q(dp),
            "delta_p_rms": math.sqrt(mse), "delta_p_rms_unc": 0.5 / math.sqrt(mse) * mseu if mse > 0 else 0.0,
            "same_top": st, "same_top_unc": math.sqrt(st * (1 - st) / (n - 1)),
        },
    }


# ---------------------------------------------------------------------------------------
# lm-evaluation-harness prompts and scoring (byte tokenizer: ids = UTF-8 bytes)
# ---------------------------------------------------------------------------------------


def enc(s):
    return list(s.encode("utf-8"))


def encode_pair(context, continuation):  # HFLM._encode_pair
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = enc(context + continuation)
    c = enc(context)
    return c, whole[len(c):]


def loglikelihood(cfg, W, context, continuation):
    c, k = encode_pair(context, continuation)
    inp = (c + k)[:-1]
    logp = torch.log_softmax(R.forward(cfg, W, inp).double(), dim=-1)
    return float(sum(logp[len(inp) - len(k) + i, k[i]] for i in range(len(k))))


def hs_preprocess(text):  # hellaswag/utils.py
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def read_jsonl(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def mmlu_doc(d):
    text = d["question"].strip() + "".join("\n%s. %s" % ("ABCD"[i], c) for i, c in enumerate(d["choices"])) + "\nAnswer:"
    return {"subject": d["subject"].replace("_", " "), "text": text, "choices": ["A", "B", "C", "D"], "gold": d["answer"]}


def arc_doc(d):
    return {"text": "Question: " + d["question"] + "\nAnswer:", "choices": d["choices"]["text"],
            "gold": d["choices"]["label"].index(d["answerKey"])}


def mcq_doc(d):
    return {"text": "Question: " + d["question"] + "\nAnswer:", "choices": d["choices"], "gold": d["answer"]}


def hs_doc(d):
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    return {"text": hs_preprocess(d["activity_label"] + ": " + ctx), "choices": [hs_preprocess(e) for e in d["endings"]],
            "gold": int(d["label"])}


def bench(cfg, W, task, docs, shots_for=None):
    out, accs, norms = [], [], []
    for i, d in enumerate(docs):
        desc = ""
        if task == "mmlu":
            desc = "The following are multiple choice questions (with answers) about %s.\n\n" % d["subject"]
        shots = shots_for(d) if shots_for else []
        ctx = desc + "".join(s["text"] + " " + s["choices"][s["gold"]] + "\n\n" for s in shots) + d["text"]
        lls = [loglikelihood(cfg, W, ctx, " " + c) for c in d["choices"]]
        acc = float(np.argmax(lls) == d["gold"])
        norm = float(np.argmax(np.array(lls) / np.array([float(len(c)) for c in d["choices"]])) == d["gold"])
        accs.append(acc)
        norms.append(norm)
        out.append({"context": ctx, "lls": lls, "acc": acc, "acc_norm": norm})

    def m(x):  # metrics.py mean, mean_stderr (sample stddev / sqrt(n))
        x = np.array(x)
        return {"value": float(x.mean()), "stderr": float(x.std(ddof=1) / math.sqrt(len(x)))}

    return {"items": out, "acc": m(accs), "acc_norm": m(norms)}


def main():
    cfg, W = load_model(MODEL)
    adapter, scale = load_adapter(ADAPTER)
    with open(R.PPL_TEXT, "rb") as f:
        stream = list(f.read())
    kld = {"generator": GENERATOR, "base": "testdata/models/qwen3-tied",
           "model": "testdata/models/qwen3-tied + testdata/adapters/qwen3-tied-r4 (unmerged, scale %g)" % scale,
           "text_file": "testdata/golden/ppl.txt", "tokens_total": len(stream),
           "modes": [kld_mode(cfg, W, adapter, scale, stream, 64, False),
                     kld_mode(cfg, W, adapter, scale, stream, 64, True)]}
    with open(os.path.join(R.GOLDEN, "eval-kld-qwen3-tied-r4.json"), "w") as f:
        json.dump(kld, f, indent=1)
        f.write("\n")

    mmlu = [mmlu_doc(d) for d in read_jsonl("mmlu_sample.jsonl")]
    dev = [mmlu_doc(d) for d in read_jsonl("mmlu_dev.jsonl")]
    b = {"generator": GENERATOR, "model": "testdata/models/qwen3-tied",
         "mmlu": bench(cfg, W, "mmlu", mmlu),
         # 1-shot from the dev file: harness's first_n sampler over the item's subject
         "mmlu_dev_1shot": bench(cfg, W, "mmlu", mmlu, lambda d: [s for s in dev if s["subject"] == d["subject"]][:1]),
         "arc": bench(cfg, W, "arc", [arc_doc(d) for d in read_jsonl("arc_sample.jsonl")]),
         "hellaswag": bench(cfg, W, "hellaswag", [hs_doc(d) for d in read_jsonl("hellaswag_sample.jsonl")]),
         "mcq": bench(cfg, W, "mcq", [mcq_doc(d) for d in read_jsonl("mcq_sample.jsonl")])}
    with open(os.path.join(R.GOLDEN, "eval-bench-qwen3-tied.json"), "w") as f:
        json.dump(b, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for mo in kld["modes"]:
        s = mo["summary"]
        print("kld %-11s tokens %3d  mean KLD %.6f ± %.6f  same top %.4f  ppl base %.4f model %.4f" % (
            mo["scored"], mo["tokens"], s["kld_mean"], s["kld_unc"], s["same_top"], s["ppl_base"], s["ppl_model"]))
    for t in ("mmlu", "mmlu_dev_1shot", "arc", "hellaswag", "mcq"):
        print("%-15s acc %.4f ± %.4f  acc_norm %.4f" % (t, b[t]["acc"]["value"], b[t]["acc"]["stderr"], b[t]["acc_norm"]["value"]))


if __name__ == "__main__":
    main()


# gsm8k: greedy generation (appended so the fixtures above keep their order)
GSM8K_STOPS = ["Question:", "</s>", "<|im_end|>", "\n\n"]


def gsm8k(cfg, W, max_gen):
    eos = cfg["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    docs = read_jsonl("gsm8k_sample.jsonl")
    out = []
    for i, d in enumerate(docs):
        shots = [docs[j] for j in range(len(docs)) if j != i][:1]  # first_n over the file minus the item
        ctx = "".join("Question: " + s["question"] + "\nAnswer: " + s["answer"] + "\n\n" for s in shots)
        ctx += "Question: " + d["question"] + "\nAnswer:"
        ids = enc(ctx)
        gen = []
        for _ in range(max_gen):
            t = R.argmax_lowest(R.forward(cfg, W, ids + gen)[-1])
            gen.append(t)
            text = bytes(x for x in gen if x < 256).decode("utf-8", errors="replace")
            if t in eos or any(s in text for s in GSM8K_STOPS):
                break
        text = bytes(x for x in gen if x < 256).decode("utf-8", errors="replace")
        for s in GSM8K_STOPS:
            text = text.split(s)[0]
        out.append({"context": ctx, "generated_ids": gen, "response": text})
    return {"max_gen_toks": max_gen, "items": out}


if __name__ == "__main__":
    cfg, W = load_model(MODEL)
    path = os.path.join(R.GOLDEN, "eval-bench-qwen3-tied.json")
    with open(path) as f:
        b = json.load(f)
    b["gsm8k_1shot"] = gsm8k(cfg, W, 24)
    with open(path, "w") as f:
        json.dump(b, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for it in b["gsm8k_1shot"]["items"]:
        print("gsm8k response %r" % it["response"])
