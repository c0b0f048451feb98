package cuda

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strings"
	"unsafe"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// The device-resident LoRA training pass, the llm.c train_gpt2.cu way: a
// dedicated forward and backward of the decoder over device buffers, not a
// general tensor API. The frozen base weights are uploaded once (bf16 with
// TUNE_CUDA_GEMM=bf16, else fp32), one device slab holds every activation
// and scratch buffer for (maxT, config), and LoRA A/B, their grads and the
// AdamW moments live on the device. Per micro-batch only the int32 inputs
// (tokens, segment starts, positions, scored rows, targets) go up and the
// summed loss (8 bytes) comes down; per optimizer step the grad norm (8
// bytes) comes down, and clipping and AdamW run on the device (Step).
//
// It computes what model.Pass computes with a lora.Adapter, op for op (see
// model/backward.go and lora/linear.go; TestDevicePass compares the two on a
// CPU-executing fake device): the same kernels as the per-op backend, the
// same chunked cross-entropy (LossChunk rows of logits at a time, never T×V),
// the same dropout masks, the same gradient checkpointing (a layer's forward
// recomputed in its backward).
//
// The decoder's weights are read by tracing: one short forward of
// model.Pass on this backend in record mode (ops record their arguments and
// compute nothing), so the model stays the single owner of its tensors and
// of the op order, and the pass refuses a model whose trace it does not
// recognise.
//
// Block-quantized base weights (QLoRA's NF4/INT4/INT8 bases, GGUF models)
// stay in their blocks on the device; each base GEMM expands a tile of rows
// at a time into the backend's tile buffer and multiplies it (dequant.go),
// forward and din alike; a quantized embedding table is expanded to fp32
// once.

// errUnsupported marks what the device pass does not cover (DoRA, a model
// whose trace it does not recognise):
// NewLoRADevicePass then leaves training to the per-op path.
var errUnsupported = errors.New("not supported by the device pass (TUNE_CUDA_PASS=host runs the per-op path)")

// passKernels are the entry points only the device pass launches.
var passKernels = []string{"gather_rows", "scatter_rows", "scale_f32", "sum_f64", "sumsq_f64", "lora_dropout", "lora_dropout_add"}

func init() { kernelNames = append(kernelNames, passKernels...) }

// ---- trace ----------------------------------------------------------------------

// traceCall is one recorded op of a model forward.
type traceCall struct {
	op       string // embedding, rmsnorm, matmul, rope, attention, add, swiglu, nll
	w        kernels.Weight
	vec      []float32 // rmsnorm weight, matmul bias
	N, C     int       // rmsnorm rows and width
	cos, sin []float32 // rope tables of the traced rows
	window   int       // attention
}

type trace struct{ calls []traceCall }

// record appends c when the backend is tracing; the op then returns
// without computing anything.
func (b *Backend) record(c traceCall) bool {
	if b.rec == nil {
		return false
	}
	b.rec.calls = append(b.rec.calls, c)
	return true
}

// decLayer is one decoder layer's host views, as model.Pass computes with them.
type decLayer struct {
	inNorm, postNorm, qNorm, kNorm []float32
	w                              [nMod]kernels.Weight
	bias                           [nMod][]float32
	window                         int
}

// Module indexes, in the order of model.AdapterModules and lora.Modules.
const (
	mQ = iota
	mK
	mV
	mO
	mGate
	mUp
	mDown
	nMod
)

type decoder struct {
	cfg           *model.Config
	embed, lmHead kernels.Weight
	norm          []float32
	layers        []decLayer
}

// traceDecoder reads m's weights by running a 4-row Loss of model.Pass on
// this backend in record mode, and checks the RoPE tables it saw against
// the config's frequencies.
func (b *Backend) traceDecoder(m *model.Model) (dec *decoder, err error) {
	cfg := m.Config
	T := 4
	if cfg.MaxPositions > 0 {
		T = min(T, cfg.MaxPositions)
	}
	mp, err := m.NewPass(T, model.TrainOptions{LossChunk: 1})
	if err != nil {
		return nil, err
	}
	ids, pos, seg, lab := make([]int32, T), make([]int32, T), make([]int32, T), make([]int32, T)
	for t := range T {
		pos[t], lab[t] = int32(t), model.IgnoreIndex
	}
	if T > 1 {
		lab[1] = 0 // one scored row, so the LM head is traced
	}
	b.mu.Lock()
	b.rec = &trace{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.rec = nil
		b.mu.Unlock()
		if r := recover(); r != nil {
			err = fmt.Errorf("cuda: device pass: tracing the model: %v", r)
		}
	}()
	if _, _, err := mp.Loss(ids, pos, seg, lab); err != nil {
		return nil, err
	}
	return parseTrace(b.rec, cfg, T)
}

// parseTrace maps the recorded calls onto the decoder, checking each op is
// the one model.Pass runs next (model/backward.go's layerForward).
func parseTrace(tr *trace, cfg *model.Config, T int) (*decoder, error) {
	i := 0
	next := func(op string, what string) (traceCall, error) {
		if i >= len(tr.calls) {
			return traceCall{}, fmt.Errorf("cuda: device pass: model trace ends before %s (%s): %w", what, op, errUnsupported)
		}
		c := tr.calls[i]
		i++
		if c.op != op {
			return c, fmt.Errorf("cuda: device pass: model trace call %d is %s, want %s (%s): the model's pass changed, update devpass.go: %w", i-1, c.op, op, what, errUnsupported)
		}
		return c, nil
	}
	d := &decoder{cfg: cfg, layers: make([]decLayer, cfg.Layers)}
	c, err := next("embedding", "embed_tokens")
	if err != nil {
		return nil, err
	}
	d.embed = c.w
	tabCos, tabSin := ropeTables(cfg, T)
	for l := range d.layers {
		L := &d.layers[l]
		where := func(s string) string { return fmt.Sprintf("layer %d %s", l, s) }
		if c, err = next("rmsnorm", where("input_layernorm")); err != nil {
			return nil, err
		}
		L.inNorm = c.vec
		for _, m := range []int{mQ, mK, mV} {
			if c, err = next("matmul", where(lora.Modules[m])); err != nil {
				return nil, err
			}
			L.w[m], L.bias[m] = c.w, c.vec
		}
		if cfg.QKNorm {
			if c, err = next("rmsnorm", where("q_norm")); err != nil {
				return nil, err
			}
			L.qNorm = c.vec
			if c, err = next("rmsnorm", where("k_norm")); err != nil {
				return nil, err
			}
			L.kNorm = c.vec
		}
		for range 2 {
			if c, err = next("rope", where("rope")); err != nil {
				return nil, err
			}
			n := T * cfg.HeadDim / 2
			if len(c.cos) < n || len(c.sin) < n || !equalBits(c.cos[:n], tabCos[:n]) || !equalBits(c.sin[:n], tabSin[:n]) {
				return nil, fmt.Errorf("cuda: device pass: layer %d: the model's RoPE angles differ from config.json's frequencies (a GGUF rope_freqs tensor?): %w", l, errUnsupported)
			}
		}
		if c, err = next("attention", where("attention")); err != nil {
			return nil, err
		}
		L.window = c.window
		if c, err = next("matmul", where("o_proj")); err != nil {
			return nil, err
		}
		L.w[mO], L.bias[mO] = c.w, c.vec
		if _, err = next("add", where("residual")); err != nil {
			return nil, err
		}
		if c, err = next("rmsnorm", where("post_attention_layernorm")); err != nil {
			return nil, err
		}
		L.postNorm = c.vec
		for _, m := range []int{mGate, mUp} {
			if c, err = next("matmul", where(lora.Modules[m])); err != nil {
				return nil, err
			}
			L.w[m], L.bias[m] = c.w, c.vec
		}
		if _, err = next("swiglu", where("swiglu")); err != nil {
			return nil, err
		}
		if c, err = next("matmul", where("down_proj")); err != nil {
			return nil, err
		}
		L.w[mDown], L.bias[mDown] = c.w, c.vec
		if _, err = next("add", where("residual")); err != nil {
			return nil, err
		}
	}
	if c, err = next("rmsnorm", "model.norm"); err != nil {
		return nil, err
	}
	d.norm = c.vec
	if T > 1 {
		if c, err = next("matmul", "lm_head"); err != nil {
			return nil, err
		}
		d.lmHead = c.w
	}
	return d, nil
}

