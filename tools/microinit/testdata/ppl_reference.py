"""Golden perplexity of the shipped demo model (models/micro-qwen3) on the first
768 tokens of data/legal/heldout.parquet, windows of 256 tokens, computed by the
PyTorch Qwen3 forward of testdata/gen/reference.py. Token ids come from
heldout_ids.mjs (DuckDB + transformers.js). Writes golden_ppl.json beside this file.

Run from the repository root after shipping a new model:
    /usr/bin/python3 tools/microinit/testdata/ppl_reference.py
"""
import json
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.abspath(os.path.join(here, "..", "..", ".."))
sys.path.insert(0, os.path.join(root, "testdata", "gen"))
import reference  # noqa: E402

TOKENS, CTX = 768, 256
model = os.path.join(root, "models", "micro-qwen3")
mods = os.path.join(root, "testdata", "oracle", "node_modules")
ids = json.loads(subprocess.check_output(
    ["node", os.path.join(here, "heldout_ids.mjs"), mods, model, os.path.join(root, "data", "legal", "heldout.parquet")]))
cfg = json.load(open(os.path.join(model, "config.json")))
W = reference.read_safetensors(os.path.join(model, "model.safetensors"))
nll, scored, ppl = reference.perplexity(cfg, W, ids[:TOKENS], CTX)
out = {"tokens_total": len(ids), "ids_head": ids[:TOKENS], "ctx": CTX, "scored": scored, "nll": nll, "ppl": ppl}
with open(os.path.join(here, "golden_ppl.json"), "w") as f:
    json.dump(out, f)
print(json.dumps({k: v for k, v in out.items() if k != "ids_head"}))
