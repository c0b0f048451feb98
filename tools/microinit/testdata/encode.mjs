// Encodes strings with transformers.js's tokenizer (the @lenml/tokenizers
// port) loaded from a model folder's tokenizer.json and tokenizer_config.json,
// for demo_test.go to compare with tune's tokenizer.
//
// usage: node encode.mjs <node_modules dir> <model dir> <strings.json>
// prints {"ids": [[...]], "ids_special": [[...]], "decode": [...]}
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [modDir, modelDir, stringsFile] = process.argv.slice(2);
const { TokenizerLoader } = await import(pathToFileURL(path.join(modDir, '@lenml', 'tokenizers', 'dist', 'main.mjs')).href);
const tok = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(fs.readFileSync(path.join(modelDir, 'tokenizer.json'), 'utf8')),
  tokenizerConfig: JSON.parse(fs.readFileSync(path.join(modelDir, 'tokenizer_config.json'), 'utf8')),
});
const texts = JSON.parse(fs.readFileSync(stringsFile, 'utf8'));
const out = { ids: [], ids_special: [], decode: [] };
for (const t of texts) {
  const ids = tok.encode(t, { add_special_tokens: false });
  out.ids.push(ids);
  out.ids_special.push(tok.encode(t, { add_special_tokens: true }));
  out.decode.push(ids.length === 0 ? '' : tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }));
}
process.stdout.write(JSON.stringify(out));
