package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// bpe is the BPE model of tokenizers (models/bpe/model.rs). Symbols are
// token ids; a merge is keyed by the id pair and yields (rank, merged id).
// Merging follows Word::merge_all: always the lowest rank first, and among
// equal ranks the leftmost, which a heap over (rank, position) gives.
type bpe struct {
	vocab  map[string]int
	maxID  int
	merges map[uint64]mergeVal

	unk          int // -1: none
	fuseUnk      bool
	byteFallback bool
	fallbackIDs  [256]int32 // id of "<0xNN>", -1 if absent
	ignoreMerges bool

	// Byte-level models work on raw bytes: byteTok[b] is the id of the
	// GPT-2 unicode character for byte b, and rawVocab maps a token's bytes
	// to its id (for ignore_merges, which looks the whole piece up).
	byteLevel bool
	byteTok   [256]int32
	rawVocab  map[string]int32

	mu    sync.RWMutex
	cache map[string][]int32
}

type mergeVal struct {
	rank int32
	id   int32
}

const (
	cacheMaxEntries = 1 << 17
	cacheMaxLen     = 128 // longer pieces are not cached
)

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

type rawBPE struct {
	Type                    *string         `json:"type"`
	Vocab                   map[string]int  `json:"vocab"`
	Merges                  json.RawMessage `json:"merges"`
	UnkToken                *string         `json:"unk_token"`
	FuseUnk                 bool            `json:"fuse_unk"`
	ByteFallback            bool            `json:"byte_fallback"`
	IgnoreMerges            bool            `json:"ignore_merges"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	Dropout                 *float64        `json:"dropout"`
}

var supportedModels = map[string]bool{"BPE": true}

func parseBPE(file string, raw *rawBPE) (*bpe, error) {
	if raw == nil {
		return nil, fmt.Errorf("tokenizer: %s: key \"model\" missing", file)
	}
	typ := "BPE"
	if raw.Type != nil {
		typ = *raw.Type
	}
	if !supportedModels[typ] {
		return nil, fmt.Errorf("tokenizer: %s: model.type %q is not supported (supported: %s)", file, typ, sortedNames(supportedModels))
	}
	if raw.ContinuingSubwordPrefix != nil && *raw.ContinuingSubwordPrefix != "" {
		return nil, fmt.Errorf("tokenizer: %s: model.continuing_subword_prefix %q is not supported (supported: empty)", file, *raw.ContinuingSubwordPrefix)
	}
	if raw.EndOfWordSuffix != nil && *raw.EndOfWordSuffix != "" {
		return nil, fmt.Errorf("tokenizer: %s: model.end_of_word_suffix %q is not supported (supported: empty)", file, *raw.EndOfWordSuffix)
	}
	if raw.Vocab == nil {
		return nil, fmt.Errorf("tokenizer: %s: key \"model.vocab\" missing", file)
	}
	m := &bpe{vocab: raw.Vocab, unk: -1, fuseUnk: raw.FuseUnk, byteFallback: raw.ByteFallback, ignoreMerges: raw.IgnoreMerges}
	for tok, id := range m.vocab {
		if id < 0 || id > 1<<30 {
			return nil, fmt.Errorf("tokenizer: %s: model.vocab: token %q has id %d out of range", file, tok, id)
		}
		if id > m.maxID {
			m.maxID = id
		}
	}
	if raw.UnkToken != nil {
		id, ok := m.vocab[*raw.UnkToken]
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: model.unk_token %q not in model.vocab", file, *raw.UnkToken)
		}
		m.unk = id
	}
	for i := range m.fallbackIDs {
		m.fallbackIDs[i] = -1
		if id, ok := m.vocab[fmt.Sprintf("<0x%02X>", i)]; ok {
			m.fallbackIDs[i] = int32(id)
		}
	}
	if err := m.parseMerges(file, raw.Merges); err != nil {
		return nil, err
	}
	m.cache = make(map[string][]int32)
	return m, nil
}

// parseMerges reads model.merges, either ["a b", ...] or [["a", "b"], ...].
// It scans the JSON by hand: decoding 150k-300k pairs through reflection
// was most of the load time of an 11 MB tokenizer.json.
func (m *bpe) parseMerges(file string, b json.RawMessage) error {
	p := jsonScanner{b: b}
	p.ws()
	if p.eof() || string(bytes.TrimSpace(b)) == "null" {
		return nil
	}
	bad := func(k int, what string) error {
		return fmt.Errorf("tokenizer: %s: model.merges[%d]: %s (want a list of \"a b\" strings or of [a, b] pairs)", file, k, what)
	}
	if !p.eat('[') {
		return bad(0, "not a list")
	}
	m.merges = make(map[uint64]mergeVal, len(b)/16)
	var buf []byte
	for k := 0; ; k++ {
		p.ws()
		if p.eat(']') {
			return nil
		}
		if k > 0 {
			if !p.eat(',') {
				return bad(k, "expected , or ]")
			}
			p.ws()
		}
		var a, c string
		var ok bool
		if p.peek() == '[' {
			p.eat('[')
			p.ws()
			if a, ok = p.str(); !ok {
				return bad(k, "bad string")
			}
			p.ws()
			if !p.eat(',') {
				return bad(k, "want a pair")
			}
			p.ws()
			if c, ok = p.str(); !ok {
				return bad(k, "bad string")
			}
			p.ws()
			if !p.eat(']') {
				return bad(k, "want a pair")
			}
		} else {
			s, ok := p.str()
			if !ok {
				return bad(k, "bad string")
			}
			var found bool
			a, c, found = strings.Cut(s, " ")
			if !found || strings.Contains(c, " ") {
				return fmt.Errorf("tokenizer: %s: model.merges[%d] = %q: want two tokens separated by one space", file, k, s)
			}
		}
		ia, ok1 := m.vocab[a]
		ic, ok2 := m.vocab[c]
		buf = append(append(buf[:0], a...), c...)
		n, ok3 := m.vocab[string(buf)]
		if !ok1 || !ok2 || !ok3 {
			return fmt.Errorf("tokenizer: %s: model.merges[%d] = [%q, %q]: token %q not in model.vocab", file, k, a, c, missing(ok1, ok2, [2]string{a, c}))
		}
		// A repeated pair keeps its last rank, as collecting into the
		// Rust HashMap does.
		m.merges[pairKey(int32(ia), int32(ic))] = mergeVal{int32(k), int32(n)}
	}
}

// jsonScanner reads the few JSON forms parseMerges needs. The input was
// already validated by encoding/json.
type jsonScanner struct {
	b []byte
	i int
}

func (p *jsonScanner) eof() bool { return p.i >= len(p.b) }

func (p *jsonScanner) peek() byte {
	if p.eof() {
		return 0
	}
	return p.b[p.i]
}

func (p *jsonScanner) ws() {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\n' || p.b[p.i] == '\t' || p.b[p.i] == '\r') {
		p.i++
	}
}

func (p *jsonScanner) eat(c byte) bool {
	if p.peek() == c {
		p.i++
		return true
	}
	return false
}

// str reads a string; only strings with escapes go through encoding/json.
func (p *jsonScanner) str() (string, bool) {
	if !p.eat('"') {
		return "", false
	}
	start := p.i
	esc := false
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case '\\':
			esc = true
			p.i += 2
			continue
		case '"':
			p.i++
			if !esc {
				return string(p.b[start : p.i-1]), true
			}
			var s string
			if err := json.Unmarshal(p.b[start-1:p.i], &s); err != nil {
				return "", false
			}
			return s, true
		}
		p.i++
	}
	return "", false
}

func missing(ok1, ok2 bool, p [2]string) string {
	switch {
	case !ok1:
		return p[0]
	case !ok2:
		return p[1]
	}
	return p[0] + p[1]
}

// setByteLevel switches the model to raw-byte input (a ByteLevel
// pre-tokenizer maps each byte to one GPT-2 unicode character first).
func (m *bpe) setByteLevel() {
	m.byteLevel = true
	for b := range 256 {
		m.byteTok[b] = -1
		if id, ok := m.vocab[string(byteToRune[b])]; ok {
			m.byteTok[b] = int32(id)
		}
	}
	m.rawVocab = make(map[string]int32, len(m.vocab))
	var buf []byte
	for tok, id := range m.vocab {
		buf = buf[:0]
		ok := true
		for _, r := range tok {
			if r >= 0 && int(r) < len(runeToByte) && runeToByte[r] >= 0 {
				buf = append(buf, byte(runeToByte[r]))
			} else {
				ok = false
				break
			}
		}
		if ok {
			m.rawVocab[string(buf)] = int32(id)
		}
	}
}

type symbol struct {
	id         int32
	prev, next int32
	dead       bool
}

type heapItem struct {
	rank, pos, id int32
}

func (a heapItem) less(b heapItem) bool {
	return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos)
}

// encodePiece appends the ids of one pre-token to dst.
func (m *bpe) encodePiece(dst []int, piece string, sc *scratch) []int {
	if piece == "" {
		return dst
	}
	if len(piece) <= cacheMaxLen {
		m.mu.RLock()
		ids, ok := m.cache[piece]
		m.mu.RUnlock()
		if ok {
			for _, id := range ids {
				dst = append(dst, int(id))
			}
			return dst
		}
	}
	start := len(dst)
	dst = m.encodeUncached(dst, piece, sc)
	if len(piece) <= cacheMaxLen {
		ids := make([]int32, len(dst)-start)
		for i, id := range dst[start:] {
			ids[i] = int32(id)
		}
		key := strings.Clone(piece)
		m.mu.Lock()
		if len(m.cache) >= cacheMaxEntries {
			clear(m.cache)
		}
		m.cache[key] = ids
		m.mu.Unlock()
	}
	return dst
}

func (m *bpe) encodeUncached(dst []int, piece string, sc *scratch) []int {
	if m.ignoreMerges {
		if m.byteLevel {
			if id, ok := m.rawVocab[piece]; ok {
				return append(dst, int(id))
			}
		} else if id, ok := m.vocab[piece]; ok {
			return append(dst, id)
		}
	}
	syms := sc.syms[:0]
	add := func(id int32) {
		syms = append(syms, symbol{id: id, prev: int32(len(syms) - 1), next: int32(len(syms) + 1)})
	}
	if m.byteLevel {
		for i := 0; i < len(piece); i++ {
			if id := m.byteTok[piece[i]]; id >= 0 {
				add(id)
			} else if m.unk >= 0 {
				add(int32(m.unk))
			}
		}
	} else {
		// As BPE::merge_word: each char is a symbol; unknown chars fall back
		// to <0xNN> byte tokens, else to unk (consecutive unks fused when
		// fuse_unk).
		pendingUnk := false
		for i := 0; i < len(piece); {
			_, n := utf8.DecodeRuneInString(piece[i:])
			ch := piece[i : i+n]
			i += n
			if id, ok := m.vocab[ch]; ok {
				if pendingUnk {
					add(int32(m.unk))
					pendingUnk = false
				}
				add(int32(id))
				continue
			}
			if m.byteFallback {
				all := true
				for k := 0; k < len(ch); k++ {
					if m.fallbackIDs[ch[k]] < 0 {
						all = false
						break
					}
				}
				if all {
					for k := 0; k < len(ch); k++ {
						add(m.fallbackIDs[ch[k]])
					}
					continue
				}
			}
			if m.unk >= 0 {
				if pendingUnk && !m.fuseUnk {
					add(int32(m.unk))
				}
				pendingUnk = true
			}
		}
		if pendingUnk {
			add(int32(m.unk))
		}
	}
	if len(syms) > 0 {
		syms[len(syms)-1].next = -1
	}
	sc.syms = syms
	if len(syms) > 1 && len(m.merges) > 0 {
		m.mergeAll(sc)
		syms = sc.syms
	}
	for i := 0; i >= 0 && i < len(syms); i = int(syms[i].next) {
		dst = append(dst, int(syms[i].id))
	}
	return dst
}

func (m *bpe) mergeAll(sc *scratch) {
	syms := sc.syms
	h := sc.heap[:0]
	push := func(it heapItem) {
		h = append(h, it)
		i := len(h) - 1
		for i > 0 {
			p := (i - 1) / 2
			if !h[i].less(h[p]) {
				break
			}
			h[i], h[p] = h[p], h[i]
			i = p
		}
	}
	pop := func() heapItem {
		top := h[0]
		last := len(h) - 1
		h[0] = h[last]
		h = h[:last]
		i := 0
		for {
			l := 2*i + 1
			if l >= len(h) {
				break
			}
			c := l
			if r := l + 1; r < len(h) && h[r].less(h[l]) {
				c = r
			}
			if !h[c].less(h[i]) {
				break
			}
			h[i], h[c] = h[c], h[i]
			i = c
		}
		return top
	}
	for i := 0; i+1 < len(syms); i++ {
		if mv, ok := m.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
			push(heapItem{mv.rank, int32(i), mv.id})
		}
	}
	for len(h) > 0 {
		top := pop()
		s := &syms[top.pos]
		if s.dead || s.next < 0 {
			continue
		}
		right := &syms[s.next]
		mv, ok := m.merges[pairKey(s.id, right.id)]
		if !ok || mv.id != top.id {
			continue // stale: one side was merged since this was queued
		}
		s.id = top.id
		right.dead = true
		s.next = right.next
		if s.next >= 0 {
			syms[s.next].prev = top.pos
		}
		if s.prev >= 0 {
			if mv, ok := m.merges[pairKey(syms[s.prev].id, s.id)]; ok {
				push(heapItem{mv.rank, s.prev, mv.id})
			}
		}
		if s.next >= 0 {
			if mv, ok := m.merges[pairKey(s.id, syms[s.next].id)]; ok {
				push(heapItem{mv.rank, top.pos, mv.id})
			}
		}
	}
	sc.heap = h
}
