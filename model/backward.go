package model

import (
	"fmt"

	"github.com/tunellm/tune/kernels"
)

// Forward runs one packed sequence (as ForwardPacked: positions restart per
// segment, attention stays inside segments), keeps what Backward needs, and
// returns the summed cross-entropy over labeled targets and their count.
// Labels follow transformers (see PackedNLL): row t's logits predict
// labels[t+1] within the same segment, IgnoreIndex takes no loss; the sum
// equals PackedNLL's for the same inputs.
func (p *Pass) Forward(tokens, positions, segIDs, labels []int32) (lossSum float64, n int, err error) {
	return p.forward("train forward", tokens, positions, segIDs, labels, true)
}

// Loss is Forward for evaluation (validation loss with the adapter): the
// adapter runs with train false (no dropout), the LM head's backward is
// skipped, and no Backward may follow.
func (p *Pass) Loss(tokens, positions, segIDs, labels []int32) (lossSum float64, n int, err error) {
	return p.forward("eval loss", tokens, positions, segIDs, labels, false)
}

func (p *Pass) forward(op string, tokens, positions, segIDs, labels []int32, train bool) (lossSum float64, n int, err error) {
	m := p.m
	cfg := m.Config
	T, C, V, half := len(tokens), cfg.Hidden, cfg.Vocab, cfg.HeadDim/2
	p.ready = false
	if T > p.maxT {
		return 0, 0, fmt.Errorf("model: %s: %d tokens exceed the pass's %d rows (NewPass maxT)", op, T, p.maxT)
	}
	if len(labels) != T {
		return 0, 0, fmt.Errorf("model: %s: %d labels for %d tokens, want equal lengths", op, len(labels), T)
	}
	if len(positions) != T || len(segIDs) != T {
		return 0, 0, fmt.Errorf("model: %s: %d tokens, %d positions and %d segIDs, want equal lengths", op, T, len(positions), len(segIDs))
	}
	tok, pos, seg, lab := p.tokens[:T], p.pos[:T], p.seg[:T], p.lab[:T]
	for t := range T {
		tok[t], pos[t], seg[t], lab[t] = int(tokens[t]), int(positions[t]), int(segIDs[t]), int(labels[t])
	}
	if err := m.checkPacked(op, tok, pos, seg); err != nil {
		return 0, 0, err
	}
	for t, id := range lab {
		if id != IgnoreIndex && (id < 0 || id >= V) {
			return 0, 0, fmt.Errorf("model: %s: labels[%d] = %d outside the vocabulary [0,%d) and not %d (ignored)", op, t, id, V, IgnoreIndex)
		}
	}
	segStart := p.segStart[:T]
	for t, ps := range pos {
		if t == 0 || seg[t] != seg[t-1] {
			segStart[t] = t
		} else {
			segStart[t] = segStart[t-1]
		}
		copy(p.cos[t*half:(t+1)*half], p.tabCos[ps*half:(ps+1)*half])
		copy(p.sin[t*half:(t+1)*half], p.tabSin[ps*half:(ps+1)*half])
	}
	n = 0
	for t := 0; t+1 < T; t++ {
		if seg[t+1] == seg[t] && lab[t+1] != IgnoreIndex {
			p.scored[n], p.targets[n] = t, lab[t+1]
			n++
		}
	}
	p.nScored, p.T, p.train = n, T, train

	m.be.EmbeddingForward(p.xs[0][:T*C], tok, p.embed)
	for l := range p.layers {
		p.layerForward(l, T, false)
	}
	m.be.RMSNormForward(p.hidden[:T*C], p.xs[cfg.Layers][:T*C], p.norm, cfg.RMSNormEps, T, C)
	lossSum = p.lossForward()
	p.ready = train
	return lossSum, n, nil
}

// Backward backpropagates d(lossSum*scale)/d(params) of the last Forward:
// grads accumulate (+=) into the adapter (Adapter.Backward) and, in Full
// mode, into the grad slab. scale is typically 1/(tokens of the optimizer
// step), so micro-batches accumulate into the step's mean. It walks the
// layers from L-1 down to 0, mirroring Forward op by op.
func (p *Pass) Backward(scale float32) error {
	if !p.ready {
		return fmt.Errorf("model: train backward: no Forward to differentiate (call Forward once before each Backward)")
	}
	p.ready = false
	if p.nScored == 0 {
		return nil
	}
	cfg, be := p.m.Config, p.m.be
	T, C := p.T, cfg.Hidden
	p.lossBackward(scale)
	dres := p.dres[:T*C]
	clear(dres)
	be.RMSNormBackward(dres, p.gNorm, p.dhidden[:T*C], p.xs[cfg.Layers][:T*C], p.norm, cfg.RMSNormEps, T, C)
	for l := cfg.Layers - 1; l >= 0; l-- {
		p.layerBackward(l, T)
	}
	if p.gEmbed != nil {
		be.EmbeddingBackward(p.gEmbed, dres, p.tokens[:T], C)
	}
	return nil
}

