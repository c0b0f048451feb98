package cuda

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/train"
)

// The op checks need a GPU: without one they skip with the reason, unless
// TUNE_CUDA_REQUIRE=1 (set by scripts/gpu-check.sh on the device machine),
// where a missing GPU is a failure.

var (
	gpuOnce sync.Once
	gpu     *Backend
	gpuErr  error
	ref     = cpu.New(0)
)

func openOrSkip(t testing.TB) *Backend {
	t.Helper()
	gpuOnce.Do(func() { gpu, gpuErr = Open() })
	if gpuErr != nil {
		if os.Getenv("TUNE_CUDA_REQUIRE") == "1" {
			t.Fatalf("TUNE_CUDA_REQUIRE=1 but no usable GPU: %v", gpuErr)
		}
		t.Skipf("no GPU: %v", gpuErr)
	}
	return gpu
}

// result is one row of the error table printed at the end of the run.
type result struct {
	op, shape      string
	maxAbs, maxRel float64 // maxRel: max |got-want| / max |want|
	tol            float64
	ok             bool
}

var (
	resMu   sync.Mutex
	results []result
)

func TestMain(m *testing.M) {
	code := m.Run()
	if len(results) > 0 {
		var sb strings.Builder
		fmt.Fprintf(&sb, "%-28s %-34s %12s %12s %10s %s\n", "check (got vs want)", "shape", "max abs err", "max rel err", "tolerance", "")
		sort.SliceStable(results, func(i, j int) bool { return results[i].op < results[j].op })
		for _, r := range results {
			st := "ok"
			if !r.ok {
				st = "FAIL"
			}
			fmt.Fprintf(&sb, "%-28s %-34s %12.3g %12.3g %10.1g %s\n", r.op, r.shape, r.maxAbs, r.maxRel, r.tol, st)
		}
		fmt.Print(sb.String())
		// Appended: gpu-check.sh runs each test in its own process (a
		// device fault in one must not lose the others' rows).
		if p := os.Getenv("TUNE_CUDA_REPORT"); p != "" {
			if f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.WriteString(sb.String())
				f.Close()
			}
		}
	}
	os.Exit(code)
}

// compare records and checks got against want: the largest difference
// relative to the largest |want| must be within tol, and no NaN or Inf may
// appear where want is finite.
func compare[F float32 | float64](t *testing.T, op, shape string, got, want []F, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s %s: %d values, want %d", op, shape, len(got), len(want))
	}
	var maxAbs, scale float64
	bad := -1
	for i := range got {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			if !(math.IsNaN(w) || math.IsInf(w, 0)) && bad < 0 {
				bad = i
			}
			continue
		}
		maxAbs = max(maxAbs, math.Abs(g-w))
		scale = max(scale, math.Abs(w))
	}
	rel := maxAbs / max(scale, 1e-30)
	ok := bad < 0 && rel <= tol
	resMu.Lock()
	results = append(results, result{op, shape, maxAbs, rel, tol, ok})
	resMu.Unlock()
	if bad >= 0 {
		t.Errorf("%s %s: element %d is %v, want %v", op, shape, bad, got[bad], want[bad])
	} else if !ok {
		t.Errorf("%s %s: max rel err %.3g > %.1g (max abs %.3g)", op, shape, rel, tol, maxAbs)
	}
}

func randn(r *rand.Rand, n int, scale float32) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64()) * scale
	}
	return x
}

func clone[F any](x []F) []F { return append([]F(nil), x...) }

// bf16Weight rounds x to bf16 and returns it as a BF16 weight view.
func bf16Weight(x []float32, rows, cols int) kernels.Weight {
	data := make([]byte, 2*len(x))
	for i, v := range x {
		u := math.Float32bits(v)
		u += 0x7fff + (u>>16)&1
		binary.LittleEndian.PutUint16(data[2*i:], uint16(u>>16))
	}
	return kernels.Weight{DType: kernels.BF16, Data: data, Rows: rows, Cols: cols}
}

func f32Weight(x []float32, rows, cols int) kernels.Weight {
	data := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	}
	return kernels.Weight{DType: kernels.F32, Data: data, Rows: rows, Cols: cols}
}

// gemmTol is the tolerance of GEMMs: fp32 up to summation order, or bf16
// inputs with fp32 accumulation.
func gemmTol(b *Backend) float64 {
	if b.bf16 {
		return 2e-2
	}
	return 2e-5
}