func equalBits(a, b []float32) bool {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// ropeTables are the cos and sin rows [maxT, HD/2] of positions 0..maxT-1,
// computed as model's ropeAngles computes them.
func ropeTables(cfg *model.Config, maxT int) (cos, sin []float32) {
	inv := cfg.InvFreq()
	half := cfg.HeadDim / 2
	cos, sin = make([]float32, maxT*half), make([]float32, maxT*half)
	for p := range maxT {
		for i, f := range inv {
			a := float64(float32(p) * f)
			cos[p*half+i] = float32(math.Cos(a))
			sin[p*half+i] = float32(math.Sin(a))
		}
	}
	return cos, sin
}

// ---- layout ----------------------------------------------------------------------

// PassOptions configure a device pass.
type PassOptions struct {
	MaxT          int  // rows of the longest packed sequence
	Checkpointing bool // keep only each layer's input; recompute the layer in backward
	LossChunk     int  // logits rows at a time (default 256, at most MaxT)
}

// passDims are what the activation slab's size depends on.
type passDims struct {
	C, I, V, NH, KVH, HD, L int
	qkNorm                  bool
	T, LC                   int
	ckpt, bf16              bool
	maxR, maxIn             int
	drop                    bool // LoRA dropout: the [T,maxIn] mask scratch
	dora                    bool // DoRA modules: [T,maxOut] scratch twice, the norm tile
	tcAttn                  bool // tensor-core attention (attn_tc.go): lse saved per layer without checkpointing
	maxOut, normRows        int
	loraRows                int // Σ over adapted modules of R (u is [T,R] per module)
	nParams                 int
}

// devActs are one layer's saved activations (device addresses).
type devActs struct {
	x, qr, kr, q, k, v, att, xm, gate, up uint64
	lse                                   uint64 // [T,NH] the tensor-core forward's log-sum-exp (tcAttn, no checkpointing)
}

// carve lays the device slab out from base (0: count only) and returns its
// size in bytes; every view starts on a 256-byte boundary.
func (p *LoRAPass) carve(base uint64) uint64 {
	d := p.dims
	T, C, I, V := uint64(d.T), uint64(d.C), uint64(d.I), uint64(d.V)
	qd, kvd, half := uint64(d.NH*d.HD), uint64(d.KVH*d.HD), uint64(d.HD/2)
	off := uint64(0)
	take := func(bytes uint64) uint64 {
		at := base + off
		off += (max(bytes, 4) + 255) &^ 255
		return at
	}
	f := func(n uint64) uint64 { return take(4 * n) }
	p.ints = take(4 * 5 * T)
	p.tabCos, p.tabSin, p.cos, p.sin = f(T*half), f(T*half), f(T*half), f(T*half)
	p.xs = make([]uint64, d.L+1)
	for l := range p.xs {
		p.xs[l] = f(T * C)
	}
	p.la = make([]devActs, d.L)
	for l := range p.la {
		if d.ckpt && l > 0 {
			p.la[l] = p.la[0]
		} else {
			a := &p.la[l]
			a.q, a.k, a.v = f(T*qd), f(T*kvd), f(T*kvd)
			a.qr, a.kr = a.q, a.k
			if d.qkNorm {
				a.qr, a.kr = f(T*qd), f(T*kvd)
			}
			a.att, a.xm, a.gate, a.up = f(T*qd), f(T*C), f(T*I), f(T*I)
			if d.tcAttn && !d.ckpt {
				a.lse = f(T * uint64(d.NH))
			}
		}
	}
	for l := range p.la {
		p.la[l].x = p.xs[l]
	}
	p.hidden, p.xn, p.proj, p.h = f(T*C), f(T*C), f(T*C), f(T*I)
	p.dres, p.dxn, p.dhidden = f(T*C), f(T*C), f(T*C)
	p.dh, p.dgate, p.dup = f(T*I), f(T*I), f(T*I)
	p.datt, p.dq, p.dk, p.dv = f(T*qd), f(T*qd), f(T*kvd), f(T*kvd)
	p.dqr, p.dkr = p.dq, p.dk
	if d.qkNorm {
		p.dqr, p.dkr = f(T*qd), f(T*kvd)
	}
	p.rstd = f(T * uint64(d.NH))
	p.lse, p.dsum = f(T*uint64(d.NH)), f(T*uint64(d.NH))
	LC := uint64(d.LC)
	p.lossH, p.lossDH, p.logits = f(LC*C), f(LC*C), f(LC*V)
	p.losses, p.sums = take(8*T), take(8*(normBlocks+2))
	if d.bf16 {
		// xb: a GEMM's input [T,IC] (the LM head's is [LC,C]); db: a
		// backward GEMM's dout [T,OC] or the dlogits [LC,V].
		p.xb, p.db = take(2*T*max(C, I, qd)), take(2*max(T*max(C, I, qd), LC*V))
	}
	// LoRA: u per module, the shared [T,maxR] and [T,maxIn] scratch, and the
	// parameter, grad and moment slabs.
	p.uBase = f(T * uint64(d.loraRows))
	R, In := uint64(max(d.maxR, 1)), uint64(max(d.maxIn, 1))
	p.su, p.g = f(T*R), f(T*R)
	if d.drop {
		p.xd, p.dx = f(T*In), f(T*In)
	}
	if d.dora {
		Out, NR := uint64(max(d.maxOut, 1)), uint64(max(d.normRows, 1))
		p.doraY, p.doraBase = f(T*Out), f(T*Out)
		p.normTile, p.sB = f(NR*In), f(NR*R)
	}
	N := uint64(max(d.nParams, 1))
	p.P, p.G, p.M, p.Vm = f(N), f(N), f(N), f(N)
	return off
}

// normBlocks is the grid of sumsq_f64 (partial sums, then sum_f64).
const normBlocks = 256

// ---- the pass --------------------------------------------------------------------

// devModule is one adapted linear layer of the pass.
type devModule struct {
	layer, m     int
	r, in, out   int
	s            float32
	a, b, da, db uint64 // device views of A [R,in], B [out,R] and their grads
	u            uint64 // [T,R] x·Aᵀ saved by forward
	drop         bool   // the last forward's dropout
	key          uint64

	// DoRA (devpass_dora.go): the magnitude's slab offset and device views
	// of m and dm, and the module's n and m/n.
	dora                bool
	magOff              int
	mag, dmag, norm, mn uint64
}

// LoRAPass is the device-resident training pass of a model with a LoRA
// adapter (see the top of this file). It is not safe for concurrent use;
// its methods hold the backend for their duration. It computes with the
// backend's cached BF16/F16 weights: Backend.ForgetWeights must not run
// while a pass is open.
type LoRAPass struct {
	b    *Backend
	dec  *decoder
	ad   *lora.Adapter
	dims passDims

	// Device weights: per layer base projections (fp32 or bf16), biases
	// and norms (fp32), the embedding table (fp32, or bf16 as stored) and the LM head.
	lw               [][nMod]devW
	lbias            [][nMod]uint64
	inNorm, postNorm []uint64
	qNorm, kNorm     []uint64
	embed            uint64
	lmHead           devW
	embedBF16        bool // embed is the BF16 table as stored (embedding_fwd_bf16)
	norm             uint64
	owned            []dbuf // pass-owned allocations (the slab, F32 weights)

	slab, slabSize uint64
	ints           uint64 // int32 [5,maxT]: tokens, segStart, positions, scored rows, targets
	tabCos, tabSin uint64
	cos, sin       uint64
	xs             []uint64
	la             []devActs
	hidden, xn     uint64
	proj, h        uint64
	dres, dxn      uint64
	dhidden        uint64
	dh, dgate, dup uint64
	datt, dq       uint64
	dk, dv         uint64
	dqr, dkr       uint64
	rstd, lse      uint64
	dsum           uint64
	lossH, lossDH  uint64
	logits         uint64
	losses, sums   uint64 // float64 [maxT]; float64 [normBlocks+2]: norm partials, loss sum, norm sum
	xb, db         uint64 // bf16 GEMM operand scratch
	doraY          uint64 // DoRA: [T,maxOut] u·Bᵀ, then mn·g
	doraBase       uint64 // DoRA: [T,maxOut] x·Wᵀ, then (mn−1)·g
	normTile, sB   uint64 // DoRA: [normRows,maxIn] W + s·B·A, [normRows,maxR] s·B
	normsDirty     bool   // DoRA: the parameters changed since n and m/n were computed
	uBase          uint64
	su, g, xd, dx  uint64
	P, G, M, Vm    uint64

	mods []devModule
	by   [][nMod]*devModule // [L][module], nil where not adapted

	kv *kvCache // decoding (devgen.go): the layers' key/value caches

	host     []int32 // the int32 inputs, uploaded in one copy
	T, n     int
	train    bool
	ready    bool
	dropP    float64
	dropStep uint64

	// Host-synchronised mode (the trainer's host AdamW): params are
	// uploaded when the host slab changed, grads downloaded after every
	// Backward. DeviceOptimizer turns it off.
	hostSync bool
	shadow   []float32
	optStep  int64
}

// NewLoRADevicePass is NewLoRAPass for callers that must not import this
// package (package train checks for it with an interface; kernels/cuda's
// tests import train): it returns a *LoRAPass, or nil and no error when
// the backend runs LoRA through its per-op path (TUNE_CUDA_PASS=host) or
// the pass trains the base weights (opts.Full).
func (b *Backend) NewLoRADevicePass(m *model.Model, a *lora.Adapter, maxT int, opts model.TrainOptions) (any, error) {
	if !b.devPass || opts.Full {
		return nil, nil
	}
	p, err := b.NewLoRAPass(m, a, PassOptions{MaxT: maxT, Checkpointing: opts.Checkpointing, LossChunk: opts.LossChunk})
	if errors.Is(err, errUnsupported) {
		return nil, nil // the per-op path computes the same, slower
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// NewLoRAPass builds the device pass of model m (loaded on this backend)
// with adapter a: it traces m's weights, uploads them and a's slabs, and
// allocates the activation slab for opts.MaxT rows. The adapter's host
// slabs stay the trainer's view (see DeviceOptimizer).
func (b *Backend) NewLoRAPass(m *model.Model, a *lora.Adapter, opts PassOptions) (p *LoRAPass, err error) {
	if m.Backend() != kernels.Backend(b) {
		return nil, fmt.Errorf("cuda: device pass: the model runs on backend %s, not this cuda backend", m.Backend().Name())
	}
	cfg := m.Config
	if opts.MaxT <= 0 {
		return nil, fmt.Errorf("cuda: device pass: MaxT = %d, want > 0", opts.MaxT)
	}
	if cfg.MaxPositions > 0 && opts.MaxT > cfg.MaxPositions {
		return nil, fmt.Errorf("cuda: device pass: MaxT = %d exceeds max_position_embeddings = %d", opts.MaxT, cfg.MaxPositions)
	}
	if opts.LossChunk < 0 {
		return nil, fmt.Errorf("cuda: device pass: LossChunk = %d, want >= 0 (0: default 256)", opts.LossChunk)
	}
	if opts.LossChunk == 0 {
		opts.LossChunk = 256
	}
	checkHeadsErr := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%v", r)
			}
		}()
		checkHeads("device pass", cfg.Heads, cfg.KVHeads, cfg.HeadDim)
		return nil
	}
	if err := checkHeadsErr(); err != nil {
		return nil, err
	}
	dec, err := b.traceDecoder(m)
	if err != nil {
		return nil, err
	}
	p = &LoRAPass{b: b, dec: dec, ad: a, dropP: a.Config().Dropout, hostSync: true}
	p.dims = passDims{C: cfg.Hidden, I: cfg.Intermediate, V: cfg.Vocab, NH: cfg.Heads, KVH: cfg.KVHeads, HD: cfg.HeadDim,
		L: cfg.Layers, qkNorm: cfg.QKNorm, T: opts.MaxT, LC: min(opts.LossChunk, opts.MaxT), ckpt: opts.Checkpointing,
		bf16: b.bf16, nParams: len(a.Params()), drop: p.dropP > 0, dora: a.DoRA(), tcAttn: tcAttention(cfg.HeadDim, b.bf16)}
	if err := p.planModules(); err != nil {
		return nil, err
	}
	defer b.enter()()
	pass := p // a failing return sets p to nil before this runs
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cuda: device pass: %v", r)
		}
		if err != nil {
			pass.release()
			p = nil
		}
	}()
	if err := p.uploadWeights(); err != nil {
		return nil, err
	}
	// The conversion scratch of the upload (a bf16 embedding table's raw
	// bytes: 1.2 GiB for Qwen3-8B) is not needed again.
	if s := &b.slots[7]; s.ptr != 0 {
		b.free(s.ptr, s.size)
		*s = dbuf{}
	}
	p.slabSize = p.carve(0)
	if p.slab, err = p.own(p.slabSize); err != nil {
		return nil, err
	}
	b.must("cuMemsetD8", b.d.cuMemsetD8(p.slab, 0, p.slabSize))
	p.carve(p.slab)
	off := p.uBase
	for i := range p.mods {
		md := &p.mods[i]
		md.u = off
		off += uint64(opts.MaxT*md.r) * 4
		md.a, md.b = p.P+uint64(md.a)*4, p.P+uint64(md.b)*4
		md.da, md.db = p.G+uint64(md.da)*4, p.G+uint64(md.db)*4
		if md.dora {
			if err := p.doraModule(md); err != nil {
				return nil, err
			}
		}
	}
	cs, sn := ropeTables(cfg, opts.MaxT)
	b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p.tabCos, unsafe.Pointer(&cs[0]), uint64(len(cs))*4))
	b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p.tabSin, unsafe.Pointer(&sn[0]), uint64(len(sn))*4))
	p.host = make([]int32, 5*opts.MaxT)
	p.uploadParams()
	p.doraInitMagnitudes()
	return p, nil
}

