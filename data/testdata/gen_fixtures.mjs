// Writes the dataset-source fixtures of package data (data/testdata/sources/) with
// independent writers: DuckDB (npm @duckdb/node-api) for Parquet and apache-arrow
// (npm) for Arrow IPC streams and files. Beside them it writes *.want.json: the
// rows the Go reader must give, taken from this script's own input data (never
// from reading the files back). Run from the repository root:
//
//	node data/testdata/gen_fixtures.mjs
//
// Value conventions of data.Row the expectations follow: integers are JSON numbers
// without a fraction (Go compares them as int64), floats always carry a fraction
// here (compared as float64), timestamps are RFC 3339 strings in UTC, dates
// "YYYY-MM-DD", decimals float64, binary the raw bytes as a string.
import { DuckDBInstance } from "../../testdata/oracle/node_modules/@duckdb/node-api/lib/index.js";
import * as A from "../../testdata/oracle/node_modules/apache-arrow/Arrow.node.mjs";
import { mkdirSync, writeFileSync, rmSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const OUT = "data/testdata/sources";
rmSync(OUT, { recursive: true, force: true });
for (const d of ["hub/data", "sharegpt", "save_to_disk", "json"]) mkdirSync(join(OUT, d), { recursive: true });
const tmp = mkdtempSync(join(tmpdir(), "tune-fixtures-"));
const want = (name, obj) => writeFileSync(join(OUT, name), JSON.stringify(obj, null, 1) + "\n");

// ---- chat rows shared by the Parquet Hub layout and the Arrow stream ----------
// Row i is {id: i, ...templates[i % 7]}.
const templates = [
  { messages: [{ role: "system", content: "You are terse." }, { role: "user", content: "Hi" }, { role: "assistant", content: "Hello!" }], source: "alpha", score: 0.5, tags: ["a", "b"] },
  { messages: [{ role: "user", content: "2+2?" }, { role: "assistant", content: null }], source: "beta", score: null, tags: ["x", null] },
  { messages: [], source: "alpha", score: -1.25, tags: [] },
  { messages: null, source: null, score: 2.5, tags: null },
  { messages: [{ role: "user", content: "Ein Würfel 👩‍💻 同じ" }, { role: "assistant", content: 'line\nbreak "quoted"\ttab' }], source: "gamma", score: 0.125, tags: ["c"] },
  { messages: [{ role: "user", content: "x" }], source: "alpha", score: 0.001, tags: [null] },
  { messages: [{ role: "user", content: "long ".repeat(40) }, { role: "assistant", content: "" }], source: "beta", score: 3.75, tags: ["d", "e", "f"] },
];
const chatRow = (i) => ({ id: i, ...templates[i % templates.length] });

const db = await DuckDBInstance.create(":memory:");
const con = await db.connect();
// DuckDB runs COPY with several threads; one thread keeps the output bytes stable.
await con.run("SET threads = 1");
writeFileSync(join(tmp, "templates.jsonl"), templates.map((t, k) => JSON.stringify({ k, ...t })).join("\n") + "\n");
await con.run(`CREATE TABLE tmpl AS SELECT * FROM read_json('${tmp}/templates.jsonl', format = 'newline_delimited',
  columns = {k: 'INTEGER', messages: 'STRUCT(role VARCHAR, content VARCHAR)[]', source: 'VARCHAR', score: 'DOUBLE', tags: 'VARCHAR[]'})`);

// Hub layout: data/train-0000{0,1,2}-of-00003.parquet and a test split beside it.
// Shard 0 has 5000 rows in three row groups (DuckDB's row groups hold >= 2048
// rows); repeated strings make DuckDB dictionary-encode them.
const shards = [
  { file: "train-00000-of-00003.parquet", first: 0, n: 5000 },
  { file: "train-00001-of-00003.parquet", first: 5000, n: 10 },
  { file: "train-00002-of-00003.parquet", first: 5010, n: 7 },
  { file: "test-00000-of-00001.parquet", first: 9000, n: 3 },
];
for (const s of shards) {
  await con.run(`COPY (SELECT i AS id, messages, source, score, tags FROM range(${s.first}, ${s.first + s.n}) r(i)
    JOIN tmpl ON tmpl.k = i % ${templates.length} ORDER BY id) TO '${OUT}/hub/data/${s.file}' (FORMAT parquet, ROW_GROUP_SIZE 2048)`);
}
const rg = await con.runAndReadAll(`SELECT count(DISTINCT row_group_id)::INTEGER AS n FROM parquet_metadata('${OUT}/hub/data/${shards[0].file}')`);
const rowGroups = rg.getRowObjectsJson()[0].n;
const enc = await con.runAndReadAll(`SELECT string_agg(DISTINCT encodings, ' ') AS e FROM parquet_metadata('${OUT}/hub/data/${shards[0].file}') WHERE path_in_schema LIKE '%role%'`);
want("hub.want.json", {
  templates, shards, row_groups: rowGroups, role_encodings: enc.getRowObjectsJson()[0].e,
  schema: "id: int64, messages: list<struct<role: string, content: string>>, source: string, score: float64, tags: list<string>",
});

// A dataset with a schema and no rows.
await con.run(`COPY (SELECT * FROM tmpl WHERE false) TO '${OUT}/empty.parquet' (FORMAT parquet)`);

// ShareGPT: conversations list<struct<from, value>>.
const sharegpt = [
  { id: "a1", conversations: [{ from: "human", value: "What is 1+1?" }, { from: "gpt", value: "2" }] },
  { id: "a2", conversations: [{ from: "system", value: "Be kind." }, { from: "human", value: "Hi" }, { from: "gpt", value: "Hello" }, { from: "human", value: "Bye" }, { from: "gpt", value: "Bye!" }] },
  { id: "a3", conversations: [] },
  { id: "a4", conversations: [{ from: "human", value: null }] },
];
writeFileSync(join(tmp, "sharegpt.jsonl"), sharegpt.map((r) => JSON.stringify(r)).join("\n") + "\n");
await con.run(`COPY (SELECT * FROM read_json('${tmp}/sharegpt.jsonl', format = 'newline_delimited',
  columns = {id: 'VARCHAR', conversations: 'STRUCT("from" VARCHAR, "value" VARCHAR)[]'})) TO '${OUT}/sharegpt/sharegpt.parquet' (FORMAT parquet)`);
want("sharegpt.want.json", { rows: sharegpt });

// Alpaca: instruction/input/output with a null and an empty input.
const alpaca = [
  { instruction: "Give three tips for staying healthy.", input: "", output: "1. Eat well.\n2. Sleep.\n3. Move." },
  { instruction: "Translate to French.", input: "Good morning", output: "Bonjour" },
  { instruction: "Name a colour.", input: null, output: "Blue" },
];
writeFileSync(join(tmp, "alpaca.jsonl"), alpaca.map((r) => JSON.stringify(r)).join("\n") + "\n");
await con.run(`COPY (SELECT * FROM read_json('${tmp}/alpaca.jsonl', format = 'newline_delimited',
  columns = {instruction: 'VARCHAR', input: 'VARCHAR', output: 'VARCHAR'})) TO '${OUT}/alpaca.parquet' (FORMAT parquet)`);
want("alpaca.want.json", { rows: alpaca });

// Scalar and nested types. Each entry: column, SQL type, SQL literals per row,
// the Row values we expect, and the type Source.Schema names.
const typeCols = [
  ["i8", "TINYINT", ["-8", "127", "NULL"], [-8, 127, null], "int8"],
  ["i16", "SMALLINT", ["-300", "32767", "NULL"], [-300, 32767, null], "int16"],
  ["i32", "INTEGER", ["-70000", "2147483647", "NULL"], [-70000, 2147483647, null], "int32"],
  ["i64", "BIGINT", ["-5000000000", "9007199254740991", "NULL"], [-5000000000, 9007199254740991, null], "int64"],
  ["u8", "UTINYINT", ["255", "0", "NULL"], [255, 0, null], "uint8"],
  ["u16", "USMALLINT", ["65535", "1", "NULL"], [65535, 1, null], "uint16"],
  ["u32", "UINTEGER", ["4294967295", "2", "NULL"], [4294967295, 2, null], "uint32"],
  ["u64", "UBIGINT", ["12345678901234", "18446744073709551615", "NULL"], [12345678901234, "18446744073709551615", null], "uint64"],
  ["f32", "FLOAT", ["0.5", "-1.25", "NULL"], [0.5, -1.25, null], "float32"],
  ["f64", "DOUBLE", ["3.141592653589793", "-0.1", "NULL"], [3.141592653589793, -0.1, null], "float64"],
  ["b", "BOOLEAN", ["true", "false", "NULL"], [true, false, null], "bool"],
  ["s", "VARCHAR", ["'héllo'", "''", "NULL"], ["héllo", "", null], "string"],
  ["bin", "BLOB", ["'abc'::BLOB", "'\\x00\\x41'::BLOB", "NULL"], ["abc", "\u0000A", null], "binary"],
  ["d", "DATE", ["DATE '2024-02-29'", "DATE '1969-12-31'", "NULL"], ["2024-02-29", "1969-12-31", null], "date32"],
  ["ts", "TIMESTAMP", ["TIMESTAMP '2024-01-02 03:04:05.123456'", "TIMESTAMP '1970-01-01 00:00:00'", "NULL"], ["2024-01-02T03:04:05.123456Z", "1970-01-01T00:00:00Z", null], "timestamp[us]"],
  ["ts_ms", "TIMESTAMP_MS", ["TIMESTAMP_MS '2024-01-02 03:04:05.123'", "TIMESTAMP_MS '1999-12-31 23:59:59'", "NULL"], ["2024-01-02T03:04:05.123Z", "1999-12-31T23:59:59Z", null], "timestamp[ms]"],
  ["dec", "DECIMAL(9,2)", ["1234567.89", "-0.05", "NULL"], [1234567.89, -0.05, null], "decimal(9,2)"],
  ["dec18", "DECIMAL(18,4)", ["-12345678901234.5678", "0.0001", "NULL"], [-12345678901234.5678, 0.0001, null], "decimal(18,4)"],
  ["dec38", "DECIMAL(38,10)", ["-1234567890123.0123456789", "0.5", "NULL"], [-1234567890123.0123456789, 0.5, null], "decimal(38,10)"],
  ["uuid", "UUID", ["'123e4567-e89b-12d3-a456-426614174000'", "'00000000-0000-0000-0000-0000000000ff'", "NULL"], ["123e4567-e89b-12d3-a456-426614174000", "00000000-0000-0000-0000-0000000000ff", null], "uuid"],
  ["m", "MAP(VARCHAR, INTEGER)", ["MAP {'k1': 1, 'k2': NULL}", "MAP {}", "NULL"], [{ k1: 1, k2: null }, {}, null], "map<string, int32>"],
  ["st", "STRUCT(a INTEGER, b VARCHAR)", ["{'a': 1, 'b': 'x'}", "{'a': NULL, 'b': NULL}", "NULL"], [{ a: 1, b: "x" }, { a: null, b: null }, null], "struct<a: int32, b: string>"],
  ["li", "INTEGER[]", ["[1, NULL, 3]", "[]", "NULL"], [[1, null, 3], [], null], "list<int32>"],
  ["lli", "INTEGER[][]", ["[[1, 2], [], NULL, [3]]", "[[]]", "NULL"], [[[1, 2], [], null, [3]], [[]], null], "list<list<int32>>"],
  ["ls", "STRUCT(k VARCHAR, v DOUBLE[])[]", ["[{'k': 'a', 'v': [0.5, 1.5]}, {'k': NULL, 'v': NULL}]", "[NULL]", "NULL"], [[{ k: "a", v: [0.5, 1.5] }, { k: null, v: null }], [null], null], "list<struct<k: string, v: list<float64>>>"],
];
const nrows = 3;
const selects = [];
for (let r = 0; r < nrows; r++) selects.push("SELECT " + typeCols.map(([c, t, lits]) => `${lits[r]}::${t} AS ${c}`).join(", "));
await con.run(`COPY (${selects.join(" UNION ALL ")}) TO '${OUT}/types.parquet' (FORMAT parquet)`);
// Expected values: 18446744073709551615 does not fit int64, so the Row holds a
// float64; it is written as a string here and compared as a float by the test.
want("types.want.json", {
  columns: typeCols.map((c) => c[0]),
  schema: typeCols.map((c) => `${c[0]}: ${c[4]}`).join(", "),
  rows: Array.from({ length: nrows }, (_, r) => Object.fromEntries(typeCols.map((c) => [c[0], c[3][r]]))),
});

// ---- Arrow IPC (apache-arrow) ---------------------------------------------------
const utf8 = () => new A.Utf8();
const field = (name, type) => new A.Field(name, type, true);
const msgType = new A.List(field("item", new A.Struct([field("role", utf8()), field("content", utf8())])));

// datasets.save_to_disk layout: data-00000-of-00001.arrow (IPC stream, three
// record batches) with dataset_info.json and state.json beside it.
const batchSizes = [4, 3, 2];
const streamRows = Array.from({ length: 9 }, (_, i) => chatRow(i));
const chatTable = (rows) => new A.Table({
  id: A.vectorFromArray(rows.map((r) => BigInt(r.id)), new A.Int64()),
  messages: A.vectorFromArray(rows.map((r) => r.messages), msgType),
  source: A.vectorFromArray(rows.map((r) => r.source), new A.Dictionary(utf8(), new A.Int32())),
  score: A.vectorFromArray(rows.map((r) => r.score), new A.Float64()),
  tags: A.vectorFromArray(rows.map((r) => r.tags), new A.List(field("item", utf8()))),
});
// One table sliced into batches, so every batch shares the one dictionary.
const whole = chatTable(streamRows);
let off = 0;
const batches = [];
for (const n of batchSizes) {
  batches.push(...whole.slice(off, off + n).batches);
  off += n;
}
const streamTable = new A.Table(batches);
writeFileSync(join(OUT, "save_to_disk/data-00000-of-00001.arrow"), A.RecordBatchStreamWriter.writeAll(streamTable).toUint8Array(true));
writeFileSync(join(OUT, "save_to_disk/dataset_info.json"), JSON.stringify({ citation: "", description: "", features: {}, splits: { train: { name: "train", num_examples: streamRows.length } } }, null, 2) + "\n");
writeFileSync(join(OUT, "save_to_disk/state.json"), JSON.stringify({ _data_files: [{ filename: "data-00000-of-00001.arrow" }], _fingerprint: "0000", _format_type: null, _split: "train" }, null, 2) + "\n");
want("save_to_disk.want.json", { rows: streamRows, batches: streamTable.batches.length,
  schema: "id: int64, messages: list<struct<role: string, content: string>>, source: string, score: float64, tags: list<string>" });

// IPC file format with the wider types.
const fileRows = [
  { id: 1, text: "large string", nums: [1, 2, 3], u8: 200, u32: 4000000000, u64: "18446744073709551615", f32: 0.5, flag: true, st: { a: -3, b: "s" }, conv: [{ from: "human", value: "hey" }], cat: "red", nul: null, day: "2024-02-29", ts: "2024-01-02T03:04:05.123Z" },
  { id: 2, text: "", nums: [], u8: 0, u32: 0, u64: 7, f32: -2.25, flag: false, st: { a: null, b: null }, conv: [], cat: "blue", nul: null, day: "1970-01-01", ts: "1970-01-01T00:00:00Z" },
  { id: 3, text: null, nums: null, u8: null, u32: null, u64: null, f32: null, flag: null, st: null, conv: null, cat: null, nul: null, day: null, ts: null },
  { id: 4, text: "über", nums: [null, -7], u8: 1, u32: 1, u64: 1, f32: 1.5, flag: true, st: { a: 32767, b: "" }, conv: [{ from: "gpt", value: null }, { from: "human", value: "ok" }], cat: "red", nul: null, day: "2000-01-01", ts: "2000-01-01T12:00:00.5Z" },
];
const fileTable = (rows) => new A.Table({
  id: A.vectorFromArray(rows.map((r) => r.id), new A.Int32()),
  text: A.vectorFromArray(rows.map((r) => r.text), new A.LargeUtf8()),
  nums: A.vectorFromArray(rows.map((r) => r.nums), new A.LargeList(field("item", new A.Int32()))),
  u8: A.vectorFromArray(rows.map((r) => r.u8), new A.Uint8()),
  u32: A.vectorFromArray(rows.map((r) => r.u32), new A.Uint32()),
  u64: A.vectorFromArray(rows.map((r) => (r.u64 === null ? null : BigInt(r.u64))), new A.Uint64()),
  f32: A.vectorFromArray(rows.map((r) => r.f32), new A.Float32()),
  flag: A.vectorFromArray(rows.map((r) => r.flag), new A.Bool()),
  st: A.vectorFromArray(rows.map((r) => r.st), new A.Struct([field("a", new A.Int16()), field("b", utf8())])),
  conv: A.vectorFromArray(rows.map((r) => r.conv), new A.List(field("item", new A.Struct([field("from", utf8()), field("value", utf8())])))),
  cat: A.vectorFromArray(rows.map((r) => r.cat), new A.Dictionary(utf8(), new A.Int8())),
  nul: A.vectorFromArray(rows.map(() => null), new A.Null()),
  day: A.vectorFromArray(rows.map((r) => (r.day === null ? null : new Date(r.day + "T00:00:00Z"))), new A.DateDay()),
  ts: A.vectorFromArray(rows.map((r) => (r.ts === null ? null : Date.parse(r.ts))), new A.TimestampMillisecond()),
});
const wholeFile = fileTable(fileRows);
const fileBatches = [...wholeFile.slice(0, 3).batches, ...wholeFile.slice(3).batches];
writeFileSync(join(OUT, "file_format.arrow"), A.RecordBatchFileWriter.writeAll(new A.Table(fileBatches)).toUint8Array(true));
want("file_format.want.json", { rows: fileRows, batches: fileBatches.length,
  schema: "id: int32, text: string, nums: list<int32>, u8: uint8, u32: uint32, u64: uint64, f32: float32, flag: bool, st: struct<a: int16, b: string>, conv: list<struct<from: string, value: string>>, cat: string, nul: null, day: date32, ts: timestamp[ms]" });

// ---- JSON Lines and JSON lists (JSON.stringify is the writer) --------------------
const jsonRows = [
  { messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "yo" }], n: 3, x: 2.5, ok: true, meta: { k: [1, 2.5, null] } },
  { messages: [], n: -9007199254740991, x: 0.001, ok: false, meta: null },
  { messages: [{ role: "user", content: "ünïcødé\n👩‍💻" }], n: 0, x: -1.5, ok: null, meta: {} },
];
// Blank lines between rows must be skipped; line numbers still count them.
writeFileSync(join(OUT, "json/chat.jsonl"), jsonRows.map((r) => JSON.stringify(r)).join("\n\n") + "\n");
writeFileSync(join(OUT, "json/chat.json"), JSON.stringify(jsonRows, null, 2) + "\n");
want("json.want.json", { rows: jsonRows, lines: jsonRows.map((_, i) => 2 * i + 1) });

rmSync(tmp, { recursive: true, force: true });
console.log("hub row groups:", rowGroups, "role encodings:", enc.getRowObjectsJson()[0].e);
