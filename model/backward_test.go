package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model/safetensors"
)

// TestPassLossEqualsPackedNLL: the training forward computes exactly the
// loss of the inference path (PackedNLL, itself checked against the PyTorch
// goldens), on every golden model, with and without checkpointing, Full mode
// (fp32 copies of bf16 weights are exact) and a loss chunk smaller than the
// scored rows.
func TestPassLossEqualsPackedNLL(t *testing.T) {
	for mi, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			g, m := loadGolden(t, name)
			V := m.Config.Vocab
			r := rand.New(rand.NewPCG(uint64(mi), 77))
			samples := goldenSamples(g, V, uint64(mi)+20)
			pk := pack(samples, []int{0, 1, 2, 3, 4, 5, 6})
			var b trainBatch
			var labels []int
			for i, s := range samples {
				lab := randTokens(r, len(s), V)
				for j := 1; j < len(s)/3; j++ {
					lab[j] = IgnoreIndex
				}
				if i == 3 {
					for j := range lab {
						lab[j] = IgnoreIndex
					}
				}
				labels = append(labels, lab...)
			}
			for t := range pk.tokens {
				b.tokens = append(b.tokens, int32(pk.tokens[t]))
				b.positions = append(b.positions, int32(pk.positions[t]))
				b.segIDs = append(b.segIDs, int32(pk.segIDs[t]))
				b.labels = append(b.labels, int32(labels[t]))
			}
			want, wantN, err := m.PackedNLL(pk.tokens, pk.positions, pk.segIDs, labels)
			if err != nil {
				t.Fatal(err)
			}
			for _, opts := range []TrainOptions{{}, {Checkpointing: true, LossChunk: 5}, {Full: true, LossChunk: 1}} {
				p, err := m.NewPass(len(b.tokens)+3, opts)
				if err != nil {
					t.Fatal(err)
				}
				sum, n := b.forward(t, p)
				if n != wantN || sum != want {
					t.Errorf("%+v: loss %.17g over %d targets, PackedNLL %.17g over %d", opts, sum, n, want, wantN)
				}
				if err := p.Backward(1 / float32(n)); err != nil {
					t.Fatal(err)
				}
				sum, n, err = p.Loss(b.tokens, b.positions, b.segIDs, b.labels)
				if err != nil || n != wantN || sum != want {
					t.Errorf("%+v: Loss %.17g over %d targets (%v), PackedNLL %.17g over %d", opts, sum, n, err, want, wantN)
				}
				if err := p.Backward(1); err == nil {
					t.Errorf("%+v: Backward after Loss succeeded", opts)
				}
			}
		})
	}
}

// passGrads runs one Forward/Backward and returns the loss, the adapter's
// grads and the Full-mode grads.
func passGrads(t *testing.T, m *Model, c *Config, b trainBatch, opts TrainOptions) (float64, [][]float32) {
	t.Helper()
	ad := newDenseAdapter(c, 5, 0.5, func(l, mod int) bool { return (l+mod)%2 == 0 })
	opts.Adapter = ad
	p, err := m.NewPass(len(b.tokens), opts)
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := b.forward(t, p)
	if err := p.Backward(0.25); err != nil {
		t.Fatal(err)
	}
	var out [][]float32
	for l := 0; l < c.Layers; l++ {
		for mod := range numModules {
			if d := ad.d[[2]int{l, mod}]; d != nil {
				out = append(out, d.g)
			}
		}
	}
	_, _, grads := p.Params()
	return sum, append(out, grads...)
}

