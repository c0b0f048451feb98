package cuda

import (
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"github.com/tunellm/tune/kernels"
)

// Quantized weights on the device (QLoRA bases, GGUF models): a
// block-quantized weight is uploaded once as its raw blocks (qweight), so
// the GPU holds its quantized size (an 8B NF4 base's linears take 3.9 GB,
// not 28 GB of fp32). A matmul on it dequantizes a tile of rows at a time
// into a reusable device buffer with the dequant_* kernels of kernels.cu
// (bit for bit qblock's Go dequantizers: scripts/gpu/emulate checks the
// kernels on the CPU, TestDequantKernels on a GPU) and runs the cuBLAS
// GEMM on the tile, fp32 accumulation, fp32 or bf16 inputs as the GEMM
// mode says. Forward and din use the weight; dw never does.
//
// TUNE_CUDA_DEQUANT=host keeps the first version's path for comparison:
// the weight is dequantized on the host at upload and cached dense (fp32,
// and bf16 in the bf16 GEMM mode). TUNE_CUDA_DEQUANT_TILE_MB bounds the
// tile (default 256 MiB; at least one row); when the GPU cannot allocate
// it, the tile halves until it can.

// dequantKernels are the dequant_* entry points of kernels.ptx.
var dequantKernels = []string{"dequant_q4_0", "dequant_q4_1", "dequant_q5_0", "dequant_q5_1", "dequant_q8_0",
	"dequant_q2_k", "dequant_q3_k", "dequant_q4_k", "dequant_q5_k", "dequant_q6_k", "dequant_nf4", "dequant_int4", "dequant_int8"}

func init() { kernelNames = append(kernelNames, dequantKernels...) }

// defaultTileBytes bounds the dequantized tile of a matmul.
const defaultTileBytes = 256 << 20

// dequantState is the backend's quantized-weight state.
type dequantState struct {
	mode      int            // 0: not read yet, 1: on the device, 2: TUNE_CUDA_DEQUANT=host
	tileBytes uint64         // tile bound (TUNE_CUDA_DEQUANT_TILE_MB)
	raw       map[wkey]*rawQ // uploaded blocks
	tile      dbuf           // the dequantized rows
	tiles     int            // dequant launches so far (tests)
}

type rawQ struct {
	ptr, size uint64
}

// deviceDequant reports whether w's matmuls dequantize on the device.
func (b *Backend) deviceDequant(w kernels.Weight) bool {
	if !w.DType.Quantized() {
		return false
	}
	if b.dq.mode == 0 {
		b.dq.mode = 1
		if os.Getenv("TUNE_CUDA_DEQUANT") == "host" {
			b.dq.mode = 2
		}
		if b.dq.tileBytes == 0 {
			b.dq.tileBytes = defaultTileBytes
			if s := os.Getenv("TUNE_CUDA_DEQUANT_TILE_MB"); s != "" {
				if v, err := strconv.ParseFloat(s, 64); err == nil && v > 0 {
					b.dq.tileBytes = uint64(v * (1 << 20))
				}
			}
		}
	}
	return b.dq.mode == 1
}

// qweight returns the device copy of w's raw blocks, uploading them the
// first time (keyed as weight keys its dense copies).
func (b *Backend) qweight(w kernels.Weight) (uint64, error) {
	if err := w.Check(); err != nil {
		return 0, err
	}
	k := wkey{n: len(w.Data), dtype: w.DType, rows: w.Rows, cols: w.Cols}
	if len(w.Data) > 0 {
		k.ptr = uintptr(unsafe.Pointer(&w.Data[0]))
		k.sum = fingerprint(w.Data)
	}
	if r := b.dq.raw[k]; r != nil {
		return r.ptr, nil
	}
	n := uint64(len(w.Data))
	p, err := b.alloc(n)
	if err != nil {
		return 0, fmt.Errorf("%v [%d %d] blocks: %w", w.DType, w.Rows, w.Cols, err)
	}
	if n > 0 {
		b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p, unsafe.Pointer(&w.Data[0]), n))
	}
	if b.dq.raw == nil {
		b.dq.raw = map[wkey]*rawQ{}
	}
	b.dq.raw[k] = &rawQ{ptr: p, size: n}
	return p, nil
}

