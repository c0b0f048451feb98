package lora

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"

	"github.com/tunellm/tune/kernels"
	_ "github.com/tunellm/tune/kernels/cpu" // the default backend of an adapter used without a model
	"github.com/tunellm/tune/model"
)

// Adapter is a set of LoRA pairs (A [R,C], B [OC,R]) on the linear layers of
// one model. Parameters live in one fp32 slab and their gradients in a second
// slab of the same layout, so the optimizer and checkpoints see two flat
// slices; Tensors gives the named views.
//
// Forward and Backward may be called from several goroutines but run one at
// a time (they share the adapter's scratch).
type Adapter struct {
	cfg     Config // resolved: TargetModules as saved, LayersToTransform sorted
	scaling float32
	mc      model.Config
	seed    uint64
	step    uint64 // dropout step, see SetDropoutStep

	params, grads []float32
	mods          [][]*module // [L][len(Modules)], nil where not adapted
	tensors       []Tensor

	// Scratch shared by all modules, guarded by mu (one Forward or Backward
	// at a time), so calls allocate nothing once Reserve sized it.
	mu    sync.Mutex
	be    kernels.Backend // runs the matmuls: bound by BindBase, else "cpu"
	maxR  int             // the largest module rank
	g, su []float32       // [maxT,maxR]: s·dout·B and s·u
	bt    []float32       // [maxR,maxOC]: Bᵀ
	// A dropped-out input block and its grad, [dropBlock,C] (with DoRA
	// [maxT,C]); DoRA's two [T,OC] buffers.
	xbuf, dxbuf, ybuf, gbuf []float32
}

// module is one adapted linear layer: views into the slabs plus the state
// Forward leaves for Backward.
type module struct {
	layer, m int
	out, in  int       // OC, C
	r        int       // R of this module (rank_pattern applied)
	alpha    float64   // lora_alpha of this module (alpha_pattern applied)
	s64      float64   // scaling as PEFT's Python float: alpha/r or alpha/√r
	s        float32   // float32(s64), what the forward multiplies by
	a, b     []float32 // A [R,C], B [OC,R]
	da, db   []float32 // same shapes, in the grads slab

	u []float32 // [maxT,R]: dropout(x)·Aᵀ, saved by Forward for Backward

	dora *doraState // nil without use_dora
	// What the last Forward did, so Backward rebuilds the same dropout mask
	// even if SetDropoutStep was called in between.
	fwdT    int
	fwdDrop bool
	fwdKey  uint64
}

// Tensor is a named view of one LoRA matrix.
type Tensor struct {
	Name   string // PEFT name, e.g. base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
	Layer  int
	Module string    // "q_proj", ...
	Shape  []int     // [R,C] for lora_A, [OC,R] for lora_B, [OC] for lora_magnitude_vector (DoRA)
	Offset int       // where Data and Grad start in Params() and Grads()
	Data   []float32 // view of Params()
	Grad   []float32 // view of Grads()
}

// New makes an adapter for a model with config mc, initialised as PEFT's
// LoraLayer.reset_lora_parameters(init_lora_weights=True) does: A from
// nn.init.kaiming_uniform_(a=√5), which is U(-1/√C, 1/√C) (gain
// √(2/(1+a²)) = 1/√3 times √3/√fan_in), and B = 0, so the adapted model
// starts equal to the base.
//
// The random numbers come from math/rand/v2's PCG, one stream per tensor
// seeded by (seed, tensor name): the same seed gives the same adapter
// whatever else is targeted, but the values cannot match torch's generator,
// only its distribution. seed also drives dropout.
//
// With use_dora the magnitude vector m [OC] of each module starts at zero and
// is set to ‖W + s·B·A‖ per row (= ‖W‖ with B = 0), as PEFT's
// DoraLinearLayer.update_layer does, when a model binds the adapter
// (model.NewPass or SetAdapter call BindBase): the base weight is not known
// before.
func New(cfg Config, mc *model.Config, seed uint64) (*Adapter, error) {
	if r, err := resolve(cfg, mc); err != nil {
		return nil, err
	} else if err := r.checkSortedOrder(); err != nil {
		return nil, err
	}
	a, err := newAdapter(cfg, mc)
	if err != nil {
		return nil, err
	}
	a.seed = seed
	for _, t := range a.tensors {
		if !strings.HasSuffix(t.Name, ".lora_A.weight") { // lora_B: zeros; magnitude: set by BindBase
			continue
		}
		h := fnv.New64a()
		h.Write([]byte(t.Name))
		rng := rand.New(rand.NewPCG(seed, h.Sum64()))
		bound := 1 / math.Sqrt(float64(t.Shape[1]))
		for i := range t.Data {
			t.Data[i] = float32((2*rng.Float64() - 1) * bound)
		}
	}
	return a, nil
}

