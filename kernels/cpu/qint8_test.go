package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/qblock"
	"github.com/tunellm/tune/model/safetensors"
)

var qint8Types = []kernels.DType{kernels.Q8_0, kernels.Q4_0, kernels.Q4_K, kernels.Q5_K, kernels.Q6_K}

// withMode runs f in mode m and restores the previous mode.
func withMode(m QMatMulMode, f func()) {
	old := SetQMatMulMode(m)
	defer SetQMatMulMode(old)
	f()
}

// TestF32ToF16: our rounding equals model/safetensors' on random bit
// patterns, including subnormals, overflow and ties.
func TestF32ToF16(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	vals := []float32{0, 1, -1, 65504, 65520, 65519, 1e-8, 2.98e-8, 5.96e-8, 6.1e-5, float32(math.Inf(1))}
	for i := 0; i < 200000; i++ {
		vals = append(vals, math.Float32frombits(r.Uint32()))
	}
	for _, v := range vals {
		if v != v {
			continue
		}
		if got, want := f32ToF16(v), safetensors.Float32ToF16(v); got != want {
			t.Fatalf("f32ToF16(%g = %08x) = %04x, safetensors %04x", v, math.Float32bits(v), got, want)
		}
	}
}

// TestQ8Act: the activation quantizers round as llama.cpp does: every q is
// within half a step of x/d, the Q8_K bsums are the sums of q, and a block
// of zeros gives zeros.
func TestQ8Act(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const C = 512
	x := randVec(r, C, 3)
	clear(x[32:64])
	var qr q8Rows
	qr.resize(1, C, false)
	q := struct {
		qs     []int8
		d      []float32
		bs, bp []int16
	}{qr.qs(0), qr.d(0), nil, nil}
	quantQ8_0Row(q.qs, q.d, x)
	for b := 0; b < C/32; b++ {
		var amax float32
		for _, v := range x[32*b : 32*b+32] {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		if dd := math.Abs(float64(q.d[b]) - float64(amax)/127); dd > float64(amax)/127*1e-3 {
			t.Fatalf("Q8_0 block %d: d %v, amax/127 %v", b, q.d[b], amax/127)
		}
		for j := 0; j < 32; j++ {
			v := float64(x[32*b+j]) * 127 / float64(amax)
			if amax == 0 {
				v = 0
			}
			if math.Abs(v-float64(q.qs[32*b+j])) > 0.5+1e-4 {
				t.Fatalf("Q8_0 block %d elem %d: q %d for %v", b, j, q.qs[32*b+j], v)
			}
		}
	}
	qr.resize(1, C, true)
	q.qs, q.d, q.bs, q.bp = qr.qs(0), qr.d(0), qr.bs(0), qr.bp(0)
	clear(x[256:512])
	quantQ8_KRow(q.qs, q.d, q.bs, q.bp, x)
	if q.d[1] != 0 {
		t.Fatalf("zero super-block: d %v", q.d[1])
	}
	for j := 0; j < C/16; j++ {
		var s int
		for _, v := range q.qs[16*j : 16*j+16] {
			s += int(v)
		}
		if int(q.bs[j]) != s {
			t.Fatalf("bsums[%d] = %d, sum %d", j, q.bs[j], s)
		}
	}
	for j := 0; j < 256; j++ {
		v := float64(x[j]) / float64(q.d[0])
		if math.Abs(v-float64(q.qs[j])) > 0.5+1e-4 || q.qs[j] < -127 {
			t.Fatalf("Q8_K elem %d: q %d for %v", j, q.qs[j], v)
		}
	}
}

// TestQInt8MatMul: in q8 mode every output equals, up to float32 rounding
// of the scale products (1e-5 relative to sum |w*a|), the float64 dot product
// of the weight dequantized by package quantize with the activations
// dequantized from their 8-bit blocks (d*q): the integer parts are exact.
// The same output comes out bit for bit whatever T (a row alone or in a
// batch), and with the pure-Go kernels forced.
func TestQInt8MatMul(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	b := New(3)
	for _, dt := range qint8Types {
		e, _, _ := dt.Block()
		for _, sh := range []struct{ OC, C int }{{1, 256}, {37, 2 * 256}, {67, 5 * 256}, {33, 4608}} {
			if sh.C%e != 0 {
				continue
			}
			w := quantWeight(t, r, dt, sh.OC, sh.C)
			_, f := dequantF32(t, w)
			for _, T := range []int{1, 2, 3, 5, 17, 67, 70} {
				name := fmt.Sprintf("%v/T%d_OC%d_C%d", dt, T, sh.OC, sh.C)
				in := randVec(r, T*sh.C, 1)
				bias := randVec(r, sh.OC, 1)
				got := make([]float32, T*sh.OC)
				withMode(QInt8, func() { b.MatMulForward(got, in, w, bias, T) })
				// the activations as the kernel saw them
				var a q8Rows
				kq := actKind(dt)
				a.resize(T, sh.C, kq)
				xa := make([]float32, T*sh.C)
				for tt := 0; tt < T; tt++ {
					x := in[tt*sh.C : (tt+1)*sh.C]
					if kq {
						quantQ8_KRow(a.qs(tt), a.d(tt), a.bs(tt), a.bp(tt), x)
					} else {
						quantQ8_0Row(a.qs(tt), a.d(tt), x)
					}
					for c := 0; c < sh.C; c++ {
						bl := 32
						if kq {
							bl = 256
						}
						xa[tt*sh.C+c] = a.d(tt)[c/bl] * float32(a.qs(tt)[c])
					}
				}
				for tt := 0; tt < T; tt++ {
					for o := 0; o < sh.OC; o++ {
						s, ab := float64(bias[o]), math.Abs(float64(bias[o]))
						for c := 0; c < sh.C; c++ {
							p := float64(xa[tt*sh.C+c]) * float64(f[o*sh.C+c])
							s += p
							ab += math.Abs(p)
						}
						if d := math.Abs(float64(got[tt*sh.OC+o]) - s); d > 1e-5*ab+1e-6 {
							t.Fatalf("%s: out[%d,%d] = %v, float64 dot of the dequantized blocks %v (|diff| %g)", name, tt, o, got[tt*sh.OC+o], s, d)
						}
					}
				}
				// each row alone, and the pure-Go kernels, give the same bits
				one := make([]float32, sh.OC)
				for _, tt := range []int{0, T - 1} {
					withMode(QInt8, func() { b.MatMulForward(one, in[tt*sh.C:(tt+1)*sh.C], w, bias, 1) })
					for o := range one {
						if math.Float32bits(one[o]) != math.Float32bits(got[tt*sh.OC+o]) {
							t.Fatalf("%s: row %d alone: out[%d] = %v, in the batch %v", name, tt, o, one[o], got[tt*sh.OC+o])
						}
					}
				}
				goOut := make([]float32, T*sh.OC)
				qint8ASM = false
				withMode(QInt8, func() { b.MatMulForward(goOut, in, w, bias, T) })
				qint8ASM = useAVX2Default
				for i := range goOut {
					if math.Float32bits(goOut[i]) != math.Float32bits(got[i]) {
						t.Fatalf("%s: out[%d] = %v with SIMD, %v in pure Go", name, i, got[i], goOut[i])
					}
				}
			}
		}
	}
}

// TestQInt8Exact: the exact mode still equals the dequantized fp32 matmul
// (the default; the q8 mode is opt-in).
func TestQInt8ModeSwitch(t *testing.T) {
	if GetQMatMulMode() != QExact {
		t.Skip("TUNE_QMATMUL set")
	}
	for _, s := range []string{"exact", "q8", "bogus"} {
		m, err := ParseQMatMulMode(s)
		if (err != nil) != (s == "bogus") || (s == "q8") != (m == QInt8) {
			t.Fatalf("ParseQMatMulMode(%q) = %v, %v", s, m, err)
		}
	}
}

// TestQInt8RandomBlocks: the SIMD dots equal the pure-Go ones bit for bit
// on random bytes (any levels, scales kept finite), for 1..9 blocks.
func TestQInt8RandomBlocks(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, dt := range qint8Types {
		f := dt.Format()
		for nb := 1; nb <= 9; nb++ {
			C := nb * f.BlockElems
			if C%256 != 0 && actKind(dt) {
				continue
			}
			const rows, T = 3, 7
			data := make([]byte, rows*nb*f.BlockBytes)
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			// finite halves: clear the exponent's top bit of every f16 field
			for blk := 0; blk < rows*nb; blk++ {
				o := blk * f.BlockBytes
				switch dt {
				case kernels.Q8_0, kernels.Q4_0:
					data[o+1] &= 0x3f
				case kernels.Q4_K, kernels.Q5_K:
					data[o+1] &= 0x3f
					data[o+3] &= 0x3f
				case kernels.Q6_K:
					data[o+209] &= 0x3f
				}
			}
			w := kernels.Weight{DType: dt, Data: data, Rows: rows, Cols: C}
			in := randVec(r, T*C, 2)
			var a q8Rows
			a.resize(T, C, actKind(dt))
			m := qmmTask{in: in, act: &a, C: C, T: T, kq: actKind(dt)}
			for tt := 0; tt < T; tt++ {
				m.quantRow(tt)
			}
			var kr kRow
			got, want := make([]float32, T), make([]float32, T)
			vnni := qint8VNNI
			for _, v := range []bool{false, vnni} {
				qint8VNNI = v
				for row := 0; row < rows; row++ {
					rb := w.RowBytes()
					wr := data[row*rb : (row+1)*rb]
					qdotRows(dt, wr, &kr, &a, C, 0, got)
					qdotRowsGo(dt, wr, &kr, &a, C, 0, want)
					for i := range got {
						if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
							qint8VNNI = vnni
							t.Fatalf("%v nb %d row %d act %d (vnni %v): %v, pure Go %v", dt, nb, row, i, v, got[i], want[i])
						}
					}
				}
			}
			qint8VNNI = vnni
			// the whole matmul (the 8-row × 4-activation kernels and their
			// edges) on 17 such rows, 9 activation rows
			wm := kernels.Weight{DType: dt, Data: make([]byte, 17*w.RowBytes()), Rows: 17, Cols: C}
			for i := range wm.Data {
				wm.Data[i] = data[i%len(data)]
			}
			b := New(2)
			for _, T := range []int{1, 9} {
				in9 := randVec(r, T*C, 2)
				got9, want9 := make([]float32, T*17), make([]float32, T*17)
				qint8ASM = false
				withMode(QInt8, func() { b.MatMulForward(want9, in9, wm, nil, T) })
				qint8ASM = useAVX2Default
				for _, v := range []bool{false, vnni} {
					qint8VNNI = v
					withMode(QInt8, func() { b.MatMulForward(got9, in9, wm, nil, T) })
					qint8VNNI = vnni
					for i := range got9 {
						if math.Float32bits(got9[i]) != math.Float32bits(want9[i]) {
							t.Fatalf("%v nb %d T %d (vnni %v): matmul out[%d] = %v, pure Go %v", dt, nb, T, v, i, got9[i], want9[i])
						}
					}
				}
			}
		}
	}
	_ = qblock.QK_K
}

