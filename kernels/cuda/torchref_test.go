package cuda

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/tunellm/tune/kernels"
)

// TestTorchRef compares backends with PyTorch float64 results written by
// scripts/gpu/torch_ref.py into $TUNE_TORCH_REF (gpu-check.sh does both).
// The CPU backend is checked too, so a dry run without a GPU exercises the
// harness: TUNE_TORCH_REF=/tmp/ref go test ./kernels/cuda -run TorchRef -v.
func TestTorchRef(t *testing.T) {
	dir := os.Getenv("TUNE_TORCH_REF")
	if dir == "" {
		t.Skip("set TUNE_TORCH_REF to a folder written by scripts/gpu/torch_ref.py")
	}
	cases, err := filepath.Glob(filepath.Join(dir, "*", "params.json"))
	if err != nil || len(cases) == 0 {
		t.Fatalf("no cases in %s", dir)
	}
	t.Run("cpu", func(t *testing.T) { torchRef(t, "torch vs cpu", ref, cases) })
	t.Run("cuda", func(t *testing.T) { torchRef(t, "torch vs cuda", openOrSkip(t), cases) })
}

func torchRef(t *testing.T, label string, be kernels.Backend, cases []string) {
	for _, pj := range cases {
		d := filepath.Dir(pj)
		name := filepath.Base(d)
		var p struct {
			Op                                        string
			N, C, T, NH, KVH, HD, Window, V, OC, Pos0 int
			Eps, Dloss                                float64
		}
		raw, err := os.ReadFile(pj)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatalf("%s: %v", pj, err)
		}
		f := func(n string) []float32 { return readF32(t, filepath.Join(d, n+".f32")) }
		ints := func(n string) []int { return readI32(t, filepath.Join(d, n+".i32")) }
		op := label + " " + p.Op
		switch p.Op {
		case "rmsnorm":
			x, w := f("x"), f("w")
			out := make([]float32, len(x))
			be.RMSNormForward(out, x, w, p.Eps, p.N, p.C)
			compare(t, op, name, out, f("out"), 1e-6)
			din, dw := make([]float32, len(x)), make([]float32, p.C)
			be.RMSNormBackward(din, dw, f("dout"), x, w, p.Eps, p.N, p.C)
			compare(t, op+" back din", name, din, f("din"), 1e-5)
			compare(t, op+" back dw", name, dw, f("dw"), 1e-5)
		case "attention_cache":
			q := f("q")
			out := make([]float32, len(q))
			be.AttentionForward(out, q, f("k"), f("v"), p.Pos0, p.T, p.NH, p.KVH, p.HD, p.Window)
			compare(t, op, name, out, f("out"), 1e-5)
		case "softmax":
			x := f("x")
			out := make([]float32, len(x))
			be.SoftmaxForward(out, x, p.N, p.C)
			compare(t, op, name, out, f("out"), 1e-6)
		case "rope":
			x := f("x")
			be.RoPEForward(x, f("cos"), f("sin"), p.T, p.NH, p.HD)
			compare(t, op, name, x, f("out"), 1e-6)
		case "attention":
			q, k, v, dout, seg := f("q"), f("k"), f("v"), f("dout"), ints("segStart")
			out := make([]float32, len(q))
			be.PackedAttentionForward(out, q, k, v, seg, p.T, p.NH, p.KVH, p.HD, p.Window)
			compare(t, op, name, out, f("out"), 1e-5)
			dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
			be.PackedAttentionBackward(dq, dk, dv, dout, q, k, v, seg, p.T, p.NH, p.KVH, p.HD, p.Window)
			compare(t, op+" dq", name, dq, f("dq"), 1e-5)
			compare(t, op+" dk", name, dk, f("dk"), 1e-5)
			compare(t, op+" dv", name, dv, f("dv"), 1e-5)
		case "swiglu":
			g, u, dout := f("gate"), f("up"), f("dout")
			out := make([]float32, p.N)
			be.SwiGLUForward(out, g, u)
			compare(t, op, name, out, f("out"), 1e-6)
			dg, du := make([]float32, p.N), make([]float32, p.N)
			be.SwiGLUBackward(dg, du, dout, g, u)
			compare(t, op+" dgate", name, dg, f("dgate"), 1e-6)
			compare(t, op+" dup", name, du, f("dup"), 1e-6)
		case "nll":
			x, tg := f("logits"), ints("targets")
			nll := make([]float64, p.N)
			be.LogSoftmaxNLLForward(nll, x, tg, p.N, p.V)
			want := f("nll")
			want64 := make([]float64, len(want))
			for i, v := range want {
				want64[i] = float64(v)
			}
			compare(t, op, name, nll, want64, 1e-6)
			dl := make([]float32, len(x))
			be.LogSoftmaxNLLBackward(dl, x, tg, float32(p.Dloss), p.N, p.V)
			compare(t, op+" back", name, dl, f("dlogits"), 1e-6)
		case "matmul":
			x, w := f("x"), f("w")
			out := make([]float32, p.T*p.OC)
			be.MatMulForward(out, x, bf16Weight(w, p.OC, p.C), f("bias"), p.T)
			tol := 2e-6
			if cb, ok := be.(*Backend); ok {
				tol = gemmTol(cb)
			}
			compare(t, op, name, out, f("out"), tol)
		default:
			t.Errorf("%s: unknown op %q", pj, p.Op)
		}
	}
}

func readF32(t *testing.T, path string) []float32 {
	b, err := os.ReadFile(path)
	if err != nil || len(b)%4 != 0 {
		t.Fatalf("%s: %v (%d bytes)", path, err, len(b))
	}
	x := make([]float32, len(b)/4)
	for i := range x {
		x[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return x
}

func readI32(t *testing.T, path string) []int {
	b, err := os.ReadFile(path)
	if err != nil || len(b)%4 != 0 {
		t.Fatalf("%s: %v (%d bytes)", path, err, len(b))
	}
	x := make([]int, len(b)/4)
	for i := range x {
		x[i] = int(int32(binary.LittleEndian.Uint32(b[4*i:])))
	}
	return x
}
