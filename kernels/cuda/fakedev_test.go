package cuda

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"testing"
	"unsafe"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model/safetensors"
)

// A fake device executes on the CPU: cuMemAlloc hands out host memory at
// fake addresses, the memcpys copy, cublasGemmEx computes on the host
// (float64 accumulation, bf16 operands decoded), and cuLaunchKernel runs a
// Go version of each kernel by name, most of them kernels/cpu's op on the
// right slices. Launch arguments still pass the PTX signature check
// (Backend.launch), and addresses are checked against the allocations, so
// a wrong offset, size or order in the device pass shows as a wrong number
// or an out-of-bounds failure here, in CI; only the CUDA C kernels
// themselves (TestOps* on a GPU) are left for the device.

type fakeAlloc struct {
	base uint64
	data []byte
}

type fakeDev struct {
	t        testing.TB
	b        *Backend
	cpu      *cpu.Backend
	mem      []fakeAlloc // sorted by base
	next     uint64
	htod     uint64 // bytes copied to the device
	dtoh     uint64 // and back
	launches map[string]int
	gemms    int
}

// newFake returns a backend on a fake device.
func newFake(t testing.TB, bf16 bool) (*Backend, *fakeDev) {
	f := &fakeDev{t: t, cpu: cpu.New(1), next: 1 << 40, launches: map[string]int{}}
	d := &driver{lib: &library{path: "fake"},
		cuCtxSetCurrent:  func(uintptr) int32 { return 0 },
		cuCtxSynchronize: func() int32 { return 0 },
		cuMemAlloc:       f.alloc,
		cuMemFree:        f.free,
		cuMemGetInfo:     func(fr, tot *uint64) int32 { *fr, *tot = 1<<40, 1<<40; return 0 },
		cuMemcpyHtoD: func(dst uint64, src unsafe.Pointer, n uint64) int32 {
			f.htod += n
			if n > 0 {
				copy(f.bytes(dst, n), unsafe.Slice((*byte)(src), n))
			}
			return 0
		},
		cuMemcpyDtoH: func(dst unsafe.Pointer, src uint64, n uint64) int32 {
			f.dtoh += n
			if n > 0 {
				copy(unsafe.Slice((*byte)(dst), n), f.bytes(src, n))
			}
			return 0
		},
		cuMemcpyDtoD: func(dst, src uint64, n uint64) int32 {
			copy(f.bytes(dst, n), f.bytes(src, n))
			return 0
		},
		cuMemsetD8: func(dst uint64, v uint8, n uint64) int32 {
			for i := range f.bytes(dst, n) {
				f.bytes(dst, n)[i] = v
			}
			return 0
		},
		cuLaunchKernel: func(fn uintptr, gx, gy, gz, bx, by, bz, smem uint32, stream uintptr, params, extra unsafe.Pointer) int32 {
			if gx == 0 || bx == 0 || bx > 1024 || bx%32 != 0 {
				t.Errorf("launch %s with grid %d block %d", kernelNames[fn-1], gx, bx)
			}
			f.launch(kernelNames[fn-1], int(gx))
			return 0
		},
	}
	bl := &cublas{setMathMode: func(uintptr, int32) int32 { return 0 }, gemmEx: f.gemmEx}
	b := &Backend{d: d, bl: bl, dev: Device{Name: "fake"}, fn: map[string]uintptr{}, sig: ptxParams(ptx), weights: map[wkey]*dweight{},
		bf16: bf16, devPass: true}
	for i, n := range kernelNames {
		b.fn[n] = uintptr(i + 1)
	}
	b.initArgs()
	f.b = b
	return b, f
}

func (f *fakeDev) alloc(p *uint64, n uint64) int32 {
	words := make([]uint64, (n+7)/8)
	data := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), n)
	*p = f.next
	f.mem = append(f.mem, fakeAlloc{base: f.next, data: data})
	f.next += (n+255)&^255 + 256 // a gap: an overrun lands outside every allocation
	return 0
}

func (f *fakeDev) free(p uint64) int32 {
	for i, a := range f.mem {
		if a.base == p {
			f.mem = append(f.mem[:i], f.mem[i+1:]...)
			return 0
		}
	}
	f.t.Errorf("fake device: cuMemFree(%#x): not an allocation", p)
	return 1
}

