// bench.mjs MODEL.gguf [--threads N] [--reps R] [--pp 512] [--tg 128] [--tg-ctx 64]
//
// The llama.cpp side of tune's CPU benchmark, measured like llama-bench:
//   pp: one batch of PP fixed token ids into an empty sequence (prompt
//       processing), tokens/s;
//   tg: TG single-token decode steps after a TG_CTX-token prefix, each step
//       computing the next-token logits and a greedy pick (so context runs
//       TG_CTX..TG_CTX+TG, ~128 on average by default), tokens/s.
// Each is run once to warm up, then REPS times; the median is reported, and
// the best run as *_best (the better estimate on a shared, busy machine).
// Prints one JSON line. Defaults are llama.cpp's (F16 KV cache, flash
// attention chosen by llama.cpp); --kv f32 gives an F32 cache.
import {loadLlama, llamaCppVersion, die} from "./common.mjs";

const argv = process.argv.slice(2);
const opts = {threads: 1, reps: 3, pp: 512, tg: 128, "tg-ctx": 64, kv: "f16"};
let modelPath;
for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
        const k = a.slice(2);
        if (!(k in opts) || i + 1 >= argv.length) die(`bench.mjs: unknown or incomplete flag ${a}`);
        opts[k] = k === "kv" ? argv[++i] : Number(argv[++i]);
        if (k !== "kv" && !(Number.isInteger(opts[k]) && opts[k] > 0)) die(`bench.mjs: ${a} wants a positive integer`);
    } else if (!modelPath) modelPath = a;
    else die(`bench.mjs: unexpected argument ${a}`);
}
if (!modelPath) die("usage: node bench.mjs MODEL.gguf [--threads N] [--reps R] [--pp 512] [--tg 128] [--tg-ctx 64] [--kv f16|f32]");

const llama = await loadLlama();
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const kvType = opts.kv.toUpperCase();
const ctx = await model.createContext({
    contextSize: Math.max(opts.pp, opts["tg-ctx"] + opts.tg) + 16,
    batchSize: opts.pp,
    threads: opts.threads,
    experimentalKvCacheKeyType: kvType,
    experimentalKvCacheValueType: kvType,
});
const seq = ctx.getSequence();
const nVocab = [...model.iterateAllTokens()].length;
// Fixed, ordinary (non-special) ids spread over the vocab.
const ids = (n, seed) => Array.from({length: n}, (_, i) => (seed + i * 7919) % Math.min(nVocab, 256));

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function runPP() {
    await seq.clearHistory();
    const toks = ids(opts.pp, 1);
    const t0 = performance.now();
    await seq.evaluateWithoutGeneratingNewTokens(toks);
    return opts.pp / ((performance.now() - t0) / 1000);
}

async function runTG() {
    await seq.clearHistory();
    await seq.evaluateWithoutGeneratingNewTokens(ids(opts["tg-ctx"], 3));
    let tok = 65;
    const t0 = performance.now();
    for (let i = 0; i < opts.tg; i++) {
        // One decode step with logits for the new position and a greedy pick;
        // the picked token is discarded and a fixed one fed next, so a
        // random-weight model cannot stall on an end-of-generation token.
        const [r] = await seq.controlledEvaluate([[tok, {generateNext: {token: true, options: {temperature: 0}}}]]);
        if (r?.next?.token == null) die("bench.mjs: decode step produced no token");
        tok = 32 + (i * 31) % 90;
    }
    return opts.tg / ((performance.now() - t0) / 1000);
}

const pp = [], tg = [];
await runPP();
for (let r = 0; r < opts.reps; r++) pp.push(await runPP());
await runTG();
for (let r = 0; r < opts.reps; r++) tg.push(await runTG());

const round = (x) => Math.round(x * 100) / 100;
console.log(JSON.stringify({
    [`pp${opts.pp}_tok_s`]: round(median(pp)),
    tg_tok_s: round(median(tg)),
    [`pp${opts.pp}_tok_s_best`]: round(Math.max(...pp)),
    tg_tok_s_best: round(Math.max(...tg)),
    threads: ctx.currentThreads ?? opts.threads,
    llama_cpp_version: llamaCppVersion(llama),
    model: modelPath,
    n_vocab: nVocab,
    kv_cache: kvType,
    tg_context: [opts["tg-ctx"], opts["tg-ctx"] + opts.tg],
    pp_runs: pp.map(round),
    tg_runs: tg.map(round),
}));
await ctx.dispose();
await model.dispose();
await llama.dispose();
