package model

// nllState is WindowNLL's reusable scratch.
type nllState struct {
	cache   *Cache
	hidden  []float32 // [T,C]
	logits  []float32 // [rows,V], a few rows at a time
	losses  []float64 // [T]
	targets []int
}

// nllRowBytes bounds the logits scratch: rows of V at a time, never [T,V].
const nllRowBytes = 32 << 20

// WindowNLL runs tokens as one window from position 0 and returns
// sum_{t>=1} -log p(tokens[t] | tokens[<t]) and the number of terms (T-1).
// Each log-softmax is max-subtracted with float64 accumulation. Logits are
// computed a bounded number of rows at a time, so the T×V matrix never exists.
func (m *Model) WindowNLL(tokens []int) (sum float64, n int, err error) {
	T := len(tokens)
	if T < 2 {
		return 0, 0, nil
	}
	cfg := m.Config
	C, V := cfg.Hidden, cfg.Vocab
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &m.nll
	if s.cache == nil || s.cache.Cap() < T {
		s.cache = m.NewCache(T)
		s.hidden = make([]float32, T*C)
		s.losses = make([]float64, T)
	}
	s.cache.Reset()
	if err := m.checkForward(s.cache, tokens, len(s.hidden)); err != nil {
		return 0, 0, err
	}
	m.forward(s.cache, tokens, s.hidden)

	rows := max(1, min(T-1, nllRowBytes/(4*V)))
	if len(s.logits) < rows*V {
		s.logits = make([]float32, rows*V)
	}
	for t0 := 0; t0 < T-1; t0 += rows {
		r := min(rows, T-1-t0)
		lg := s.logits[:r*V]
		m.be.MatMulForward(lg, s.hidden[t0*C:(t0+r)*C], m.lmHead, nil, r)
		m.be.LogSoftmaxNLLForward(s.losses[t0:t0+r], lg, tokens[t0+1:t0+1+r], r, V)
	}
	for _, l := range s.losses[:T-1] {
		sum += l
	}
	return sum, T - 1, nil
}
