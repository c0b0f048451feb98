package data

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/tunellm/tune/tokenizer"
)

// Formats are the dataset.format values Prepare understands.
var Formats = []string{"text", "instruction", "completion", "chat"}

// Example is one row turned into a training example. Labels follow Hugging
// Face's convention: Labels[i] is IDs[i] where the loss covers token i and
// -100 elsewhere; the shift by one (predict i+1 from i) happens in the loss.
type Example struct {
	IDs    []int32 // [T]
	Labels []int32 // [T]
	Ref    RowRef
}

// IgnoreIndex is the label of a token the loss skips (PyTorch's
// CrossEntropyLoss ignore_index).
const IgnoreIndex = -100

// defaultRoles maps ShareGPT "from" values (and the usual roles, unchanged)
// to chat-template roles.
var defaultRoles = map[string]string{
	"human": "user", "user": "user",
	"gpt": "assistant", "assistant": "assistant", "model": "assistant",
	"system": "system", "tool": "tool", "function": "tool", "observation": "tool",
}

// formatter turns rows of one dataset into Examples. It is safe for
// concurrent use (the tokenizer and the parsed template are).
type formatter struct {
	format   string
	cols     map[string]string
	system   string
	addEOS   bool
	trainAll bool
	roles    map[string]string

	tok      *tokenizer.Tokenizer
	tmpl     string
	chatOpts tokenizer.ChatOptions
	eosStr   string
	eosID    int32
	hasEOS   bool
	tb       *tokenBytes
}

func newFormatter(cfg Config, tok *tokenizer.Tokenizer) (*formatter, error) {
	f := &formatter{
		format:   cfg.Format,
		cols:     map[string]string{},
		system:   cfg.SystemPrompt,
		addEOS:   cfg.AddEOS == nil || *cfg.AddEOS,
		trainAll: cfg.TrainOn == "all",
		roles:    maps.Clone(defaultRoles),
		tok:      tok,
	}
	if f.format == "" {
		f.format = "chat"
	}
	if !slices.Contains(Formats, f.format) {
		return nil, fmt.Errorf("data: dataset.format %q is not supported (supported: %s)", cfg.Format, strings.Join(Formats, ", "))
	}
	switch cfg.TrainOn {
	case "", "assistant", "completion", "all":
	default:
		return nil, fmt.Errorf("data: dataset.train_on %q is not supported (supported: assistant, all)", cfg.TrainOn)
	}
	for _, k := range []string{"text", "instruction", "input", "output", "prompt", "completion", "messages"} {
		f.cols[k] = k
	}
	for k, v := range cfg.Columns {
		if _, ok := f.cols[k]; !ok {
			return nil, fmt.Errorf("data: dataset.columns: unknown key %q (known: text, instruction, input, output, prompt, completion, messages)", k)
		}
		f.cols[k] = v
	}
	for k, v := range cfg.RoleMap {
		f.roles[k] = v
	}
	c := tok.Config()
	f.tmpl = c.ChatTemplate
	if cfg.ChatTemplate != "" {
		f.tmpl = cfg.ChatTemplate
	}
	f.chatOpts = tokenizer.ChatOptions{BOSToken: c.BOSToken, EOSToken: c.EOSToken}
	f.eosStr = c.EOSToken
	if id, ok := tok.EOS(); ok {
		f.eosID, f.hasEOS = int32(id), true
	}
	if f.format != "text" && f.format != "completion" && f.tmpl == "" {
		return nil, fmt.Errorf("data: format %q needs the tokenizer's chat template, and tokenizer_config.json has none", f.format)
	}
	f.tb = tokenBytesOf(tok)
	return f, nil
}

// columns is what the formatter reads from each row of a source with the
// given columns (nil: all of them, for chat, whose column may be "messages"
// or "conversations"). The optional input column is read only where present.
func (f *formatter) columns(have []string) []string {
	switch f.format {
	case "text":
		return []string{f.cols["text"]}
	case "instruction":
		cols := []string{f.cols["instruction"], f.cols["output"]}
		if slices.Contains(have, f.cols["input"]) {
			cols = append(cols, f.cols["input"])
		}
		return cols
	case "completion":
		return []string{f.cols["prompt"], f.cols["completion"]}
	}
	return nil
}

