package data

// Label masking: which tokens of a rendered conversation the loss covers.
//
// The rule. An assistant turn i trains exactly what the model would generate
// after the generation prompt, as the FULL conversation renders it:
//
//	P_i = render(messages[:i], add_generation_prompt=True)
//	full = render(messages)
//	the turn starts at len(P_i) (P_i must be a prefix of full) and ends just
//	after the template's end-of-turn token: the last special token of the
//	turn's own render, render(messages[:i+1]) (<|im_end|>, <|eot_id|>, </s>),
//	found again in full after len(P_i).
//
// So for Qwen3 the span is everything after "<|im_start|>assistant\n" up to
// and including <|im_end|>, not the "\n" after it, and a turn's reasoning is
// trained as full renders it: the last turn with its <think> block, earlier
// turns (before the last user message) without, since that is what the
// template shows the model in this sequence. This is what transformers'
// return_assistant_tokens_mask gives with a {% generation %} tag around each
// assistant message's rendered content and end-of-turn token (TRL's
// assistant_only_loss needs such tags, which the official Qwen3 and Llama 3.1
// templates lack; the community "all_assistant" Qwen3 training templates
// place them this way). No template is edited here: the spans come from
// renders of the template as it is.
//
// When P_i is not a prefix of full (a template that rewrites the history
// before the generation prompt), no single render holds every turn as the
// model saw it; the row then becomes one example per assistant turn
// (render(messages[:i+1]), trained on turn i), and a row where even that
// fails is an error naming the turn.
//
// From characters to tokens. The full render is tokenized once; a token
// belongs to a span when its bytes overlap the span, as transformers'
// char_to_token-based assistant mask does. Token byte ranges come from each
// token's own bytes (the GPT-2 byte map for byte-level BPE, ▁ and <0xNN> for
// SentencePiece-style BPE), laid end to end along the text: this is exact,
// because these tokenizers' tokens are a partition of the text's bytes (the
// only insertion, the ▁ SentencePiece normalizers prepend after each special
// token, is recognised). Decoding prefixes would not be (decode is lossy on
// partial UTF-8 and strips spaces), and tokenizing segment by segment is exact
// only when cut at special tokens, while a span starts inside ordinary text
// ("assistant\n" + content). A text the tokenizer changes (Qwen3 normalizes
// to NFC) does not line up; such a row is tokenized again piece by piece, cut
// at the span boundaries, and kept when those tokens put end to end equal the
// full text's (see formatter.encode), else it fails with the byte where the
// tokens diverge.

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/tunellm/tune/tokenizer"
)

// span is a byte range [start, end) of a text; start -1 marks a token the
// post-processor added (BOS), which has no bytes in the text.
type span struct{ start, end int }

func inSpans(t span, spans []span) bool {
	for _, s := range spans {
		if t.start < s.end && t.end > s.start || t.start == t.end && t.start >= s.start && t.start < s.end {
			return true
		}
	}
	return false
}

// unstableError says the template renders the history before turn i
// differently once later turns follow.
type unstableError struct {
	turn, at  int
	want, got string
}

func (e *unstableError) Error() string {
	return fmt.Sprintf("turn %d: render(messages[:%d], add_generation_prompt) is not a prefix of the full render (differs at byte %d: %q vs %q)", e.turn, e.turn, e.at, e.want, e.got)
}

func asUnstable(err error, p **unstableError) bool { return errors.As(err, p) }

