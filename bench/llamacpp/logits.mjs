// logits.mjs MODEL.gguf [--all] ID...: evaluates the token ids with llama.cpp
// in one batch and prints the raw next-token logits as JSON
// {"n_vocab":V,"positions":[p...],"logits":[[V floats]...]}: the last
// position only, or every position with --all. A second oracle, beside the
// PyTorch reference, for the GGUF export and our own forward pass.
import {loadLlama, printLogits, die} from "./common.mjs";

const args = process.argv.slice(2);
const path = args.shift();
const all = args.includes("--all");
const ids = args.filter(a => a !== "--all").map(Number);
if (!path || ids.length === 0 || ids.some(x => !Number.isInteger(x) || x < 0)) die("usage: node logits.mjs MODEL.gguf [--all] ID...");

const llama = await loadLlama();
const model = await llama.loadModel({modelPath: path, gpuLayers: 0});
await printLogits(model, ids, all);
await model.dispose();
await llama.dispose();
