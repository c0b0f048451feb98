// load.mjs MODEL.gguf: loads the file with llama.cpp and prints, as JSON,
// what llama.cpp made of it (vocab size, training context, embedding size,
// special tokens) and node-llama-cpp's own JS parse of the GGUF header (an
// independent GGUF reader: metadata and tensor infos). Exit status 0 means
// llama.cpp accepted the file.
import {readGgufFileInfo} from "node-llama-cpp";
import {loadLlama, llamaCppVersion, die} from "./common.mjs";

const path = process.argv[2];
if (!path) die("usage: node load.mjs MODEL.gguf");

const info = await readGgufFileInfo(path, {logWarnings: false});
const llama = await loadLlama();
const model = await llama.loadModel({modelPath: path, gpuLayers: 0});
const ctx = await model.createContext({contextSize: 64, batchSize: 64, threads: 1});

// BigInts (u64/i64 metadata, tensor dims) are printed as decimal strings.
const json = (v) => JSON.stringify(v, (k, x) => typeof x === "bigint" ? x.toString() : x);
const meta = {};
(function flatten(prefix, o) {
    for (const [k, v] of Object.entries(o)) {
        const key = prefix ? `${prefix}.${k}` : k;
        if (v !== null && typeof v === "object" && !Array.isArray(v)) flatten(key, v);
        else meta[key] = Array.isArray(v) ? {len: v.length, head: v.slice(0, 4), tail: v.slice(-2)} : v;
    }
})("", info.metadata);

console.log(json({
    llama_cpp_version: llamaCppVersion(llama),
    architecture: model.fileInfo.metadata?.general?.architecture,
    n_vocab: model.tokens ? [...model.iterateAllTokens()].length : null,
    n_ctx_train: model.trainContextSize,
    n_embd: model.embeddingVectorSize,
    n_ctx: ctx.contextSize,
    bos: model.tokens.bos, eos: model.tokens.eos, eot: model.tokens.eot,
    should_prepend_bos: model.tokens.shouldPrependBosToken,
    gguf_version: info.version,
    tensor_count: info.tensorInfo?.length,
    tensors: (info.tensorInfo ?? []).map(t => ({name: t.name, dims: t.dimensions, type: t.ggmlType, offset: t.offset})),
    metadata: meta,
}));
await ctx.dispose();
await model.dispose();
await llama.dispose();
