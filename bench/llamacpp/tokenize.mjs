// tokenize.mjs MODEL.gguf CORPUS.json [--reps R]: llama.cpp's tokenizer speed
// (tokens/s, one thread: tokenization runs on the calling thread) over a JSON list
// of strings, special tokens not parsed, no BOS, as tune's BenchmarkEncode* runs.
// Prints one JSON line.
import fs from "node:fs";
import {loadLlama, llamaCppVersion, die} from "./common.mjs";

const [path, corpusFile] = process.argv.slice(2);
if (!path || !corpusFile) die("usage: node tokenize.mjs MODEL.gguf CORPUS.json [--reps R]");
const ri = process.argv.indexOf("--reps");
const reps = ri > 0 ? Number(process.argv[ri + 1]) : 3;

const llama = await loadLlama();
const model = await llama.loadModel({modelPath: path, gpuLayers: 0});
const lines = JSON.parse(fs.readFileSync(corpusFile, "utf8"));
const bytes = lines.reduce((n, s) => n + Buffer.byteLength(s, "utf8"), 0);
for (let i = 0; i < 2000; i++) model.tokenize(lines[i % lines.length], false);
let best = Infinity, tokens = 0;
for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    tokens = 0;
    for (const l of lines) tokens += model.tokenize(l, false).length;
    best = Math.min(best, (performance.now() - t0) / 1000);
}
console.log(JSON.stringify({llama_cpp_version: llamaCppVersion(llama), bytes, tokens, seconds: best,
    tokens_per_s: Math.round(tokens / best), mb_per_s: +(bytes / best / 1e6).toFixed(2)}));
await model.dispose();
await llama.dispose();
