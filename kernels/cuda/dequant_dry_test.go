package cuda

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"

	"github.com/tunellm/tune/kernels"
)

// dqLaunch and dqGemm record what a dry backend was asked to do.
type dqLaunch struct {
	name string
	args []uint64
}

type dqGemm struct {
	m, n, k, lda, ldb, ldc int32
	A, B, C                uint64
	beta                   float32
}

// recordDry wraps a dry backend's launch and GEMM stubs to record every
// dequant launch and every GEMM.
func recordDry(b *Backend) (*[]dqLaunch, *[]dqGemm) {
	var ls []dqLaunch
	var gs []dqGemm
	launch, gemm := b.d.cuLaunchKernel, b.bl.gemmEx
	b.d.cuLaunchKernel = func(fn uintptr, gx, gy, gz, bx, by, bz, smem uint32, stream uintptr, params, extra unsafe.Pointer) int32 {
		if name := kernelNames[fn-1]; strings.HasPrefix(name, "dequant_") {
			ls = append(ls, dqLaunch{name, append([]uint64(nil), b.argv[:len(b.sig[name])]...)})
		}
		return launch(fn, gx, gy, gz, bx, by, bz, smem, stream, params, extra)
	}
	b.bl.gemmEx = func(h uintptr, ta, tb int32, m, n, k int32, alpha unsafe.Pointer, A uint64, at int32, lda int32,
		B uint64, bt int32, ldb int32, beta unsafe.Pointer, C uint64, ct int32, ldc int32, compute int32, algo int32) int32 {
		gs = append(gs, dqGemm{m, n, k, lda, ldb, ldc, A, B, C, *(*float32)(beta)})
		return gemm(h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, compute, algo)
	}
	return &ls, &gs
}

// quantDTypes lists every block-quantized dtype.
func quantDTypes() []kernels.DType {
	var out []kernels.DType
	for dt := kernels.DType(0); dt < 64; dt++ {
		if _, _, ok := dt.Block(); ok && dt.Quantized() {
			out = append(out, dt)
		}
	}
	return out
}