// planModules lists the adapted modules with their slab offsets (turned
// into device addresses once the slab exists).
func (p *LoRAPass) planModules() error {
	cfg := p.dec.cfg
	p.by = make([][nMod]*devModule, cfg.Layers)
	type ab struct{ a, b, mag int }
	offs := map[[2]int]*ab{}
	for _, t := range p.ad.Tensors() {
		m := moduleIdx(t.Module)
		if m < 0 {
			return fmt.Errorf("cuda: device pass: adapter tensor %s: unknown module %q", t.Name, t.Module)
		}
		k := [2]int{t.Layer, m}
		if offs[k] == nil {
			offs[k] = &ab{-1, -1, -1}
		}
		switch {
		case strings.HasSuffix(t.Name, ".lora_A.weight"):
			offs[k].a = t.Offset
		case strings.HasSuffix(t.Name, ".lora_B.weight"):
			offs[k].b = t.Offset
		case strings.HasSuffix(t.Name, ".lora_magnitude_vector"):
			offs[k].mag = t.Offset
		default:
			return fmt.Errorf("cuda: device pass: adapter tensor %s: %w", t.Name, errUnsupported)
		}
	}
	C, I, qd, kvd := cfg.Hidden, cfg.Intermediate, cfg.Heads*cfg.HeadDim, cfg.KVHeads*cfg.HeadDim
	shape := [nMod][2]int{{qd, C}, {kvd, C}, {kvd, C}, {C, qd}, {I, C}, {I, C}, {C, I}}
	for l := range cfg.Layers {
		for m := range nMod {
			o := offs[[2]int{l, m}]
			if o == nil {
				continue
			}
			r, _, s, ok := p.ad.ModuleRank(l, lora.Modules[m])
			if !ok || o.a < 0 || o.b < 0 {
				return fmt.Errorf("cuda: device pass: layer %d %s: adapter lacks lora_A or lora_B", l, lora.Modules[m])
			}
			if p.ad.DoRA() && o.mag < 0 {
				return fmt.Errorf("cuda: device pass: layer %d %s: DoRA adapter lacks lora_magnitude_vector", l, lora.Modules[m])
			}
			md := devModule{layer: l, m: m, r: r, out: shape[m][0], in: shape[m][1], s: float32(s),
				a: uint64(o.a), b: uint64(o.b), da: uint64(o.a), db: uint64(o.b), dora: p.ad.DoRA(), magOff: o.mag}
			p.mods = append(p.mods, md)
			p.dims.maxR = max(p.dims.maxR, r)
			p.dims.maxIn = max(p.dims.maxIn, md.in)
			p.dims.loraRows += r
			if md.dora {
				p.dims.maxOut = max(p.dims.maxOut, md.out)
			}
		}
	}
	p.dims.normRows = doraRows(p.dims.maxOut, p.dims.maxIn)
	for i := range p.mods {
		p.by[p.mods[i].layer][p.mods[i].m] = &p.mods[i]
	}
	return nil
}

