// lora.mjs BASE.gguf ADAPTER.gguf [--all] ID...: loads the base model with a
// llama.cpp LoRA adapter file (scale 1, unmerged, as llama-server --lora
// applies it) and prints the raw next-token logits as JSON
// {"n_vocab":V,"positions":[p...],"logits":[[V floats]...]}: the last
// position only, or every position with --all. The oracle for
// `tune export gguf-lora`: its logits must equal tune's with the PEFT adapter.
import {loadLlama, printLogits, die} from "./common.mjs";

const args = process.argv.slice(2);
const base = args.shift();
const adapter = args.shift();
const all = args.includes("--all");
const ids = args.filter(a => a !== "--all").map(Number);
if (!base || !adapter || ids.length === 0 || ids.some(x => !Number.isInteger(x) || x < 0)) die("usage: node lora.mjs BASE.gguf ADAPTER.gguf [--all] ID...");

const llama = await loadLlama();
const model = await llama.loadModel({modelPath: base, gpuLayers: 0});
await printLogits(model, ids, all, {lora: {adapters: [{filePath: adapter, scale: 1}]}});
await model.dispose();
await llama.dispose();
