package export

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/tunellm/tune/quantize/gguf"
	"github.com/tunellm/tune/tokenizer"
)

// Conversation is one case of the template parity check.
type Conversation struct {
	Name     string
	Messages []tokenizer.Message
	// Think nil leaves enable_thinking undefined (ollama: .IsThinkSet
	// false); otherwise it is passed as enable_thinking / .Think.
	Think *bool
}

func msg(role, content string) tokenizer.Message {
	return tokenizer.Message{"role": role, "content": content}
}

var thinkOff = false

// ParityConversations are what a server renders: each ends with a user turn
// and asks for the assistant's reply (the generation prompt). History turns
// carry no surrounding white space: Llama 3's template trims content, Go
// templates can not, and trained data rarely has it.
var ParityConversations = []Conversation{
	{Name: "user", Messages: []tokenizer.Message{msg("user", "What is the capital of France?")}},
	{Name: "system+user", Messages: []tokenizer.Message{
		msg("system", "You are a careful legal assistant."),
		msg("user", "Can a tenant break a lease early?")}},
	{Name: "multi-turn", Messages: []tokenizer.Message{
		msg("system", "Answer briefly."),
		msg("user", "Name a river in Egypt."),
		msg("assistant", "The Nile."),
		msg("user", "And one in France?")}},
	{Name: "multi-turn without system", Messages: []tokenizer.Message{
		msg("user", "Hi!"),
		msg("assistant", "Hello. How can I help?"),
		msg("user", "Translate 'cat' to German."),
		msg("assistant", "Katze."),
		msg("user", "Thanks. And 'dog'?")}},
	{Name: "unicode and newlines", Messages: []tokenizer.Message{
		msg("user", "Résumé:\n- point one\n- 東京 🚀\n\nSummarize.")}},
	{Name: "thinking off", Messages: []tokenizer.Message{msg("user", "2+2?")}, Think: &thinkOff},
}

// Side renders a conversation to token ids the way one artifact's consumer
// does.
type Side struct {
	Name   string
	Render func(c Conversation) (text string, ids []int, err error)
}

// GGUFChat is what a GGUF file tells llama.cpp (and ollama) about chat
// rendering and tokenization.
type GGUFChat struct {
	Template         string // tokenizer.chat_template
	BOS, EOS         int    // -1 when absent
	BOSText, EOSText string
	AddBOS           bool // tokenizer.ggml.add_bos_token, or llama.cpp's default for the vocab
}

// ReadGGUFChat reads the chat-related metadata of a GGUF model file.
func ReadGGUFChat(path string) (*GGUFChat, error) {
	f, err := gguf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if v, _ := f.Value("general.type"); v == "adapter" {
		return nil, fmt.Errorf("export: %s is a LoRA adapter, not a model (pass it as --adapter)", path)
	}
	c := &GGUFChat{BOS: -1, EOS: -1}
	c.Template, _ = valueString(f, "tokenizer.chat_template")
	tokens, _ := f.Value("tokenizer.ggml.tokens")
	toks, _ := tokens.([]string)
	id := func(key string) (int, string) {
		v, ok := f.Value(key)
		if !ok {
			return -1, ""
		}
		n, ok := v.(uint32)
		if !ok || int(n) >= len(toks) {
			return -1, ""
		}
		return int(n), toks[n]
	}
	c.BOS, c.BOSText = id("tokenizer.ggml.bos_token_id")
	c.EOS, c.EOSText = id("tokenizer.ggml.eos_token_id")
	// llama-vocab.cpp: the key wins; without it SentencePiece vocabs and
	// the Llama 3 BPE pre-tokenizer add BOS, others do not.
	if v, ok := f.Value("tokenizer.ggml.add_bos_token"); ok {
		c.AddBOS, _ = v.(bool)
	} else {
		model, _ := valueString(f, "tokenizer.ggml.model")
		pre, _ := valueString(f, "tokenizer.ggml.pre")
		c.AddBOS = model == "llama" || pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3"
	}
	if c.BOS < 0 {
		c.AddBOS = false
	}
	return c, nil
}

func valueString(f *gguf.File, key string) (string, bool) {
	v, ok := f.Value(key)
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	return s, ok
}

func chatOptions(c Conversation, bos, eos string) tokenizer.ChatOptions {
	return tokenizer.ChatOptions{AddGenerationPrompt: true, EnableThinking: c.Think, BOSToken: bos, EOSToken: eos}
}

// TrainingSide renders with the model folder's chat template as
// transformers' apply_chat_template(add_generation_prompt=True,
// tokenize=True) does: the template's text, tokenized without adding
// special tokens (the template writes BOS itself when the model wants it).
func TrainingSide(tok *tokenizer.Tokenizer, chatTemplate string) Side {
	cfg := tok.Config()
	return Side{Name: "training template (tokenizer_config.json)", Render: func(c Conversation) (string, []int, error) {
		text, err := tokenizer.RenderChat(chatTemplate, c.Messages, chatOptions(c, cfg.BOSToken, cfg.EOSToken))
		if err != nil {
			return "", nil, err
		}
		return text, tok.Encode(text, false), nil
	}}
}