func moduleIdx(name string) int {
	for i, m := range lora.Modules {
		if m == name {
			return i
		}
	}
	return -1
}

// own allocates pass-owned device memory.
func (p *LoRAPass) own(n uint64) (uint64, error) {
	ptr, err := p.b.alloc(n)
	if err != nil {
		return 0, err
	}
	p.owned = append(p.owned, dbuf{ptr: ptr, size: n})
	return ptr, nil
}

// release frees what the pass owns (the backend's weight cache keeps the
// BF16/F16 base weights for the model's other uses).
func (p *LoRAPass) release() {
	for _, o := range p.owned {
		p.b.free(o.ptr, o.size)
	}
	p.owned = nil
}

// Close frees the pass's device memory.
func (p *LoRAPass) Close() {
	defer p.b.enter()()
	p.release()
}

// devW is a frozen projection on the device: a dense matrix in the GEMM
// dtype, or (q set) the raw blocks of a block-quantized one (QLoRA and GGUF
// bases), expanded a tile of rows at a time inside the GEMMs (dequant.go).
type devW struct {
	ptr uint64
	q   *kernels.Weight
	f32 uint64 // an F32 weight's fp32 copy when ptr is its bf16 one (DoRA's norm reads it)
}

// baseWeight returns the device copy of a frozen projection in the GEMM
// dtype: BF16/F16 checkpoint weights through the backend's cache (shared
// with the per-op path), F32 ones uploaded into pass-owned memory (the
// cache keeps large F32 weights only per call), block-quantized ones as
// their raw blocks through the backend's block cache (or, with
// TUNE_CUDA_DEQUANT=host, dequantized on the host and cached dense).
func (p *LoRAPass) baseWeight(what string, w kernels.Weight, bf16 bool) (devW, error) {
	b := p.b
	if err := w.Check(); err != nil {
		return devW{}, fmt.Errorf("%s: %w", what, err)
	}
	if w.DType.Quantized() {
		if !b.deviceDequant(w) {
			ptr, err := b.weight(w, bf16)
			return devW{ptr: ptr}, err
		}
		raw, err := b.qweight(w)
		if err != nil {
			return devW{}, fmt.Errorf("%s: %w", what, err)
		}
		return devW{ptr: raw, q: &w}, nil
	}
	if w.DType != kernels.F32 {
		ptr, err := b.weight(w, bf16)
		return devW{ptr: ptr}, err
	}
	n := uint64(w.Rows) * uint64(w.Cols)
	f, err := p.own(n * 4)
	if err != nil {
		return devW{}, err
	}
	if n > 0 {
		b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(f, unsafe.Pointer(&w.Data[0]), n*4))
	}
	if !bf16 {
		return devW{ptr: f}, nil
	}
	h, err := p.own(n * 2)
	if err != nil {
		return devW{}, err
	}
	b.launch("f32_to_bf16", blocks(int(n), ewThreads), ewThreads, h, f, int64(n))
	return devW{ptr: h, f32: f}, nil
}

// vec uploads a host vector into pass-owned memory (0 for nil).
func (p *LoRAPass) vec(v []float32) (uint64, error) {
	if v == nil {
		return 0, nil
	}
	d, err := p.own(uint64(len(v)) * 4)
	if err != nil {
		return 0, err
	}
	if len(v) > 0 {
		p.b.must("cuMemcpyHtoD", p.b.d.cuMemcpyHtoD(d, unsafe.Pointer(&v[0]), uint64(len(v))*4))
	}
	return d, nil
}

