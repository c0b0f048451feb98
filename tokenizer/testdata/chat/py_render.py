"""Renders chat-template cases with Python jinja2 configured exactly as
transformers' apply_chat_template configures it (chat_template_utils.py:
ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
tojson with ensure_ascii=False and key order kept, raise_exception,
strftime_now). This is the ground truth for tokenizer/jinja.

Usage: python3 py_render.py cases.json > results.json   (needs jinja2 3.x)

cases.json: [{"template": "...", "context": {...}}, ...]; a context key
"$strftime_date" (ISO date) fixes the clock behind strftime_now.
Output: [{"out": "..."} | {"error": "..."}, ...], one per case.
"""
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Generation(Extension):
    # transformers' AssistantTracker: {% generation %} marks assistant text;
    # for rendering it is transparent.
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def render(template, context):
    ctx = dict(context)
    date = ctx.pop("$strftime_date", None)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    now = datetime.fromisoformat(date.replace("Z", "+00:00")) if date else None
    env.globals["strftime_now"] = lambda fmt: (now or datetime.now()).strftime(fmt)
    try:
        return {"out": env.from_string(template).render(**ctx)}
    except Exception as e:  # noqa: BLE001 - any failure is a result to compare
        return {"error": f"{type(e).__name__}: {e}"}


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    json.dump([render(c["template"], c["context"]) for c in cases], sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
