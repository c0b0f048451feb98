package cuda

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// TestDoRAKernelsEmulated runs dora.cu's kernels in CUDA C on the CPU
// (scripts/gpu/emulate: emu.h, g++) and compares them bit for bit with the
// fake device's Go versions, which TestDevicePassDoRA* compute with (and
// which equal lora/dora.go there): so CUDA C == fake device == the CPU's
// DoRA, for the row norm's lane sums and butterfly, m/n, the forward
// combine (with base, base = out − bias, no bias), dm and the column
// scalings.
func TestDoRAKernelsEmulated(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	const rows, C, T, OC = 11, 301, 7, 45
	x := randn(r, rows*C, 1)
	mag, norm := make([]float32, OC), make([]float32, OC)
	for j := range OC {
		mag[j], norm[j] = float32(0.5+r.Float64()), float32(0.5+r.Float64())
	}
	out, base, y := randn(r, T*OC, 1), randn(r, T*OC, 1), randn(r, T*OC, 1)
	bias, g, dmag := randn(r, OC, 1), randn(r, T*OC, 1), randn(r, OC, 1)
	s := float32(1.75)

	var buf bytes.Buffer
	le := binary.LittleEndian
	buf.WriteString("DR1\n")
	for _, v := range []any{int32(rows), int32(C), int32(T), int32(OC), x, mag, norm, out, base, y, bias, g, dmag, s} {
		binary.Write(&buf, le, v)
	}
	raw := runEmulated(t, "dora_check", "1", buf.Bytes())
	rd := bytes.NewReader(raw)
	emu := struct {
		RowNorm              [rows]float32
		MN                   [OC]float32
		FwdBase, FwdBias, F0 [T * OC]float32
		DMag                 [OC]float32
		CS0, CS1             [T * OC]float32
	}{}
	if err := binary.Read(rd, le, &emu); err != nil || rd.Len() != 0 {
		t.Fatalf("dora_check output: %v (%d bytes left)", err, rd.Len())
	}

	// The same launches on the fake device.
	b, f := newFake(t, false)
	up := func(v []float32) uint64 {
		p, _ := b.alloc(uint64(4 * max(len(v), 1)))
		if len(v) > 0 {
			b.d.cuMemcpyHtoD(p, unsafe.Pointer(&v[0]), uint64(4*len(v)))
		}
		return p
	}
	pX, pRN := up(x), up(make([]float32, rows))
	b.launch("dora_row_norm", blocks(rows, attnWarps), attnWarps*32, pRN, pX, rows, C)
	pMag, pNorm, pMN := up(mag), up(norm), up(make([]float32, OC))
	b.launch("dora_mn", 1, 256, pMN, pMag, pNorm, OC)
	pBase, pY, pBias := up(base), up(y), up(bias)
	p1, p2, p3 := up(out), up(out), up(out)
	g1 := blocks(T*OC, 256)
	b.launch("dora_fwd", g1, 256, p1, pBase, pY, pMN, pBias, s, T, OC)
	b.launch("dora_fwd", g1, 256, p2, uint64(0), pY, pMN, pBias, s, T, OC)
	b.launch("dora_fwd", g1, 256, p3, uint64(0), pY, pMN, uint64(0), s, T, OC)
	pG, pDM := up(g), up(dmag)
	b.launch("dora_dmag", 1, 256, pDM, pG, pBase, pY, pNorm, s, T, OC)
	pC0, pC1 := up(make([]float32, T*OC)), up(make([]float32, T*OC))
	b.launch("dora_colscale", g1, 256, pC0, pG, pMN, 0, int64(T*OC), OC)
	b.launch("dora_colscale", g1, 256, pC1, pG, pMN, 1, int64(T*OC), OC)

	same := func(name string, got []float32, want []float32) {
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s[%d]: CUDA C (emulated) %v, Go %v", name, i, got[i], want[i])
			}
		}
	}
	same("dora_row_norm", emu.RowNorm[:], f.f32(pRN, rows))
	same("dora_mn", emu.MN[:], f.f32(pMN, OC))
	same("dora_fwd (base)", emu.FwdBase[:], f.f32(p1, T*OC))
	same("dora_fwd (out - bias)", emu.FwdBias[:], f.f32(p2, T*OC))
	same("dora_fwd (no bias)", emu.F0[:], f.f32(p3, T*OC))
	same("dora_dmag", emu.DMag[:], f.f32(pDM, OC))
	same("dora_colscale 0", emu.CS0[:], f.f32(pC0, T*OC))
	same("dora_colscale 1", emu.CS1[:], f.f32(pC1, T*OC))
	// And the row norm is the norm (float64 reference in row order).
	for rr := range rows {
		var sum float64
		for _, v := range x[rr*C : (rr+1)*C] {
			sum += float64(v) * float64(v)
		}
		if w := float32(math.Sqrt(sum)); math.Abs(float64(emu.RowNorm[rr]-w)) > 1e-6*float64(w) {
			t.Fatalf("row %d norm %v, want %v", rr, emu.RowNorm[rr], w)
		}
	}
	t.Log("5 DoRA kernels: emulated CUDA C equals the fake device's Go bit for bit")
}
