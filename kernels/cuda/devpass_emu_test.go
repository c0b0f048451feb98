package cuda

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// TestDevicePassKernelsEmulated runs the CUDA C kernels of kernels.cu's
// device-resident pass section on the CPU (scripts/gpu/emulate: emu.h, one
// OS thread per CUDA thread, g++) and compares their outputs with the fake
// device's Go versions, which every CI test of the device pass computes
// with: bit for bit (gathers, scaling, the dropout masks' splitmix64 hash,
// the serial loss sum), and the grad norm's float64 block partial sums to
// 1e-12. So the chain CUDA C == fake device == lora/linear.go and
// model.Pass is checked without a GPU, for these kernels; the other
// kernels the pass uses are the per-op backend's (TestOps* on a GPU, the
// emulator's torch check by hand).
func TestDevicePassKernelsEmulated(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	const rows, W, n = 10, 7, 4
	gIn := randn(r, rows*W, 1)
	idx := []int32{7, 0, 9, 3}
	scX, s := randn(r, 1000, 1), float32(0.37)
	sv := make([]float64, 333)
	for i := range sv {
		sv[i] = r.NormFloat64() * 1e3
	}
	sq := randn(r, 5000, 2)
	dIn, din := randn(r, 3000, 1), randn(r, 3000, 1)
	p := 0.3 // lora/linear.go's threshold and scale for dropout p
	key, th, dscale := r.Uint64(), uint64(p*(1<<63))<<1, float32(1/(1-p))

	var buf bytes.Buffer
	le := binary.LittleEndian
	buf.WriteString("DP1\n")
	for _, v := range []any{gIn, idx, scX, s, sv, sq, dIn, key, th, dscale, din} {
		binary.Write(&buf, le, v)
	}
	raw := runEmulated(t, "devpass_check", "1", buf.Bytes())
	rd := bytes.NewReader(raw)
	emu := struct {
		Gather  [n * W]float32
		Scatter [rows * W]float32
		Scaled  [1000]float32
		Sum     float64
		Parts   [8]float64
		Drop    [3000]float32
		Din     [3000]float32
	}{} // exported: binary.Read sets fields by reflection
	if err := binary.Read(rd, le, &emu); err != nil || rd.Len() != 0 {
		t.Fatalf("devpass_check output: %v (%d bytes left)", err, rd.Len())
	}

	// The same launches on the fake device.
	b, f := newFake(t, false)
	up := func(x any, size int) uint64 {
		var bb bytes.Buffer
		binary.Write(&bb, le, x)
		p, _ := b.alloc(uint64(max(size, bb.Len())))
		if bb.Len() > 0 {
			b.d.cuMemcpyHtoD(p, unsafe.Pointer(&bb.Bytes()[0]), uint64(bb.Len()))
		}
		return p
	}
	pIn, pIdx := up(gIn, 0), up(idx, 0)
	pG, pS := up(make([]float32, n*W), 0), up(make([]float32, rows*W), 0)
	b.launch("gather_rows", n, 64, pG, pIn, pIdx, n, W)
	b.launch("scatter_rows", n, 64, pS, pG, pIdx, n, W)
	pX, pY := up(scX, 0), up(make([]float32, 1000), 0)
	b.launch("scale_f32", 4, 256, pY, pX, s, int64(1000))
	pV, pSum := up(sv, 0), up(make([]float64, 1), 0)
	b.launch("sum_f64", 1, 32, pSum, pV, 333)
	pQ, pParts := up(sq, 0), up(make([]float64, 8), 0)
	b.launch("sumsq_f64", 8, 256, pParts, pQ, int64(5000))
	pD, pDrop, pDin := up(dIn, 0), up(make([]float32, 3000), 0), up(din, 0)
	b.launch("lora_dropout", 12, 256, pDrop, pD, key, th, dscale, int64(3000))
	b.launch("lora_dropout_add", 12, 256, pDin, pD, key, th, dscale, int64(3000))

	same := func(name string, got, want []float32) {
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s[%d]: CUDA C (emulated) %v, Go %v", name, i, got[i], want[i])
			}
		}
	}
	same("gather_rows", emu.Gather[:], f.f32(pG, n*W))
	same("scatter_rows", emu.Scatter[:], f.f32(pS, rows*W))
	same("scale_f32", emu.Scaled[:], f.f32(pY, 1000))
	same("lora_dropout", emu.Drop[:], f.f32(pDrop, 3000))
	same("lora_dropout_add", emu.Din[:], f.f32(pDin, 3000))
	if got, want := emu.Sum, f.f64(pSum, 1)[0]; got != want {
		t.Fatalf("sum_f64: CUDA C (emulated) %v, Go %v", got, want)
	}
	var tot float64
	for _, p := range emu.Parts {
		tot += p
	}
	if want := f.f64(pParts, 8)[0]; math.Abs(tot-want) > 1e-12*want {
		t.Fatalf("sumsq_f64: CUDA C (emulated) partials sum to %v, Go %v", tot, want)
	}
	kept := 0
	for _, v := range emu.Drop {
		if v != 0 {
			kept++
		}
	}
	if kept < 1900 || kept > 2300 {
		t.Fatalf("lora_dropout kept %d of 3000 at p=0.3", kept)
	}
	t.Logf("7 device-pass kernels: emulated CUDA C equals the fake device's Go (dropout kept %d of 3000)", kept)
}