func (p *LoRAPass) uploadWeights() error {
	dec, bf16 := p.dec, p.b.bf16
	L := len(dec.layers)
	p.lw, p.lbias = make([][nMod]devW, L), make([][nMod]uint64, L)
	p.inNorm, p.postNorm, p.qNorm, p.kNorm = make([]uint64, L), make([]uint64, L), make([]uint64, L), make([]uint64, L)
	var err error
	for l := range dec.layers {
		dl := &dec.layers[l]
		for m := range nMod {
			if p.lw[l][m], err = p.baseWeight(fmt.Sprintf("layer %d %s", l, lora.Modules[m]), dl.w[m], bf16); err != nil {
				return err
			}
			if p.lbias[l][m], err = p.vec(dl.bias[m]); err != nil {
				return err
			}
		}
		for _, v := range []struct {
			dst *uint64
			src []float32
		}{{&p.inNorm[l], dl.inNorm}, {&p.postNorm[l], dl.postNorm}, {&p.qNorm[l], dl.qNorm}, {&p.kNorm[l], dl.kNorm}} {
			if *v.dst, err = p.vec(v.src); err != nil {
				return err
			}
		}
	}
	if p.norm, err = p.vec(dec.norm); err != nil {
		return err
	}
	// The embedding kernels read an fp32 table, or a BF16 one as stored; a
	// block-quantized table (GGUF token_embd) is expanded to fp32 once, on
	// the device: the values the CPU's gather dequantizes, bit for bit.
	switch e := dec.embed; {
	case e.DType.Quantized() && p.b.deviceDequant(e):
		p.embed, err = p.own(uint64(e.Rows) * uint64(e.Cols) * 4)
		if err == nil {
			err = p.b.dequantDense(p.embed, e)
		}
	case e.DType == kernels.F32:
		var w devW
		w, err = p.baseWeight("embed_tokens", e, false)
		p.embed = w.ptr
	case e.DType == kernels.BF16:
		p.embed, err = p.b.weight(e, true)
		p.embedBF16 = true
	default: // F16, or quantized with TUNE_CUDA_DEQUANT=host: the cached fp32 copy
		p.embed, err = p.b.weight(e, false)
	}
	if err != nil {
		return fmt.Errorf("cuda: device pass: embed_tokens: %w", err)
	}
	p.lmHead, err = p.baseWeight("lm_head", dec.lmHead, bf16)
	return err
}

// ActivationBytes is the size of the pass's device slab (activations,
// scratch, LoRA parameters, grads and moments).
func (p *LoRAPass) ActivationBytes() uint64 { return p.slabSize }

// SetDropoutStep picks the dropout masks of the following forwards, as
// lora.Adapter.SetDropoutStep does (the trainer calls both).
func (p *LoRAPass) SetDropoutStep(step uint64) { p.dropStep = step }

// DeviceOptimizer switches the pass to device-resident optimization: the
// host slabs are no longer synchronised per micro-batch; the caller runs
// Step for clipping and AdamW and SyncToHost before reading the host slabs.
func (p *LoRAPass) DeviceOptimizer() { p.hostSync = false }

// uploadParams copies the adapter's host parameters to the device.
func (p *LoRAPass) uploadParams() {
	host := p.ad.Params()
	if len(host) > 0 {
		p.b.must("cuMemcpyHtoD", p.b.d.cuMemcpyHtoD(p.P, unsafe.Pointer(&host[0]), uint64(len(host))*4))
	}
	p.shadow = append(p.shadow[:0], host...)
	p.normsDirty = p.dims.dora
}

// syncParams uploads the host parameters when they changed since the last
// upload (host-synchronised mode: the trainer's AdamW ran on the host).
func (p *LoRAPass) syncParams() {
	if !p.hostSync {
		return
	}
	if !bytes.Equal(f32Bytes(p.ad.Params()), f32Bytes(p.shadow)) {
		p.uploadParams()
	}
}

// f32Bytes views v's memory as bytes (for a memcmp).
func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

// ---- ops --------------------------------------------------------------------------

func (p *LoRAPass) memset(ptr uint64, floats int) {
	if floats > 0 {
		p.b.must("cuMemsetD8", p.b.d.cuMemsetD8(ptr, 0, uint64(floats)*4))
	}
}

func (p *LoRAPass) ew(name string, n int, args ...any) {
	p.b.launch(name, blocks(n, ewThreads), ewThreads, args...)
}

// baseGEMM: out[T,OC] = in[T,IC]·Wᵀ in the pass's GEMM dtype.
func (p *LoRAPass) baseGEMM(op string, out, in uint64, w devW, T, OC, IC int) {
	b, dt := p.b, int32(dtR32F)
	if p.dims.bf16 {
		b.launch("f32_to_bf16", blocks(T*IC, ewThreads), ewThreads, p.xb, in, int64(T*IC))
		in, dt = p.xb, dtR16BF
	}
	if w.q != nil {
		b.qForwardRaw(out, in, w.ptr, *w.q, T, dt)
		return
	}
	b.gemm(op, opT, opN, OC, T, IC, w.ptr, IC, in, IC, 0, out, OC, dt)
}

// baseGEMMBack: din[T,IC] += dout[T,OC]·W.
func (p *LoRAPass) baseGEMMBack(op string, din, dout uint64, w devW, T, OC, IC int) {
	b, dt := p.b, int32(dtR32F)
	if p.dims.bf16 {
		b.launch("f32_to_bf16", blocks(T*OC, ewThreads), ewThreads, p.db, dout, int64(T*OC))
		dout, dt = p.db, dtR16BF
	}
	if w.q != nil {
		b.qDinRaw(din, dout, w.ptr, *w.q, T, dt)
		return
	}
	b.gemm(op, opN, opN, IC, T, OC, w.ptr, IC, dout, OC, 1, din, IC, dt)
}

func (p *LoRAPass) dropout(md *devModule, train bool) (on bool, key, thresh uint64, scale float32) {
	if !train || p.dropP == 0 {
		return false, 0, 0, 0
	}
	// lora/linear.go: maskKey and dropoutFor.
	key = splitmix64(p.ad.Seed() ^ splitmix64(p.dropStep^splitmix64(uint64(md.layer)<<8|uint64(md.m))))
	th := uint64(p.dropP * (1 << 63))
	return true, key, th << 1, float32(1 / (1 - p.dropP))
}

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// linear: out = in·Wᵀ (+b) (+ s·(dropout(in)·Aᵀ)·Bᵀ).
func (p *LoRAPass) linear(l, m int, out, in uint64, T int) {
	md := p.by[l][m]
	OC, IC := p.outIn(m)
	p.baseGEMM("device pass "+lora.Modules[m], out, in, p.lw[l][m], T, OC, IC)
	if bias := p.lbias[l][m]; bias != 0 {
		p.ew("bias_add", T*OC, out, bias, T, OC)
	}
	switch {
	case md == nil:
	case md.dora:
		p.doraForward(l, md, out, in, T)
	default:
		p.loraForward(md, out, in, T, true)
	}
}

func (p *LoRAPass) outIn(m int) (int, int) {
	d := p.dims
	qd, kvd := d.NH*d.HD, d.KVH*d.HD
	switch m {
	case mQ:
		return qd, d.C
	case mK, mV:
		return kvd, d.C
	case mO:
		return d.C, qd
	case mGate, mUp:
		return d.I, d.C
	}
	return d.C, d.I
}

// loraForward: u = dropout(in)·Aᵀ (kept), and with add out += (s·u)·Bᵀ.
func (p *LoRAPass) loraForward(md *devModule, out, in uint64, T int, add bool) {
	b, R, IC, OC := p.b, md.r, md.in, md.out
	on, key, th, sc := p.dropout(md, p.train)
	md.drop, md.key = on, key
	x := in
	if on {
		p.ew("lora_dropout", T*IC, p.xd, in, key, th, sc, int64(T*IC))
		x = p.xd
	}
	b.gemm("lora A", opT, opN, R, T, IC, md.a, IC, x, IC, 0, md.u, R, dtR32F)
	if !add {
		return
	}
	p.ew("scale_f32", T*R, p.su, md.u, md.s, int64(T*R))
	b.gemm("lora B", opT, opN, OC, T, R, md.b, R, p.su, R, 1, out, OC, dtR32F)
}