// forgetRaw frees every uploaded block weight and the tile.
func (b *Backend) forgetRaw() {
	for k, r := range b.dq.raw {
		b.free(r.ptr, r.size)
		delete(b.dq.raw, k)
	}
	b.free(b.dq.tile.ptr, b.dq.tile.size)
	b.dq.tile = dbuf{}
}

// tileRows is how many rows of w one tile holds at esz bytes per element:
// the tile bound over the row size, at least 1, at most w.Rows, and a
// multiple of 8 when it is 8 or more and not all rows (so every tile's
// offsets into the GEMM operands stay 16-byte aligned for cuBLAS).
func (b *Backend) tileRows(w kernels.Weight, esz int) int {
	per := uint64(max(w.Cols, 1)) * uint64(esz)
	return alignRows(int(min(b.dq.tileBytes/per, uint64(w.Rows))), w.Rows)
}

// alignRows rounds a tile of r rows (of a weight of rows rows) down to a
// multiple of 8 when r >= 8 and r < rows; at least 1.
func alignRows(r, rows int) int {
	if r >= 8 && r < rows {
		r &^= 7
	}
	return max(1, r)
}

// tileFor returns the tile buffer and the rows of w it holds at esz bytes
// per element: tileRows rows, or fewer when the GPU cannot allocate that
// much (halved down to one row; out of memory at one row panics, naming
// what was needed and free). The buffer is grown, never shrunk, until
// ForgetWeights.
func (b *Backend) tileFor(w kernels.Weight, esz int) (uint64, int) {
	rows := b.tileRows(w, esz)
	per := uint64(max(w.Cols, 1)) * uint64(esz)
	for {
		t := &b.dq.tile
		if t.size >= uint64(rows)*per {
			return t.ptr, rows
		}
		b.free(t.ptr, t.size)
		*t = dbuf{}
		p, err := b.alloc(uint64(rows) * per)
		if err == nil {
			*t = dbuf{ptr: p, size: uint64(rows) * per}
			return p, rows
		}
		if rows == 1 {
			panic(fmt.Errorf("cuda: dequantized tile of %v [%d %d]: %w", w.DType, w.Rows, w.Cols, err))
		}
		rows = alignRows((rows+1)/2, w.Rows)
	}
}

// dequantRows expands rows [r0, r1) of w (raw: its blocks on the device)
// into dst, row-major [r1-r0, w.Cols], fp32 or bf16.
func (b *Backend) dequantRows(dst, raw uint64, w kernels.Weight, r0, r1 int, bf16 bool) {
	n := int64(r1-r0) * int64(w.Cols)
	src := raw + uint64(r0)*uint64(w.RowBytes())
	g := blocks(int(n), ewThreads)
	h := 0
	if bf16 {
		h = 1
	}
	b.dq.tiles++
	switch w.DType {
	case kernels.Q4_0:
		b.launch("dequant_q4_0", g, ewThreads, dst, src, n, h)
	case kernels.Q4_1:
		b.launch("dequant_q4_1", g, ewThreads, dst, src, n, h)
	case kernels.Q5_0:
		b.launch("dequant_q5_0", g, ewThreads, dst, src, n, h)
	case kernels.Q5_1:
		b.launch("dequant_q5_1", g, ewThreads, dst, src, n, h)
	case kernels.Q8_0:
		b.launch("dequant_q8_0", g, ewThreads, dst, src, n, h)
	case kernels.Q2_K:
		b.launch("dequant_q2_k", g, ewThreads, dst, src, n, h)
	case kernels.Q3_K:
		b.launch("dequant_q3_k", g, ewThreads, dst, src, n, h)
	case kernels.Q4_K:
		b.launch("dequant_q4_k", g, ewThreads, dst, src, n, h)
	case kernels.Q5_K:
		b.launch("dequant_q5_k", g, ewThreads, dst, src, n, h)
	case kernels.Q6_K:
		b.launch("dequant_q6_k", g, ewThreads, dst, src, n, h)
	case kernels.NF4:
		b.launch("dequant_nf4", g, ewThreads, dst, src, n, h)
	case kernels.INT4, kernels.INT4_32:
		e, _, _ := w.DType.Block()
		b.launch("dequant_int4", g, ewThreads, dst, src, n, h, e)
	case kernels.INT8, kernels.INT8_32:
		e, _, _ := w.DType.Block()
		b.launch("dequant_int8", g, ewThreads, dst, src, n, h, e)
	default:
		panic(fmt.Sprintf("cuda: no dequant kernel for %v", w.DType))
	}
}

