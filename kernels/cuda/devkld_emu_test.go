package cuda

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// TestKLDKernelEmulated runs kld_rows in CUDA C on the CPU (emu.h, g++) and
// compares it with the fake device's Go version, which TestDeviceKLD
// computes with and which is eval.KLDAcc.Add's arithmetic: the NLLs and KL
// to 1e-12 (relative, absolute below 1: the kernel's block reductions sum
// in another order),
// the argmax agreement exactly, including rows with tied maxima (lowest id
// wins), a -Inf logit in the base (its term is skipped) and identical rows
// (KL 0).
func TestKLDKernelEmulated(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	const N, V = 6, 1000
	lb, lq := randn(r, N*V, 3), randn(r, N*V, 3)
	tg := make([]int32, N)
	for i := range tg {
		tg[i] = int32(r.IntN(V))
	}
	// Row 1: tied maxima at 700 and 300 in both models (lowest id, 300, wins
	// on both sides); row 2: the base has a -Inf logit; row 3: equal rows.
	lb[V+300], lb[V+700], lq[V+300], lq[V+700] = 40, 40, 40, 40
	lb[2*V+5] = float32(math.Inf(-1))
	copy(lq[3*V:4*V], lb[3*V:4*V])
	var buf bytes.Buffer
	le := binary.LittleEndian
	buf.WriteString("KL1\n")
	for _, v := range []any{int32(N), int32(V), lb, lq, tg} {
		binary.Write(&buf, le, v)
	}
	raw := runEmulated(t, "kld_check", "1", buf.Bytes())
	emu := make([]float64, 4*N)
	if err := binary.Read(bytes.NewReader(raw), le, emu); err != nil {
		t.Fatal(err)
	}

	b, f := newFake(t, false)
	up := func(p unsafe.Pointer, n int) uint64 {
		d, _ := b.alloc(uint64(n))
		b.d.cuMemcpyHtoD(d, p, uint64(n))
		return d
	}
	pb, pq, pt := up(unsafe.Pointer(&lb[0]), 4*N*V), up(unsafe.Pointer(&lq[0]), 4*N*V), up(unsafe.Pointer(&tg[0]), 4*N)
	ps, _ := b.alloc(8 * 4 * N)
	b.launch("kld_rows", N, rowThreads, ps, pb, pq, pt, N, V)
	want := f.f64(ps, 4*N)
	for i := range want {
		if d := math.Abs(emu[i] - want[i]); d > 1e-12*max(math.Abs(want[i]), 1) {
			t.Fatalf("stat %d (row %d): CUDA C (emulated) %v, Go %v", i%4, i/4, emu[i], want[i])
		}
	}
	if emu[4*1+3] != 1 || want[4*3+2] != 0 || emu[4*3+3] != 1 {
		t.Fatalf("tied row same-top %v, equal rows KL %v same-top %v", emu[7], want[14], emu[15])
	}
	t.Logf("kld_rows: emulated CUDA C equals the fake device's Go on %d rows of %d (KL row 0: %v)", N, V, emu[2])
}
