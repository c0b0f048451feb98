// lora.mjs BASE.gguf ADAPTER.gguf [--all] ID...: loads the base model with a
// llama.cpp LoRA adapter file (scale 1, unmerged, as llama-server --lora
// applies it) and prints the raw next-token logits as JSON
// {"n_vocab":V,"positions":[p...],"logits":[[V floats]...]}: the last
// position only, or every position with --all. The oracle for
// `tune export gguf-lora`: its logits must equal tune's with the PEFT adapter.
import {loadLlama, die} from "./common.mjs";

const args = process.argv.slice(2);
const base = args.shift();
const adapter = args.shift();
const all = args.includes("--all");
const ids = args.filter(a => a !== "--all").map(Number);
if (!base || !adapter || ids.length === 0 || ids.some(x => !Number.isInteger(x) || x < 0)) die("usage: node lora.mjs BASE.gguf ADAPTER.gguf [--all] ID...");

const llama = await loadLlama();
const model = await llama.loadModel({modelPath: base, gpuLayers: 0});
const n = Math.max(32, ids.length);
// F32 KV cache and no flash attention, as logits.mjs: nothing rounds K/V.
const ctx = await model.createContext({contextSize: n, batchSize: n, threads: 1, flashAttention: false,
    experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
    lora: {adapters: [{filePath: adapter, scale: 1}]}});
const seq = ctx.getSequence();
const nVocab = [...model.iterateAllTokens()].length;
const want = (i) => all || i === ids.length - 1;
const input = ids.map((id, i) => want(i) ? [id, {generateNext: {logits: true}}] : id);
const res = await seq.controlledEvaluate(input);
const positions = [], logits = [];
res.forEach((r, i) => {
    if (!want(i)) return;
    const m = r?.next?.logits;
    if (!m) die(`no logits for position ${i}`);
    const row = new Array(nVocab).fill(null);
    for (const [tok, v] of m) row[tok] = v;
    positions.push(i);
    logits.push(row);
});
console.log(JSON.stringify({n_vocab: nVocab, positions, logits}));
await ctx.dispose();
await model.dispose();
await llama.dispose();