// TestDryDequantMatMul: for every quantized dtype and both GEMM modes, a
// weight of 7 rows with a tile bound of 3 rows: Prepare uploads the raw
// blocks only (the accounting grows by exactly their size), forward and din
// dequantize tiles of rows [0,3) [3,6) [6,7) with the kernel, source offset,
// element count and bf16 flag the tile needs (launch arguments checked
// against the PTX by launch itself), and each tile's GEMM has the tile's
// bounds: forward writes columns r0..r1 of the output (C + r0 floats, ldc =
// OC), din accumulates (beta 1) W[:, r0:r1]·dout[r0:r1] (B + r0 elements,
// ldb = OC).
func TestDryDequantMatMul(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	dts := quantDTypes()
	if len(dts) != 15 {
		t.Fatalf("%d quantized dtypes, want 15: %v", len(dts), dts)
	}
	for _, dt := range dts {
		for _, bf16 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/bf16=%v", dt, bf16), func(t *testing.T) {
				b := newDry(t)
				b.bf16 = bf16
				e, _, _ := dt.Block()
				T, OC, C := 5, 7, 2*e
				esz := 4
				if bf16 {
					esz = 2
				}
				w := kernels.Weight{DType: dt, Data: randomBlocks(r, dt, OC*C/e, true), Rows: OC, Cols: C}
				b.dq.mode, b.dq.tileBytes = 1, uint64(3*C*esz)
				ls, gs := recordDry(b)
				live, htod := b.live, dryHtoD
				if err := b.Prepare(w); err != nil {
					t.Fatal(err)
				}
				if got := b.live - live; got != uint64(len(w.Data)) {
					t.Fatalf("Prepare allocated %d device bytes, want the %d of the blocks", got, len(w.Data))
				}
				if got := dryHtoD - htod; got != uint64(len(w.Data)) {
					t.Fatalf("Prepare copied %d bytes, want %d", got, len(w.Data))
				}
				var raw uint64
				for _, q := range b.dq.raw {
					raw = q.ptr
				}
				kname, karg := dequantKernelOf(dt)
				tiles := [][2]int{{0, 3}, {3, 6}, {6, 7}}
				checkTiles := func(op string) {
					t.Helper()
					if len(*ls) != len(tiles) {
						t.Fatalf("%s: %d launches, want %d dequant tiles", op, len(*ls), len(tiles))
					}
					for i, tl := range tiles {
						l := (*ls)[i]
						want := []uint64{b.dq.tile.ptr, raw + uint64(tl[0]*w.RowBytes()), uint64((tl[1] - tl[0]) * C), 0}
						if bf16 {
							want[3] = 1
						}
						if karg != 0 {
							want = append(want, uint64(karg))
						}
						if l.name != kname || fmt.Sprint(l.args) != fmt.Sprint(want) {
							t.Errorf("%s tile %d: launch %s %v, want %s %v", op, i, l.name, l.args, kname, want)
						}
					}
					if len(*gs) != len(tiles) {
						t.Fatalf("%s: %d GEMMs, want %d", op, len(*gs), len(tiles))
					}
				}
				out := make([]float32, T*OC)
				b.MatMulForward(out, randn(r, T*C, 1), w, nil, T)
				checkTiles("forward")
				for i, tl := range tiles {
					g, g0 := (*gs)[i], (*gs)[0]
					if g.m != int32(tl[1]-tl[0]) || g.n != int32(T) || g.k != int32(C) || g.lda != int32(C) || g.ldc != int32(OC) ||
						g.A != b.dq.tile.ptr || g.C-g0.C != uint64(tl[0]*4) || g.B != g0.B || g.beta != 0 {
						t.Errorf("forward tile %d: GEMM %+v", i, g)
					}
				}
				*ls, *gs = nil, nil
				b.MatMulBackward(make([]float32, T*C), nil, nil, out, nil, w, T)
				checkTiles("din")
				for i, tl := range tiles {
					g, g0 := (*gs)[i], (*gs)[0]
					if g.m != int32(C) || g.n != int32(T) || g.k != int32(tl[1]-tl[0]) || g.lda != int32(C) || g.ldb != int32(OC) ||
						g.ldc != int32(C) || g.A != b.dq.tile.ptr || g.B-g0.B != uint64(tl[0]*esz) || g.C != g0.C || g.beta != 1 {
						t.Errorf("din tile %d: GEMM %+v", i, g)
					}
				}
				if b.dq.tile.size != uint64(3*C*esz) {
					t.Errorf("tile buffer %d bytes, want %d", b.dq.tile.size, 3*C*esz)
				}
				if len(b.weights) != 0 {
					t.Errorf("a dense copy was cached: %d weights", len(b.weights))
				}
				// The embedding (a dense-weight op) dequantizes the whole table
				// once on the device.
				*ls = nil
				b.EmbeddingForward(make([]float32, 2*C), []int{0, 6}, w)
				if len(*ls) != 1 || (*ls)[0].name != kname || (*ls)[0].args[2] != uint64(OC*C) {
					t.Errorf("embedding on %v: launches %v", dt, *ls)
				}
				b.ForgetWeights()
				var slots uint64
				for _, s := range b.slots {
					slots += s.size
				}
				if b.live != slots {
					t.Errorf("after ForgetWeights %d device bytes live, want the %d of the scratch slots", b.live, slots)
				}
			})
		}
	}
}

// TestDryDequantHostMode: TUNE_CUDA_DEQUANT=host keeps the first version's
// path: a dense fp32 copy dequantized on the host, no dequant launch.
func TestDryDequantHostMode(t *testing.T) {
	t.Setenv("TUNE_CUDA_DEQUANT", "host")
	b := newDry(t)
	r := rand.New(rand.NewPCG(7, 8))
	w := kernels.Weight{DType: kernels.NF4, Data: randomBlocks(r, kernels.NF4, 4, true), Rows: 2, Cols: 128}
	ls, gs := recordDry(b)
	if err := b.Prepare(w); err != nil {
		t.Fatal(err)
	}
	if b.live != 2*128*4 {
		t.Fatalf("host mode: %d device bytes, want the fp32 copy's %d", b.live, 2*128*4)
	}
	b.MatMulForward(make([]float32, 2), make([]float32, 128), w, nil, 1)
	if len(*ls) != 0 || len(*gs) != 1 || (*gs)[0].m != 2 {
		t.Fatalf("host mode: launches %v GEMMs %+v", *ls, *gs)
	}
}

