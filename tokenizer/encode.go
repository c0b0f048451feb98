package tokenizer

import "sync"

// scratch holds buffers reused across Encode calls.
type scratch struct {
	syms       []symbol
	heap       []heapItem
	pieces     []string
	bufA, bufB []string
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// Encode returns the token ids of text. Added tokens in text (special or
// not) are always recognised and never split. With addSpecial the
// post-processor's tokens are added (BOS for Llama 2 and Llama 3, nothing
// for Qwen3). Bytes that are not valid UTF-8 (which a Rust &str cannot
// hold) are kept as bytes: byte-level models encode them like any byte,
// byte-fallback models as <0xNN> tokens, others as unk.
func (t *Tokenizer) Encode(text string, addSpecial bool) []int {
	ids := t.encode(nil, text)
	if addSpecial {
		ids = t.post.apply(ids)
	}
	return ids
}

func (t *Tokenizer) encode(dst []int, text string) []int {
	sc := scratchPool.Get().(*scratch)
	defer func() {
		if cap(sc.syms) <= 1<<16 { // don't keep the buffers of a huge input
			scratchPool.Put(sc)
		}
	}()
	var segs [8]segment
	first := true
	for _, seg := range t.addedIdx.split(segs[:0], text) {
		if seg.id >= 0 {
			dst = append(dst, seg.id)
			first = false
			continue
		}
		s := seg.text
		if t.normalizer != nil {
			s = t.normalizer.normalize(s)
		}
		var inner [8]segment
		for _, sub := range t.addedNorm.split(inner[:0], s) {
			if sub.id >= 0 {
				dst = append(dst, sub.id)
				first = false
				continue
			}
			if t.pre == nil {
				dst = t.model.encodePiece(dst, sub.text, sc)
			} else {
				sc.pieces = t.pre.split(sc.pieces[:0], sub.text, first, sc)
				for _, piece := range sc.pieces {
					dst = t.model.encodePiece(dst, piece, sc)
				}
			}
			first = false
		}
	}
	return dst
}
