package export

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tunellm/tune/internal/fsutil"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"unicode/utf8"
)

// Family is a chat-template family tune can translate into ollama's Go
// template language: Template renders, with ollama's data model (.System,
// .Messages of .Role/.Content, .Think, .IsThinkSet), what the family's
// Hugging Face template renders for conversations that end with a user turn
// and ask for the assistant's reply; Stop are the strings that end a turn.
type Family struct {
	Name     string
	Template string
	Stop     []string
	// DefaultSystem is the system prompt the HF template inserts when the
	// conversation has none (Qwen2.5); it becomes the Modelfile's SYSTEM,
	// which ollama inserts in the same case.
	DefaultSystem string
}

// The templates follow ollama's own (template/chatml.gotmpl,
// llama3-instruct.gotmpl, mistral-instruct.gotmpl and the qwen3 library
// model), adjusted where those differ from the HF template the model was
// trained with: system messages are rendered once, from .System; Qwen3's
// enable_thinking=false becomes an empty think block when .IsThinkSet and
// not .Think; Mistral's system prompt is separated by a blank line (v0.3).
const (
	chatMLTemplate = `{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}`

	qwen3Template = `{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) }}<think>

</think>

{{ end }}
{{- end }}
{{- end }}`

	llama3Template = `{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

`

	// Llama 3.1/3.2/3.3 always open with a system turn that carries the
	// knowledge cut-off and a date (the HF template's default date_string).
	llama31Template = `<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

{{ if .System }}{{ .System }}{{ end }}<|eot_id|>
{{- range .Messages }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

`

	mistralTemplate = `{{- range $i, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}`
)