// mustQWeight is qweight for an op: a failure panics naming the op.
func (b *Backend) mustQWeight(op string, w kernels.Weight) uint64 {
	p, err := b.qweight(w)
	if err != nil {
		panic(fmt.Errorf("cuda: %s: %w", op, err))
	}
	return p
}

// qForward: o[T,OC] = x[T,C]·wᵀ on a quantized w, tile by tile of rows:
// each tile of rows [r0,r1) gives the columns r0..r1 of o (column-major:
// rows r0..r1 of the OC×T matrix, ldc = OC).
func (b *Backend) qForward(o, x uint64, w kernels.Weight, T int, dt int32) {
	b.qForwardRaw(o, x, b.mustQWeight("matmul", w), w, T, dt)
}

// qForwardRaw is qForward on w's blocks already on the device at raw (the
// device pass keeps its own pointers).
func (b *Backend) qForwardRaw(o, x, raw uint64, w kernels.Weight, T int, dt int32) {
	C, OC := w.Cols, w.Rows
	b.eachTile(raw, w, dt, func(tile uint64, r0, r1, _ int) {
		b.gemm("matmul (dequantized tile)", opT, opN, r1-r0, T, C, tile, C, x, C, 0, o+uint64(r0)*4, OC, dt)
	})
}

// qDin: di[T,C] += d[T,OC]·w on a quantized w (column-major Din = W·Dout),
// as a sum over tiles of rows: Din += W[:, r0:r1]·Dout[r0:r1, :]. d holds
// fp32 or bf16 elements as dt says.
func (b *Backend) qDin(di, d uint64, w kernels.Weight, T int, dt int32) {
	b.qDinRaw(di, d, b.mustQWeight("matmul_back", w), w, T, dt)
}

// qDinRaw is qDin on w's blocks already on the device at raw.
func (b *Backend) qDinRaw(di, d, raw uint64, w kernels.Weight, T int, dt int32) {
	C, OC := w.Cols, w.Rows
	b.eachTile(raw, w, dt, func(tile uint64, r0, r1, esz int) {
		b.gemm("matmul_back din (dequantized tile)", opN, opN, C, T, r1-r0, tile, C, d+uint64(r0)*uint64(esz), OC, 1, di, C, dt)
	})
}

// eachTile expands w (its blocks at raw) a tile of rows at a time into the
// backend's tile buffer, as fp32 or, when the GEMM dtype dt is bf16, bf16
// (esz bytes an element), and calls f with each tile and its rows [r0,r1).
func (b *Backend) eachTile(raw uint64, w kernels.Weight, dt int32, f func(tile uint64, r0, r1, esz int)) {
	esz := 4
	if dt != dtR32F {
		esz = 2
	}
	tile, rows := b.tileFor(w, esz)
	for r0 := 0; r0 < w.Rows; r0 += rows {
		r1 := min(w.Rows, r0+rows)
		b.dequantRows(tile, raw, w, r0, r1, esz == 2)
		f(tile, r0, r1, esz)
	}
}

// dequantDense fills the dense fp32 copy p of a quantized w on the device
// (weight's path for the ops that take a dense weight, the embedding).
func (b *Backend) dequantDense(p uint64, w kernels.Weight) error {
	raw, err := b.qweight(w)
	if err != nil {
		return err
	}
	b.dequantRows(p, raw, w, 0, w.Rows, false)
	return nil
}