// BenchmarkQInt8MatMul: BenchmarkQuantMatMul's shapes in q8 mode.
func BenchmarkQInt8MatMul(b *testing.B) {
	r := rand.New(rand.NewPCG(27, 28))
	be := New(0)
	const OC, C = 3072, 1024
	for _, dt := range qint8Types {
		w := quantWeight(b, r, dt, OC, C)
		for _, T := range []int{1, 64, 512} {
			in := randVec(r, T*C, 1)
			out := make([]float32, T*OC)
			b.Run(fmt.Sprintf("%v/T%d", dt, T), func(b *testing.B) {
				old := SetQMatMulMode(QInt8)
				defer SetQMatMulMode(old)
				b.SetBytes(int64(len(w.Data)))
				for i := 0; i < b.N; i++ {
					be.MatMulForward(out, in, w, nil, T)
				}
				b.ReportMetric(float64(b.N)*2*float64(T*OC*C)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

// TestQ8ActAsm: the assembly quantizers write the same bytes as the Go ones
// (levels, scales, sums), on random rows with an all-zero block, ties at
// k+0.5 (amax = 127 makes the scale 1), a maximum repeated with both signs,
// and NaN and ±Inf elements (NaN is ignored by the maximum).
func TestQ8ActAsm(t *testing.T) {
	if !qint8ASM {
		t.Skip("no assembly")
	}
	r := rand.New(rand.NewPCG(7, 8))
	const C, T = 1024, 6
	in := randVec(r, T*C, 3)
	clear(in[0:256])             // a zero super-block
	for j := 256; j < 512; j++ { // ties: scale 1
		in[j] = float32(int(r.Uint32()%254)-127) + 0.5
	}
	in[256], in[300] = -127, 127 // first maximum negative
	in[C+5] = float32(math.NaN())
	in[2*C+7] = float32(math.Inf(1))
	in[3*C+700] = float32(math.Inf(-1))
	for _, kq := range []bool{false, true} {
		var a, b q8Rows
		a.resize(T, C, kq)
		b.resize(T, C, kq)
		m := qmmTask{in: in, act: &a, C: C, T: T, kq: kq}
		for tt := 0; tt < T; tt++ {
			m.quantRow(tt)
		}
		qint8ASM = false
		m.act = &b
		for tt := 0; tt < T; tt++ {
			m.quantRow(tt)
		}
		qint8ASM = useAVX2Default
		for i := range a.buf {
			if a.buf[i] != b.buf[i] {
				tt, o := i/a.stride, i%a.stride
				t.Fatalf("Q8_K %v: row %d byte %d (qs end %d, d %d, sums %d): asm %#x, Go %#x", kq, tt, o, C, a.dOff, a.bsOff, a.buf[i], b.buf[i])
			}
		}
	}
}
