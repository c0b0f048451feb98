package cuda

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model"
)

// A dry backend has stub driver and cuBLAS functions: memory calls hand out
// fake addresses, launches and GEMMs do nothing but check their arguments
// (launch against the PTX signature, GEMM leading dimensions as cuBLAS
// does). Running every op through it in CI catches marshalling mistakes
// that would otherwise first show on a GPU.
var (
	dryLaunches = map[string]int{}
	dryHtoD     uint64 // bytes copied to the device
	dryDtoH     uint64 // and back
)

func newDry(t *testing.T) *Backend {
	next := uint64(1 << 20)
	d := &driver{lib: &library{path: "dry"},
		cuCtxSetCurrent:  func(uintptr) int32 { return 0 },
		cuCtxSynchronize: func() int32 { return 0 },
		cuMemAlloc: func(p *uint64, n uint64) int32 {
			*p = next
			next += (n + 255) &^ 255
			return 0
		},
		cuMemFree:    func(uint64) int32 { return 0 },
		cuMemGetInfo: func(f, tot *uint64) int32 { return 0 },
		cuMemcpyHtoD: func(_ uint64, _ unsafe.Pointer, n uint64) int32 {
			dryHtoD += n
			return 0
		},
		cuMemcpyDtoH: func(_ unsafe.Pointer, _ uint64, n uint64) int32 {
			dryDtoH += n
			return 0
		},
		cuMemcpyDtoD: func(uint64, uint64, uint64) int32 { return 0 },
		cuMemsetD8:   func(uint64, uint8, uint64) int32 { return 0 },
		cuLaunchKernel: func(fn uintptr, gx, gy, gz, bx, by, bz, smem uint32, stream uintptr, params, extra unsafe.Pointer) int32 {
			dryLaunches[kernelNames[fn-1]]++
			if gx == 0 || bx == 0 || bx > 1024 || bx%32 != 0 {
				t.Errorf("launch with grid %d block %d", gx, bx)
			}
			return 0
		},
	}
	bl := &cublas{
		setMathMode: func(uintptr, int32) int32 { return 0 },
		gemmEx: func(h uintptr, ta, tb int32, m, n, k int32, alpha unsafe.Pointer, A uint64, at int32, lda int32,
			B uint64, bt int32, ldb int32, beta unsafe.Pointer, C uint64, ct int32, ldc int32, compute int32, algo int32) int32 {
			// cuBLAS's CUBLAS_STATUS_INVALID_VALUE rules.
			rowsA, rowsB := m, k
			if ta == opT {
				rowsA = k
			}
			if tb == opT {
				rowsB = n
			}
			if m < 0 || n < 0 || k < 0 || lda < max(1, rowsA) || ldb < max(1, rowsB) || ldc < max(1, m) || at != bt {
				t.Errorf("gemmEx m=%d n=%d k=%d ta=%d tb=%d lda=%d ldb=%d ldc=%d types %d %d: invalid", m, n, k, ta, tb, lda, ldb, ldc, at, bt)
				return 7
			}
			return 0
		},
	}
	b := &Backend{d: d, bl: bl, dev: Device{Name: "dry"}, fn: map[string]uintptr{}, sig: ptxParams(ptx), weights: map[wkey]*dweight{}}
	for i, n := range kernelNames {
		b.fn[n] = uintptr(i + 1)
	}
	b.initArgs()
	return b
}

func TestDryRunEveryOp(t *testing.T) {
	for _, bf16 := range []bool{false, true} {
		t.Run(fmt.Sprint("bf16=", bf16), func(t *testing.T) {
			b := newDry(t)
			b.bf16 = bf16
			b.sync = true
			r := rand.New(rand.NewPCG(1, 1))
			T, C, OC, V, NH, KVH, HD := 7, 33, 65, 50, 4, 2, 16
			x := randn(r, T*C, 1)
			for _, w := range []kernels.Weight{f32Weight(randn(r, OC*C, 1), OC, C), bf16Weight(randn(r, OC*C, 1), OC, C)} {
				out := make([]float32, T*OC)
				b.MatMulForward(out, x, w, randn(r, OC, 1), T)
				b.MatMulBackward(make([]float32, T*C), make([]float32, OC*C), make([]float32, OC), out, x, w, T)
			}
			tab := bf16Weight(randn(r, V*C, 1), V, C)
			toks := []int{1, 2, 3, 49, 0, 7, 7}
			b.EmbeddingForward(x, toks, tab)
			b.EmbeddingBackward(make([]float32, V*C), x, toks, C)
			b.RMSNormForward(x, x, randn(r, C, 1), 1e-6, T, C)
			b.RMSNormBackward(make([]float32, T*C), make([]float32, C), x, x, randn(r, C, 1), 1e-6, T, C)
			q, kv := randn(r, T*NH*HD, 1), randn(r, T*KVH*HD, 1)
			cs := randn(r, T*HD/2, 1)
			b.RoPEForward(q, cs, cs, T, NH, HD)
			b.RoPEBackward(q, cs, cs, T, NH, HD)
			out := make([]float32, len(q))
			b.AttentionForward(out, q[:NH*HD], kv, kv, T-1, 1, NH, KVH, HD, 0)
			seg := []int{0, 0, 0, 3, 3, 5, 5}
			b.PackedAttentionForward(out, q, kv, kv, seg, T, NH, KVH, HD, 3)
			b.PackedAttentionBackward(out, make([]float32, len(kv)), make([]float32, len(kv)), q, q, kv, kv, seg, T, NH, KVH, HD, 0)
			b.SwiGLUForward(out, q, q)
			b.SwiGLUBackward(out, out, q, q, q)
			b.AddForward(out, out, q)
			lg := randn(r, T*V, 1)
			b.SoftmaxForward(lg, lg, T, V)
			b.LogSoftmaxNLLForward(make([]float64, T), lg, toks, T, V)
			b.LogSoftmaxNLLBackward(lg, lg, toks, 1, T, V)
			p := randn(r, 100, 1)
			b.AdamW(p, p, p, p, 1, 0.9, 0.999, 0.1, 0.001, 1, -1e-3, 1e-8)
			b.RoundBF16(p)
			if err := b.Prepare(kernels.Weight{DType: kernels.Q8_0, Data: make([]byte, 2*34), Rows: 2, Cols: 32}); err != nil {
				t.Fatal(err)
			}
			b.ForgetWeights()
		})
	}
}

