// Writes Parquet copies of the mmlu and arc JSONL fixtures with the Hub's column
// types, using DuckDB (npm @duckdb/node-api), an independent Parquet writer.
// Run from the repository root: node eval/testdata/gen_parquet.mjs
import { DuckDBInstance } from "../../testdata/oracle/node_modules/@duckdb/node-api/lib/index.js";

const db = await DuckDBInstance.create(":memory:");
const con = await db.connect();
// cais/mmlu: question string, subject string, choices list<string>, answer int64 (ClassLabel)
await con.run(`COPY (SELECT question, subject, choices, answer::BIGINT AS answer
  FROM read_json('eval/testdata/mmlu_sample.jsonl', columns = {question: 'VARCHAR', subject: 'VARCHAR', choices: 'VARCHAR[]', answer: 'BIGINT'}))
  TO 'eval/testdata/mmlu_sample.parquet' (FORMAT parquet)`);
// allenai/ai2_arc: id, question, choices struct<text: list<string>, label: list<string>>, answerKey
await con.run(`COPY (SELECT id, question, choices, answerKey
  FROM read_json('eval/testdata/arc_sample.jsonl', columns = {id: 'VARCHAR', question: 'VARCHAR', choices: 'STRUCT(text VARCHAR[], label VARCHAR[])', answerKey: 'VARCHAR'}))
  TO 'eval/testdata/arc_sample.parquet' (FORMAT parquet)`);
console.log("wrote eval/testdata/{mmlu,arc}_sample.parquet");