// chatSpans finds the trained span of each assistant turn at index >= from
// in full, the render of msgs.
func (f *formatter) chatSpans(msgs []tokenizer.Message, full string, from int) ([]span, error) {
	genOpts := f.chatOpts
	genOpts.AddGenerationPrompt = true
	var spans []span
	for i := from; i < len(msgs); i++ {
		if msgs[i]["role"] != "assistant" {
			continue
		}
		p, err := tokenizer.RenderChat(f.tmpl, msgs[:i], genOpts)
		if err != nil {
			return nil, fmt.Errorf("render messages[:%d] with generation prompt: %v", i, err)
		}
		if !strings.HasPrefix(full, p) {
			return nil, &unstableError{turn: i, at: commonPrefix(p, full), want: snippet(p, commonPrefix(p, full)), got: snippet(full, commonPrefix(p, full))}
		}
		own, err := tokenizer.RenderChat(f.tmpl, msgs[:i+1], f.chatOpts)
		if err != nil {
			return nil, fmt.Errorf("render messages[:%d]: %v", i+1, err)
		}
		if !strings.HasPrefix(own, p) {
			return nil, &unstableError{turn: i, at: commonPrefix(p, own), want: snippet(p, commonPrefix(p, own)), got: snippet(own, commonPrefix(p, own))}
		}
		start := len(p)
		eot, _ := f.tb.lastSpecial(own[start:])
		var end int
		switch {
		case strings.HasPrefix(full, own):
			// The turn renders the same in full: its end is its own.
			if eot == "" {
				end = len(own)
			} else {
				end = start + strings.LastIndex(own[start:], eot) + len(eot)
			}
		case eot != "":
			// The turn renders differently in full (Qwen3 drops the
			// reasoning of turns before the last user message): its end is
			// the first end-of-turn token after its start.
			k := strings.Index(full[start:], eot)
			if k < 0 {
				return nil, fmt.Errorf("turn %d: end-of-turn token %q not found in the full render after byte %d", i, eot, start)
			}
			end = start + k + len(eot)
		default:
			return nil, fmt.Errorf("turn %d: renders differently in the full conversation and its render has no special end-of-turn token to find it by", i)
		}
		spans = append(spans, span{start, end})
	}
	return spans, nil
}

// turnSpan is chatSpans for the last turn i of part = render(msgs[:i+1]).
func (f *formatter) turnSpan(msgs []tokenizer.Message, i int, part string) (span, error) {
	genOpts := f.chatOpts
	genOpts.AddGenerationPrompt = true
	p, err := tokenizer.RenderChat(f.tmpl, msgs[:i], genOpts)
	if err != nil {
		return span{}, fmt.Errorf("render messages[:%d] with generation prompt: %v", i, err)
	}
	if !strings.HasPrefix(part, p) {
		at := commonPrefix(p, part)
		return span{}, fmt.Errorf("turn %d: no consistent alignment: render(messages[:%d], add_generation_prompt) is not a prefix of render(messages[:%d]) (differs at byte %d: %q vs %q)", i, i, i+1, at, snippet(p, at), snippet(part, at))
	}
	start := len(p)
	end := len(part)
	if eot, _ := f.tb.lastSpecial(part[start:]); eot != "" {
		end = start + strings.LastIndex(part[start:], eot) + len(eot)
	}
	return span{start, end}, nil
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

func snippet(s string, at int) string {
	return s[at:min(len(s), at+24)]
}

// tokenBytes holds each token's bytes in the text it was encoded from.
type tokenBytes struct {
	bytes     [][]byte
	added     []bool   // added tokens: matched verbatim, and a segment boundary
	specials  []string // special added tokens
	metaspace bool     // SentencePiece-style: a segment may start with an inserted ▁
}

var (
	tbMu    sync.Mutex
	tbCache = map[*tokenizer.Tokenizer]*tokenBytes{}
)

func tokenBytesOf(tok *tokenizer.Tokenizer) *tokenBytes {
	tbMu.Lock()
	defer tbMu.Unlock()
	if tb := tbCache[tok]; tb != nil {
		return tb
	}
	tb := buildTokenBytes(tok)
	tbCache[tok] = tb
	return tb
}

func buildTokenBytes(tok *tokenizer.Tokenizer) *tokenBytes {
	n := tok.VocabSize()
	tb := &tokenBytes{bytes: make([][]byte, n), added: make([]bool, n)}
	_, hasSP := tok.TokenID("<0x0A>")
	_, hasMeta := tok.TokenID("▁")
	tb.metaspace = hasSP && hasMeta
	inv := gpt2ByteDecoder()
	for id := 0; id < n; id++ {
		s := tok.Token(id)
		if s == "" {
			continue
		}
		// An added token decodes to its content alone; a model token to its
		// bytes, whatever its neighbours (the decoders here are per token
		// up to Fuse/Strip).
		if tok.IsSpecial(id) {
			tb.bytes[id] = []byte(s)
			tb.added[id] = true
			tb.specials = append(tb.specials, s)
			continue
		}
		if d := tok.Decode([]int{id}, false); d == s && strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") && len(s) > 2 {
			// Non-special added tokens such as Qwen3's <think>.
			tb.added[id] = true
		}
		if tb.metaspace {
			if len(s) == 6 && strings.HasPrefix(s, "<0x") && s[5] == '>' {
				var b byte
				if _, err := fmt.Sscanf(s[3:5], "%02X", &b); err == nil {
					tb.bytes[id] = []byte{b}
					continue
				}
			}
			tb.bytes[id] = []byte(strings.ReplaceAll(s, "▁", " "))
			continue
		}
		var b []byte
		for _, r := range s {
			if c, ok := inv[r]; ok {
				b = append(b, c)
			} else {
				b = append(b, string(r)...)
			}
		}
		tb.bytes[id] = b
	}
	return tb
}

