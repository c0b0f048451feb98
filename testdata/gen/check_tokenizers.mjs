// Cross-checks the synthetic tokenizers that reference.py writes, with the JS port of HF
// tokenizers (@lenml/tokenizers, installed in testdata/oracle): every model folder's
// tokenizer.json + tokenizer_config.json must load, encode UTF-8 text to its bytes (plus
// the BOS where the post_processor adds one), keep special tokens whole, decode back, and
// render its chat template with @huggingface/jinja; the golden prompts must round-trip. Run: node testdata/gen/check_tokenizers.mjs (reference.py
// runs it when node and the oracle modules are present).
import { readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const require = createRequire(join(repo, "testdata", "oracle", "package.json"));
const { TokenizerLoader } = require("@lenml/tokenizers");
// @lenml/tokenizers bundles an older jinja that cannot parse the Qwen3 template.
const { Template } = require("@huggingface/jinja");

const text = readFileSync(join(repo, "testdata", "golden", "ppl.txt"), "utf8");
let failed = 0;
const check = (ok, what) => {
  if (!ok) {
    failed++;
    console.log("FAIL " + what);
  }
};
const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

for (const name of readdirSync(join(repo, "testdata", "models")).sort()) {
  const dir = join(repo, "testdata", "models", name);
  const tokenizerJSON = JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8"));
  const tokenizerConfig = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
  const tok = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
  const bos = tokenizerJSON.post_processor?.type === "Sequence" ? [256] : [];

  const ids = tok.encode(text);
  check(same(ids, [...bos, ...Buffer.from(text, "utf8")]), `${name}: encode(ppl.txt) != [bos] + bytes`);
  check(tok.decode(ids, { skip_special_tokens: true }) === text, `${name}: decode(encode(ppl.txt)) != ppl.txt`);

  const specials = tokenizerJSON.added_tokens.map((t) => t.content);
  const withSpecial = "x" + specials[1] + "é" + specials[specials.length - 1];
  const ids2 = tok.encode(withSpecial);
  const want2 = [...bos, 120, 257, 0xc3, 0xa9, 256 + specials.length - 1];
  check(same(ids2, want2), `${name}: encode(${withSpecial}) = ${ids2}, want ${want2}`);

  // The golden prompt, rendered as text, must tokenize back to the same ids.
  const golden = JSON.parse(readFileSync(join(repo, "testdata", "golden", name + ".json"), "utf8"));
  const promptText = tok.decode(golden.tokens, { skip_special_tokens: false });
  const back = tok.encode(promptText, { add_special_tokens: false });
  check(same(back, golden.tokens), `${name}: golden tokens ${golden.tokens} re-encode as ${back}`);

  let chat = "";
  if (tokenizerConfig.chat_template) {
    const messages = [
      { role: "user", content: "Héllo" },
      { role: "assistant", content: "Hi" },
      { role: "user", content: "2+2?" },
    ];
    chat = new Template(tokenizerConfig.chat_template).render({
      messages,
      add_generation_prompt: true,
      bos_token: tokenizerConfig.bos_token ?? "",
      eos_token: tokenizerConfig.eos_token,
    });
    check(chat.includes("Héllo") && chat.includes("2+2?"), `${name}: chat template lost content`);
    const chatIds = tok.encode(chat, { add_special_tokens: false });
    check(chatIds.every((id) => id < 256 + specials.length), `${name}: chat ids out of range`);
  }
  console.log(`${name}: ${ids.length} ids for ppl.txt, specials ok, chat ${JSON.stringify(chat)}`);
}
if (failed) {
  console.log(`${failed} tokenizer check(s) failed`);
  process.exit(1);
}
console.log("tokenizers: all checks passed");