// linear is one projection with its adapter hook: out = in·Wᵀ (+b) (+ adapter).
func (p *Pass) linear(l, mod int, out, in []float32, w kernels.Weight, bias []float32, T int) {
	p.m.be.MatMulForward(out, in, w, bias, T)
	if p.has[l][mod] {
		p.opts.Adapter.Forward(l, AdapterModules[mod], out, in, T, p.train)
	}
}

// linearBackward differentiates linear: din += dout·W (+ adapter's), and in
// Full mode dW += doutᵀ·in, db += sum_t dout.
func (p *Pass) linearBackward(l, mod int, din, dw, dbias, dout, in []float32, w kernels.Weight, T int) {
	p.m.be.MatMulBackward(din, dw, dbias, dout, in, w, T)
	if p.has[l][mod] {
		p.opts.Adapter.Backward(l, AdapterModules[mod], din, dout, in, T)
	}
}

// layerForward is one decoder layer (Model.attentionForward then
// mlpForward, the same ops in the same order, so the loss equals
// PackedNLL's), keeping its activations in p.la[l]:
//
//	xn = rmsnorm(x)·input_layernorm;  qr, kr, v = xn·Wq,k,vᵀ (+b) (+adapter)
//	q, k = rope(rmsnorm_head(qr)·q_norm, rmsnorm_head(kr)·k_norm)
//	att = attention(q, k, v);  xm = x + att·Woᵀ (+b) (+adapter)
//	xn = rmsnorm(xm)·post_attention_layernorm
//	gate, up = xn·Wgate,upᵀ (+adapter);  h = silu(gate)*up
//	x' = xm + h·Wdownᵀ (+adapter)
//
// With recompute (checkpointing, from Backward) it rebuilds the activations
// from x and stops before the down projection, whose output Backward does not
// need; the adapter still sees its down_proj Forward, on a zero out.
func (p *Pass) layerForward(l, T int, recompute bool) {
	cfg, be := p.m.Config, p.m.be
	C, NH, KVH, HD, I := cfg.Hidden, cfg.Heads, cfg.KVHeads, cfg.HeadDim, cfg.Intermediate
	qd, kvd, half := NH*HD, KVH*HD, HD/2
	L, a := &p.layers[l], &p.la[l]
	x, xn, proj := a.x[:T*C], p.xn[:T*C], p.proj[:T*C]
	qr, kr, q, k, v := a.qr[:T*qd], a.kr[:T*kvd], a.q[:T*qd], a.k[:T*kvd], a.v[:T*kvd]
	att, xm, gate, up, h := a.att[:T*qd], a.xm[:T*C], a.gate[:T*I], a.up[:T*I], p.h[:T*I]
	cos, sin := p.cos[:T*half], p.sin[:T*half]

	be.RMSNormForward(xn, x, L.inputNorm, cfg.RMSNormEps, T, C)
	p.linear(l, modQ, qr, xn, L.q, L.qBias, T)
	p.linear(l, modK, kr, xn, L.k, L.kBias, T)
	p.linear(l, modV, v, xn, L.v, L.vBias, T)
	if L.qNorm != nil {
		be.RMSNormForward(q, qr, L.qNorm, cfg.RMSNormEps, T*NH, HD)
		be.RMSNormForward(k, kr, L.kNorm, cfg.RMSNormEps, T*KVH, HD)
	}
	be.RoPEForward(q, cos, sin, T, NH, HD)
	be.RoPEForward(k, cos, sin, T, KVH, HD)
	be.PackedAttentionForward(att, q, k, v, p.segStart[:T], T, NH, KVH, HD, L.window)
	p.linear(l, modO, proj, att, L.o, L.oBias, T)
	be.AddForward(xm, x, proj)

	be.RMSNormForward(xn, xm, L.postNorm, cfg.RMSNormEps, T, C)
	p.linear(l, modGate, gate, xn, L.gate, L.gateBias, T)
	p.linear(l, modUp, up, xn, L.up, L.upBias, T)
	be.SwiGLUForward(h, gate, up)
	if recompute {
		if p.has[l][modDown] {
			clear(proj)
			p.opts.Adapter.Forward(l, AdapterModules[modDown], proj, h, T, true)
		}
		return
	}
	p.linear(l, modDown, proj, h, L.down, L.downBias, T)
	be.AddForward(p.xs[l+1][:T*C], xm, proj)
}

