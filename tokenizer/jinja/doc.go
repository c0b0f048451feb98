// Package jinja renders Hugging Face chat templates: the subset of Python's
// jinja2 that transformers' apply_chat_template runs, with its settings
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loop controls)
// and extras (raise_exception, strftime_now, a tojson that keeps key order and
// non-ASCII text). Values print as Python prints them (True, None,
// ['a', 'b'], 1.0), and dicts keep insertion order.
//
// It is not a general jinja2: no autoescaping, template inheritance,
// includes, recursive loops or custom extensions. Rendering is bounded
// (output size, loop iterations, macro recursion) so untrusted templates fail
// with an error rather than hang.
package jinja