// gpt2ByteDecoder inverts GPT-2's bytes_to_unicode: printable Latin-1 bytes
// map to themselves, the other 68 to U+0100 upward in byte order.
func gpt2ByteDecoder() map[rune]byte {
	m := make(map[rune]byte, 256)
	next := rune(256)
	for b := 0; b < 256; b++ {
		if b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF {
			m[rune(b)] = byte(b)
		} else {
			m[next] = byte(b)
			next++
		}
	}
	return m
}

// lastSpecial returns the special token that ends last in s, and where it
// starts (the longer one when two end at the same byte).
func (tb *tokenBytes) lastSpecial(s string) (string, int) {
	best, at := "", -1
	for _, sp := range tb.specials {
		k := strings.LastIndex(s, sp)
		if k < 0 {
			continue
		}
		if e, be := k+len(sp), at+len(best); at < 0 || e > be || e == be && len(sp) > len(best) {
			best, at = sp, k
		}
	}
	return best, at
}

// offsets lays the tokens' bytes along text and returns each token's byte
// range in it.
func (tb *tokenBytes) offsets(tok *tokenizer.Tokenizer, ids []int, text string) ([]span, error) {
	out := make([]span, len(ids))
	pos := 0
	segStart := true
	for i, id := range ids {
		if id < 0 || id >= len(tb.bytes) {
			return nil, fmt.Errorf("token %d: id %d outside the vocabulary", i, id)
		}
		b := tb.bytes[id]
		rest := text[pos:]
		switch {
		case tb.added[id] && !strings.HasPrefix(rest, string(b)):
			// Added by the post-processor (BOS), not in the text.
			out[i] = span{-1, -1}
		case strings.HasPrefix(rest, string(b)):
			out[i] = span{pos, pos + len(b)}
			pos += len(b)
		case tb.metaspace && segStart && len(b) > 0 && b[0] == ' ' && strings.HasPrefix(rest, string(b[1:])):
			out[i] = span{pos, pos + len(b) - 1}
			pos += len(b) - 1
		default:
			return nil, fmt.Errorf("token %d (%q) does not line up with the text at byte %d (%q): the tokenizer normalizes this text (NFC?)", i, tok.Token(id), pos, snippet(text, pos))
		}
		segStart = tb.added[id]
	}
	if pos != len(text) {
		return nil, fmt.Errorf("tokens cover %d of %d bytes of the text", pos, len(text))
	}
	return out, nil
}