// layerBackward differentiates layerForward in reverse. On entry p.dres
// holds d(loss)/d(x') (the layer's output); on return d(loss)/d(x).
func (p *Pass) layerBackward(l, T int) {
	cfg, be := p.m.Config, p.m.be
	C, NH, KVH, HD, I := cfg.Hidden, cfg.Heads, cfg.KVHeads, cfg.HeadDim, cfg.Intermediate
	qd, kvd, half := NH*HD, KVH*HD, HD/2
	L, a, G := &p.layers[l], &p.la[l], p.layerGrads(l)
	x, xn := a.x[:T*C], p.xn[:T*C]
	qr, kr, q, k, v := a.qr[:T*qd], a.kr[:T*kvd], a.q[:T*qd], a.k[:T*kvd], a.v[:T*kvd]
	att, xm, gate, up, h := a.att[:T*qd], a.xm[:T*C], a.gate[:T*I], a.up[:T*I], p.h[:T*I]
	cos, sin := p.cos[:T*half], p.sin[:T*half]
	dres, dxn := p.dres[:T*C], p.dxn[:T*C]
	dh, dgate, dup := p.dh[:T*I], p.dgate[:T*I], p.dup[:T*I]
	datt, dq, dk, dv := p.datt[:T*qd], p.dq[:T*qd], p.dk[:T*kvd], p.dv[:T*kvd]
	dqr, dkr := p.dqr[:T*qd], p.dkr[:T*kvd]

	if p.opts.Checkpointing {
		p.layerForward(l, T, true) // leaves xn = post-attention norm, h
	} else {
		be.RMSNormForward(xn, xm, L.postNorm, cfg.RMSNormEps, T, C)
		be.SwiGLUForward(h, gate, up)
	}
	// MLP: x' = xm + down(silu(gate(xn))*up(xn)), xn = rmsnorm(xm).
	clear(dh)
	p.linearBackward(l, modDown, dh, G.down, G.downBias, dres, h, L.down, T)
	be.SwiGLUBackward(dgate, dup, dh, gate, up)
	clear(dxn)
	p.linearBackward(l, modGate, dxn, G.gate, G.gateBias, dgate, xn, L.gate, T)
	p.linearBackward(l, modUp, dxn, G.up, G.upBias, dup, xn, L.up, T)
	be.RMSNormBackward(dres, G.postNorm, dxn, xm, L.postNorm, cfg.RMSNormEps, T, C) // dres: d xm

	// Attention: xm = x + o(attention(rope(norm(q(xn))), rope(norm(k(xn))), v(xn))), xn = rmsnorm(x).
	be.RMSNormForward(xn, x, L.inputNorm, cfg.RMSNormEps, T, C)
	clear(datt)
	p.linearBackward(l, modO, datt, G.o, G.oBias, dres, att, L.o, T)
	be.PackedAttentionBackward(dq, dk, dv, datt, q, k, v, p.segStart[:T], T, NH, KVH, HD, L.window)
	be.RoPEBackward(dq, cos, sin, T, NH, HD)
	be.RoPEBackward(dk, cos, sin, T, KVH, HD)
	if L.qNorm != nil {
		clear(dqr)
		be.RMSNormBackward(dqr, G.qNorm, dq, qr, L.qNorm, cfg.RMSNormEps, T*NH, HD)
		clear(dkr)
		be.RMSNormBackward(dkr, G.kNorm, dk, kr, L.kNorm, cfg.RMSNormEps, T*KVH, HD)
	}
	clear(dxn)
	p.linearBackward(l, modQ, dxn, G.q, G.qBias, dqr, xn, L.q, T)
	p.linearBackward(l, modK, dxn, G.k, G.kBias, dkr, xn, L.k, T)
	p.linearBackward(l, modV, dxn, G.v, G.vBias, dv, xn, L.v, T)
	be.RMSNormBackward(dres, G.inputNorm, dxn, x, L.inputNorm, cfg.RMSNormEps, T, C) // dres: d x
}

var noGrads layerGrads

func (p *Pass) layerGrads(l int) *layerGrads {
	if p.gLayers == nil {
		return &noGrads
	}
	return &p.gLayers[l]
}
