package model

// The loss is its own forward/backward pair: chunked cross-entropy over the
// scored rows only. LossChunk rows of hidden states are gathered, their
// [LossChunk,V] logits computed, and the softmax formed; the [T,V] logits
// never exist. Without Full mode the chunk's backward runs right in Forward,
// while its logits are at hand (dhidden = (softmax − onehot)·W_lm, unscaled),
// and Backward only scales it: this saves recomputing the LM head, the
// biggest single matmul of a small model. In Full mode dW_lm needs the scale,
// so Backward recomputes each chunk's logits instead.

// lossForward returns sum_j -log softmax(hidden[scored[j]]·W_lmᵀ)[targets[j]],
// summed in row order in float64 (as PackedNLL does).
func (p *Pass) lossForward() float64 {
	be, C, V := p.m.be, p.m.Config.Hidden, p.m.Config.Vocab
	n, LC := p.nScored, p.opts.LossChunk
	fused := !p.opts.Full && p.train
	if fused {
		clear(p.dhidden[:p.T*C])
	}
	for j0 := 0; j0 < n; j0 += LC {
		r := min(LC, n-j0)
		hr, lg := p.gatherHidden(j0, r), p.logits[:r*V]
		be.MatMulForward(lg, hr, p.lmHead, nil, r)
		be.LogSoftmaxNLLForward(p.losses[j0:j0+r], lg, p.targets[j0:j0+r], r, V)
		if fused {
			p.headBackward(j0, r, hr, 1)
		}
	}
	var sum float64
	for _, l := range p.losses[:n] {
		sum += l
	}
	return sum
}

// lossBackward differentiates scale*lossForward: dlogits = scale*(softmax −
// onehot), dhidden[scored[j]] = dlogits·W_lm (zero for unscored rows), and in
// Full mode dW_lm += dlogitsᵀ·hidden (the embedding's grad when tied).
func (p *Pass) lossBackward(scale float32) {
	be, C, V := p.m.be, p.m.Config.Hidden, p.m.Config.Vocab
	n, LC := p.nScored, p.opts.LossChunk
	if !p.opts.Full { // done in lossForward with scale 1
		for j := range n {
			t := p.scored[j]
			for i := range p.dhidden[t*C : (t+1)*C] {
				p.dhidden[t*C+i] *= scale
			}
		}
		return
	}
	clear(p.dhidden[:p.T*C])
	for j0 := 0; j0 < n; j0 += LC {
		r := min(LC, n-j0)
		hr, lg := p.gatherHidden(j0, r), p.logits[:r*V]
		be.MatMulForward(lg, hr, p.lmHead, nil, r)
		p.headBackward(j0, r, hr, scale)
	}
}

// headBackward turns the logits of scored rows j0..j0+r-1 (in p.logits) into
// dlogits = scale*(softmax − onehot) and writes dhidden of those rows =
// dlogits·W_lm, accumulating dW_lm += dlogitsᵀ·hidden in Full mode.
func (p *Pass) headBackward(j0, r int, hr []float32, scale float32) {
	be, C, V := p.m.be, p.m.Config.Hidden, p.m.Config.Vocab
	lg, dhr := p.logits[:r*V], p.lossDH[:r*C]
	be.LogSoftmaxNLLBackward(lg, lg, p.targets[j0:j0+r], scale, r, V)
	clear(dhr)
	be.MatMulBackward(dhr, p.gLMHead, nil, lg, hr, p.lmHead, r)
	for j := range r {
		t := p.scored[j0+j]
		copy(p.dhidden[t*C:(t+1)*C], dhr[j*C:(j+1)*C])
	}
}

// gatherHidden copies the hidden states of scored rows j0..j0+r-1 into lossH.
func (p *Pass) gatherHidden(j0, r int) []float32 {
	C := p.m.Config.Hidden
	hr := p.lossH[:r*C]
	for j := range r {
		t := p.scored[j0+j]
		copy(hr[j*C:(j+1)*C], p.hidden[t*C:(t+1)*C])
	}
	return hr
}