func TestOpsEmbedding(t *testing.T) {
	b := openOrSkip(t)
	r := rand.New(rand.NewPCG(1, 2))
	for _, sh := range []struct{ T, V, C int }{{1, 7, 5}, {37, 101, 67}, {256, 1000, 512}} {
		tab := randn(r, sh.V*sh.C, 1)
		toks := make([]int, sh.T)
		for i := range toks {
			toks[i] = r.IntN(sh.V)
		}
		for _, w := range []kernels.Weight{f32Weight(tab, sh.V, sh.C), bf16Weight(tab, sh.V, sh.C)} {
			shape := fmt.Sprintf("T=%d V=%d C=%d %v", sh.T, sh.V, sh.C, w.DType)
			got, want := make([]float32, sh.T*sh.C), make([]float32, sh.T*sh.C)
			b.EmbeddingForward(got, toks, w)
			ref.EmbeddingForward(want, toks, w)
			compare(t, "embedding", shape, got, want, 0)
		}
		dout := randn(r, sh.T*sh.C, 1)
		init := randn(r, sh.V*sh.C, 1)
		got, want := clone(init), clone(init)
		b.EmbeddingBackward(got, dout, toks, sh.C)
		ref.EmbeddingBackward(want, dout, toks, sh.C)
		compare(t, "embedding_back", fmt.Sprintf("T=%d V=%d C=%d", sh.T, sh.V, sh.C), got, want, 0)
	}
}

func TestOpsMatMul(t *testing.T) {
	b := openOrSkip(t)
	r := rand.New(rand.NewPCG(3, 4))
	for _, sh := range []struct{ T, C, OC int }{{1, 16, 8}, {7, 33, 65}, {129, 257, 130}, {512, 1024, 768}} {
		wf := randn(r, sh.OC*sh.C, 0.05)
		in := randn(r, sh.T*sh.C, 1)
		bias := randn(r, sh.OC, 1)
		for _, w := range []kernels.Weight{f32Weight(wf, sh.OC, sh.C), bf16Weight(wf, sh.OC, sh.C)} {
			shape := fmt.Sprintf("T=%d C=%d OC=%d %v", sh.T, sh.C, sh.OC, w.DType)
			got, want := make([]float32, sh.T*sh.OC), make([]float32, sh.T*sh.OC)
			b.MatMulForward(got, in, w, bias, sh.T)
			ref.MatMulForward(want, in, w, bias, sh.T)
			compare(t, "matmul", shape, got, want, gemmTol(b))

			dout := randn(r, sh.T*sh.OC, 1)
			din0, dw0, db0 := randn(r, sh.T*sh.C, 1), randn(r, sh.OC*sh.C, 1), randn(r, sh.OC, 1)
			gdin, gdw, gdb := clone(din0), clone(dw0), clone(db0)
			wdin, wdw, wdb := clone(din0), clone(dw0), clone(db0)
			b.MatMulBackward(gdin, gdw, gdb, dout, in, w, sh.T)
			ref.MatMulBackward(wdin, wdw, wdb, dout, in, w, sh.T)
			compare(t, "matmul_back din", shape, gdin, wdin, gemmTol(b))
			compare(t, "matmul_back dw", shape, gdw, wdw, gemmTol(b))
			compare(t, "matmul_back dbias", shape, gdb, wdb, 1e-5)
		}
	}
}

func TestOpsRMSNorm(t *testing.T) {
	b := openOrSkip(t)
	r := rand.New(rand.NewPCG(5, 6))
	for _, sh := range []struct{ N, C int }{{1, 1}, {3, 67}, {17, 1000}, {64, 4096}} {
		shape := fmt.Sprintf("N=%d C=%d", sh.N, sh.C)
		in, w := randn(r, sh.N*sh.C, 2), randn(r, sh.C, 1)
		got, want := make([]float32, sh.N*sh.C), make([]float32, sh.N*sh.C)
		b.RMSNormForward(got, in, w, 1e-6, sh.N, sh.C)
		ref.RMSNormForward(want, in, w, 1e-6, sh.N, sh.C)
		compare(t, "rmsnorm", shape, got, want, 1e-6)

		dout := randn(r, sh.N*sh.C, 1)
		din0, dw0 := randn(r, sh.N*sh.C, 1), randn(r, sh.C, 1)
		gdin, gdw, wdin, wdw := clone(din0), clone(dw0), clone(din0), clone(dw0)
		b.RMSNormBackward(gdin, gdw, dout, in, w, 1e-6, sh.N, sh.C)
		ref.RMSNormBackward(wdin, wdw, dout, in, w, 1e-6, sh.N, sh.C)
		compare(t, "rmsnorm_back din", shape, gdin, wdin, 1e-5)
		compare(t, "rmsnorm_back dw", shape, gdw, wdw, 1e-5)
	}
}