// newAdapter validates cfg and lays out zeroed slabs.
func newAdapter(cfg Config, mc *model.Config) (*Adapter, error) {
	r, err := resolve(cfg, mc)
	if err != nil {
		return nil, err
	}
	a := &Adapter{cfg: r.cfg, scaling: float32(r.cfg.Scaling()), mc: *mc}
	n := 0
	for l := range r.targets {
		for m, on := range r.targets[l] {
			if on {
				R := r.ranks[l][m]
				out, in := moduleShape(mc, m)
				n += R*in + out*R
				if r.cfg.UseDoRA {
					n += out
				}
			}
		}
	}
	a.params = make([]float32, n)
	a.grads = make([]float32, n)
	a.mods = make([][]*module, mc.Layers)
	off := 0
	for l := range r.targets {
		a.mods[l] = make([]*module, len(Modules))
		for m, on := range r.targets[l] {
			if !on {
				continue
			}
			out, in := moduleShape(mc, m)
			R, alpha := r.ranks[l][m], r.alphas[l][m]
			s64 := scalingOf(alpha, R, r.cfg.UseRSLoRA)
			md := &module{layer: l, m: m, out: out, in: in, r: R, alpha: alpha, s64: s64, s: float32(s64)}
			a.maxR = max(a.maxR, R)
			prefix := "base_model.model." + moduleKey(l, m)
			md.a, md.da = a.params[off:off+R*in:off+R*in], a.grads[off:off+R*in:off+R*in]
			a.tensors = append(a.tensors, Tensor{Name: prefix + ".lora_A.weight", Layer: l, Module: Modules[m],
				Shape: []int{R, in}, Offset: off, Data: md.a, Grad: md.da})
			off += R * in
			md.b, md.db = a.params[off:off+out*R:off+out*R], a.grads[off:off+out*R:off+out*R]
			a.tensors = append(a.tensors, Tensor{Name: prefix + ".lora_B.weight", Layer: l, Module: Modules[m],
				Shape: []int{out, R}, Offset: off, Data: md.b, Grad: md.db})
			off += out * R
			if a.cfg.UseDoRA {
				md.dora = &doraState{mag: a.params[off : off+out : off+out], dmag: a.grads[off : off+out : off+out]}
				a.tensors = append(a.tensors, Tensor{Name: prefix + ".lora_magnitude_vector", Layer: l, Module: Modules[m],
					Shape: []int{out}, Offset: off, Data: md.dora.mag, Grad: md.dora.dmag})
				off += out
			}
			a.mods[l][m] = md
		}
	}
	return a, nil
}

// Config returns the adapter's configuration with target_modules resolved
// as PEFT saves them ("all-linear" expanded, the default filled in).
func (a *Adapter) Config() Config {
	c := a.cfg
	c.TargetModules = append([]string(nil), c.TargetModules...)
	c.LayersToTransform = append([]int(nil), c.LayersToTransform...) // stays nil when nil
	c.RankPattern = append([]Pattern(nil), c.RankPattern...)
	c.AlphaPattern = append([]Pattern(nil), c.AlphaPattern...)
	return c
}

// Scaling is the factor on the low-rank path for the default r and
// lora_alpha (alpha/r or alpha/√r); see ModuleScaling for patterned modules.
func (a *Adapter) Scaling() float32 { return a.scaling }

// ModuleRank returns the rank, lora_alpha and scaling (a float64, as PEFT's
// Python float) of an adapted module, rank_pattern and alpha_pattern
// applied; ok is false when the module is not adapted.
func (a *Adapter) ModuleRank(layer int, module string) (r int, alpha, scaling float64, ok bool) {
	md := a.get(layer, module)
	if md == nil {
		return 0, 0, 0, false
	}
	return md.r, md.alpha, md.s64, true
}

var _ model.Adapter = (*Adapter)(nil)

// Slabs returns the parameter and gradient slabs in the form package train's
// Params interface takes (one slab each).
func (a *Adapter) Slabs() (params, grads [][]float32) {
	return [][]float32{a.params}, [][]float32{a.grads}
}

// Params is the parameter slab (every A and B, in Tensors order).
func (a *Adapter) Params() []float32 { return a.params }

// Grads is the gradient slab, laid out as Params. Backward accumulates into it.
func (a *Adapter) Grads() []float32 { return a.grads }

// ZeroGrads clears the gradient slab.
func (a *Adapter) ZeroGrads() { clear(a.grads) }

// NumParams is len(Params()).
func (a *Adapter) NumParams() int { return len(a.params) }

// Tensors lists the LoRA matrices in slab order: layer by layer, modules in
// the order of Modules, lora_A before lora_B. The views alias the slabs.
func (a *Adapter) Tensors() []Tensor { return append([]Tensor(nil), a.tensors...) }

// Seed is the seed given to New (0 for a loaded adapter until SetSeed).
func (a *Adapter) Seed() uint64 { return a.seed }

// SetSeed sets the dropout seed, e.g. after Load when resuming training.
func (a *Adapter) SetSeed(seed uint64) { a.seed = seed }

// Has reports whether the module (one of Modules) of the layer is adapted.
func (a *Adapter) Has(layer int, module string) bool { return a.get(layer, module) != nil }

