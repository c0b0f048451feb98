// Writes the Parquet fixtures of package data with DuckDB, an independent Parquet
// writer (npm @duckdb/node-api, installed by `make oracle`).
// Run from the repository root: node data/testdata/gen_parquet.mjs
import { DuckDBInstance } from "../../testdata/oracle/node_modules/@duckdb/node-api/lib/index.js";
import { writeFileSync } from "node:fs";

const rows = [
  "The quick brown fox jumps over the lazy dog.",
  null,
  "Ein Würfel hat sechs Seiten.",
  "同じ文字列",
  "同じ文字列",
  "line one\nline two\r\n\ttabbed",
  "",
  "emoji 👩‍💻 and numbers 3.14159",
];
const db = await DuckDBInstance.create(":memory:");
const con = await db.connect();
const values = rows.map((r, i) => `(${i}, ${r === null ? "NULL" : "'" + r.replaceAll("'", "''") + "'"})`).join(", ");
await con.run(`CREATE TABLE base AS SELECT * FROM (VALUES ${values}) AS v(k, text)`);
// N rows: row i holds rows[i % 8]. DuckDB's row groups hold at least 2048 rows, so
// N = 5000 gives three; repeated strings make it dictionary-encode the column.
const N = 5000;
await con.run(`CREATE TABLE t AS SELECT i AS id, base.text FROM range(${N}) r(i) JOIN base ON base.k = i % 8 ORDER BY id`);
await con.run(`COPY (SELECT id, text FROM t ORDER BY id) TO 'data/testdata/texts.parquet' (FORMAT parquet, ROW_GROUP_SIZE 2048)`);
await con.run(`COPY (SELECT k AS id, k * 1.5 AS score FROM base ORDER BY k) TO 'data/testdata/numbers.parquet' (FORMAT parquet)`);
writeFileSync("data/testdata/texts.want.json", JSON.stringify({ n: N, cycle: rows }, null, 1) + "\n");
const rg = await con.runAndReadAll(`SELECT count(DISTINCT row_group_id) AS n FROM parquet_metadata('data/testdata/texts.parquet')`);
console.log("row groups:", rg.getRowObjects()[0].n);