// linearBackward: din += dout·W (+ the adapter's input grad), adapter grads +=.
func (p *LoRAPass) linearBackward(l, m int, din, dout, in uint64, T int) {
	OC, IC := p.outIn(m)
	p.baseGEMMBack("device pass "+lora.Modules[m]+" backward", din, dout, p.lw[l][m], T, OC, IC)
	switch md := p.by[l][m]; {
	case md == nil:
	case md.dora:
		p.doraBackward(l, md, din, dout, in, T)
	default:
		p.loraBackward(md, din, dout, in, T)
	}
}

// loraBackward is lora/linear.go's loraBackward on the device.
func (p *LoRAPass) loraBackward(md *devModule, din, dout, in uint64, T int) {
	b, R, IC, OC := p.b, md.r, md.in, md.out
	p.ew("scale_f32", T*R, p.su, md.u, md.s, int64(T*R))
	b.gemm("lora g", opN, opN, R, T, OC, md.b, R, dout, OC, 0, p.g, R, dtR32F)
	b.gemm("lora dB", opN, opT, R, OC, T, p.su, R, dout, OC, 1, md.db, R, dtR32F)
	p.ew("scale_f32", T*R, p.g, p.g, md.s, int64(T*R))
	x := in
	_, _, th, sc := p.dropout(md, true)
	if md.drop {
		p.ew("lora_dropout", T*IC, p.xd, in, md.key, th, sc, int64(T*IC))
		x = p.xd
	}
	b.gemm("lora dA", opN, opT, IC, R, T, x, IC, p.g, R, 1, md.da, IC, dtR32F)
	if !md.drop {
		b.gemm("lora din", opN, opN, IC, T, R, md.a, IC, p.g, R, 1, din, IC, dtR32F)
		return
	}
	b.gemm("lora din", opN, opN, IC, T, R, md.a, IC, p.g, R, 0, p.dx, IC, dtR32F)
	p.ew("lora_dropout_add", T*IC, din, p.dx, md.key, th, sc, int64(T*IC))
}

func (p *LoRAPass) rmsnorm(out, in, w uint64, N, C int) {
	p.b.launch("rmsnorm_fwd", N, rowThreads, out, in, w, float32(p.dec.cfg.RMSNormEps), N, C)
}

func (p *LoRAPass) rmsnormBack(din, dout, in, w uint64, N, C int) {
	p.b.launch("rmsnorm_bwd_din", N, rowThreads, din, p.rstd, dout, in, w, float32(p.dec.cfg.RMSNormEps), N, C)
}

func (p *LoRAPass) ropeOp(x uint64, T, H, dir int) {
	HD := p.dims.HD
	p.b.launch("rope", T*H, min(rowThreads, (HD/2+31)/32*32), x, p.cos, p.sin, T, H, HD, dir)
}

// Offsets of the int32 inputs in p.ints.
func (p *LoRAPass) tokens() uint64   { return p.ints }
func (p *LoRAPass) segStart() uint64 { return p.ints + uint64(p.dims.T)*4 }
func (p *LoRAPass) positions() uint64 {
	return p.ints + 2*uint64(p.dims.T)*4
}
func (p *LoRAPass) scored() uint64  { return p.ints + 3*uint64(p.dims.T)*4 }
func (p *LoRAPass) targets() uint64 { return p.ints + 4*uint64(p.dims.T)*4 }

// layerForward is model/backward.go's layerForward on the device.
func (p *LoRAPass) layerForward(l, T int, recompute bool) {
	d := p.dims
	C, NH, KVH, HD, I := d.C, d.NH, d.KVH, d.HD, d.I
	a := &p.la[l]
	p.rmsnorm(p.xn, a.x, p.inNorm[l], T, C)
	p.linear(l, mQ, a.qr, p.xn, T)
	p.linear(l, mK, a.kr, p.xn, T)
	p.linear(l, mV, a.v, p.xn, T)
	if d.qkNorm {
		p.rmsnorm(a.q, a.qr, p.qNorm[l], T*NH, HD)
		p.rmsnorm(a.k, a.kr, p.kNorm[l], T*KVH, HD)
	}
	p.ropeOp(a.q, T, NH, 1)
	p.ropeOp(a.k, T, KVH, 1)
	if kv := p.kv; kv != nil {
		// Decoding (devgen.go): k and v join the layer's cache at rows
		// pos0.., and the queries attend over rows 0..pos0+t.
		kvd := uint64(KVH * HD)
		off, n := uint64(kv.pos0)*kvd*4, uint64(T)*kvd*4
		p.b.must("cuMemcpyDtoD", p.b.d.cuMemcpyDtoD(kv.k[l]+off, a.k, n))
		p.b.must("cuMemcpyDtoD", p.b.d.cuMemcpyDtoD(kv.v[l]+off, a.v, n))
		scale := float32(1 / math.Sqrt(float64(HD)))
		p.b.launch("attention_fwd", blocks(T*NH, attnWarps), attnWarps*32, a.att, a.q, kv.k[l], kv.v[l], uint64(0), kv.pos0, T, NH, KVH, HD,
			p.dec.layers[l].window, scale)
	} else if d.tcAttn {
		p.b.attnFwdTC(a.att, p.attnLSE(l), a.q, a.k, a.v, p.segStart(), T, NH, KVH, HD, p.dec.layers[l].window)
	} else {
		scale := float32(1 / math.Sqrt(float64(HD)))
		p.b.launch("attention_fwd", blocks(T*NH, attnWarps), attnWarps*32, a.att, a.q, a.k, a.v, p.segStart(), 0, T, NH, KVH, HD,
			p.dec.layers[l].window, scale)
	}
	p.linear(l, mO, p.proj, a.att, T)
	p.ew("add_fwd", T*C, a.xm, a.x, p.proj, int64(T*C))
	p.rmsnorm(p.xn, a.xm, p.postNorm[l], T, C)
	p.linear(l, mGate, a.gate, p.xn, T)
	p.linear(l, mUp, a.up, p.xn, T)
	p.ew("swiglu_fwd", T*I, p.h, a.gate, a.up, int64(T*I))
	if recompute {
		// Backward needs down_proj's saved x·Aᵀ, not its output.
		if md := p.by[l][mDown]; md != nil {
			p.loraForward(md, 0, p.h, T, false)
		}
		return
	}
	p.linear(l, mDown, p.proj, p.h, T)
	p.ew("add_fwd", T*C, p.xs[l+1], a.xm, p.proj, int64(T*C))
}

// attnLSE is where layer l's tensor-core attention keeps its log-sum-exp
// for the backward: per layer, or (checkpointing: the forward is recomputed
// just before the backward) the shared scratch.
func (p *LoRAPass) attnLSE(l int) uint64 {
	if p.dims.ckpt {
		return p.lse
	}
	return p.la[l].lse
}