var (
	chatMLStop  = []string{"<|im_start|>", "<|im_end|>"}
	llama3Stop  = []string{"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}
	mistralStop = []string{"[INST]", "[/INST]"}
)

const qwen25DefaultSystem = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

// SupportedFamilies names what DetectFamily recognizes, for error messages.
const SupportedFamilies = "ChatML (Qwen2/Qwen2.5), Qwen3 (with thinking), Llama 3, Llama 3.1+, Mistral [INST]"

// DetectFamily recognizes the family of a Hugging Face chat template by its
// markers.
func DetectFamily(chatTemplate string) (*Family, error) {
	has := func(s string) bool { return strings.Contains(chatTemplate, s) }
	switch {
	case strings.TrimSpace(chatTemplate) == "":
		return nil, fmt.Errorf("export: the model has no chat template (supported families: %s)", SupportedFamilies)
	case has("<|im_start|>") && has("<think>") && has("enable_thinking"):
		return &Family{Name: "qwen3", Template: qwen3Template, Stop: chatMLStop}, nil
	case has("<|im_start|>"):
		f := &Family{Name: "chatml", Template: chatMLTemplate, Stop: chatMLStop}
		if has(qwen25DefaultSystem) {
			f.Name, f.DefaultSystem = "qwen2.5", qwen25DefaultSystem
		}
		return f, nil
	case has("<|start_header_id|>") && has("Cutting Knowledge Date"):
		return &Family{Name: "llama3.1", Template: llama31Template, Stop: llama3Stop}, nil
	case has("<|start_header_id|>"):
		return &Family{Name: "llama3", Template: llama3Template, Stop: llama3Stop}, nil
	case has("[INST]"):
		return &Family{Name: "mistral", Template: mistralTemplate, Stop: mistralStop}, nil
	}
	return nil, fmt.Errorf("export: chat template not recognized (supported families: %s); write the Modelfile TEMPLATE by hand", SupportedFamilies)
}

// Modelfile is what tune writes for `ollama create`.
type Modelfile struct {
	From     string   // the model GGUF
	Adapter  string   // a LoRA GGUF, or ""
	Template string   // Go text/template, ollama's data model
	Stop     []string // PARAMETER stop
	System   string   // SYSTEM, or ""
	// Params are other PARAMETER lines, in order (name, value).
	Params [][2]string
	// Comment lines written at the top (without "# ").
	Comment []string
}

// String renders the Modelfile. Multi-line values use """ quotes, as in
// ollama's documentation.
func (m *Modelfile) String() string {
	var b strings.Builder
	for _, c := range m.Comment {
		fmt.Fprintf(&b, "# %s\n", c)
	}
	fmt.Fprintf(&b, "FROM %s\n", quoteArg(m.From))
	if m.Adapter != "" {
		fmt.Fprintf(&b, "ADAPTER %s\n", quoteArg(m.Adapter))
	}
	if m.Template != "" {
		fmt.Fprintf(&b, "TEMPLATE \"\"\"%s\"\"\"\n", m.Template)
	}
	for _, s := range m.Stop {
		fmt.Fprintf(&b, "PARAMETER stop %s\n", strconv.Quote(s))
	}
	for _, p := range m.Params {
		fmt.Fprintf(&b, "PARAMETER %s %s\n", p[0], p[1])
	}
	if m.System != "" {
		fmt.Fprintf(&b, "SYSTEM \"\"\"%s\"\"\"\n", m.System)
	}
	return b.String()
}

func quoteArg(s string) string {
	if strings.ContainsAny(s, " \t\"") {
		return strconv.Quote(s)
	}
	return s
}

// Validate checks what ollama would choke on: a template that does not
// parse, and values that can not be quoted with """.
func (m *Modelfile) Validate() error {
	if m.From == "" {
		return errors.New("export: Modelfile: FROM is empty")
	}
	if _, err := template.New("").Option("missingkey=zero").Funcs(ollamaFuncs).Parse(m.Template); err != nil {
		return fmt.Errorf("export: Modelfile TEMPLATE: %v", err)
	}
	for name, v := range map[string]string{"TEMPLATE": m.Template, "SYSTEM": m.System} {
		if strings.Contains(v, `"""`) {
			return fmt.Errorf("export: Modelfile %s contains \"\"\", which ends ollama's quoting", name)
		}
	}
	return nil
}

// WriteModelfile writes dir/Modelfile atomically.
func WriteModelfile(dir string, m *Modelfile) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := fsutil.WriteFile(filepath.Join(dir, "Modelfile"), []byte(m.String())); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

// Command is one Modelfile instruction.
type Command struct {
	Name string // upper case: FROM, ADAPTER, TEMPLATE, SYSTEM, PARAMETER, ...
	Args string // for PARAMETER: "name value" with the value unquoted
}

// ParseModelfile reads a Modelfile as ollama's parser does for the forms
// tune writes and the common hand-written ones: one instruction per line
// (case-insensitive), comments (#), values bare, "quoted" or """multi-line""".
// Errors name the line.
func ParseModelfile(data []byte) ([]Command, error) {
	if !utf8.Valid(data) {
		return nil, errors.New("modelfile: not UTF-8")
	}
	s := strings.ReplaceAll(string(data), "\r\n", "\n")
	var cmds []Command
	line := 1
	for len(s) > 0 {
		nl := strings.IndexByte(s, '\n')
		cur := s
		if nl >= 0 {
			cur = s[:nl]
		}
		trimmed := strings.TrimSpace(cur)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			s = advance(s, nl)
			line++
			continue
		}
		sp := strings.IndexAny(trimmed, " \t")
		if sp < 0 {
			return nil, fmt.Errorf("modelfile: line %d: %q has no value", line, trimmed)
		}
		name := strings.ToUpper(trimmed[:sp])
		switch name {
		case "FROM", "ADAPTER", "TEMPLATE", "SYSTEM", "PARAMETER", "LICENSE", "MESSAGE", "REQUIRES":
		default:
			return nil, fmt.Errorf("modelfile: line %d: unknown instruction %q (want FROM, ADAPTER, TEMPLATE, SYSTEM, PARAMETER, LICENSE, MESSAGE or REQUIRES)", line, trimmed[:sp])
		}
		// The value starts after the name in the untrimmed text.
		start := strings.Index(s, trimmed) + sp
		rest := strings.TrimLeft(s[start:], " \t")
		prefix := ""
		if name == "PARAMETER" || name == "MESSAGE" {
			sp2 := strings.IndexAny(rest, " \t\n")
			if sp2 < 0 || rest[sp2] == '\n' {
				return nil, fmt.Errorf("modelfile: line %d: %s needs a name and a value", line, name)
			}
			prefix = rest[:sp2] + " "
			rest = strings.TrimLeft(rest[sp2:], " \t")
		}
		var val string
		switch {
		case strings.HasPrefix(rest, `"""`):
			end := strings.Index(rest[3:], `"""`)
			if end < 0 {
				return nil, fmt.Errorf("modelfile: line %d: %s: unterminated \"\"\"", line, name)
			}
			val = rest[3 : 3+end]
			consumed := rest[:3+end+3]
			line += strings.Count(consumed, "\n")
			s = rest[len(consumed):]
			if i := strings.IndexByte(s, '\n'); i >= 0 {
				if strings.TrimSpace(s[:i]) != "" {
					return nil, fmt.Errorf("modelfile: line %d: text after closing \"\"\"", line)
				}
			} else if strings.TrimSpace(s) != "" {
				return nil, fmt.Errorf("modelfile: line %d: text after closing \"\"\"", line)
			}
		case strings.HasPrefix(rest, `"`):
			i := strings.IndexByte(rest, '\n')
			l := rest
			if i >= 0 {
				l = rest[:i]
			}
			l = strings.TrimRight(l, " \t")
			u, err := strconv.Unquote(l)
			if err != nil {
				return nil, fmt.Errorf("modelfile: line %d: %s: bad quoted value %s", line, name, l)
			}
			val = u
			s = rest[len(l):]
		default:
			i := strings.IndexByte(rest, '\n')
			if i < 0 {
				val, s = strings.TrimSpace(rest), ""
			} else {
				val, s = strings.TrimSpace(rest[:i]), rest[i:]
			}
		}
		cmds = append(cmds, Command{Name: name, Args: prefix + val})
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		} else {
			s = ""
		}
		line++
	}
	return cmds, nil
}

func advance(s string, nl int) string {
	if nl < 0 {
		return ""
	}
	return s[nl+1:]
}

// ollamaFuncs are the functions ollama's template package adds.
var ollamaFuncs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}