// bytes is the host view of device bytes [p, p+n); it panics (failing the
// test) when the range is not inside one allocation.
func (f *fakeDev) bytes(p, n uint64) []byte {
	i := sort.Search(len(f.mem), func(i int) bool { return f.mem[i].base > p }) - 1
	if i < 0 || p+n > f.mem[i].base+uint64(len(f.mem[i].data)) {
		panic(fmt.Sprintf("fake device: [%#x, +%d) is outside every allocation", p, n))
	}
	off := p - f.mem[i].base
	return f.mem[i].data[off : off+n : off+n]
}

func (f *fakeDev) f32(p uint64, n int) []float32 {
	if n <= 0 {
		return nil
	}
	b := f.bytes(p, uint64(n)*4)
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n)
}

func (f *fakeDev) f64(p uint64, n int) []float64 {
	if n <= 0 {
		return nil
	}
	b := f.bytes(p, uint64(n)*8)
	return unsafe.Slice((*float64)(unsafe.Pointer(&b[0])), n)
}

func (f *fakeDev) u16(p uint64, n int) []uint16 {
	if n <= 0 {
		return nil
	}
	b := f.bytes(p, uint64(n)*2)
	return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), n)
}

// ints reads n int32 device values as ints.
func (f *fakeDev) ints(p uint64, n int) []int {
	if n <= 0 {
		return nil
	}
	b := f.bytes(p, uint64(n)*4)
	v := unsafe.Slice((*int32)(unsafe.Pointer(&b[0])), n)
	out := make([]int, n)
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

func f32ToBF16(x float32) uint16 {
	u := math.Float32bits(x)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// launch runs kernel name with the arguments Backend.launch marshalled.
func (f *fakeDev) launch(name string, grid int) {
	f.launches[name]++
	a := f.b.argv[:len(f.b.sig[name])]
	p := func(i int) uint64 { return a[i] }
	n := func(i int) int { return int(int32(uint32(a[i]))) }
	n64 := func(i int) int { return int(int64(a[i])) }
	fl := func(i int) float32 { return math.Float32frombits(uint32(a[i])) }
	c := f.cpu
	switch name {
	case "embedding_fwd":
		T, C := n(3), n(4)
		out, tok := f.f32(p(0), T*C), f.ints(p(1), T)
		for t, id := range tok {
			copy(out[t*C:(t+1)*C], f.f32(p(2)+uint64(id*C)*4, C))
		}
	case "embedding_fwd_bf16":
		T, C := n(3), n(4)
		out, tok := f.f32(p(0), T*C), f.ints(p(1), T)
		for t, id := range tok {
			row := f.u16(p(2)+uint64(id*C)*2, C)
			for c, h := range row {
				out[t*C+c] = math.Float32frombits(uint32(h) << 16)
			}
		}
	case "rmsnorm_fwd":
		N, C := n(4), n(5)
		c.RMSNormForward(f.f32(p(0), N*C), f.f32(p(1), N*C), f.f32(p(2), C), float64(fl(3)), N, C)
	case "rmsnorm_bwd_din":
		N, C := n(6), n(7)
		in := f.f32(p(3), N*C)
		rstd := f.f32(p(1), N)
		for r := range N {
			var s float64
			for _, x := range in[r*C : (r+1)*C] {
				s += float64(x) * float64(x)
			}
			rstd[r] = float32(1 / math.Sqrt(s/float64(C)+float64(fl(5))))
		}
		c.RMSNormBackward(f.f32(p(0), N*C), nil, f.f32(p(2), N*C), in, f.f32(p(4), C), float64(fl(5)), N, C)
	case "rope":
		T, NH, HD := n(3), n(4), n(5)
		x, cs, sn := f.f32(p(0), T*NH*HD), f.f32(p(1), T*HD/2), f.f32(p(2), T*HD/2)
		if n(6) > 0 {
			c.RoPEForward(x, cs, sn, T, NH, HD)
		} else {
			c.RoPEBackward(x, cs, sn, T, NH, HD)
		}
	case "attention_fwd":
		pos0, T, NH, KVH, HD, win := n(5), n(6), n(7), n(8), n(9), n(10)
		S := pos0 + T
		out, q, k, v := f.f32(p(0), T*NH*HD), f.f32(p(1), T*NH*HD), f.f32(p(2), S*KVH*HD), f.f32(p(3), S*KVH*HD)
		if p(4) != 0 {
			c.PackedAttentionForward(out, q, k, v, f.ints(p(4), T), T, NH, KVH, HD, win)
		} else {
			c.AttentionForward(out, q, k, v, pos0, T, NH, KVH, HD, win)
		}
	case "attention_bwd_q", "attention_bwd_kv":
		o := 3 // the index of dout: attention_bwd_kv has one output more before it
		if name == "attention_bwd_kv" {
			o = 4
		}
		T, NH, KVH, HD, win := n(o+5), n(o+6), n(o+7), n(o+8), n(o+9)
		qd, kd := T*NH*HD, T*KVH*HD
		dout, q, k, v := f.f32(p(o), qd), f.f32(p(o+1), qd), f.f32(p(o+2), kd), f.f32(p(o+3), kd)
		seg := f.ints(p(o+4), T)
		dq, dk, dv := make([]float32, qd), make([]float32, kd), make([]float32, kd)
		c.PackedAttentionBackward(dq, dk, dv, dout, q, k, v, seg, T, NH, KVH, HD, win)
		if name == "attention_bwd_q" {
			copy(f.f32(p(0), qd), dq)
		} else {
			copy(f.f32(p(0), kd), dk)
			copy(f.f32(p(1), kd), dv)
		}
	case "swiglu_fwd":
		N := n64(3)
		c.SwiGLUForward(f.f32(p(0), N), f.f32(p(1), N), f.f32(p(2), N))
	case "swiglu_bwd":
		N := n64(5)
		c.SwiGLUBackward(f.f32(p(0), N), f.f32(p(1), N), f.f32(p(2), N), f.f32(p(3), N), f.f32(p(4), N))
	case "add_fwd":
		N := n64(3)
		c.AddForward(f.f32(p(0), N), f.f32(p(1), N), f.f32(p(2), N))
	case "bias_add":
		T, OC := n(2), n(3)
		out, bias := f.f32(p(0), T*OC), f.f32(p(1), OC)
		for i := range out {
			out[i] += bias[i%OC]
		}
	case "nll_fwd":
		N, V := n(3), n(4)
		c.LogSoftmaxNLLForward(f.f64(p(0), N), f.f32(p(1), N*V), f.ints(p(2), N), N, V)
	case "nll_bwd":
		N, V := n(4), n(5)
		c.LogSoftmaxNLLBackward(f.f32(p(0), N*V), f.f32(p(1), N*V), f.ints(p(2), N), fl(3), N, V)
	case "f32_to_bf16":
		N := n64(2)
		out, in := f.u16(p(0), N), f.f32(p(1), N)
		for i, x := range in {
			out[i] = f32ToBF16(x)
		}
	case "bf16_to_f32":
		N := n64(2)
		out, in := f.f32(p(0), N), f.u16(p(1), N)
		for i, h := range in {
			out[i] = bf16ToF32(h)
		}
	case "f16_to_f32":
		N := n64(2)
		if err := safetensors.ToFloat32(f.f32(p(0), N), f.bytes(p(1), uint64(N)*2), safetensors.F16); err != nil {
			panic(err)
		}
	case "adamw":
		N := n64(12)
		ps, g, m, v := f.f32(p(0), N), f.f32(p(1), N), f.f32(p(2), N), f.f32(p(3), N)
		decay, b1, b2, a1, a2, bc2sqrt, step, eps := fl(4), fl(5), fl(6), fl(7), fl(8), fl(9), fl(10), fl(11)
		for i := range ps {
			// train.AdamW.Update's arithmetic, as the kernel's.
			pi := ps[i] * decay
			m[i] = float32(float64(g[i])*float64(a1) + float64(float32(m[i]*b1)))
			v[i] = float32(float64(float32(a2*g[i]))*float64(g[i]) + float64(float32(v[i]*b2)))
			denom := float32(float32(math.Sqrt(float64(v[i])))/bc2sqrt) + eps
			ps[i] = pi + float32(float32(step*m[i])/denom)
		}
	case "gather_rows", "scatter_rows":
		rows, W := n(3), n(4)
		idx := f.ints(p(2), rows)
		for j, r := range idx {
			if name == "gather_rows" {
				copy(f.f32(p(0)+uint64(j*W)*4, W), f.f32(p(1)+uint64(r*W)*4, W))
			} else {
				copy(f.f32(p(0)+uint64(r*W)*4, W), f.f32(p(1)+uint64(j*W)*4, W))
			}
		}
	case "scale_f32":
		N := n64(3)
		out, in, s := f.f32(p(0), N), f.f32(p(1), N), fl(2)
		for i, x := range in {
			out[i] = s * x
		}
	case "sum_f64":
		N := n(2)
		var s float64
		for _, x := range f.f64(p(1), N) {
			s += x
		}
		f.f64(p(0), 1)[0] = s
	case "sumsq_f64":
		N := n64(2)
		part := f.f64(p(0), grid)
		var s float64
		for _, x := range f.f32(p(1), N) {
			s += float64(x) * float64(x)
		}
		clear(part)
		part[0] = s
	case "lora_dropout", "lora_dropout_add":
		N := n64(5)
		out, in := f.f32(p(0), N), f.f32(p(1), N)
		key, th, sc := a[2], a[3], fl(4)
		for i, x := range in {
			var y float32
			if splitmix64(key+uint64(i)*0x9e3779b97f4a7c15) >= th {
				y = x * sc
			}
			if name == "lora_dropout" {
				out[i] = y
			} else {
				out[i] += y
			}
		}
	case "kld_rows":
		N, V := n(4), n(5)
		st, tg := f.f64(p(0), 4*N), f.ints(p(3), N)
		lb, lq := f.f32(p(1), N*V), f.f32(p(2), N*V)
		for r := range N {
			b, q := lb[r*V:(r+1)*V], lq[r*V:(r+1)*V]
			lseb, ib := fakeLSE(b)
			lseq, iq := fakeLSE(q)
			var kl float64
			for c := range V {
				pb := float64(b[c]) - lseb
				if pb > math.Inf(-1) {
					kl += math.Exp(pb) * (pb - (float64(q[c]) - lseq))
				}
			}
			st[4*r], st[4*r+1], st[4*r+2], st[4*r+3] = -(float64(q[tg[r]]) - lseq), -(float64(b[tg[r]]) - lseb), kl, 0
			if ib == iq {
				st[4*r+3] = 1
			}
		}
	case "dora_row_norm":
		rows, C := n(2), n(3)
		out, in := f.f32(p(0), rows), f.f32(p(1), rows*C)
		for r := range rows {
			out[r] = doraRowNorm(in[r*C : (r+1)*C])
		}
	case "dora_mn":
		N := n(3)
		mn, mag, norm := f.f32(p(0), N), f.f32(p(1), N), f.f32(p(2), N)
		for j := range mn {
			mn[j] = mag[j] / norm[j]
		}
	case "dora_fwd":
		T, OC := n(6), n(7)
		out, y, mn := f.f32(p(0), T*OC), f.f32(p(2), T*OC), f.f32(p(3), OC)
		var base, bias []float32
		if p(1) != 0 {
			base = f.f32(p(1), T*OC)
		}
		if p(4) != 0 {
			bias = f.f32(p(4), OC)
		}
		s := fl(5)
		for i := range out {
			j := i % OC
			var bv float32
			switch {
			case base != nil:
				bv = base[i]
			case bias != nil:
				bv = out[i] - bias[j]
			default:
				bv = out[i]
			}
			m := mn[j]
			out[i] += (m-1)*bv + m*y[i]*s
		}
	case "dora_dmag":
		T, OC := n(6), n(7)
		dmag, g, base, y, norm, s := f.f32(p(0), OC), f.f32(p(1), T*OC), f.f32(p(2), T*OC), f.f32(p(3), T*OC), f.f32(p(4), OC), fl(5)
		for j := range OC {
			var acc float32
			for t := range T {
				i := t*OC + j
				acc += g[i] * (base[i] + y[i]*s)
			}
			dmag[j] += acc / norm[j]
		}
	case "dora_colscale":
		N, OC := n64(4), n(5)
		dst, g, mn, minus1 := f.f32(p(0), N), f.f32(p(1), N), f.f32(p(2), OC), n(3)
		for i := range dst {
			m := mn[i%OC]
			if minus1 != 0 {
				m = m - 1
			}
			dst[i] = m * g[i]
		}
	default:
		if fakeAttnTC(f, name, a) {
			return
		}
		if strings.HasPrefix(name, "dequant_") {
			f.dequant(name, a)
			return
		}
		panic("fake device: kernel " + name + " is not emulated")
	}
}

// dequant runs a dequant_* kernel (dst, src, n, bf16 flag[, block
// elements]) with kernels/qblock's dequantizer of its dtype: the kernels
// equal qblock bit for bit (TestDequantEmulated), so the fake device
// computes what the CUDA C does.
func (f *fakeDev) dequant(name string, a []uint64) {
	e := 0
	if len(a) == 5 {
		e = int(int32(uint32(a[4])))
	}
	var dt kernels.DType
	found := false
	for _, d := range quantDTypes() {
		if k, ke := dequantKernelOf(d); k == name && ke == e {
			dt, found = d, true
			break
		}
	}
	if !found {
		panic(fmt.Sprintf("fake device: %s with block %d: no dtype", name, e))
	}
	n := int(int64(a[2]))
	be, bb, _ := dt.Block()
	if n%be != 0 {
		panic(fmt.Sprintf("fake device: %s: %d elements, not whole %d-element blocks", name, n, be))
	}
	x := make([]float32, n)
	dt.Format().Dequantize(x, f.bytes(a[1], uint64(n/be*bb)))
	if int32(uint32(a[3])) != 0 {
		out := f.u16(a[0], n)
		for i, v := range x {
			out[i] = f32ToBF16(v)
		}
		return
	}
	copy(f.f32(a[0], n), x)
}

// gemmEx computes C = alpha·op(A)·op(B) + beta·C in cuBLAS's column-major
// terms, after the dry backend's argument checks.
func (f *fakeDev) gemmEx(h uintptr, ta, tb int32, m, n, k int32, alpha unsafe.Pointer, A uint64, at int32, lda int32,
	B uint64, bt int32, ldb int32, beta unsafe.Pointer, C uint64, ct int32, ldc int32, compute int32, algo int32) int32 {
	f.gemms++
	rowsA, colsA, rowsB, colsB := m, k, k, n
	if ta == opT {
		rowsA, colsA = k, m
	}
	if tb == opT {
		rowsB, colsB = n, k
	}
	if m < 0 || n < 0 || k < 0 || lda < max(1, rowsA) || ldb < max(1, rowsB) || ldc < max(1, m) || at != bt || ct != dtR32F {
		f.t.Errorf("gemmEx m=%d n=%d k=%d ta=%d tb=%d lda=%d ldb=%d ldc=%d types %d %d %d: invalid", m, n, k, ta, tb, lda, ldb, ldc, at, bt, ct)
		return 7
	}
	load := func(p uint64, ld, rows, cols int32, dt int32) []float32 {
		if rows == 0 || cols == 0 {
			return nil
		}
		cnt := int(ld)*int(cols-1) + int(rows)
		if dt == dtR16BF {
			h := f.u16(p, cnt)
			x := make([]float32, cnt)
			for i, v := range h {
				x[i] = bf16ToF32(v)
			}
			return x
		}
		return f.f32(p, cnt)
	}
	a, b := load(A, lda, rowsA, colsA, at), load(B, ldb, rowsB, colsB, bt)
	cm := f.f32(C, int(ldc)*int(n-1)+int(m))
	al, be := *(*float32)(alpha), *(*float32)(beta)
	for j := range int(n) {
		for i := range int(m) {
			var s float64
			for l := range int(k) {
				var x, y float32
				if ta == opN {
					x = a[i+l*int(lda)]
				} else {
					x = a[l+i*int(lda)]
				}
				if tb == opN {
					y = b[l+j*int(ldb)]
				} else {
					y = b[j+l*int(ldb)]
				}
				s += float64(x) * float64(y)
			}
			v := float32(float64(al) * s)
			if be != 0 {
				v += be * cm[i+j*int(ldc)]
			}
			cm[i+j*int(ldc)] = v
		}
	}
	return 0
}

// doraRowNorm is dora_row_norm's arithmetic for one row: lane l of a warp
// sums the squares of x[l], x[l+32], ... in float64, then the lanes are
// combined by the xor butterfly (offsets 16, 8, 4, 2, 1), lane 0's sum.
func doraRowNorm(x []float32) float32 {
	var lane [32]float64
	for c, v := range x {
		d := float64(v)
		lane[c%32] += d * d
	}
	for o := 16; o > 0; o >>= 1 {
		var next [32]float64
		for l := range lane {
			next[l] = lane[l] + lane[l^o]
		}
		lane = next
	}
	return float32(math.Sqrt(lane[0]))
}

// fakeLSE is kld_rows's log-sum-exp of a row (max first, float64 sum, in
// column order) and its argmax, lowest column on ties.
func fakeLSE(x []float32) (float64, int) {
	im := 0
	for c, v := range x {
		if v > x[im] {
			im = c
		}
	}
	mx := float64(x[im])
	var s float64
	for _, v := range x {
		s += math.Exp(float64(v) - mx)
	}
	return mx + math.Log(s), im
}
