// Prints the token ids (JSON list) of data/legal/heldout.parquet's text
// column, joined with "\n\n" as `tune eval ppl` joins rows, read by DuckDB and
// encoded by transformers.js (@lenml/tokenizers) with the model's tokenizer.
//
// usage: node heldout_ids.mjs <node_modules dir> <model dir> <parquet>
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [modDir, modelDir, parquetPath] = process.argv.slice(2);
const { DuckDBInstance } = await import(pathToFileURL(path.join(modDir, '@duckdb', 'node-api', 'lib', 'index.js')).href);
const { TokenizerLoader } = await import(pathToFileURL(path.join(modDir, '@lenml', 'tokenizers', 'dist', 'main.mjs')).href);
const db = await DuckDBInstance.create(':memory:');
const con = await db.connect();
const res = await con.runAndReadAll(`select text from read_parquet('${parquetPath.replaceAll("'", "''")}') where text is not null`);
const text = res.getRows().map((r) => r[0]).join('\n\n');
const tok = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(fs.readFileSync(path.join(modelDir, 'tokenizer.json'), 'utf8')),
  tokenizerConfig: JSON.parse(fs.readFileSync(path.join(modelDir, 'tokenizer_config.json'), 'utf8')),
});
process.stdout.write(JSON.stringify(tok.encode(text, { add_special_tokens: true })));
