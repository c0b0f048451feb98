package model

import (
	"fmt"
	"slices"
	"strconv"
	"unsafe"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model/safetensors"
)

// TrainOptions configures a training Pass.
type TrainOptions struct {
	Adapter Adapter // nil = no adapter
	// Full is full-parameter training: the pass keeps trainable fp32 copies of
	// every base weight (in one slab) and computes their gradients (in another).
	// Without it the base weights stay the model's read-only (bf16/f16/f32)
	// views and get no gradient.
	Full bool
	// Checkpointing keeps only each layer's input and recomputes the layer's
	// activations in Backward (one layer's worth of buffers instead of L).
	Checkpointing bool
	// LossChunk is the rows of [T,V] logits computed at a time in the loss
	// (default 256).
	LossChunk int
}

// Pass is one training forward/backward over a packed sequence of up to maxT
// rows. As in llm.c, it owns its buffers: one activation slab carved into
// named per-layer views by one sizing function (carve), and in Full mode a
// parameter slab and a gradient slab with a view per HF tensor. After NewPass,
// Forward and Backward do not allocate (an Adapter may).
//
// A Pass is not safe for concurrent use. It shares only read-only weights
// with its Model, so several Passes (and inference) may run side by side.
type Pass struct {
	m    *Model
	opts TrainOptions
	maxT int
	has  [][numModules]bool // [L] adapter present, asked once

	// The weights computed with: the model's views, or fp32 views of params.
	embed, lmHead kernels.Weight
	norm          []float32
	layers        []layer

	// Full mode: slabs, their HF-named views, and grad views by role.
	paramSlab, gradSlab []float32
	names               []string
	params, grads       [][]float32
	gEmbed, gLMHead     []float32 // [V,C]; the same view when tied
	gNorm               []float32 // [C]
	gLayers             []layerGrads

	acts []float32 // the activation slab
	xs   [][]float32
	la   []layerActs // [L]; all the same buffers (bar x) when checkpointing

	// One set of scratch shared by all layers.
	hidden        []float32 // [T,C] final-normed hidden states
	xn, proj      []float32 // [T,C] a block's normed input, a projection's output
	h             []float32 // [T,I] silu(gate)*up, recomputed in Backward
	dres, dxn     []float32 // [T,C] residual-stream grad, normed-input grad
	dhidden       []float32 // [T,C]
	dh, dgate     []float32 // [T,I]
	dup           []float32 // [T,I]
	datt, dq, dqr []float32 // [T,NH*HD]; dqr: pre-q_norm (aliases dq without q/k norms)
	dk, dv, dkr   []float32 // [T,KVH*HD]
	lossH, lossDH []float32 // [LossChunk,C] gathered hidden rows and their grad
	logits        []float32 // [LossChunk,V], then dlogits in place
	tabCos        []float32 // [maxT,HD/2] RoPE angles by position
	tabSin        []float32 // [maxT,HD/2]
	cos, sin      []float32 // [T,HD/2] per row

	tokens, segStart []int     // [T]
	pos, seg, lab    []int     // [T] the int32 inputs widened for the checks
	scored, targets  []int     // [T] scored rows and their target ids
	losses           []float64 // [T]
	nScored          int

	T     int  // rows of the last Forward
	train bool // the last forward was Forward (not Loss)
	ready bool // a Forward awaits its Backward
}

// layerActs are one layer's saved activations, each [T,·] rows.
type layerActs struct {
	x        []float32 // [T,C] block input: the residual stream (always kept)
	qr, kr   []float32 // [T,NH*HD], [T,KVH*HD] projections before q/k norm (alias q, k without)
	q, k     []float32 // post-norm, post-RoPE queries and keys
	v        []float32 // [T,KVH*HD]
	att      []float32 // [T,NH*HD] attention output, o_proj's input
	xm       []float32 // [T,C] residual stream after attention
	gate, up []float32 // [T,I] before the activation
}

// layerGrads are one layer's parameter grads (Full mode; nil otherwise).
type layerGrads struct {
	inputNorm, postNorm        []float32
	q, k, v, o                 []float32
	qBias, kBias, vBias, oBias []float32
	qNorm, kNorm               []float32
	gate, up, down             []float32
	gateBias, upBias, downBias []float32
}