func (a *Adapter) get(layer int, name string) *module {
	m := moduleIndex(name)
	if layer < 0 || layer >= len(a.mods) || m < 0 {
		return nil
	}
	return a.mods[layer][m]
}

// Reserve sizes the scratch for up to maxT rows per call, so no Forward or
// Backward allocates; without it the first call with a larger T grows it.
// The cost is 4·maxT·R bytes per adapted module (the saved x·Aᵀ) plus two
// shared buffers of the same size, Bᵀ, and with dropout two [256,C]
// blocks (DoRA: [maxT,C] and two [maxT,OC]).
func (a *Adapter) Reserve(maxT int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	C, OC, R := 0, 0, 0
	for _, row := range a.mods {
		for _, md := range row {
			if md != nil {
				md.reserve(maxT)
				C, OC, R = max(C, md.in), max(OC, md.out), max(R, md.r)
			}
		}
	}
	a.growG(maxT)
	if cap(a.bt) < R*OC {
		a.bt = make([]float32, R*OC)
	}
	if a.cfg.Dropout > 0 {
		a.growX(min(maxT, dropBlock) * C)
	}
	if a.cfg.UseDoRA {
		a.growDoRA(maxT, C, OC)
	}
}

// growG sizes the [T,maxR] scratch; the caller holds a.mu.
func (a *Adapter) growG(T int) {
	if n := T * a.maxR; cap(a.g) < n {
		a.g = make([]float32, n)
		a.su = make([]float32, n)
	}
}

// growX sizes the dropout blocks to n floats; the caller holds a.mu.
func (a *Adapter) growX(n int) {
	if cap(a.xbuf) < n {
		a.xbuf = make([]float32, n)
	}
	if cap(a.dxbuf) < n {
		a.dxbuf = make([]float32, n)
	}
}

func (md *module) reserve(T int) {
	if cap(md.u) < T*md.r {
		md.u = make([]float32, T*md.r)
	}
}

// checkMagnitudes fails when a DoRA magnitude was never set (a new adapter
// not yet bound to a model), rather than saving or merging zeros.
func (a *Adapter) checkMagnitudes() error {
	for _, row := range a.mods {
		for _, md := range row {
			if md != nil && md.dora != nil && !slices.ContainsFunc(md.dora.mag, func(v float32) bool { return v != 0 }) {
				return fmt.Errorf("layer %d %s: DoRA magnitude is all zero (a new DoRA adapter gets it when bound to its base model by model.NewPass or SetAdapter)", md.layer, Modules[md.m])
			}
		}
	}
	return nil
}

// MergedWeight returns w + scaling·B·A for the module (with DoRA,
// (m/‖w + scaling·B·A‖)·(w + scaling·B·A) row by row), w being its base
// weight [OC,C] as float32, summed in float64 and rounded once; it is what
// Merge writes for that tensor before the cast to the output dtype.
func (a *Adapter) MergedWeight(layer int, module string, w []float32) ([]float32, error) {
	md := a.get(layer, module)
	if md == nil {
		return nil, fmt.Errorf("lora: layer %d %s is not adapted", layer, module)
	}
	if len(w) != md.out*md.in {
		return nil, fmt.Errorf("lora: MergedWeight: layer %d %s: %d weights, want %d ([%d %d])", layer, module, len(w), md.out*md.in, md.out, md.in)
	}
	dst := make([]float32, len(w))
	a.mergeRows(md, dst, w, 0, md.out)
	return dst, nil
}

// mergeRows writes rows o0..o0+n-1 of W + s·B·A into dst [n,C], w holding
// the same rows: dst[o,c] = w[o,c] + s·Σ_k B[o,k]·A[k,c], in float64.
func (a *Adapter) mergeRows(md *module, dst, w []float32, o0, n int) {
	R, C := md.r, md.in
	s := md.s64 // float64, as PEFT's get_delta_weight multiplies by the Python float
	acc := make([]float64, C)
	for i := 0; i < n; i++ {
		clear(acc)
		brow := md.b[(o0+i)*R : (o0+i+1)*R]
		for k, bk := range brow {
			if bk == 0 {
				continue
			}
			ak := md.a[k*C : (k+1)*C]
			for c, v := range ak {
				acc[c] += float64(bk) * float64(v)
			}
		}
		d := dst[i*C : (i+1)*C]
		wr := w[i*C : (i+1)*C]
		if md.dora == nil {
			for c := range d {
				d[c] = float32(float64(wr[c]) + s*acc[c])
			}
			continue
		}
		// DoRA (PEFT Linear.merge with use_dora): W' = (m/‖W + s·B·A‖)·(W + s·B·A)
		// row by row; the bias is left alone.
		var sum float64
		for c := range acc {
			acc[c] = float64(wr[c]) + s*acc[c]
			sum += acc[c] * acc[c]
		}
		f := float64(md.dora.mag[o0+i]) / math.Sqrt(sum)
		for c := range d {
			d[c] = float32(f * acc[c])
		}
	}
}
