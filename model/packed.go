package model

import "fmt"

// IgnoreIndex marks a label that takes no loss, as PyTorch's CrossEntropyLoss
// ignore_index and transformers' label masking use it.
const IgnoreIndex = -100

// packedScratch is ForwardPacked's and PackedNLL's reusable scratch, grown
// when a longer call arrives.
type packedScratch struct {
	rows     int
	k, v     []float32 // [T,KVH*HD] the current layer's keys and values (no cache)
	cos, sin []float32 // [T,HD/2] each row's RoPE angles, gathered by position
	segStart []int     // [T] row where each row's sample begins

	// Angles by position, rows 0..rows-1: a packed position is at most its row.
	tabCos, tabSin []float32 // [T,HD/2]

	hidden  []float32 // [T,C] PackedNLL's hidden states, compacted to the scored rows
	logits  []float32 // [rows,V] a bounded number of rows at a time
	losses  []float64 // [T]
	targets []int     // [T]
}

func (m *Model) packedScratch(T int) *packedScratch {
	c := m.Config
	s := &m.act.packed
	if T > s.rows {
		kvd, half := c.KVHeads*c.HeadDim, c.HeadDim/2
		s.k, s.v = make([]float32, T*kvd), make([]float32, T*kvd)
		s.cos, s.sin = make([]float32, T*half), make([]float32, T*half)
		s.segStart = make([]int, T)
		s.tabCos, s.tabSin = make([]float32, T*half), make([]float32, T*half)
		for p := 0; p < T; p++ {
			m.ropeAngles(s.tabCos[p*half:(p+1)*half], s.tabSin[p*half:(p+1)*half], p)
		}
		s.hidden, s.losses, s.targets = nil, nil, nil // PackedNLL regrows them
		s.rows = T
	}
	return s
}