// NewPass allocates a training pass for packed sequences of up to maxT rows.
func (m *Model) NewPass(maxT int, opts TrainOptions) (*Pass, error) {
	c := m.Config
	if maxT <= 0 {
		return nil, fmt.Errorf("model: new pass: maxT = %d, want > 0", maxT)
	}
	if c.MaxPositions > 0 && maxT > c.MaxPositions {
		return nil, fmt.Errorf("model: new pass: maxT = %d exceeds max_position_embeddings = %d", maxT, c.MaxPositions)
	}
	if opts.LossChunk < 0 {
		return nil, fmt.Errorf("model: new pass: LossChunk = %d, want >= 0 (0: default 256)", opts.LossChunk)
	}
	if opts.LossChunk == 0 {
		opts.LossChunk = 256
	}
	opts.LossChunk = min(opts.LossChunk, maxT)
	sup := m.be.Supports()
	for _, op := range []kernels.Op{kernels.OpMatMulBack, kernels.OpRMSNormBack, kernels.OpRoPEBack, kernels.OpAttentionBack,
		kernels.OpSwiGLUBack, kernels.OpLogSoftmaxNLLBack, kernels.OpEmbeddingBack} {
		if !sup[op] {
			return nil, fmt.Errorf("model: new pass: backend %s does not support op %v", m.be.Name(), op)
		}
	}
	p := &Pass{m: m, opts: opts, maxT: maxT, embed: m.embed, lmHead: m.lmHead, norm: m.norm, layers: slices.Clone(m.layers)}
	p.has = make([][numModules]bool, c.Layers)
	if opts.Adapter != nil {
		for l := range p.has {
			for i, mod := range AdapterModules {
				p.has[l][i] = opts.Adapter.Has(l, mod)
			}
		}
	}
	if opts.Full {
		if err := p.bindParams(); err != nil {
			return nil, err
		}
	}
	if opts.Adapter != nil {
		bindBase(opts.Adapter, m.be, p.layers, p.has)
	}
	p.acts = make([]float32, p.carve(nil))
	p.carve(p.acts)
	half := c.HeadDim / 2
	for pos := 0; pos < maxT; pos++ {
		m.ropeAngles(p.tabCos[pos*half:(pos+1)*half], p.tabSin[pos*half:(pos+1)*half], pos)
	}
	for _, s := range []*[]int{&p.tokens, &p.segStart, &p.pos, &p.seg, &p.lab, &p.scored, &p.targets} {
		*s = make([]int, maxT)
	}
	p.losses = make([]float64, maxT)
	return p, nil
}

// carve lays out the activation slab: with slab == nil it only counts, and
// it returns the floats needed. Views are sized for maxT rows.
func (p *Pass) carve(slab []float32) int {
	c := p.m.Config
	T, C, I, V := p.maxT, c.Hidden, c.Intermediate, c.Vocab
	qd, kvd, half, LC := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim, c.HeadDim/2, p.opts.LossChunk
	off := 0
	take := func(n int) []float32 {
		var v []float32
		if slab != nil {
			v = slab[off : off+n : off+n]
		}
		off += n
		return v
	}
	p.xs = make([][]float32, c.Layers+1)
	for l := range p.xs {
		p.xs[l] = take(T * C)
	}
	p.la = make([]layerActs, c.Layers)
	for l := range p.la {
		if p.opts.Checkpointing && l > 0 {
			p.la[l] = p.la[0]
		} else {
			a := &p.la[l]
			a.q, a.k, a.v = take(T*qd), take(T*kvd), take(T*kvd)
			a.qr, a.kr = a.q, a.k
			if c.QKNorm {
				a.qr, a.kr = take(T*qd), take(T*kvd)
			}
			a.att, a.xm = take(T*qd), take(T*C)
			a.gate, a.up = take(T*I), take(T*I)
		}
	}
	for l := range p.la {
		p.la[l].x = p.xs[l]
	}
	p.hidden, p.xn, p.proj, p.h = take(T*C), take(T*C), take(T*C), take(T*I)
	p.dres, p.dxn, p.dhidden = take(T*C), take(T*C), take(T*C)
	p.dh, p.dgate, p.dup = take(T*I), take(T*I), take(T*I)
	p.datt, p.dq = take(T*qd), take(T*qd)
	p.dk, p.dv = take(T*kvd), take(T*kvd)
	p.dqr, p.dkr = p.dq, p.dk
	if c.QKNorm {
		p.dqr, p.dkr = take(T*qd), take(T*kvd)
	}
	p.lossH, p.lossDH, p.logits = take(LC*C), take(LC*C), take(LC*V)
	p.tabCos, p.tabSin, p.cos, p.sin = take(T*half), take(T*half), take(T*half), take(T*half)
	return off
}

// ActivationBytes is the size of the activation slab (saved activations,
// their grads and the loss scratch).
func (p *Pass) ActivationBytes() int64 { return int64(len(p.acts)) * 4 }

// paramSpec is one trainable tensor of Full mode: its HF name and shape, the
// frozen source, and where its fp32 view and grad view go.
type paramSpec struct {
	name       string
	rows, cols int             // cols == 0: a vector of rows elements
	w          *kernels.Weight // matrix param (view replaced by an F32 view)
	v          *[]float32      // vector param
	g          *[]float32      // its grad view
}

