// Shared helpers for the llama.cpp side of tune's benchmarks and oracles.
// llama.cpp comes from node-llama-cpp's prebuilt CPU binaries: no compiler,
// no GPU, no download at run time (build: "never").
import {getLlama} from "node-llama-cpp";
import fs from "node:fs";

export async function loadLlama() {
    return getLlama({gpu: false, build: "never", logLevel: "error", progressLogs: false, skipDownload: true});
}

// llamaCppVersion names the llama.cpp the prebuilt binaries were built from.
export function llamaCppVersion(llama) {
    const pkg = JSON.parse(fs.readFileSync(new URL("./node_modules/node-llama-cpp/package.json", import.meta.url)));
    const rel = llama.llamaCppRelease ?? {};
    return `node-llama-cpp ${pkg.version}, ${rel.repo ?? "llama.cpp"} ${rel.release ?? "?"}`;
}

export function die(msg) {
    console.error(msg);
    process.exit(2);
}

// printLogits evaluates ids in one batch in a fresh context of model (F32 KV
// cache, no flash attention: the default F16 cache rounds K/V and would hide
// differences of that size; ctxOptions adds e.g. a LoRA adapter) and prints
// the raw next-token logits as JSON {"n_vocab":V,"positions":[p...],
// "logits":[[V floats]...]}: the last position only, or every one with all.
export async function printLogits(model, ids, all, ctxOptions = {}) {
    const n = Math.max(32, ids.length);
    const ctx = await model.createContext({contextSize: n, batchSize: n, threads: 1, flashAttention: false,
        experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32", ...ctxOptions});
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
}