// TestDryQLoRA8BBase: the device accounting of a Qwen3-8B-shaped NF4 base
// (36 layers of q,k,v,o [4096|1024, 4096], gate,up [12288, 4096], down
// [4096, 12288]) is its quantized size, 3.91 GB, not the 27.8 GB of an fp32
// copy; with the bf16 embedding and lm_head (2 x 151936 x 4096 x 2 bytes,
// counted, not made) the base is 6.40 GB, and a forward through the widest
// weight (down_proj) adds one tile of at most 256 MiB. The dry driver hands
// out addresses without memory: the 252 weights are distinct views of one
// 28 MB buffer (distinct addresses, so each is its own device copy).
func TestDryQLoRA8BBase(t *testing.T) {
	const L, C, I, Q, KV, V = 36, 4096, 12288, 4096, 1024, 151936
	shapes := [][2]int{{Q, C}, {KV, C}, {KV, C}, {C, Q}, {I, C}, {I, C}, {C, I}}
	maxBytes := 0
	for _, s := range shapes {
		maxBytes = max(maxBytes, s[0]*kernels.NF4.RowBytes(s[1]))
	}
	buf := make([]byte, maxBytes+L*len(shapes)*64)
	for _, bf16 := range []bool{false, true} {
		b := newDry(t)
		b.bf16 = bf16
		var want uint64
		var down kernels.Weight
		for l := 0; l < L; l++ {
			for i, s := range shapes {
				off := (l*len(shapes) + i) * 64
				w := kernels.Weight{DType: kernels.NF4, Rows: s[0], Cols: s[1]}
				w.Data = buf[off : off+s[0]*w.RowBytes()]
				if err := b.Prepare(w); err != nil {
					t.Fatal(err)
				}
				want += uint64(len(w.Data))
				down = w
			}
		}
		if b.live != want || len(b.dq.raw) != L*len(shapes) {
			t.Fatalf("device bytes %d for %d weights, want %d for %d", b.live, len(b.dq.raw), want, L*len(shapes))
		}
		embed := uint64(2 * V * C * 2)
		base := float64(want+embed) / 1e9
		if want < 3.90e9 || want > 3.92e9 || base > 6.5 {
			t.Fatalf("NF4 linears %.3f GB, base with bf16 embedding and head %.2f GB: want 3.91 and <= 6.5", float64(want)/1e9, base)
		}
		before := b.live
		b.ResetPeak()
		b.MatMulForward(make([]float32, 2*C), make([]float32, 2*I), down, nil, 2)
		tile := b.dq.tile.size
		if b.dq.tiles != 1 || tile != uint64(C*I*map[bool]int{false: 4, true: 2}[bf16]) || tile > defaultTileBytes {
			t.Fatalf("down_proj forward: %d tiles of %d bytes", b.dq.tiles, tile)
		}
		t.Logf("bf16 GEMMs %-5v: NF4 linears %.3f GB on the device (fp32 copies would be %.1f GB), base with bf16 embedding+head %.2f GB; down_proj forward: 1 tile of %.0f MB, peak %.3f GB",
			bf16, float64(before)/1e9, float64(want)/36*64*4/1e9, base, float64(tile)/1e6, float64(b.Memory().Peak)/1e9)
	}
}

// TestDryDequantTileOOM: when the GPU cannot allocate the tile, it halves
// (7 rows -> 4 -> 2) until an allocation succeeds, and the matmul runs over
// the smaller tiles.
func TestDryDequantTileOOM(t *testing.T) {
	b := newDry(t)
	r := rand.New(rand.NewPCG(13, 14))
	const OC, C = 7, 64
	w := kernels.Weight{DType: kernels.NF4, Data: randomBlocks(r, kernels.NF4, OC, true), Rows: OC, Cols: C}
	alloc := b.d.cuMemAlloc
	b.d.cuMemAlloc = func(p *uint64, n uint64) int32 {
		if n > 2*C*4 && n <= OC*C*4 { // the 7- and 4-row tiles
			return errOutOfMemory
		}
		return alloc(p, n)
	}
	ls, gs := recordDry(b)
	b.MatMulForward(make([]float32, OC), make([]float32, C), w, nil, 1)
	if len(*ls) != 4 || len(*gs) != 4 || b.dq.tile.size != 2*C*4 {
		t.Fatalf("%d dequant launches, %d GEMMs, tile %d bytes; want 4, 4, %d", len(*ls), len(*gs), b.dq.tile.size, 2*C*4)
	}
}

func TestTileRows(t *testing.T) {
	b := &Backend{}
	w := kernels.Weight{DType: kernels.NF4, Rows: 100, Cols: 64}
	for _, c := range []struct {
		bytes uint64
		want  int
	}{{0, 1}, {3 * 64 * 4, 3}, {9 * 64 * 4, 8}, {23 * 64 * 4, 16}, {100 * 64 * 4, 100}, {1 << 30, 100}} {
		b.dq.tileBytes = c.bytes
		if got := b.tileRows(w, 4); got != c.want {
			t.Errorf("tile of %d bytes: %d rows, want %d", c.bytes, got, c.want)
		}
	}
}