// GGUFSide renders with the GGUF's own copy of the template as llama.cpp's
// server applies it (common/chat.cpp): bos_token/eos_token from the file's
// vocab, a leading BOS text removed when the vocab adds BOS itself, then
// tokenized with BOS added per add_bos_token.
func GGUFSide(tok *tokenizer.Tokenizer, g *GGUFChat) Side {
	return Side{Name: "GGUF tokenizer.chat_template (llama.cpp)", Render: func(c Conversation) (string, []int, error) {
		if g.Template == "" {
			return "", nil, fmt.Errorf("the GGUF has no tokenizer.chat_template")
		}
		text, err := tokenizer.RenderChat(g.Template, c.Messages, chatOptions(c, g.BOSText, g.EOSText))
		if err != nil {
			return "", nil, err
		}
		if g.AddBOS && g.BOSText != "" && strings.HasPrefix(text, g.BOSText) {
			text = text[len(g.BOSText):]
		}
		return text, withBOS(g, tok.Encode(text, false)), nil
	}}
}

// OllamaSide renders with a Modelfile's TEMPLATE and SYSTEM as ollama does
// (template.Execute's .Messages path), tokenized as its runner does: BOS per
// the GGUF's add_bos_token, special tokens parsed.
func OllamaSide(tok *tokenizer.Tokenizer, mf *Modelfile, g *GGUFChat) Side {
	return Side{Name: "ollama Modelfile TEMPLATE", Render: func(c Conversation) (string, []int, error) {
		text, err := RenderOllama(mf.Template, mf.System, c.Messages, c.Think)
		if err != nil {
			return "", nil, err
		}
		return text, withBOS(g, tok.Encode(text, false)), nil
	}}
}

func withBOS(g *GGUFChat, ids []int) []int {
	if g != nil && g.AddBOS {
		return append([]int{g.BOS}, ids...)
	}
	return ids
}

// ollamaMessage mirrors ollama's api.Message fields a template can read.
type ollamaMessage struct {
	Role      string
	Content   string
	Thinking  string
	Images    []string
	ToolCalls []any
	ToolName  string
}

// RenderOllama executes an ollama TEMPLATE on a conversation as ollama's
// server does: the Modelfile's SYSTEM is prepended when the conversation
// has no system message (server/routes.go), consecutive messages of one role
// are merged and all system messages joined into .System (template.collate),
// and the template runs with .System, .Messages, .Tools, .Response "",
// .Think and .IsThinkSet. Templates without .Messages (ollama's legacy
// .Prompt/.Response path) are refused: tune does not check them.
func RenderOllama(tmpl, system string, msgs []tokenizer.Message, think *bool) (string, error) {
	t, err := template.New("").Option("missingkey=zero").Funcs(ollamaFuncs).Parse(tmpl)
	if err != nil {
		return "", fmt.Errorf("ollama template: %v", err)
	}
	if !slices.Contains(templateVars(t), "messages") {
		return "", fmt.Errorf("ollama template: does not range over .Messages (ollama's legacy .Prompt/.Response templates are not checked)")
	}
	var in []ollamaMessage
	for _, m := range msgs {
		role, _ := m["role"].(string)
		content, ok := m["content"].(string)
		if !ok {
			return "", fmt.Errorf("ollama template: a %s message's content is not a string", role)
		}
		thinking, _ := m["reasoning_content"].(string)
		in = append(in, ollamaMessage{Role: role, Content: content, Thinking: thinking})
	}
	if system != "" && !slices.ContainsFunc(in, func(m ollamaMessage) bool { return m.Role == "system" }) {
		in = append([]ollamaMessage{{Role: "system", Content: system}}, in...)
	}
	var sys []string
	var collated []*ollamaMessage
	for i := range in {
		if in[i].Role == "system" {
			sys = append(sys, in[i].Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == in[i].Role && in[i].Role != "tool" {
			collated[n-1].Content += "\n\n" + in[i].Content
		} else {
			collated = append(collated, &in[i])
		}
	}
	var b strings.Builder
	err = t.Execute(&b, map[string]any{
		"System":     strings.Join(sys, "\n\n"),
		"Messages":   collated,
		"Tools":      []any(nil),
		"Response":   "",
		"Think":      think != nil && *think,
		"IsThinkSet": think != nil,
	})
	if err != nil {
		return "", fmt.Errorf("ollama template: %v", err)
	}
	return b.String(), nil
}

// templateVars lists the lower-cased field and variable names a template
// uses (ollama's Template.Vars).
func templateVars(t *template.Template) []string {
	var out []string
	var walk func(n parse.Node)
	walk = func(n parse.Node) {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return
			}
			for _, c := range n.Nodes {
				walk(c)
			}
		case *parse.ActionNode:
			walk(n.Pipe)
		case *parse.TemplateNode:
			walk(n.Pipe)
		case *parse.IfNode:
			walk(&n.BranchNode)
		case *parse.RangeNode:
			walk(&n.BranchNode)
		case *parse.WithNode:
			walk(&n.BranchNode)
		case *parse.BranchNode:
			walk(n.Pipe)
			walk(n.List)
			if n.ElseList != nil {
				walk(n.ElseList)
			}
		case *parse.PipeNode:
			if n == nil {
				return
			}
			for _, c := range n.Cmds {
				for _, a := range c.Args {
					walk(a)
				}
			}
		case *parse.FieldNode:
			for _, s := range n.Ident {
				out = append(out, strings.ToLower(s))
			}
		case *parse.VariableNode:
			for _, s := range n.Ident {
				out = append(out, strings.ToLower(s))
			}
		}
	}
	for _, tt := range t.Templates() {
		if tt.Tree != nil {
			walk(tt.Tree.Root)
		}
	}
	return out
}