// layerBackward is model/backward.go's layerBackward on the device: on
// entry p.dres holds d loss/d (layer output), on return d loss/d (layer input).
func (p *LoRAPass) layerBackward(l, T int) {
	d := p.dims
	C, NH, KVH, HD, I := d.C, d.NH, d.KVH, d.HD, d.I
	qd, kvd := NH*HD, KVH*HD
	a := &p.la[l]
	if d.ckpt {
		p.layerForward(l, T, true)
	} else {
		p.rmsnorm(p.xn, a.xm, p.postNorm[l], T, C)
		p.ew("swiglu_fwd", T*I, p.h, a.gate, a.up, int64(T*I))
	}
	p.memset(p.dh, T*I)
	p.linearBackward(l, mDown, p.dh, p.dres, p.h, T)
	p.ew("swiglu_bwd", T*I, p.dgate, p.dup, p.dh, a.gate, a.up, int64(T*I))
	p.memset(p.dxn, T*C)
	p.linearBackward(l, mGate, p.dxn, p.dgate, p.xn, T)
	p.linearBackward(l, mUp, p.dxn, p.dup, p.xn, T)
	p.rmsnormBack(p.dres, p.dxn, a.xm, p.postNorm[l], T, C)

	p.rmsnorm(p.xn, a.x, p.inNorm[l], T, C)
	p.memset(p.datt, T*qd)
	p.linearBackward(l, mO, p.datt, p.dres, a.att, T)
	scale := float32(1 / math.Sqrt(float64(HD)))
	win := p.dec.layers[l].window
	if d.tcAttn {
		p.b.attnBwdTC(p.dq, p.dk, p.dv, p.attnLSE(l), p.dsum, p.datt, a.att, a.q, a.k, a.v, p.segStart(), T, NH, KVH, HD, win)
	} else {
		p.b.launch("attention_bwd_q", blocks(T*NH, attnWarps), attnWarps*32, p.dq, p.lse, p.dsum, p.datt, a.q, a.k, a.v, p.segStart(),
			T, NH, KVH, HD, win, scale)
		p.b.launch("attention_bwd_kv", blocks(T*KVH, attnWarps), attnWarps*32, p.dk, p.dv, p.lse, p.dsum, p.datt, a.q, a.k, a.v,
			p.segStart(), T, NH, KVH, HD, win, scale)
	}
	p.ropeOp(p.dq, T, NH, -1)
	p.ropeOp(p.dk, T, KVH, -1)
	if d.qkNorm {
		p.memset(p.dqr, T*qd)
		p.rmsnormBack(p.dqr, p.dq, a.qr, p.qNorm[l], T*NH, HD)
		p.memset(p.dkr, T*kvd)
		p.rmsnormBack(p.dkr, p.dk, a.kr, p.kNorm[l], T*KVH, HD)
	}
	p.memset(p.dxn, T*C)
	p.linearBackward(l, mQ, p.dxn, p.dqr, p.xn, T)
	p.linearBackward(l, mK, p.dxn, p.dkr, p.xn, T)
	p.linearBackward(l, mV, p.dxn, p.dv, p.xn, T)
	p.rmsnormBack(p.dres, p.dxn, a.x, p.inNorm[l], T, C)
}

// ---- forward, backward, step -------------------------------------------------------

// catch turns a panic of the CUDA calls (launch failure, out of memory)
// into the method's error.
func catch(op string, err *error) {
	if r := recover(); r != nil {
		if e, ok := r.(error); ok {
			*err = fmt.Errorf("cuda: device pass: %s: %w", op, e)
			return
		}
		*err = fmt.Errorf("cuda: device pass: %s: %v", op, r)
	}
}

// Forward runs one packed sequence in training mode (dropout on) and keeps
// what Backward needs; it returns the summed cross-entropy of the scored
// rows and their count, as model.Pass.Forward.
func (p *LoRAPass) Forward(tokens, positions, segIDs, labels []int32) (lossSum float64, n int, err error) {
	return p.forward("train forward", tokens, positions, segIDs, labels, true)
}

// Eval is Forward without dropout; no Backward may follow.
func (p *LoRAPass) Eval(tokens, positions, segIDs, labels []int32) (lossSum float64, n int, err error) {
	return p.forward("eval loss", tokens, positions, segIDs, labels, false)
}

// prepare checks the inputs as model.Pass does and fills p.host.
func (p *LoRAPass) prepare(op string, tokens, positions, segIDs, labels []int32) (T, n int, err error) {
	cfg := p.dec.cfg
	T, V := len(tokens), cfg.Vocab
	switch {
	case T == 0:
		return 0, 0, fmt.Errorf("model: %s: no tokens", op)
	case T > p.dims.T:
		return 0, 0, fmt.Errorf("model: %s: %d tokens exceed the pass's %d rows (NewPass maxT)", op, T, p.dims.T)
	case len(labels) != T:
		return 0, 0, fmt.Errorf("model: %s: %d labels for %d tokens, want equal lengths", op, len(labels), T)
	case len(positions) != T || len(segIDs) != T:
		return 0, 0, fmt.Errorf("model: %s: %d tokens, %d positions and %d segIDs, want equal lengths", op, T, len(positions), len(segIDs))
	}
	mt := p.dims.T
	tok, seg, pos, sc, tg := p.host[:mt], p.host[mt:2*mt], p.host[2*mt:3*mt], p.host[3*mt:4*mt], p.host[4*mt:]
	for t := range T {
		id := tokens[t]
		if id < 0 || int(id) >= V {
			return 0, 0, fmt.Errorf("model: %s: tokens[%d] = %d outside the vocabulary [0,%d)", op, t, id, V)
		}
		start := t == 0 || segIDs[t] != segIDs[t-1]
		switch {
		case t > 0 && segIDs[t] < segIDs[t-1]:
			return 0, 0, fmt.Errorf("model: %s: segIDs[%d] = %d after segIDs[%d] = %d, want non-decreasing", op, t, segIDs[t], t-1, segIDs[t-1])
		case start && positions[t] != 0:
			return 0, 0, fmt.Errorf("model: %s: positions[%d] = %d at the start of segment %d, want 0", op, t, positions[t], segIDs[t])
		case !start && positions[t] != positions[t-1]+1:
			return 0, 0, fmt.Errorf("model: %s: positions[%d] = %d after positions[%d] = %d in segment %d, want %d", op, t, positions[t], t-1, positions[t-1], segIDs[t], positions[t-1]+1)
		}
		if lb := labels[t]; lb != model.IgnoreIndex && (lb < 0 || int(lb) >= V) {
			return 0, 0, fmt.Errorf("model: %s: labels[%d] = %d outside the vocabulary [0,%d) and not %d (ignored)", op, t, lb, V, model.IgnoreIndex)
		}
		tok[t], pos[t] = id, positions[t]
		if start {
			seg[t] = int32(t)
		} else {
			seg[t] = seg[t-1]
		}
	}
	for t := 0; t+1 < T; t++ {
		if segIDs[t+1] == segIDs[t] && labels[t+1] != model.IgnoreIndex {
			sc[n], tg[n] = int32(t), labels[t+1]
			n++
		}
	}
	return T, n, nil
}

func (p *LoRAPass) forward(op string, tokens, positions, segIDs, labels []int32, train bool) (lossSum float64, n int, err error) {
	b := p.b
	p.ready = false
	T, n, err := p.prepare(op, tokens, positions, segIDs, labels)
	if err != nil {
		return 0, 0, err
	}
	defer b.enter()()
	defer catch(op, &err)
	p.syncParams()
	if p.normsDirty {
		p.doraNorms()
	}
	b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p.ints, unsafe.Pointer(&p.host[0]), uint64(len(p.host))*4))
	p.T, p.n, p.train = T, n, train
	d := p.dims
	p.embedRows(T)
	for l := range d.L {
		p.layerForward(l, T, false)
	}
	p.rmsnorm(p.hidden, p.xs[d.L], p.norm, T, d.C)
	lossSum = p.lossForward(T, n, train)
	p.ready = train
	return lossSum, n, nil
}