func (p *Pass) paramSpecs() []paramSpec {
	c := p.m.Config
	C, I, V := c.Hidden, c.Intermediate, c.Vocab
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	specs := []paramSpec{{name: "model.embed_tokens.weight", rows: V, cols: C, w: &p.embed, g: &p.gEmbed}}
	p.gLayers = make([]layerGrads, c.Layers)
	for i := range p.layers {
		L, G := &p.layers[i], &p.gLayers[i]
		pre := "model.layers." + strconv.Itoa(i) + "."
		add := func(name string, rows, cols int, w *kernels.Weight, v *[]float32, g *[]float32) {
			specs = append(specs, paramSpec{name: pre + name, rows: rows, cols: cols, w: w, v: v, g: g})
		}
		add("input_layernorm.weight", C, 0, nil, &L.inputNorm, &G.inputNorm)
		add("self_attn.q_proj.weight", qd, C, &L.q, nil, &G.q)
		if L.qBias != nil {
			add("self_attn.q_proj.bias", qd, 0, nil, &L.qBias, &G.qBias)
		}
		add("self_attn.k_proj.weight", kvd, C, &L.k, nil, &G.k)
		if L.kBias != nil {
			add("self_attn.k_proj.bias", kvd, 0, nil, &L.kBias, &G.kBias)
		}
		add("self_attn.v_proj.weight", kvd, C, &L.v, nil, &G.v)
		if L.vBias != nil {
			add("self_attn.v_proj.bias", kvd, 0, nil, &L.vBias, &G.vBias)
		}
		add("self_attn.o_proj.weight", C, qd, &L.o, nil, &G.o)
		if L.oBias != nil {
			add("self_attn.o_proj.bias", C, 0, nil, &L.oBias, &G.oBias)
		}
		if L.qNorm != nil {
			add("self_attn.q_norm.weight", c.HeadDim, 0, nil, &L.qNorm, &G.qNorm)
			add("self_attn.k_norm.weight", c.HeadDim, 0, nil, &L.kNorm, &G.kNorm)
		}
		add("post_attention_layernorm.weight", C, 0, nil, &L.postNorm, &G.postNorm)
		add("mlp.gate_proj.weight", I, C, &L.gate, nil, &G.gate)
		if L.gateBias != nil {
			add("mlp.gate_proj.bias", I, 0, nil, &L.gateBias, &G.gateBias)
		}
		add("mlp.up_proj.weight", I, C, &L.up, nil, &G.up)
		if L.upBias != nil {
			add("mlp.up_proj.bias", I, 0, nil, &L.upBias, &G.upBias)
		}
		add("mlp.down_proj.weight", C, I, &L.down, nil, &G.down)
		if L.downBias != nil {
			add("mlp.down_proj.bias", C, 0, nil, &L.downBias, &G.downBias)
		}
	}
	specs = append(specs, paramSpec{name: "model.norm.weight", rows: C, v: &p.norm, g: &p.gNorm})
	if !c.TieEmbeddings {
		specs = append(specs, paramSpec{name: "lm_head.weight", rows: V, cols: C, w: &p.lmHead, g: &p.gLMHead})
	}
	return specs
}

var toSafetensorsDType = map[kernels.DType]safetensors.DType{kernels.F32: safetensors.F32, kernels.F16: safetensors.F16, kernels.BF16: safetensors.BF16}

// bindParams copies every base weight into an fp32 parameter slab, points the
// pass's weights at it and carves a grad view per tensor.
func (p *Pass) bindParams() error {
	specs := p.paramSpecs()
	total := 0
	for _, s := range specs {
		total += s.rows * max(s.cols, 1)
	}
	p.paramSlab, p.gradSlab = make([]float32, total), make([]float32, total)
	off := 0
	for _, s := range specs {
		n := s.rows * max(s.cols, 1)
		pv, gv := p.paramSlab[off:off+n:off+n], p.gradSlab[off:off+n:off+n]
		off += n
		if s.w != nil {
			src := *s.w
			if err := safetensors.ToFloat32(pv, src.Data, toSafetensorsDType[src.DType]); err != nil {
				return fmt.Errorf("model: new pass: %s: %w", s.name, err)
			}
			*s.w = kernels.Weight{DType: kernels.F32, Data: f32Bytes(pv), Rows: s.rows, Cols: s.cols}
		} else {
			copy(pv, *s.v)
			*s.v = pv
		}
		*s.g = gv
		p.names = append(p.names, s.name)
		p.params = append(p.params, pv)
		p.grads = append(p.grads, gv)
	}
	if p.m.Config.TieEmbeddings {
		p.lmHead, p.gLMHead = p.embed, p.gEmbed
	}
	return nil
}

// f32Bytes views v as the little-endian bytes an F32 Weight holds (the
// kernels decode F32 as little-endian, which is every platform Go's amd64 and
// arm64 ports run on).
func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

// Params returns, in Full mode, the trainable fp32 parameters and their grads
// as views of the two slabs, by HF tensor name (nil otherwise). Writing a
// param changes what the next Forward computes with.
func (p *Pass) Params() (names []string, params, grads [][]float32) {
	return p.names, p.params, p.grads
}

// ZeroGrads clears the Full-mode grad slab (adapter grads belong to the adapter).
func (p *Pass) ZeroGrads() { clear(p.gradSlab) }