// rowError is a row that cannot become an example; SkipBadRows counts them.
type rowError struct {
	ref RowRef
	msg string
}

func (e *rowError) Error() string { return fmt.Sprintf("data: %s: %s", e.ref, e.msg) }

func badRow(ref RowRef, format string, a ...any) error {
	return &rowError{ref: ref, msg: fmt.Sprintf(format, a...)}
}

// examples turns one row into examples: one, except for chat templates that
// are not prefix-stable (see chatSpans), which give one per assistant turn.
func (f *formatter) examples(ref RowRef, row Row) ([]Example, error) {
	switch f.format {
	case "text":
		s, err := f.str(ref, row, "text", true)
		if err != nil {
			return nil, err
		}
		return f.plain(ref, "", s)
	case "completion":
		pk, ck := f.cols["prompt"], f.cols["completion"]
		pv, ok := row[pk]
		if !ok {
			return nil, badRow(ref, "no column %q (columns: %s)", pk, rowKeys(row))
		}
		if _, isList := pv.([]any); isList {
			// TRL: a conversational prompt-completion row goes through the
			// chat template; only the completion's assistant turns train.
			prompt, err := f.messages(ref, pk, pv)
			if err != nil {
				return nil, err
			}
			cv, ok := row[ck]
			if !ok {
				return nil, badRow(ref, "no column %q (columns: %s)", ck, rowKeys(row))
			}
			comp, err := f.messages(ref, ck, cv)
			if err != nil {
				return nil, err
			}
			return f.chat(ref, append(prompt, comp...), len(prompt))
		}
		p, err := f.str(ref, row, "prompt", true)
		if err != nil {
			return nil, err
		}
		c, err := f.str(ref, row, "completion", true)
		if err != nil {
			return nil, err
		}
		return f.plain(ref, p, c)
	case "instruction":
		ins, err := f.str(ref, row, "instruction", true)
		if err != nil {
			return nil, err
		}
		in, err := f.str(ref, row, "input", false)
		if err != nil {
			return nil, err
		}
		out, err := f.str(ref, row, "output", true)
		if err != nil {
			return nil, err
		}
		// Alpaca as a chat, as axolotl's alpaca-to-chat and the usual
		// conversions do: the input, when there is one, follows the
		// instruction after a blank line in the same user turn.
		user := ins
		if in != "" {
			user += "\n\n" + in
		}
		msgs := []tokenizer.Message{{"role": "user", "content": user}, {"role": "assistant", "content": out}}
		return f.chat(ref, msgs, 0)
	}
	key := f.cols["messages"]
	v, ok := row[key]
	if !ok && f.cols["messages"] == "messages" {
		if c, ok2 := row["conversations"]; ok2 {
			key, v, ok = "conversations", c, true
		}
	}
	if !ok {
		return nil, badRow(ref, "no column %q (columns: %s)", key, rowKeys(row))
	}
	msgs, err := f.messages(ref, key, v)
	if err != nil {
		return nil, err
	}
	return f.chat(ref, msgs, 0)
}

// str reads a string column; a missing optional column or a null reads as "".
func (f *formatter) str(ref RowRef, row Row, key string, required bool) (string, error) {
	col := f.cols[key]
	v, ok := row[col]
	if !ok {
		if !required {
			return "", nil
		}
		return "", badRow(ref, "no column %q (columns: %s)", col, rowKeys(row))
	}
	switch s := v.(type) {
	case string:
		return s, nil
	case nil:
		if !required {
			return "", nil
		}
		return "", badRow(ref, "column %q: want a string, found null", col)
	}
	return "", badRow(ref, "column %q: want a string, found %s", col, kindOf(v))
}

