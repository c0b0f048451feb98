// llamacpp_chat.mjs LLAMACPP_DIR MODEL.gguf CONVERSATIONS.json: an oracle for
// the GGUF side of tune's template parity check, independent of tune's
// Jinja engine and tokenizer. It renders the GGUF's own
// tokenizer.chat_template with @huggingface/jinja (the engine
// node-llama-cpp uses) as llama.cpp's server prepares a prompt
// (common/chat.cpp: bos_token/eos_token from the vocab, a leading BOS text
// removed when the vocab adds BOS), then tokenizes with llama.cpp itself
// (special tokens parsed, BOS prepended per the vocab). Prints one JSON list
// of {"name", "text", "ids"}. LLAMACPP_DIR is bench/llamacpp (its
// node_modules hold node-llama-cpp and @huggingface/jinja).
import fs from "node:fs";
import path from "node:path";
import {pathToFileURL} from "node:url";

const [dir, modelPath, convFile] = process.argv.slice(2);
if (!dir || !modelPath || !convFile) {
    console.error("usage: node llamacpp_chat.mjs LLAMACPP_DIR MODEL.gguf CONVERSATIONS.json");
    process.exit(2);
}
const mod = (p) => import(pathToFileURL(path.join(dir, "node_modules", p)).href);
const {getLlama} = await mod("node-llama-cpp/dist/index.js");
const {Template} = await mod("@huggingface/jinja/dist/index.js");

const llama = await getLlama({gpu: false, build: "never", logLevel: "error", progressLogs: false, skipDownload: true});
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const src = model.fileInfo.metadata?.tokenizer?.chat_template;
if (!src) {
    console.error(`${modelPath}: no tokenizer.chat_template`);
    process.exit(2);
}
const tmpl = new Template(src);
const bosText = model.tokens.bosString ?? "";
const eosText = model.tokens.eosString ?? "";
const addBos = model.tokens.shouldPrependBosToken;
const out = [];
for (const c of JSON.parse(fs.readFileSync(convFile, "utf8"))) {
    const vars = {messages: c.messages, add_generation_prompt: true, bos_token: bosText, eos_token: eosText};
    if (c.think !== null && c.think !== undefined) vars.enable_thinking = c.think;
    let text = tmpl.render(vars);
    if (addBos && bosText && text.startsWith(bosText)) text = text.slice(bosText.length);
    const ids = [...model.tokenize(text, true)];
    if (addBos && model.tokens.bos != null) ids.unshift(model.tokens.bos);
    out.push({name: c.name, text, ids});
}
console.log(JSON.stringify(out));
await model.dispose();
await llama.dispose();