// TestCheckpointingBitIdentical: recomputing activations in Backward gives
// the same bits as keeping them, and grads do not depend on the worker count.
func TestCheckpointingBitIdentical(t *testing.T) {
	for name, c := range gradConfigs() {
		t.Run(name, func(t *testing.T) {
			src := gradSource(t, c, 13)
			r := rand.New(rand.NewPCG(5, 6))
			b := makeBatch(r, []int{9, 3, 12}, c.Vocab)
			m1, err := New(c, src, LoadOptions{Backend: cpu.New(1)})
			if err != nil {
				t.Fatal(err)
			}
			m3, err := New(c, src, LoadOptions{Backend: cpu.New(3)})
			if err != nil {
				t.Fatal(err)
			}
			// LossChunk is fixed: dW_lm sums chunk by chunk, so its rounding depends on it.
			wantLoss, want := passGrads(t, m1, c, b, TrainOptions{Full: true, LossChunk: 5})
			adLoss, adWant := passGrads(t, m1, c, b, TrainOptions{LossChunk: 5})
			for _, tc := range []struct {
				name string
				m    *Model
				opts TrainOptions
			}{
				{"checkpointing", m1, TrainOptions{Full: true, Checkpointing: true, LossChunk: 5}},
				{"3 workers", m3, TrainOptions{Full: true, LossChunk: 5}},
				{"3 workers, checkpointing", m3, TrainOptions{Full: true, Checkpointing: true, LossChunk: 5}},
				{"adapter only, checkpointing", m1, TrainOptions{Checkpointing: true, LossChunk: 5}},
				{"adapter only, 3 workers, checkpointing", m3, TrainOptions{Checkpointing: true, LossChunk: 5}},
			} {
				loss, got := passGrads(t, tc.m, c, b, tc.opts)
				want, wantLoss := want, wantLoss
				if !tc.opts.Full {
					wantLoss, want = adLoss, adWant
				}
				if loss != wantLoss {
					t.Errorf("%s: loss %v, want %v", tc.name, loss, wantLoss)
				}
				for i := range want {
					for j := range want[i] {
						if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
							t.Fatalf("%s: grad %d[%d] = %v, want %v", tc.name, i, j, got[i][j], want[i][j])
						}
					}
				}
			}
		})
	}
}

func TestPassErrors(t *testing.T) {
	c := smallConfig()
	m := newTestModel(t, c, safetensors.BF16, 1)
	if _, err := m.NewPass(c.MaxPositions+1, TrainOptions{}); err == nil {
		t.Error("NewPass beyond max_position_embeddings succeeded")
	}
	p, err := m.NewPass(8, TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Backward(1); err == nil {
		t.Error("Backward before Forward succeeded")
	}
	r := rand.New(rand.NewPCG(1, 1))
	long := makeBatch(r, []int{9}, c.Vocab)
	if _, _, err := p.Forward(long.tokens, long.positions, long.segIDs, long.labels); err == nil {
		t.Error("Forward of 9 rows on an 8-row pass succeeded")
	}
	b := makeBatch(r, []int{4, 4}, c.Vocab)
	bad := append([]int32(nil), b.labels...)
	bad[5] = int32(c.Vocab)
	if _, _, err := p.Forward(b.tokens, b.positions, b.segIDs, bad); err == nil {
		t.Error("label outside the vocabulary accepted")
	}
	badPos := append([]int32(nil), b.positions...)
	badPos[4] = 3
	if _, _, err := p.Forward(b.tokens, badPos, b.segIDs, b.labels); err == nil {
		t.Error("position not restarting at a segment start accepted")
	}
	if _, _, err := p.Forward(b.tokens, b.positions, b.segIDs, b.labels[:7]); err == nil {
		t.Error("short labels accepted")
	}
	if err := p.Backward(1); err == nil {
		t.Error("Backward after a failed Forward succeeded")
	}
	b.forward(t, p)
	if err := p.Backward(1); err != nil {
		t.Fatal(err)
	}
	if err := p.Backward(1); err == nil {
		t.Error("second Backward of one Forward succeeded")
	}
	if names, _, _ := p.Params(); names != nil {
		t.Errorf("Params without Full: %d tensors", len(names))
	}
}

// TestPassSteadyState: after the first step, Forward and Backward allocate
// nothing (the test adapter allocates nothing either).
func TestPassSteadyState(t *testing.T) {
	c := smallConfig()
	m := newTestModel(t, c, safetensors.BF16, 2)
	ad := newDenseAdapter(c, 1, 0.1, func(l, mod int) bool { return mod == modQ || mod == modDown })
	r := rand.New(rand.NewPCG(2, 2))
	b := makeBatch(r, []int{20, 12}, c.Vocab)
	for _, opts := range []TrainOptions{{Adapter: ad}, {Adapter: ad, Checkpointing: true}, {Full: true}} {
		p, err := m.NewPass(40, opts)
		if err != nil {
			t.Fatal(err)
		}
		step := func() {
			b.forward(t, p)
			if err := p.Backward(1); err != nil {
				t.Fatal(err)
			}
		}
		step()
		if n := testing.AllocsPerRun(3, step); n != 0 {
			t.Errorf("%+v: a step allocates %v times", opts, n)
		}
	}
}

// lowRankAdapter is a rank-R LoRA-shaped test adapter on every linear layer
// (out += (in·Aᵀ)·Bᵀ), computed with the backend's matmuls as a real adapter
// would be, for the benchmark.
type lowRankAdapter struct {
	R      int
	be     kernels.Backend
	c      *Config
	a, b   map[[2]int]kernels.Weight // A [R,C], B [OC,R]
	ga, gb map[[2]int][]float32
	xa     []float32 // [T,R] in·Aᵀ
	dxa    []float32 // [T,R]
	tmp    []float32 // [T,max OC]
}

func newLowRankAdapter(m *Model, R, maxT int) *lowRankAdapter {
	c := m.Config
	r := rand.New(rand.NewPCG(1, 1))
	ad := &lowRankAdapter{R: R, be: m.Backend(), c: c, a: map[[2]int]kernels.Weight{}, b: map[[2]int]kernels.Weight{},
		ga: map[[2]int][]float32{}, gb: map[[2]int][]float32{},
		xa: make([]float32, maxT*R), dxa: make([]float32, maxT*R), tmp: make([]float32, maxT*max(c.Hidden, c.Intermediate, c.Heads*c.HeadDim))}
	randW := func(rows, cols int) kernels.Weight {
		v := make([]float32, rows*cols)
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.01)
		}
		return kernels.Weight{DType: kernels.F32, Data: f32Bytes(v), Rows: rows, Cols: cols}
	}
	for l := 0; l < c.Layers; l++ {
		for mod := range numModules {
			oc, ic := moduleShape(c, mod)
			k := [2]int{l, mod}
			ad.a[k], ad.b[k] = randW(R, ic), randW(oc, R)
			ad.ga[k], ad.gb[k] = make([]float32, R*ic), make([]float32, oc*R)
		}
	}
	return ad
}