func TestOpsRoPE(t *testing.T) {
	b := openOrSkip(t)
	r := rand.New(rand.NewPCG(7, 8))
	for _, sh := range []struct{ T, NH, HD int }{{1, 1, 2}, {5, 3, 64}, {33, 8, 128}, {9, 2, 256}} {
		shape := fmt.Sprintf("T=%d NH=%d HD=%d", sh.T, sh.NH, sh.HD)
		x := randn(r, sh.T*sh.NH*sh.HD, 1)
		cos, sin := make([]float32, sh.T*sh.HD/2), make([]float32, sh.T*sh.HD/2)
		for i := range cos {
			a := r.Float64() * 2 * math.Pi
			cos[i], sin[i] = float32(math.Cos(a)), float32(math.Sin(a))
		}
		got, want := clone(x), clone(x)
		b.RoPEForward(got, cos, sin, sh.T, sh.NH, sh.HD)
		ref.RoPEForward(want, cos, sin, sh.T, sh.NH, sh.HD)
		compare(t, "rope", shape, got, want, 1e-6)
		got, want = clone(x), clone(x)
		b.RoPEBackward(got, cos, sin, sh.T, sh.NH, sh.HD)
		ref.RoPEBackward(want, cos, sin, sh.T, sh.NH, sh.HD)
		compare(t, "rope_back", shape, got, want, 1e-6)
	}
}

// segments returns segStart for rows packed from sequences of the given
// lengths.
func segments(lens ...int) []int {
	var s []int
	at := 0
	for _, n := range lens {
		for i := 0; i < n; i++ {
			s = append(s, at)
		}
		at += n
	}
	return s
}

func TestOpsAttention(t *testing.T) {
	b := openOrSkip(t)
	r := rand.New(rand.NewPCG(9, 10))
	for _, sh := range []struct{ pos0, T, NH, KVH, HD, window int }{
		{0, 1, 1, 1, 8, 0}, {0, 37, 4, 2, 64, 0}, {5, 3, 6, 2, 128, 0}, {0, 70, 8, 8, 32, 16}, {100, 1, 8, 2, 128, 0}, {0, 300, 4, 1, 256, 0},
	} {
		S := sh.pos0 + sh.T
		shape := fmt.Sprintf("pos0=%d T=%d NH=%d KVH=%d HD=%d w=%d", sh.pos0, sh.T, sh.NH, sh.KVH, sh.HD, sh.window)
		q, k, v := randn(r, sh.T*sh.NH*sh.HD, 1), randn(r, S*sh.KVH*sh.HD, 1), randn(r, S*sh.KVH*sh.HD, 1)
		got, want := make([]float32, len(q)), make([]float32, len(q))
		b.AttentionForward(got, q, k, v, sh.pos0, sh.T, sh.NH, sh.KVH, sh.HD, sh.window)
		ref.AttentionForward(want, q, k, v, sh.pos0, sh.T, sh.NH, sh.KVH, sh.HD, sh.window)
		compare(t, "attention", shape, got, want, 1e-5)
	}
	for _, sh := range []struct {
		lens                []int
		NH, KVH, HD, window int
	}{
		{[]int{1}, 1, 1, 8, 0}, {[]int{5, 1, 11}, 4, 2, 64, 0}, {[]int{40, 23}, 8, 2, 128, 0}, {[]int{64, 3, 61}, 6, 3, 32, 7}, {[]int{200}, 2, 1, 256, 0},
	} {
		seg := segments(sh.lens...)
		T := len(seg)
		shape := fmt.Sprintf("seqs=%v NH=%d KVH=%d HD=%d w=%d", sh.lens, sh.NH, sh.KVH, sh.HD, sh.window)
		q, k, v := randn(r, T*sh.NH*sh.HD, 1), randn(r, T*sh.KVH*sh.HD, 1), randn(r, T*sh.KVH*sh.HD, 1)
		got, want := make([]float32, len(q)), make([]float32, len(q))
		b.PackedAttentionForward(got, q, k, v, seg, T, sh.NH, sh.KVH, sh.HD, sh.window)
		ref.PackedAttentionForward(want, q, k, v, seg, T, sh.NH, sh.KVH, sh.HD, sh.window)
		compare(t, "attention packed", shape, got, want, 1e-5)

		dout := randn(r, len(q), 1)
		gq, gk, gv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
		wq, wk, wv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
		b.PackedAttentionBackward(gq, gk, gv, dout, q, k, v, seg, T, sh.NH, sh.KVH, sh.HD, sh.window)
		ref.PackedAttentionBackward(wq, wk, wv, dout, q, k, v, seg, T, sh.NH, sh.KVH, sh.HD, sh.window)
		compare(t, "attention_back dq", shape, gq, wq, 1e-5)
		compare(t, "attention_back dk", shape, gk, wk, 1e-5)
		compare(t, "attention_back dv", shape, gv, wv, 1e-5)
	}
}