// messages reads a list of {role, content} or ShareGPT {from, value}
// objects (or a JSON string holding one).
func (f *formatter) messages(ref RowRef, col string, v any) ([]tokenizer.Message, error) {
	if s, ok := v.(string); ok {
		ms, err := tokenizer.ParseMessagesJSON([]byte(s))
		if err != nil {
			return nil, badRow(ref, "column %q: %v", col, err)
		}
		v = make([]any, len(ms))
		for i, m := range ms {
			v.([]any)[i] = map[string]any(m)
		}
	}
	list, ok := v.([]any)
	if !ok {
		return nil, badRow(ref, "column %q: want a list of messages, found %s", col, kindOf(v))
	}
	out := make([]tokenizer.Message, 0, len(list)+1)
	for i, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			return nil, badRow(ref, "column %q: message %d: want an object, found %s", col, i, kindOf(e))
		}
		msg := tokenizer.Message{}
		for k, x := range m {
			switch k {
			case "from", "value":
			default:
				msg[k] = x
			}
		}
		role, ok := m["role"].(string)
		if !ok {
			from, ok2 := m["from"].(string)
			if !ok2 {
				return nil, badRow(ref, "column %q: message %d: want a string \"role\" (or ShareGPT \"from\"), found %s", col, i, kindOf(m["role"]))
			}
			r, known := f.roles[from]
			if !known {
				return nil, badRow(ref, "column %q: message %d: ShareGPT role %q has no mapping (known: %s)", col, i, from, strings.Join(slices.Sorted(maps.Keys(f.roles)), ", "))
			}
			role = r
			if _, has := m["content"]; !has {
				msg["content"] = m["value"]
			}
		} else if r, known := f.roles[role]; known {
			role = r
		}
		msg["role"] = role
		out = append(out, msg)
	}
	if len(out) == 0 {
		return nil, badRow(ref, "column %q: empty conversation", col)
	}
	return out, nil
}

// plain is a text row (prompt == "") or a plain prompt-completion row, as
// TRL's SFTTrainer tokenizes them: tokenizer(prompt + completion) with the
// tokenizer's special tokens (BOS where it adds one), eos_token appended to
// the text unless it already ends with it, and for prompt-completion the loss
// on the completion and the EOS only.
func (f *formatter) plain(ref RowRef, prompt, text string) ([]Example, error) {
	full := prompt + text
	addEOS := f.addEOS && f.hasEOS && !strings.HasSuffix(full, f.eosStr)
	if addEOS {
		full += f.eosStr
	}
	if full == "" {
		return nil, badRow(ref, "empty text")
	}
	spans := []span{{0, len(full)}}
	if prompt != "" && !f.trainAll {
		spans[0].start = len(prompt)
	}
	ex, err := f.encode(ref, full, true, spans)
	if err != nil {
		return nil, err
	}
	return []Example{ex}, nil
}

// chat renders msgs with the chat template and trains the assistant turns
// at index >= from (all tokens when train_on is "all").
func (f *formatter) chat(ref RowRef, msgs []tokenizer.Message, from int) ([]Example, error) {
	if f.system != "" && msgs[0]["role"] != "system" {
		msgs = append([]tokenizer.Message{{"role": "system", "content": f.system}}, msgs...)
		from++
	}
	full, err := tokenizer.RenderChat(f.tmpl, msgs, f.chatOpts)
	if err != nil {
		return nil, badRow(ref, "render: %v", err)
	}
	if f.trainAll {
		ex, err := f.encode(ref, full, false, []span{{0, len(full)}})
		if err != nil {
			return nil, err
		}
		return []Example{ex}, nil
	}
	spans, err := f.chatSpans(msgs, full, from)
	if err == nil {
		if len(spans) == 0 {
			return nil, badRow(ref, "no assistant turn to train on")
		}
		ex, err := f.encode(ref, full, false, spans)
		if err != nil {
			return nil, err
		}
		return []Example{ex}, nil
	}
	var unstable *unstableError
	if !asUnstable(err, &unstable) {
		return nil, badRow(ref, "%v", err)
	}
	// The template renders earlier turns differently once later ones follow,
	// so no single render holds every turn as the model would generate it:
	// one example per assistant turn, the conversation up to that turn,
	// trained on that turn only.
	var out []Example
	for i := from; i < len(msgs); i++ {
		if msgs[i]["role"] != "assistant" {
			continue
		}
		part, err := tokenizer.RenderChat(f.tmpl, msgs[:i+1], f.chatOpts)
		if err != nil {
			return nil, badRow(ref, "render messages[:%d]: %v", i+1, err)
		}
		sp, err := f.turnSpan(msgs, i, part)
		if err != nil {
			return nil, badRow(ref, "%v (after: %v)", err, unstable)
		}
		ex, err := f.encode(ref, part, false, []span{sp})
		if err != nil {
			return nil, err
		}
		out = append(out, ex)
	}
	if len(out) == 0 {
		return nil, badRow(ref, "no assistant turn to train on")
	}
	return out, nil
}