// ParityError is the first token where two renderings of a conversation
// differ.
type ParityError struct {
	Conversation string
	Want, Got    string // side names: the reference, the one that differs
	Index        int    // first differing token
	WantID       int    // -1: the reference ended there
	GotID        int    // -1: the other ended there
	WantTok      string // the differing tokens decoded
	GotTok       string
	WantContext  string // decoded tokens around Index
	GotContext   string
}

func (e *ParityError) Error() string {
	tokStr := func(id int, s string) string {
		if id < 0 {
			return "(end)"
		}
		return fmt.Sprintf("%d %s", id, strconv.Quote(s))
	}
	return fmt.Sprintf("template parity: conversation %q: %s differs from %s at token %d: %s, want %s; %s: %s; %s: %s",
		e.Conversation, e.Got, e.Want, e.Index, tokStr(e.GotID, e.GotTok), tokStr(e.WantID, e.WantTok),
		e.Got, strconv.Quote(e.GotContext), e.Want, strconv.Quote(e.WantContext))
}

// CheckParity renders every conversation through each side and compares
// the token ids with the first side's: nil when all agree, else a
// *ParityError for the first differing token (or the side's render error).
func CheckParity(tok *tokenizer.Tokenizer, sides []Side, convs []Conversation) error {
	if len(sides) < 2 {
		return nil
	}
	for _, c := range convs {
		_, ref, err := sides[0].Render(c)
		if err != nil {
			return fmt.Errorf("template parity: conversation %q: %s: %w", c.Name, sides[0].Name, err)
		}
		for _, s := range sides[1:] {
			_, ids, err := s.Render(c)
			if err != nil {
				return fmt.Errorf("template parity: conversation %q: %s: %w", c.Name, s.Name, err)
			}
			if e := firstDiff(tok, ref, ids); e != nil {
				e.Conversation, e.Want, e.Got = c.Name, sides[0].Name, s.Name
				return e
			}
		}
	}
	return nil
}

func firstDiff(tok *tokenizer.Tokenizer, want, got []int) *ParityError {
	n := min(len(want), len(got))
	i := 0
	for i < n && want[i] == got[i] {
		i++
	}
	if i == len(want) && i == len(got) {
		return nil
	}
	e := &ParityError{Index: i, WantID: -1, GotID: -1}
	if i < len(want) {
		e.WantID, e.WantTok = want[i], tok.Decode(want[i:i+1], false)
	}
	if i < len(got) {
		e.GotID, e.GotTok = got[i], tok.Decode(got[i:i+1], false)
	}
	ctx := func(ids []int) string {
		lo, hi := max(0, i-8), min(len(ids), i+8)
		s := tok.Decode(ids[lo:hi], false)
		if lo > 0 {
			s = "…" + s
		}
		if hi < len(ids) {
			s += "…"
		}
		return s
	}
	e.WantContext, e.GotContext = ctx(want), ctx(got)
	return e
}

// CheckFolderParity is the parity check for a model folder written from
// another (merged, quantized): the chat template in outDir's tokenizer
// files, as transformers and vLLM apply it with outDir's tokenizer, must give
// the training folder's token ids on every parity conversation.
func CheckFolderParity(trainingDir, outDir string) error {
	ref, err := tokenizer.Load(trainingDir)
	if err != nil {
		return err
	}
	got, err := tokenizer.Load(outDir)
	if err != nil {
		return err
	}
	if ref.Config().ChatTemplate == "" {
		return nil // nothing was trained with a template
	}
	out := TrainingSide(got, got.Config().ChatTemplate)
	out.Name = "chat template of " + outDir
	return CheckParity(ref, []Side{TrainingSide(ref, ref.Config().ChatTemplate), out}, ParityConversations)
}
