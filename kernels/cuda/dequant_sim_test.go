package cuda

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/tunellm/tune/kernels"
)

// A simulated device for the quantized matmul path: the dry backend's
// stubs, but device memory is host memory, the dequant_* and f32_to_bf16
// launches are done by qblock's dequantizers and the host rounding, and
// cublasGemmEx is a plain column-major GEMM in float64. It checks in CI
// that the tiles, offsets, leading dimensions and transposes the backend
// passes compute forward and din (the dry tests check the arguments; this
// checks what they mean).
type simMem struct {
	bufs map[uint64][]byte
}

func (s *simMem) at(p uint64) []byte {
	for base, b := range s.bufs {
		if p >= base && p < base+uint64(len(b)) {
			return b[p-base:]
		}
	}
	panic(fmt.Sprintf("sim: address %#x not allocated", p))
}

func (s *simMem) f32(p uint64, i int) float32 {
	return math.Float32frombits(binary.LittleEndian.Uint32(s.at(p + uint64(4*i))))
}

func (s *simMem) bf16(p uint64, i int) float32 {
	return math.Float32frombits(uint32(binary.LittleEndian.Uint16(s.at(p+uint64(2*i)))) << 16)
}

func newSim(t *testing.T) *Backend {
	b := newDry(t)
	s := &simMem{bufs: map[uint64][]byte{}}
	b.d.cuMemAlloc = func(p *uint64, n uint64) int32 {
		buf := make([]byte, n)
		*p = uint64(uintptr(unsafe.Pointer(&buf[0])))
		s.bufs[*p] = buf
		return 0
	}
	b.d.cuMemFree = func(p uint64) int32 {
		delete(s.bufs, p)
		return 0
	}
	b.d.cuMemcpyHtoD = func(p uint64, h unsafe.Pointer, n uint64) int32 {
		copy(s.at(p)[:n], unsafe.Slice((*byte)(h), n))
		return 0
	}
	b.d.cuMemcpyDtoH = func(h unsafe.Pointer, p uint64, n uint64) int32 {
		copy(unsafe.Slice((*byte)(h), n), s.at(p)[:n])
		return 0
	}
	dts := map[string]kernels.DType{}
	for _, dt := range quantDTypes() {
		k, e := dequantKernelOf(dt)
		dts[fmt.Sprint(k, e)] = dt
	}
	b.d.cuLaunchKernel = func(fn uintptr, gx, gy, gz, bx, by, bz, smem uint32, stream uintptr, params, extra unsafe.Pointer) int32 {
		name, a := kernelNames[fn-1], b.argv
		switch name {
		case "f32_to_bf16":
			for i := 0; i < int(a[2]); i++ {
				binary.LittleEndian.PutUint16(s.at(a[0]+uint64(2*i)), bf16Bits(s.f32(a[1], i)))
			}
		default:
			e := 0
			if len(b.sig[name]) == 5 {
				e = int(int32(a[4]))
			}
			dt, ok := dts[fmt.Sprint(name, e)]
			if !ok {
				t.Fatalf("sim: kernel %s not simulated", name)
			}
			n := int(a[2])
			be, bb, _ := dt.Block()
			x := make([]float32, n)
			dt.Format().Dequantize(x, s.at(a[1])[:n/be*bb])
			for i, v := range x {
				if a[3] != 0 {
					binary.LittleEndian.PutUint16(s.at(a[0]+uint64(2*i)), bf16Bits(v))
				} else {
					binary.LittleEndian.PutUint32(s.at(a[0]+uint64(4*i)), math.Float32bits(v))
				}
			}
		}
		return 0
	}
	b.bl.gemmEx = func(h uintptr, ta, tb int32, m, n, k int32, alpha unsafe.Pointer, A uint64, at int32, lda int32,
		B uint64, bt int32, ldb int32, beta unsafe.Pointer, C uint64, ct int32, ldc int32, compute int32, algo int32) int32 {
		el := s.f32
		if at == dtR16BF {
			el = s.bf16
		}
		// op(A) is m×k, op(B) k×n, column-major with leading dimensions.
		ga := func(i, l int) float32 {
			if ta == opT {
				return el(A, l+i*int(lda))
			}
			return el(A, i+l*int(lda))
		}
		gb := func(l, j int) float32 {
			if tb == opT {
				return el(B, j+l*int(ldb))
			}
			return el(B, l+j*int(ldb))
		}
		al, be := *(*float32)(alpha), *(*float32)(beta)
		for j := 0; j < int(n); j++ {
			for i := 0; i < int(m); i++ {
				var acc float64
				for l := 0; l < int(k); l++ {
					acc += float64(ga(i, l)) * float64(gb(l, j))
				}
				c := float64(al) * acc
				if be != 0 {
					c += float64(be) * float64(s.f32(C, i+j*int(ldc)))
				}
				binary.LittleEndian.PutUint32(s.at(C+uint64(4*(i+j*int(ldc)))), math.Float32bits(float32(c)))
			}
		}
		return 0
	}
	return b
}

// TestSimQuantMatMul: on the simulated device, forward and din of every
// quantized dtype, in one tile and in 3-row tiles (last one partial), in
// both GEMM modes, equal the CPU backend's within float rounding (fp32) or
// bf16 input rounding.
func TestSimQuantMatMul(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, dt := range quantDTypes() {
		e, _, _ := dt.Block()
		T, OC, C := 3, 7, 2*e
		w := kernels.Weight{DType: dt, Data: randomBlocks(r, dt, OC*C/e, true), Rows: OC, Cols: C}
		in, dout := randn(r, T*C, 1), randn(r, T*OC, 1)
		want, wdin := make([]float32, T*OC), randn(r, T*C, 1)
		din0 := clone(wdin)
		ref.MatMulForward(want, in, w, nil, T)
		ref.MatMulBackward(wdin, nil, nil, dout, in, w, T)
		for _, bf16 := range []bool{false, true} {
			for _, rows := range []int{OC, 3} {
				b := newSim(t)
				b.bf16 = bf16
				esz, tol := 4, 1e-5
				if bf16 {
					esz, tol = 2, 2e-2
				}
				b.dq.mode, b.dq.tileBytes = 1, uint64(rows*C*esz)
				got, gdin := make([]float32, T*OC), clone(din0)
				b.MatMulForward(got, in, w, nil, T)
				b.MatMulBackward(gdin, nil, nil, dout, in, w, T)
				shape := fmt.Sprintf("%v bf16=%v tile %d rows", dt, bf16, rows)
				for _, c := range []struct {
					op        string
					got, want []float32
				}{{"forward", got, want}, {"din", gdin, wdin}} {
					var maxAbs, scale float64
					for i := range c.want {
						maxAbs = max(maxAbs, math.Abs(float64(c.got[i]-c.want[i])))
						scale = max(scale, math.Abs(float64(c.want[i])))
					}
					if !(maxAbs <= tol*scale) || scale == 0 {
						t.Errorf("%s %s: max abs err %.3g of max %.3g", shape, c.op, maxAbs, scale)
					}
				}
			}
		}
	}
}
