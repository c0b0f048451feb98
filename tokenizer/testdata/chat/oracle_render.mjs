// Renders chat-template cases with @huggingface/jinja, the JS port of
// Python's jinja2 that huggingface.js uses for chat templates, as the
// oracle for tokenizer/jinja and RenderChat.
//
// Usage: node oracle_render.mjs cases.json > results.json
//
// cases.json: [{"template": "...", "context": {...}}, ...]. Contexts are plain
// JSON (key order kept). A context key "$strftime_date" fixes the clock
// behind strftime_now to that ISO date (UTC) so renders are reproducible.
// Output: [{"out": "..."} | {"error": "..."}, ...], one per case.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "../../../testdata/oracle/package.json"));
const { Template } = require("@huggingface/jinja");

const RealDate = Date;
function fixClock(iso) {
	const fixed = new RealDate(iso).getTime();
	globalThis.Date = class extends RealDate {
		constructor(...a) {
			if (a.length === 0) super(fixed);
			else super(...a);
		}
		static now() {
			return fixed;
		}
	};
}

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = cases.map(({ template, context }) => {
	globalThis.Date = RealDate;
	const ctx = { ...context };
	if (ctx.$strftime_date) {
		fixClock(ctx.$strftime_date);
		delete ctx.$strftime_date;
	}
	try {
		return { out: new Template(template).render(ctx) };
	} catch (e) {
		return { error: String(e && e.message ? e.message : e) };
	}
});
process.stdout.write(JSON.stringify(results));