func TestOpsElementwise(t *testing.T) {
	b := openOrSkip(t)
	r := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{1, 255, 257, 100003} {
		shape := fmt.Sprintf("N=%d", n)
		g, u := randn(r, n, 3), randn(r, n, 1)
		got, want := make([]float32, n), make([]float32, n)
		b.SwiGLUForward(got, g, u)
		ref.SwiGLUForward(want, g, u)
		compare(t, "swiglu", shape, got, want, 1e-6)
		b.AddForward(got, g, u)
		ref.AddForward(want, g, u)
		compare(t, "add", shape, got, want, 0)
		dout := randn(r, n, 1)
		gdg, gdu, wdg, wdu := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
		b.SwiGLUBackward(gdg, gdu, dout, g, u)
		ref.SwiGLUBackward(wdg, wdu, dout, g, u)
		compare(t, "swiglu_back dgate", shape, gdg, wdg, 1e-6)
		compare(t, "swiglu_back dup", shape, gdu, wdu, 1e-6)
	}
}

func TestOpsSoftmaxNLL(t *testing.T) {
	b := openOrSkip(t)
	r := rand.New(rand.NewPCG(13, 14))
	for _, sh := range []struct{ N, V int }{{1, 1}, {3, 17}, {9, 1001}, {4, 151936}} {
		shape := fmt.Sprintf("N=%d V=%d", sh.N, sh.V)
		x := randn(r, sh.N*sh.V, 4)
		got, want := make([]float32, len(x)), make([]float32, len(x))
		b.SoftmaxForward(got, x, sh.N, sh.V)
		ref.SoftmaxForward(want, x, sh.N, sh.V)
		compare(t, "softmax", shape, got, want, 1e-6)
		tg := make([]int, sh.N)
		for i := range tg {
			tg[i] = r.IntN(sh.V)
		}
		gn, wn := make([]float64, sh.N), make([]float64, sh.N)
		b.LogSoftmaxNLLForward(gn, x, tg, sh.N, sh.V)
		ref.LogSoftmaxNLLForward(wn, x, tg, sh.N, sh.V)
		compare(t, "log_softmax_nll", shape, gn, wn, 1e-6)
		b.LogSoftmaxNLLBackward(got, x, tg, 0.37, sh.N, sh.V)
		ref.LogSoftmaxNLLBackward(want, x, tg, 0.37, sh.N, sh.V)
		compare(t, "log_softmax_nll_back", shape, got, want, 1e-6)
	}
}

// TestOpsAdamW checks the device AdamW against train.AdamW.Update, the
// trainer's optimizer (itself checked against torch.optim.AdamW).
func TestOpsAdamW(t *testing.T) {
	b := openOrSkip(t)
	r := rand.New(rand.NewPCG(15, 16))
	n := 10007
	p, g := randn(r, n, 1), randn(r, n, 0.1)
	m, v := randn(r, n, 0.01), randn(r, n, 0.01)
	for i := range v {
		v[i] *= v[i]
	}
	cfg := train.AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01}
	lr := 1e-3
	opt := &train.AdamW{Cfg: cfg, Step: 6, M: clone(m), V: clone(v)}
	wp := clone(p)
	opt.Update(lr, [][]float32{wp}, [][]float32{g})
	step := float64(opt.Step)
	gp, gm, gv := clone(p), clone(m), clone(v)
	b.AdamW(gp, g, gm, gv, float32(1-lr*cfg.WeightDecay), float32(cfg.Beta1), float32(cfg.Beta2), float32(1-cfg.Beta1), float32(1-cfg.Beta2),
		float32(math.Sqrt(1-math.Pow(cfg.Beta2, step))), float32(-lr/(1-math.Pow(cfg.Beta1, step))), float32(cfg.Eps))
	compare(t, "adamw p", fmt.Sprintf("N=%d", n), gp, wp, 1e-7)
	compare(t, "adamw m", fmt.Sprintf("N=%d", n), gm, opt.M, 1e-7)
	compare(t, "adamw v", fmt.Sprintf("N=%d", n), gv, opt.V, 1e-7)
}

func TestOpsBF16Round(t *testing.T) {
	b := openOrSkip(t)
	r := rand.New(rand.NewPCG(17, 18))
	x := randn(r, 4099, 100)
	x = append(x, 0, -0, float32(math.Inf(1)), 1.00390625, 1.01171875, 3.3895314e38)
	got := clone(x)
	b.RoundBF16(got)
	w := bf16Weight(x, 1, len(x))
	want := make([]float32, len(x))
	for i := range want {
		want[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(w.Data[2*i:])) << 16)
	}
	compare(t, "bf16 round trip", fmt.Sprintf("N=%d", len(x)), got, want, 0)
}
