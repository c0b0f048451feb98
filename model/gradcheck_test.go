package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tunellm/tune/model/safetensors"
)

// Whole-model gradient checks: Pass.Backward against central finite
// differences of Pass.Forward's loss, on tiny fp32 models, for a dense test
// adapter on every linear layer and (Full mode) for entries of every kind of
// base weight.

// denseAdapter adds out += in·Dᵀ with a trainable dense D [OC,C] per
// (layer, module): the simplest adapter whose gradients the model must route.
type denseAdapter struct {
	d map[[2]int]*denseDelta // key: layer, module index
}

type denseDelta struct {
	oc, c int
	w, g  []float32 // [OC,C]
}

func moduleIndex(module string) int { return slices.Index(AdapterModules[:], module) }

// moduleShape is (OC, C) of a module's base weight.
func moduleShape(c *Config, mod int) (int, int) {
	C, I, qd, kvd := c.Hidden, c.Intermediate, c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	switch mod {
	case modQ:
		return qd, C
	case modK, modV:
		return kvd, C
	case modO:
		return C, qd
	case modGate, modUp:
		return I, C
	}
	return C, I
}

func newDenseAdapter(c *Config, seed uint64, scale float64, keep func(l, mod int) bool) *denseAdapter {
	r := rand.New(rand.NewPCG(seed, 3))
	a := &denseAdapter{d: map[[2]int]*denseDelta{}}
	for l := 0; l < c.Layers; l++ {
		for mod := range numModules {
			if !keep(l, mod) {
				continue
			}
			oc, ic := moduleShape(c, mod)
			d := &denseDelta{oc: oc, c: ic, w: make([]float32, oc*ic), g: make([]float32, oc*ic)}
			for i := range d.w {
				d.w[i] = float32((r.Float64()*2 - 1) * scale / math.Sqrt(float64(ic)))
			}
			a.d[[2]int{l, mod}] = d
		}
	}
	return a
}

func (a *denseAdapter) Has(l int, module string) bool {
	return a.d[[2]int{l, moduleIndex(module)}] != nil
}

func (a *denseAdapter) Forward(l int, module string, out, in []float32, T int, train bool) {
	d := a.d[[2]int{l, moduleIndex(module)}]
	for t := 0; t < T; t++ {
		for o := 0; o < d.oc; o++ {
			var s float32
			for c := 0; c < d.c; c++ {
				s += in[t*d.c+c] * d.w[o*d.c+c]
			}
			out[t*d.oc+o] += s
		}
	}
}

func (a *denseAdapter) Backward(l int, module string, din, dout, in []float32, T int) {
	d := a.d[[2]int{l, moduleIndex(module)}]
	for t := 0; t < T; t++ {
		for o := 0; o < d.oc; o++ {
			g := dout[t*d.oc+o]
			for c := 0; c < d.c; c++ {
				d.g[o*d.c+c] += g * in[t*d.c+c]
				din[t*d.c+c] += g * d.w[o*d.c+c]
			}
		}
	}
}

// trainBatch is a packed sequence in the int32 form data.Batch carries.
type trainBatch struct{ tokens, positions, segIDs, labels []int32 }

// makeBatch packs samples of the given lengths with random tokens and labels,
// masking a prefix of each sample and one hole.
func makeBatch(r *rand.Rand, lens []int, V int) trainBatch {
	var b trainBatch
	for si, n := range lens {
		for j := 0; j < n; j++ {
			lab := int32(r.IntN(V))
			if j < n/4 || (n > 5 && j == n-2) {
				lab = IgnoreIndex
			}
			b.tokens = append(b.tokens, int32(r.IntN(V)))
			b.positions = append(b.positions, int32(j))
			b.segIDs = append(b.segIDs, int32(si))
			b.labels = append(b.labels, lab)
		}
	}
	return b
}

func (b trainBatch) forward(t testing.TB, p *Pass) (float64, int) {
	t.Helper()
	sum, n, err := p.Forward(b.tokens, b.positions, b.segIDs, b.labels)
	if err != nil {
		t.Fatal(err)
	}
	return sum, n
}

// gradConfigs are tiny models covering each family's features: q/k norms and
// tied embeddings (qwen3), all biases and an untied head, a sliding window.
func gradConfigs() map[string]*Config {
	base := func() *Config {
		c := &Config{ModelType: "qwen3", Hidden: 16, Intermediate: 24, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 8,
			Vocab: 23, MaxPositions: 64, RMSNormEps: 1e-6, RopeTheta: 10000}
		c.Windows = make([]int, c.Layers)
		return c
	}
	qwen3 := base()
	qwen3.QKNorm, qwen3.TieEmbeddings = true, true
	biased := base()
	biased.ModelType, biased.QKVBias, biased.OBias, biased.MLPBias = "llama", true, true, true
	biased.KVHeads = 4
	window := base()
	window.ModelType, window.Heads, window.KVHeads = "mistral", 2, 1
	window.Windows = []int{3, 0}
	return map[string]*Config{"qwen3-tied": qwen3, "biased-untied": biased, "sliding-window": window}
}

