package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
)

// templateProcessor is what a post-processor does to a single sequence:
// ids of special tokens before and after it. TemplateProcessing,
// BertProcessing and RobertaProcessing reduce to this; ByteLevel only trims
// offsets, which tune does not track; a Sequence nests its stages.
type templateProcessor struct {
	prefix, suffix []int
}

func (p *templateProcessor) apply(ids []int) []int {
	if len(p.prefix) == 0 && len(p.suffix) == 0 {
		return ids
	}
	out := make([]int, 0, len(p.prefix)+len(ids)+len(p.suffix))
	out = append(out, p.prefix...)
	out = append(out, ids...)
	return append(out, p.suffix...)
}

var supportedPostProcessors = map[string]bool{"TemplateProcessing": true, "ByteLevel": true, "Sequence": true, "BertProcessing": true, "RobertaProcessing": true}

type rawPost struct {
	Type          string            `json:"type"`
	Processors    []json.RawMessage `json:"processors"`
	Single        []json.RawMessage `json:"single"`
	SpecialTokens map[string]struct {
		IDs []int `json:"ids"`
	} `json:"special_tokens"`
	Sep *[2]json.RawMessage `json:"sep"`
	Cls *[2]json.RawMessage `json:"cls"`
}

func parsePostProcessor(file string, b json.RawMessage, t *Tokenizer) (*templateProcessor, error) {
	p := &templateProcessor{}
	if len(b) == 0 || string(b) == "null" {
		return p, nil
	}
	var raw rawPost
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: post_processor: %v", file, err)
	}
	switch raw.Type {
	case "ByteLevel":
		return p, nil
	case "Sequence":
		for _, sub := range raw.Processors {
			q, err := parsePostProcessor(file, sub, t)
			if err != nil {
				return nil, err
			}
			p.prefix = append(append([]int(nil), q.prefix...), p.prefix...)
			p.suffix = append(p.suffix, q.suffix...)
		}
		return p, nil
	case "BertProcessing", "RobertaProcessing":
		if raw.Cls == nil || raw.Sep == nil {
			return nil, fmt.Errorf("tokenizer: %s: post_processor %s: keys \"cls\" and \"sep\" required", file, raw.Type)
		}
		var cls, sep int
		if err := json.Unmarshal(raw.Cls[1], &cls); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: post_processor %s: cls: %v", file, raw.Type, err)
		}
		if err := json.Unmarshal(raw.Sep[1], &sep); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: post_processor %s: sep: %v", file, raw.Type, err)
		}
		p.prefix, p.suffix = []int{cls}, []int{sep}
		return p, nil
	case "TemplateProcessing":
		seen := false
		for i, piece := range raw.Single {
			var obj struct {
				SpecialToken *struct {
					ID string `json:"id"`
				}
				Sequence *struct {
					ID string `json:"id"`
				}
			}
			var str string
			name, isSeq := "", false
			if json.Unmarshal(piece, &str) == nil {
				// Older string form: "$A", "$0", "<s>", "<s>:1".
				if strings.HasPrefix(str, "$") {
					isSeq = true
				} else {
					name, _, _ = strings.Cut(str, ":")
				}
			} else if err := json.Unmarshal(piece, &obj); err != nil {
				return nil, fmt.Errorf("tokenizer: %s: post_processor TemplateProcessing: single[%d]: %v", file, i, err)
			} else if obj.Sequence != nil {
				isSeq = true
			} else if obj.SpecialToken != nil {
				name = obj.SpecialToken.ID
			} else {
				return nil, fmt.Errorf("tokenizer: %s: post_processor TemplateProcessing: single[%d]: want SpecialToken or Sequence, found %.60s", file, i, piece)
			}
			if isSeq {
				seen = true
				continue
			}
			st, ok := raw.SpecialTokens[name]
			if !ok {
				return nil, fmt.Errorf("tokenizer: %s: post_processor TemplateProcessing: special token %q not in special_tokens", file, name)
			}
			if seen {
				p.suffix = append(p.suffix, st.IDs...)
			} else {
				p.prefix = append(p.prefix, st.IDs...)
			}
		}
		return p, nil
	}
	return nil, fmt.Errorf("tokenizer: %s: post_processor type %q is not supported (supported: %s)", file, raw.Type, sortedNames(supportedPostProcessors))
}