func (ad *lowRankAdapter) Has(int, string) bool { return true }

func (ad *lowRankAdapter) Forward(l int, module string, out, in []float32, T int, train bool) {
	k := [2]int{l, moduleIndex(module)}
	A, B := ad.a[k], ad.b[k]
	xa, tmp := ad.xa[:T*ad.R], ad.tmp[:T*B.Rows]
	ad.be.MatMulForward(xa, in, A, nil, T)
	ad.be.MatMulForward(tmp, xa, B, nil, T)
	ad.be.AddForward(out[:T*B.Rows], out[:T*B.Rows], tmp)
}

func (ad *lowRankAdapter) Backward(l int, module string, din, dout, in []float32, T int) {
	k := [2]int{l, moduleIndex(module)}
	A, B := ad.a[k], ad.b[k]
	xa, dxa := ad.xa[:T*ad.R], ad.dxa[:T*ad.R]
	ad.be.MatMulForward(xa, in, A, nil, T) // the forward's in·Aᵀ, recomputed
	clear(dxa)
	ad.be.MatMulBackward(dxa, ad.gb[k], nil, dout, xa, B, T)
	ad.be.MatMulBackward(din, ad.ga[k], nil, dxa, in, A, T)
}

// BenchmarkTrainStep512: forward+backward of one 512-token packed sequence
// (two samples, all labels scored) with a rank-16 adapter on every linear
// layer of bench-qwen3-small, with and without checkpointing.
func BenchmarkTrainStep512(b *testing.B) {
	m := getBenchModel(b)
	const T = 512
	r := rand.New(rand.NewPCG(1, 2))
	batch := makeBatch(r, []int{300, 212}, m.Config.Vocab)
	for _, ckpt := range []bool{false, true} {
		name := "keep"
		if ckpt {
			name = "checkpointing"
		}
		b.Run(name, func(b *testing.B) {
			p, err := m.NewPass(T, TrainOptions{Adapter: newLowRankAdapter(m, 16, T), Checkpointing: ckpt})
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				batch.forward(b, p)
				if err := p.Backward(1.0 / T); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "tokens/s")
			b.ReportMetric(float64(p.ActivationBytes())/(1<<20), "act-MB")
		})
	}
}