// fdCheck compares analytic grads of a few entries of x against 4-point
// central differences of the loss.
func fdCheck(t *testing.T, name string, x, grad []float32, idx []int, loss func() float64) {
	t.Helper()
	const eps = 1e-2
	for _, i := range idx {
		g := grad[i]
		if math.IsNaN(float64(g)) || math.IsInf(float64(g), 0) {
			t.Fatalf("%s[%d]: grad %v", name, i, g)
		}
		x0 := x[i]
		at := func(d float32) float64 { x[i] = x0 + d; return loss() }
		num := (8*(at(eps)-at(-eps)) - (at(2*eps) - at(-2*eps))) / (12 * eps)
		x[i] = x0
		if d := math.Abs(float64(g) - num); !(d <= 2e-3+2e-2*math.Abs(num)) {
			t.Errorf("%s[%d]: grad %.6g, finite differences %.6g (diff %.3g)", name, i, g, num, d)
		}
	}
}

func sampleIdx(r *rand.Rand, n, k int) []int {
	if n <= k {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	return r.Perm(n)[:k]
}

// allShapes is tensorShapes plus the o_proj and MLP biases (llama's
// attention_bias and mlp_bias), which tensorShapes leaves out.
func allShapes(c *Config) map[string][]int {
	s := tensorShapes(c)
	for l := 0; l < c.Layers; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		if c.OBias {
			s[p+"self_attn.o_proj.bias"] = []int{c.Hidden}
		}
		if c.MLPBias {
			s[p+"mlp.gate_proj.bias"] = []int{c.Intermediate}
			s[p+"mlp.up_proj.bias"] = []int{c.Intermediate}
			s[p+"mlp.down_proj.bias"] = []int{c.Hidden}
		}
	}
	return s
}

// newGradModel is newTestModel (fp32) with every bias the config asks for.
func newGradModel(t *testing.T, c *Config, seed uint64) *Model {
	t.Helper()
	m, err := New(c, gradSource(t, c, seed), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func gradSource(t *testing.T, c *Config, seed uint64) memSource {
	t.Helper()
	src := randomSource(c, safetensors.F32, seed)
	r := rand.New(rand.NewPCG(seed, 9))
	for name, shape := range allShapes(c) {
		if _, ok := src[name]; ok {
			continue
		}
		v := make([]float32, shape[0])
		for i := range v {
			v[i] = float32((r.Float64()*2 - 1) * 0.1)
		}
		data := make([]byte, 4*len(v))
		if err := safetensors.FromFloat32(data, v, safetensors.F32); err != nil {
			t.Fatal(err)
		}
		src[name] = safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: shape, Data: data}
	}
	return src
}

func TestGradCheckAdapter(t *testing.T) {
	for name, c := range gradConfigs() {
		t.Run(name, func(t *testing.T) {
			m := newGradModel(t, c, 11)
			ad := newDenseAdapter(c, 5, 0.5, func(l, mod int) bool { return true })
			r := rand.New(rand.NewPCG(1, 2))
			b := makeBatch(r, []int{7, 1, 9}, c.Vocab)
			for _, ckpt := range []bool{false, true} {
				p, err := m.NewPass(len(b.tokens), TrainOptions{Adapter: ad, Checkpointing: ckpt, LossChunk: 4})
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range ad.d {
					clear(d.g)
				}
				if _, n := b.forward(t, p); n == 0 {
					t.Fatal("nothing scored")
				}
				if err := p.Backward(1); err != nil {
					t.Fatal(err)
				}
				loss := func() float64 { s, _ := b.forward(t, p); return s }
				for l := 0; l < c.Layers; l++ {
					for mod := range numModules {
						d := ad.d[[2]int{l, mod}]
						fdCheck(t, fmt.Sprintf("ckpt=%v layer %d %s", ckpt, l, AdapterModules[mod]), d.w, d.g, sampleIdx(r, len(d.w), 4), loss)
					}
				}
			}
		})
	}
}

func TestGradCheckFull(t *testing.T) {
	for name, c := range gradConfigs() {
		t.Run(name, func(t *testing.T) {
			m := newGradModel(t, c, 12)
			r := rand.New(rand.NewPCG(3, 4))
			b := makeBatch(r, []int{6, 10}, c.Vocab)
			p, err := m.NewPass(len(b.tokens), TrainOptions{Full: true, LossChunk: 3})
			if err != nil {
				t.Fatal(err)
			}
			b.forward(t, p)
			if err := p.Backward(1); err != nil {
				t.Fatal(err)
			}
			names, params, grads := p.Params()
			want := len(allShapes(c))
			if len(names) != want {
				t.Fatalf("Params: %d tensors, want %d", len(names), want)
			}
			loss := func() float64 { s, _ := b.forward(t, p); return s }
			for i, n := range names {
				if len(params[i]) != len(grads[i]) {
					t.Fatalf("%s: %d params, %d grads", n, len(params[i]), len(grads[i]))
				}
				fdCheck(t, n, params[i], grads[i], sampleIdx(r, len(params[i]), 3), loss)
			}
			// ZeroGrads clears, and a second step accumulates the same again.
			g0 := slices.Clone(grads[0])
			b.forward(t, p)
			p.Backward(1)
			for j, g := range grads[0] {
				if d := math.Abs(float64(g - 2*g0[j])); d > 1e-5*(1+math.Abs(float64(g))) {
					t.Fatalf("%s[%d]: after two steps %v, want 2×%v", names[0], j, g, g0[j])
				}
			}
			p.ZeroGrads()
			for i := range grads {
				if slices.ContainsFunc(grads[i], func(v float32) bool { return v != 0 }) {
					t.Fatalf("ZeroGrads left %s nonzero", names[i])
				}
			}
		})
	}
}