// embedRows gathers the RoPE angles of the uploaded positions and the
// embeddings of the uploaded tokens of T rows (into p.xs[0]).
func (p *LoRAPass) embedRows(T int) {
	b, d := p.b, p.dims
	half := d.HD / 2
	b.launch("gather_rows", T, 64, p.cos, p.tabCos, p.positions(), T, half)
	b.launch("gather_rows", T, 64, p.sin, p.tabSin, p.positions(), T, half)
	if p.embedBF16 {
		b.launch("embedding_fwd_bf16", T, rowThreads, p.xs[0], p.tokens(), p.embed, T, d.C)
	} else {
		b.launch("embedding_fwd", T, rowThreads, p.xs[0], p.tokens(), p.embed, T, d.C)
	}
}

// lossForward is model/loss.go's lossForward (LoRA: the LM head's backward
// fused, unscaled, in training).
func (p *LoRAPass) lossForward(T, n int, train bool) float64 {
	b, d := p.b, p.dims
	C, V, LC := d.C, d.V, d.LC
	if train {
		p.memset(p.dhidden, T*C)
	}
	for j0 := 0; j0 < n; j0 += LC {
		r := min(LC, n-j0)
		j := uint64(j0) * 4
		b.launch("gather_rows", r, rowThreads, p.lossH, p.hidden, p.scored()+j, r, C)
		p.baseGEMM("device pass lm_head", p.logits, p.lossH, p.lmHead, r, V, C)
		b.launch("nll_fwd", r, rowThreads, p.losses+uint64(j0)*8, p.logits, p.targets()+j, r, V)
		if !train {
			continue
		}
		b.launch("nll_bwd", r, rowThreads, p.logits, p.logits, p.targets()+j, float32(1), r, V)
		p.memset(p.lossDH, r*C)
		p.baseGEMMBack("device pass lm_head backward", p.lossDH, p.logits, p.lmHead, r, V, C)
		b.launch("scatter_rows", r, rowThreads, p.dhidden, p.lossDH, p.scored()+j, r, C)
	}
	if n == 0 {
		return 0
	}
	sum := p.sums + 8*normBlocks
	b.launch("sum_f64", 1, 32, sum, p.losses, n)
	var s float64
	b.must("cuMemcpyDtoH", b.d.cuMemcpyDtoH(unsafe.Pointer(&s), sum, 8))
	return s
}

// Backward adds d(lossSum*scale)/dθ of the last Forward to the LoRA grads
// on the device (and, host-synchronised, copies them to the adapter's grad
// slab).
func (p *LoRAPass) Backward(scale float32) (err error) {
	if !p.ready {
		return fmt.Errorf("model: train backward: no Forward to differentiate (call Forward once before each Backward)")
	}
	p.ready = false
	b := p.b
	defer b.enter()()
	defer catch("train backward", &err)
	if p.n > 0 {
		d, T := p.dims, p.T
		p.ew("scale_f32", T*d.C, p.dhidden, p.dhidden, scale, int64(T*d.C))
		p.memset(p.dres, T*d.C)
		p.rmsnormBack(p.dres, p.dhidden, p.xs[d.L], p.norm, T, d.C)
		for l := d.L - 1; l >= 0; l-- {
			p.layerBackward(l, T)
		}
	}
	if p.hostSync {
		p.downloadGrads()
	}
	return nil
}

func (p *LoRAPass) downloadGrads() {
	g := p.ad.Grads()
	if len(g) > 0 {
		p.b.must("cuMemcpyDtoH", p.b.d.cuMemcpyDtoH(unsafe.Pointer(&g[0]), p.G, uint64(len(g))*4))
	}
}

// ZeroGrads clears the device grads (the adapter's host slab is the
// caller's to clear).
func (p *LoRAPass) ZeroGrads() {
	defer p.b.enter()()
	p.memset(p.G, p.dims.nParams)
}

// Step is the optimizer step on the device: the global grad norm (float64
// partial sums; the only copy back), clipping to maxNorm as
// train.ClipGrads does (maxNorm <= 0: off), then AdamW with lr and
// train.AdamWConfig's hyperparameters as train.AdamW.Update computes it. A
// NaN or infinite norm is returned with nothing updated.
func (p *LoRAPass) Step(lr, maxNorm, beta1, beta2, eps, weightDecay float64) (norm float64, err error) {
	b := p.b
	defer b.enter()()
	defer catch("optimizer step", &err)
	N := p.dims.nParams
	b.launch("sumsq_f64", normBlocks, rowThreads, p.sums, p.G, int64(N))
	out := p.sums + 8*(normBlocks+1)
	b.launch("sum_f64", 1, 32, out, p.sums, normBlocks)
	var s float64
	b.must("cuMemcpyDtoH", b.d.cuMemcpyDtoH(unsafe.Pointer(&s), out, 8))
	norm = math.Sqrt(s)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return norm, nil
	}
	if maxNorm > 0 {
		if coef := maxNorm / (norm + 1e-6); coef < 1 {
			p.ew("scale_f32", N, p.G, p.G, float32(coef), int64(N))
		}
	}
	p.optStep++
	decay := float32(1 - lr*weightDecay)
	b1, b2 := float32(beta1), float32(beta2)
	a1, a2 := float32(1-beta1), float32(1-beta2)
	bc1 := 1 - math.Pow(beta1, float64(p.optStep))
	bc2sqrt := float32(math.Sqrt(1 - math.Pow(beta2, float64(p.optStep))))
	p.ew("adamw", N, p.P, p.G, p.M, p.Vm, decay, b1, b2, a1, a2, bc2sqrt, float32(-lr/bc1), float32(eps), int64(N))
	p.normsDirty = p.dims.dora
	return norm, nil
}

// SyncToHost copies the device parameters into the adapter's slab and, when
// m and v are not nil, the AdamW moments into them (for a checkpoint); it
// returns the optimizer steps done.
func (p *LoRAPass) SyncToHost(m, v []float32) (step int64, err error) {
	b := p.b
	defer b.enter()()
	defer catch("copy to host", &err)
	N := p.dims.nParams
	for _, x := range []struct {
		dst []float32
		src uint64
	}{{p.ad.Params(), p.P}, {m, p.M}, {v, p.Vm}} {
		if x.dst == nil || N == 0 {
			continue
		}
		need("sync to host", "slab", len(x.dst), N)
		b.must("cuMemcpyDtoH", b.d.cuMemcpyDtoH(unsafe.Pointer(&x.dst[0]), x.src, uint64(N)*4))
	}
	p.shadow = append(p.shadow[:0], p.ad.Params()...)
	return p.optStep, nil
}

// LoadFromHost uploads the adapter's parameters and, when not nil, the
// AdamW moments with the steps done (resuming from a checkpoint).
func (p *LoRAPass) LoadFromHost(m, v []float32, step int64) (err error) {
	b := p.b
	defer b.enter()()
	defer catch("copy to device", &err)
	p.uploadParams()
	N := p.dims.nParams
	for _, x := range []struct {
		src []float32
		dst uint64
	}{{m, p.M}, {v, p.Vm}} {
		if x.src == nil || N == 0 {
			continue
		}
		need("load from host", "slab", len(x.src), N)
		b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(x.dst, unsafe.Pointer(&x.src[0]), uint64(N)*4))
	}
	p.optStep = step
	return nil
}
