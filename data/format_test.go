package data

import (
	"strings"
	"testing"
)

func TestFormatterErrors(t *testing.T) {
	tok := loadModelTok(t, "qwen3-tied")
	for _, c := range []struct {
		name string
		cfg  Config
		row  Row
		want []string
	}{
		{"format", Config{Format: "alpaca"}, nil, []string{`"alpaca"`, "text, instruction, completion, chat"}},
		{"column key", Config{Format: "chat", Columns: map[string]string{"msgs": "x"}}, nil, []string{`unknown key "msgs"`}},
		{"train_on", Config{Format: "chat", TrainOn: "user"}, nil, []string{`"user"`, "assistant, all"}},
		{"sharegpt role", Config{Format: "chat"}, Row{"conversations": []any{map[string]any{"from": "bot", "value": "x"}}}, []string{`row 3`, `"bot"`, "human"}},
		{"messages type", Config{Format: "chat"}, Row{"messages": 3.5}, []string{`column "messages"`, "want a list of messages, found a number"}},
		{"message type", Config{Format: "chat"}, Row{"messages": []any{"hi"}}, []string{"message 0", "want an object, found a string"}},
		{"empty", Config{Format: "chat"}, Row{"messages": []any{}}, []string{"empty conversation"}},
		{"no assistant", Config{Format: "chat"}, Row{"messages": []any{map[string]any{"role": "user", "content": "x"}}}, []string{"no assistant turn"}},
		{"instruction null", Config{Format: "instruction"}, Row{"instruction": nil, "output": "x"}, []string{`column "instruction"`, "found null"}},
		{"completion missing", Config{Format: "completion"}, Row{"prompt": "x"}, []string{`no column "completion"`, "columns: prompt"}},
		{"bad json messages", Config{Format: "chat"}, Row{"messages": `[{"role": 1}]`}, []string{`column "messages"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := newFormatter(c.cfg, tok)
			if err == nil {
				_, err = f.examples(RowRef{File: "f.jsonl", Index: 3}, c.row)
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestMessagesAsJSONString: a messages column holding JSON text (CSV-ish
// exports do this) reads like the list itself.
func TestMessagesAsJSONString(t *testing.T) {
	tok := loadModelTok(t, "qwen3-tied")
	f, err := newFormatter(Config{Format: "chat"}, tok)
	if err != nil {
		t.Fatal(err)
	}
	list := Row{"messages": []any{map[string]any{"role": "user", "content": "a"}, map[string]any{"role": "assistant", "content": "b"}}}
	str := Row{"messages": `[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]`}
	a, err := f.examples(RowRef{}, list)
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.examples(RowRef{}, str)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 1 || len(b) != 1 || !equalInt32(a[0].IDs, b[0].IDs) || !equalInt32(a[0].Labels, b[0].Labels) {
		t.Fatalf("JSON-string messages differ from the list")
	}
}

func equalInt32(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
