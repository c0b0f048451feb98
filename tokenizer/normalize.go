package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
)

// normalizer is a tokenizers normalizer, applied to each piece of the input
// between added tokens.
type normalizer interface {
	normalize(s string) string
}

type nfcNorm struct{}

func (nfcNorm) normalize(s string) string { return nfc(s) }

type prependNorm struct{ prefix string }

// normalize prepends unless s is empty (normalizers/prepend.rs).
func (p prependNorm) normalize(s string) string {
	if s == "" {
		return s
	}
	return p.prefix + s
}

type replaceNorm struct{ old, new string }

func (p replaceNorm) normalize(s string) string { return strings.ReplaceAll(s, p.old, p.new) }

type lowercaseNorm struct{}

func (lowercaseNorm) normalize(s string) string { return strings.ToLower(s) }

type stripNorm struct{ left, right bool }

func (p stripNorm) normalize(s string) string {
	if p.left {
		s = strings.TrimLeftFunc(s, isWhiteSpace)
	}
	if p.right {
		s = strings.TrimRightFunc(s, isWhiteSpace)
	}
	return s
}

type seqNorm []normalizer

func (q seqNorm) normalize(s string) string {
	for _, n := range q {
		s = n.normalize(s)
	}
	return s
}

var supportedNormalizers = map[string]bool{"NFC": true, "Prepend": true, "Replace": true, "Sequence": true, "Lowercase": true, "Strip": true}

type rawNorm struct {
	Type        string            `json:"type"`
	Normalizers []json.RawMessage `json:"normalizers"`
	Prepend     string            `json:"prepend"`
	Pattern     *struct {
		String *string `json:"String"`
		Regex  *string `json:"Regex"`
	} `json:"pattern"`
	Content    string `json:"content"`
	StripLeft  bool   `json:"strip_left"`
	StripRight bool   `json:"strip_right"`
}

func parseNormalizer(file string, b json.RawMessage) (normalizer, error) {
	if len(b) == 0 || string(b) == "null" {
		return nil, nil
	}
	var raw rawNorm
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: normalizer: %v", file, err)
	}
	switch raw.Type {
	case "NFC":
		return nfcNorm{}, nil
	case "Prepend":
		return prependNorm{raw.Prepend}, nil
	case "Replace":
		if raw.Pattern == nil || raw.Pattern.String == nil {
			return nil, fmt.Errorf("tokenizer: %s: normalizer Replace: only a String pattern is supported", file)
		}
		return replaceNorm{*raw.Pattern.String, raw.Content}, nil
	case "Lowercase":
		return lowercaseNorm{}, nil
	case "Strip":
		return stripNorm{raw.StripLeft, raw.StripRight}, nil
	case "Sequence":
		var seq seqNorm
		for _, sub := range raw.Normalizers {
			n, err := parseNormalizer(file, sub)
			if err != nil {
				return nil, err
			}
			if n != nil {
				seq = append(seq, n)
			}
		}
		return seq, nil
	}
	return nil, fmt.Errorf("tokenizer: %s: normalizer type %q is not supported (supported: %s)", file, raw.Type, sortedNames(supportedNormalizers))
}
