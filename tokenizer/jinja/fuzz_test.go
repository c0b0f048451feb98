package jinja

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzParse feeds arbitrary template text through Parse and Render: neither
// may panic, and the render limits must stop runaway loops, recursion and
// output quickly.
func FuzzParse(f *testing.F) {
	for _, c := range engineCases {
		f.Add(c.tmpl)
	}
	files, _ := filepath.Glob("../testdata/chat/templates/*.jinja")
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(string(b))
		}
	}
	f.Add("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")
	f.Add("{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}x{% endfor %}{% endfor %}{% endfor %}")
	f.Add("{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}")
	f.Add("{{ ((((((((((((((((((((1)))))))))))))))))))) }}")
	f.Add("{% set ns = namespace() %}{% set ns.x = ns %}{{ ns }}{{ ns | tojson }}")
	msgs, _ := DecodeJSON([]byte(`[{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
		{"role": "assistant", "content": "<think>r</think>a", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
		{"role": "tool", "content": "t"}]`))
	f.Fuzz(func(t *testing.T, src string) {
		tpl, err := Parse(src)
		if err != nil {
			return
		}
		start := time.Now()
		_, _ = tpl.Render(map[string]any{
			"messages":              msgs,
			"add_generation_prompt": true,
			"bos_token":             "<s>",
			"tools":                 nil,
		})
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("render took %v", d)
		}
	})
}