// ForwardPacked runs T tokens that hold several samples back to back, without
// a KV cache, and writes the final-normed hidden states to hidden [T,C].
// Positions restart per sample (RoPE uses positions[t]) and attention stays
// inside each sample: token t attends to t' <= t with segIDs[t'] == segIDs[t]
// (and, on sliding-window layers, t-t' < window). This is transformers'
// padding-free packing with position_ids (DataCollatorWithFlattening, and
// flash_attention_2's varlen path built from cu_seqlens): each sample's hidden
// states equal those of the sample run alone through Forward.
//
// segIDs must be non-decreasing and change exactly where a sample begins;
// positions must be 0 at each sample's first token and grow by 1 within it.
func (m *Model) ForwardPacked(tokens, positions, segIDs []int, hidden []float32) error {
	if err := m.checkPacked("forward packed", tokens, positions, segIDs); err != nil {
		return err
	}
	T, C := len(tokens), m.Config.Hidden
	if len(hidden) < T*C {
		return fmt.Errorf("model: forward packed: hidden has %d elements, want %d (T=%d × hidden_size=%d)", len(hidden), T*C, T, C)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forwardPacked(tokens, positions, segIDs, hidden)
	return nil
}

// checkPacked validates the three parallel slices of a packed sequence.
func (m *Model) checkPacked(op string, tokens, positions, segIDs []int) error {
	T, V := len(tokens), m.Config.Vocab
	if T == 0 {
		return fmt.Errorf("model: %s: no tokens", op)
	}
	if len(positions) != T || len(segIDs) != T {
		return fmt.Errorf("model: %s: %d tokens, %d positions and %d segIDs, want equal lengths", op, T, len(positions), len(segIDs))
	}
	for t, id := range tokens {
		if id < 0 || id >= V {
			return fmt.Errorf("model: %s: tokens[%d] = %d outside the vocabulary [0,%d)", op, t, id, V)
		}
	}
	for t := range T {
		switch {
		case t > 0 && segIDs[t] < segIDs[t-1]:
			return fmt.Errorf("model: %s: segIDs[%d] = %d after segIDs[%d] = %d, want non-decreasing", op, t, segIDs[t], t-1, segIDs[t-1])
		case (t == 0 || segIDs[t] != segIDs[t-1]) && positions[t] != 0:
			return fmt.Errorf("model: %s: positions[%d] = %d at the start of segment %d, want 0", op, t, positions[t], segIDs[t])
		case t > 0 && segIDs[t] == segIDs[t-1] && positions[t] != positions[t-1]+1:
			return fmt.Errorf("model: %s: positions[%d] = %d after positions[%d] = %d in segment %d, want %d", op, t, positions[t], t-1, positions[t-1], segIDs[t], positions[t-1]+1)
		}
	}
	return nil
}

// forwardPacked is ForwardPacked without the checks; m.mu is held. The layer
// loop is forward's, with per-row angles and per-row attention start.
func (m *Model) forwardPacked(tokens, positions, segIDs []int, hidden []float32) {
	cfg, be := m.Config, m.be
	T, C, half := len(tokens), cfg.Hidden, cfg.HeadDim/2
	a := m.acts(T)
	s := m.packedScratch(T)
	segStart, cos, sin := s.segStart[:T], s.cos[:T*half], s.sin[:T*half]
	for t, p := range positions {
		if t == 0 || segIDs[t] != segIDs[t-1] {
			segStart[t] = t
		} else {
			segStart[t] = segStart[t-1]
		}
		copy(cos[t*half:(t+1)*half], s.tabCos[p*half:(p+1)*half])
		copy(sin[t*half:(t+1)*half], s.tabSin[p*half:(p+1)*half])
	}
	x := a.x[:T*C]
	be.EmbeddingForward(x, tokens, m.embed)
	for l := range m.layers {
		m.attentionForward(a, l, s.k, s.v, cos, sin, segStart, 0, T)
		m.mlpForward(a, l, T)
	}
	be.RMSNormForward(hidden[:T*C], x, m.norm, cfg.RMSNormEps, T, C)
}

// PackedNLL runs a packed sequence (as ForwardPacked) and returns the summed
// negative log-likelihood of its labels and the number of terms. The label
// convention is transformers' causal-LM loss: token t's logits predict
// labels[t+1] (the shift happens here, labels are aligned with tokens), labels
// equal to IgnoreIndex take no loss, and no loss crosses a sample boundary:
// the last token of a sample predicts nothing, so labels at a sample's first
// token are never used (DataCollatorWithFlattening sets them to -100).
//
// Only scored rows reach the LM head, a bounded number at a time, so the T×V
// logits never exist. Losses are summed in row order in float64.
func (m *Model) PackedNLL(tokens, positions, segIDs, labels []int) (sum float64, n int, err error) {
	const op = "packed nll"
	if err := m.checkPacked(op, tokens, positions, segIDs); err != nil {
		return 0, 0, err
	}
	T, C, V := len(tokens), m.Config.Hidden, m.Config.Vocab
	if len(labels) != T {
		return 0, 0, fmt.Errorf("model: %s: %d labels for %d tokens, want equal lengths", op, len(labels), T)
	}
	for t, id := range labels {
		if id != IgnoreIndex && (id < 0 || id >= V) {
			return 0, 0, fmt.Errorf("model: %s: labels[%d] = %d outside the vocabulary [0,%d) and not %d (ignored)", op, t, id, V, IgnoreIndex)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.packedScratch(T)
	if s.hidden == nil {
		s.hidden = make([]float32, s.rows*C)
		s.losses = make([]float64, s.rows)
		s.targets = make([]int, s.rows)
	}
	hidden := s.hidden[:T*C]
	m.forwardPacked(tokens, positions, segIDs, hidden)

	// Compact the scored rows to the front; row j <= t, so copying forward is safe.
	for t := 0; t+1 < T; t++ {
		if segIDs[t+1] != segIDs[t] || labels[t+1] == IgnoreIndex {
			continue
		}
		copy(hidden[n*C:(n+1)*C], hidden[t*C:(t+1)*C])
		s.targets[n] = labels[t+1]
		n++
	}
	if n == 0 {
		return 0, 0, nil
	}
	rows := max(1, min(n, nllRowBytes/(4*V)))
	if len(s.logits) < rows*V {
		s.logits = make([]float32, rows*V)
	}
	for j0 := 0; j0 < n; j0 += rows {
		r := min(rows, n-j0)
		lg := s.logits[:r*V]
		m.be.MatMulForward(lg, hidden[j0*C:(j0+r)*C], m.lmHead, nil, r)
		m.be.LogSoftmaxNLLForward(s.losses[j0:j0+r], lg, s.targets[j0:j0+r], r, V)
	}
	for _, l := range s.losses[:n] {
		sum += l
	}
	return sum, n, nil
}