// encode tokenizes text and labels the tokens that overlap spans (see
// mask.go for why by byte offsets). Where the tokens do not lay out along
// the text (the tokenizer normalizes it: Qwen3's NFC on decomposed accents),
// it falls back to tokenizing the text piece by piece, cut at the span
// boundaries, which is exact when the pieces' tokens put end to end are the
// text's tokens (checked), and fails the row otherwise.
func (f *formatter) encode(ref RowRef, text string, addSpecial bool, spans []span) (Example, error) {
	ids := f.tok.Encode(text, addSpecial)
	offs, err := f.tb.offsets(f.tok, ids, text)
	if err != nil {
		if ex, ok := f.encodePieces(ref, text, addSpecial, spans, ids); ok {
			return ex, nil
		}
		return Example{}, badRow(ref, "%v", err)
	}
	ex := Example{IDs: make([]int32, len(ids)), Labels: make([]int32, len(ids)), Ref: ref}
	for i, id := range ids {
		ex.IDs[i] = int32(id)
		ex.Labels[i] = IgnoreIndex
		o := offs[i]
		if o.start < 0 {
			// Added by the post-processor (BOS): it belongs with the text's
			// first byte, trained only when that is (text rows, as HF's
			// labels = input_ids).
			o = span{0, 0}
		}
		if inSpans(o, spans) {
			ex.Labels[i] = int32(id)
		}
	}
	return ex, nil
}

func (f *formatter) encodePieces(ref RowRef, text string, addSpecial bool, spans []span, ids []int) (Example, bool) {
	cuts := []int{0, len(text)}
	for _, s := range spans {
		cuts = append(cuts, s.start, s.end)
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	plain := f.tok.Encode(text, false)
	pre := len(ids) - len(plain) // post-processor tokens before the text
	if pre < 0 || !slices.Equal(ids[pre:], plain) {
		return Example{}, false
	}
	ex := Example{IDs: make([]int32, 0, len(ids)), Labels: make([]int32, 0, len(ids)), Ref: ref}
	for _, id := range ids[:pre] {
		lab := int32(IgnoreIndex)
		if inSpans(span{0, 0}, spans) {
			lab = int32(id)
		}
		ex.IDs, ex.Labels = append(ex.IDs, int32(id)), append(ex.Labels, lab)
	}
	for k := 0; k+1 < len(cuts); k++ {
		piece := span{cuts[k], cuts[k+1]}
		if piece.start == piece.end {
			continue
		}
		trained := inSpans(piece, spans)
		for _, id := range f.tok.Encode(text[piece.start:piece.end], false) {
			lab := int32(IgnoreIndex)
			if trained {
				lab = int32(id)
			}
			ex.IDs, ex.Labels = append(ex.IDs, int32(id)), append(ex.Labels, lab)
		}
	}
	if len(ex.IDs) != len(ids) {
		return Example{}, false
	}
	for i, id := range ids {
		if ex.IDs[i] != int32(id) {
			return Example{}, false
		}
	}
	return ex, true
}

func rowKeys(row Row) string {
	return strings.Join(slices.Sorted(maps.Keys(row)), ", ")
}

func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int64, float64, int, int32, float32:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