// TestDryRejects: bad inputs panic with a message naming the op, as the
// kernels.Backend contract says, before anything reaches the device.
func TestDryRejects(t *testing.T) {
	b := newDry(t)
	for _, c := range []struct {
		name, want string
		f          func()
	}{
		{"token range", "embedding: tokens[1] = 9", func() {
			b.EmbeddingForward(make([]float32, 8), []int{0, 9}, bf16Weight(make([]float32, 8), 2, 4))
		}},
		{"head dim", "head dim 512 outside", func() {
			b.AttentionForward(make([]float32, 512), make([]float32, 512), make([]float32, 512), make([]float32, 512), 0, 1, 1, 1, 512, 0)
		}},
		{"segStart", "segStart[1] = 2", func() {
			b.PackedAttentionForward(make([]float32, 16), make([]float32, 16), make([]float32, 16), make([]float32, 16), []int{0, 2}, 2, 1, 1, 8, 0)
		}},
		{"target", "targets[0] = 5 outside [0,5)", func() {
			b.LogSoftmaxNLLForward(make([]float64, 1), make([]float32, 5), []int{5}, 1, 5)
		}},
		{"short", "matmul: in has 3 elements, need 4", func() {
			b.MatMulForward(make([]float32, 2), make([]float32, 3), f32Weight(make([]float32, 4), 1, 2), nil, 2)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), c.want) {
					t.Fatalf("panic %v, want %q", r, c.want)
				}
			}()
			c.f()
		})
	}
}

// TestDryModel drives the tiny models through a dry backend: every op call
// the model and the trainer make, with their real shapes, passes the
// backend's checks and the launch/GEMM argument checks (the numbers are
// meaningless; TestModel* compares them on a GPU).
func TestDryModel(t *testing.T) {
	b := newDry(t)
	for _, name := range tinyModels {
		t.Run(name, func(t *testing.T) {
			m, err := model.Load(filepath.Join("..", "..", "testdata", "models", name), model.LoadOptions{Backend: b})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			toks := []int{1, 2, 3, 4, 5, 6, 7}
			if _, err := m.ForwardLogits(m.NewCache(len(toks)), toks); err != nil {
				t.Fatal(err)
			}
			if _, _, err := m.WindowNLL(toks); err != nil {
				t.Fatal(err)
			}
			p, err := m.NewPass(8, model.TrainOptions{Full: true})
			if err != nil {
				t.Fatal(err)
			}
			ids := []int32{1, 2, 3, 4, 5, 6, 7, 8}
			if _, _, err := p.Forward(ids, []int32{0, 1, 2, 0, 1, 2, 3, 4}, []int32{0, 0, 0, 1, 1, 1, 1, 1}, ids); err != nil {
				t.Fatal(err)
			}
			if err := p.Backward(1); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Logf("kernel launches: %v", dryLaunches)
}

// TestDryQuantizedWeights: every block-quantized dtype (GGUF blocks, NF4,
// the INT4/INT8 codes of QLoRA bases) uploads (dequantized on the host) and
// multiplies through the dry backend, in both GEMM modes.
func TestDryQuantizedWeights(t *testing.T) {
	n := 0
	for dt := kernels.DType(0); dt < 256; dt++ {
		if !dt.Quantized() {
			continue
		}
		e, _, ok := dt.Block()
		if !ok || e <= 0 {
			continue
		}
		for _, bf16 := range []bool{false, true} {
			b := newDry(t)
			b.bf16 = bf16
			rows, cols := 3, 2*e
			w := kernels.Weight{DType: dt, Data: make([]byte, rows*dt.RowBytes(cols)), Rows: rows, Cols: cols}
			if err := b.Prepare(w); err != nil {
				t.Fatalf("%v bf16=%v: %v", dt, bf16, err)
			}
			out := make([]float32, 2*rows)
			b.MatMulForward(out, make([]float32, 2*cols), w, nil, 2)
		}
		n++
	}
	if n < 10 {
		t.Fatalf("only %d quantized dtypes", n)
	}
}
