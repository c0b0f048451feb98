package tokenizer

import (
	"errors"
	"fmt"
	"sync"

	"github.com/tunellm/tune/tokenizer/jinja"
)

// Message is one chat turn: "role", "content" (a string or a list of parts)
// and optional fields such as "tool_calls" or "reasoning_content". Nested
// objects may be *jinja.Map to keep JSON key order (ParseMessagesJSON makes
// them so); plain Go maps are rendered with sorted keys.
type Message = map[string]any

// ChatOptions are the template variables apply_chat_template passes besides
// the messages.
type ChatOptions struct {
	AddGenerationPrompt bool
	// EnableThinking is passed as enable_thinking only when non-nil: Qwen3's
	// template tests `enable_thinking is defined and enable_thinking is false`.
	EnableThinking *bool
	// BOSToken and EOSToken become bos_token and eos_token when non-empty
	// (transformers passes only the special tokens the tokenizer has).
	BOSToken, EOSToken string
	// Tools are the tool (function) schemas; nil renders as tools=None, as
	// transformers passes it.
	Tools []any
	// Extra holds any other template kwargs; they override the above.
	Extra map[string]any
}

// RenderChat renders a Hugging Face chat template (tokenizer_config.json's
// chat_template) the way transformers' apply_chat_template(tokenize=False)
// does. Errors are one line: "chat template: LINE:COL: reason", and a
// template's raise_exception(msg) gives "chat template: LINE:COL:
// raise_exception: msg".
func RenderChat(template string, messages []Message, opts ChatOptions) (string, error) {
	t, err := parseChatTemplate(template)
	if err != nil {
		return "", err
	}
	msgs := make([]any, len(messages))
	for i, m := range messages {
		msgs[i] = messageValue(m)
	}
	vars := map[string]any{
		"messages":              msgs,
		"add_generation_prompt": opts.AddGenerationPrompt,
		"tools":                 nil,
		"documents":             nil,
	}
	if opts.Tools != nil {
		vars["tools"] = jinja.FromGo(opts.Tools)
	}
	if opts.EnableThinking != nil {
		vars["enable_thinking"] = *opts.EnableThinking
	}
	if opts.BOSToken != "" {
		vars["bos_token"] = opts.BOSToken
	}
	if opts.EOSToken != "" {
		vars["eos_token"] = opts.EOSToken
	}
	for k, v := range opts.Extra {
		vars[k] = v
	}
	out, err := t.Render(vars)
	if err != nil {
		return "", fmt.Errorf("chat template: %w", err)
	}
	return out, nil
}

// parsed caches parsed templates: a data pipeline renders every row with the
// same one or two templates.
var (
	parsedMu sync.Mutex
	parsed   = map[string]*jinja.Template{}
)

const maxParsed = 16

func parseChatTemplate(src string) (*jinja.Template, error) {
	parsedMu.Lock()
	t := parsed[src]
	parsedMu.Unlock()
	if t != nil {
		return t, nil
	}
	t, err := jinja.Parse(src)
	if err != nil {
		return nil, fmt.Errorf("chat template: %w", err)
	}
	parsedMu.Lock()
	if len(parsed) >= maxParsed {
		clear(parsed)
	}
	parsed[src] = t
	parsedMu.Unlock()
	return t, nil
}

// IsRaised reports whether err came from the template calling
// raise_exception, i.e. the template rejected the conversation.
func IsRaised(err error) bool {
	var e *jinja.Error
	return errors.As(err, &e) && e.Raised
}

// messageOrder is the key order a Message (a Go map, which has none) is
// given: the usual fields first as HF datasets write them, the rest sorted.
var messageOrder = []string{"role", "content", "reasoning_content", "tool_calls", "tool_call_id", "name"}

func messageValue(m Message) *jinja.Map {
	out := jinja.NewMap()
	for _, k := range messageOrder {
		if v, ok := m[k]; ok {
			out.Set(k, jinja.FromGo(v))
		}
	}
	rest := jinja.FromGo(m).(*jinja.Map)
	for _, k := range rest.Keys() {
		if _, ok := out.Get(k); !ok {
			v, _ := rest.Get(k)
			out.Set(k, v)
		}
	}
	return out
}

// ParseMessagesJSON decodes a JSON list of messages ({"role": ..., "content":
// ..., ...}). Nested objects keep their key order (tool-call arguments are
// printed with tojson, and key order shows).
func ParseMessagesJSON(b []byte) ([]Message, error) {
	v, err := jinja.DecodeJSON(b)
	if err != nil {
		return nil, fmt.Errorf("chat messages: %w", err)
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("chat messages: want a JSON list of messages, got %s", jsonKind(v))
	}
	out := make([]Message, len(list))
	for i, e := range list {
		m, ok := e.(*jinja.Map)
		if !ok {
			return nil, fmt.Errorf("chat messages: message %d: want a JSON object, got %s", i, jsonKind(e))
		}
		msg := Message{}
		for _, k := range m.Keys() {
			ks, _ := k.(string)
			msg[ks], _ = m.Get(k)
		}
		if _, ok := msg["role"].(string); !ok {
			return nil, fmt.Errorf("chat messages: message %d: missing string \"role\"", i)
		}
		out[i] = msg
	}
	return out, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "a list"
	case *jinja.Map:
		return "an object"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	}
	return "a number"
}
