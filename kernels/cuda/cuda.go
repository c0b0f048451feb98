// Package cuda is the NVIDIA GPU backend of kernels. It binds the CUDA
// driver (libcuda.so.1) and cuBLAS at run time through purego (no cgo, no
// CUDA at build time: the same static binary runs with or without a GPU),
// loads the op kernels from PTX embedded in the binary (kernels.cu compiled
// by `make kernels`; the driver JITs it for the device) and runs GEMMs
// through cublasGemmEx with fp32 accumulation.
//
// This first version implements kernels.Backend as it is: every op takes
// host slices, so each call copies its inputs to the device and its outputs
// back. Weights are uploaded once and cached on the device (keyed by their
// host memory), as fp32 by default so results match the CPU backend to
// fp32 rounding, or as bf16 with TUNE_CUDA_GEMM=bf16 (bf16 GEMM inputs,
// fp32 accumulation: tensor-core speed, ~1e-2 relative agreement). F32
// weights (LoRA A and B, which the optimizer changes) are cached too and
// uploaded again only when their host bytes changed (see weight).
// Block-quantized weights (GGUF blocks, NF4, INT4/INT8: QLoRA bases) stay
// quantized on the device and matmuls dequantize tiles of rows on the
// device (dequant.go).
// LoRA training has a device-resident pass instead (devpass.go: weights,
// activations, LoRA slabs and AdamW moments stay on the device).
//
// A CUDA failure inside an op (launch failure, out of memory) panics with an
// error naming the op, the call and, for memory, what was needed and free;
// there is nothing sensible an op can return instead. Opening the backend on
// a machine without a driver or GPU returns an error (kernels.Get("cuda")).
//
// Importing the package registers the backend as "cuda".
package cuda

import (
	"bytes"
	_ "embed"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/tunellm/tune/kernels"
)

func init() {
	kernels.Register("cuda", func() (kernels.Backend, error) { return Open() })
}

//go:embed kernels.ptx
var ptx string

// kernelNames are the entry points of kernels.ptx the backend uses.
var kernelNames = []string{
	"embedding_fwd", "embedding_fwd_bf16", "embedding_bwd", "rmsnorm_fwd", "rmsnorm_bwd_din", "rmsnorm_bwd_dw", "rope",
	"attention_fwd", "attention_bwd_q", "attention_bwd_kv", "swiglu_fwd", "swiglu_bwd", "add_fwd",
	"bias_add", "bias_bwd", "softmax_fwd", "nll_fwd", "nll_bwd", "f32_to_bf16", "bf16_to_f32", "f16_to_f32", "adamw",
}

// minDriver is the oldest driver (cuDriverGetVersion) that JITs the
// embedded PTX: nvcc 11.8 writes PTX ISA 7.8.
const minDriver = 11080

// maxHD is the largest head dim the attention kernels hold per warp
// (MAX_HD in kernels.cu).
const maxHD = 256

// Backend is the CUDA implementation of kernels.Backend. Calls are
// serialized by a mutex and run on the null stream of the device's primary
// context.
type Backend struct {
	mu       sync.Mutex
	d        *driver
	bl       *cublas
	dev      Device
	ctx      uintptr
	mod      uintptr
	fn       map[string]uintptr
	sig      map[string][]string // PTX parameter types per kernel
	blas     uintptr
	bf16     bool  // TUNE_CUDA_GEMM=bf16
	mathMode int32 // the cuBLAS math mode set last
	sync     bool  // TUNE_CUDA_SYNC=1: wait after each launch so a fault names its kernel

	slots   [10]dbuf // scratch device buffers, grown on demand
	weights map[wkey]*dweight
	f32Held uint64 // device bytes of cached F32 weights (see weight)

	i32 []int32 // host scratch for token ids / segment starts

	live, peak uint64 // device bytes the backend has allocated now, and at most (MemStats)

	rec     *trace // non-nil while traceDecoder records a model's ops (devpass.go)
	devPass bool   // LoRA training runs the device-resident pass (TUNE_CUDA_PASS != host)

	dq dequantState // block-quantized weights kept quantized on the device (dequant.go)

	argv []uint64  // kernel argument values
	argp []uintptr // pointers to argv's elements, the kernelParams array
}

type dbuf struct {
	ptr  uint64
	size uint64
}

type wkey struct {
	ptr        uintptr
	n          int
	dtype      kernels.DType
	rows, cols int
	sum        uint64 // fingerprint of the first and last bytes: a reused buffer with new contents is a new key
}

type dweight struct {
	f32, bf16 uint64
	size      uint64 // bytes of f32 (bf16 holds half)
	// F32 weights only: the host bytes last uploaded, compared in full on
	// every use (so a changed weight is never served stale), and whether
	// bf16 was converted from them.
	shadow []byte
	bf16ok bool
}

// F32 weights (LoRA A and B, trainable copies) are cached when one is at
// most f32CacheMax bytes and the cache holds at most f32CacheTotal; larger
// ones are uploaded on every call.
const (
	f32CacheMax   = 64 << 20
	f32CacheTotal = 1 << 30
)

var _ kernels.Backend = (*Backend)(nil)

// launchLocalRank is this process's rank among the ranks of a launch on
// this machine (SetLocalRank), -1 when it is not one.
var launchLocalRank atomic.Int64

func init() { launchLocalRank.Store(-1) }

// SetLocalRank tells Open that this process is rank localRank among a
// launch's ranks on this machine (dist.Detect's LocalRank; cmd/tune sets
// it before the backend opens), or no rank when localRank < 0. The package
// does not read the launchers' variables itself: package dist owns them.
func SetLocalRank(localRank int) { launchLocalRank.Store(int64(localRank)) }

// ChooseDevice is the GPU Open uses among count devices, and why:
// $TUNE_CUDA_DEVICE when set (getenv); else, for a rank of a launch
// (localRank >= 0), localRank % count, so that the ranks on a machine
// spread over its GPUs (one each when there are as many GPUs as ranks; a
// launcher that gives each rank one visible GPU makes it 0); else GPU 0.
func ChooseDevice(getenv func(string) string, localRank, count int) (idx int, why string, err error) {
	if count <= 0 {
		return 0, "", fmt.Errorf("cuda: no GPU to choose from")
	}
	if s := strings.TrimSpace(getenv("TUNE_CUDA_DEVICE")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n >= count {
			return 0, "", fmt.Errorf("cuda: TUNE_CUDA_DEVICE=%q: want 0..%d", s, count-1)
		}
		return n, "TUNE_CUDA_DEVICE", nil
	}
	if localRank >= 0 {
		idx = localRank % count
		why = fmt.Sprintf("local rank %d", localRank)
		switch {
		case count == 1 && localRank > 0:
			why += ", the one visible GPU"
		case localRank >= count:
			why += fmt.Sprintf(" mod %d GPUs: shared with local rank %d", count, idx)
		}
		return idx, why, nil
	}
	return 0, "default", nil
}

// Open makes a backend on the GPU ChooseDevice picks: $TUNE_CUDA_DEVICE,
// else the local rank's (SetLocalRank) modulo the GPUs, else GPU 0. It
// fails with a one-line reason when there is no driver, no GPU or no
// cuBLAS, or when the embedded PTX does not load (a driver older than the
// PTX's ISA).
func Open() (*Backend, error) {
	info, err := Probe()
	if err != nil {
		return nil, err
	}
	if info.DriverVersion < minDriver {
		return nil, fmt.Errorf("cuda: the NVIDIA driver supports CUDA %s; tune's kernels (PTX 7.8) need CUDA 11.8 or newer: update the driver", info.Driver)
	}
	idx, _, err := ChooseDevice(os.Getenv, int(launchLocalRank.Load()), len(info.Devices))
	if err != nil {
		return nil, err
	}
	d, _ := loadDriver()
	bl, _ := loadCublas()
	b := &Backend{d: d, bl: bl, dev: info.Devices[idx], fn: map[string]uintptr{}, weights: map[wkey]*dweight{},
		bf16: os.Getenv("TUNE_CUDA_GEMM") == "bf16", sync: os.Getenv("TUNE_CUDA_SYNC") == "1",
		devPass: os.Getenv("TUNE_CUDA_PASS") != "host"}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var dev int32
	if err := d.check("cuDeviceGet", d.cuDeviceGet(&dev, int32(idx))); err != nil {
		return nil, err
	}
	if err := d.check("cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain(&b.ctx, dev)); err != nil {
		return nil, err
	}
	if err := d.check("cuCtxSetCurrent", d.cuCtxSetCurrent(b.ctx)); err != nil {
		return nil, err
	}
	img := append([]byte(ptx), 0)
	if err := d.check("cuModuleLoadData (embedded kernels.ptx, compute_80)", d.cuModuleLoadData(&b.mod, unsafe.Pointer(&img[0]))); err != nil {
		return nil, fmt.Errorf("%v; the driver may be older than the PTX (CUDA %s)", err, info.Driver)
	}
	runtime.KeepAlive(img)
	b.sig = ptxParams(ptx)
	for _, name := range kernelNames {
		var f uintptr
		cname := append([]byte(name), 0)
		if err := d.check("cuModuleGetFunction "+name, d.cuModuleGetFunction(&f, b.mod, &cname[0])); err != nil {
			return nil, err
		}
		b.fn[name] = f
	}
	if err := blasCheck("cublasCreate", bl.create(&b.blas)); err != nil {
		return nil, err
	}
	if err := blasCheck("cublasSetMathMode", bl.setMathMode(b.blas, mathPedantic)); err != nil {
		return nil, err
	}
	b.mathMode = mathPedantic
	b.initArgs()
	return b, nil
}

// initArgs makes the kernelParams array: argp[i] points at argv[i].
func (b *Backend) initArgs() {
	b.argv = make([]uint64, 32)
	b.argp = make([]uintptr, 32)
	for i := range b.argv {
		b.argp[i] = uintptr(unsafe.Pointer(&b.argv[i]))
	}
}

func (b *Backend) Name() string { return "cuda" }

// Device describes the GPU the backend runs on.
func (b *Backend) Device() Device { return b.dev }

// BF16GEMM reports whether GEMMs take bf16 inputs (TUNE_CUDA_GEMM=bf16).
func (b *Backend) BF16GEMM() bool { return b.bf16 }

func (b *Backend) Supports() map[kernels.Op]bool {
	return map[kernels.Op]bool{
		kernels.OpEmbedding: true, kernels.OpMatMul: true, kernels.OpRMSNorm: true, kernels.OpRoPE: true,
		kernels.OpAttention: true, kernels.OpSwiGLU: true, kernels.OpSoftmax: true, kernels.OpAdd: true,
		kernels.OpLogSoftmaxNLL: true,

		kernels.OpEmbeddingBack: true, kernels.OpMatMulBack: true, kernels.OpRMSNormBack: true, kernels.OpRoPEBack: true,
		kernels.OpAttentionBack: true, kernels.OpSwiGLUBack: true, kernels.OpLogSoftmaxNLLBack: true,
	}
}

// enter locks the backend to this goroutine's OS thread with the context
// current (CUDA contexts are per thread); the returned func undoes it.
func (b *Backend) enter() func() {
	b.mu.Lock()
	runtime.LockOSThread()
	b.must("cuCtxSetCurrent", b.d.cuCtxSetCurrent(b.ctx))
	return func() {
		runtime.UnlockOSThread()
		b.mu.Unlock()
	}
}

func (b *Backend) must(call string, r int32) {
	if err := b.d.check(call, r); err != nil {
		panic(err)
	}
}

// alloc returns a device buffer of n bytes, or an out-of-memory error that
// says what was asked for and what is free.
func (b *Backend) alloc(n uint64) (uint64, error) {
	var p uint64
	n = max(n, 4)
	r := b.d.cuMemAlloc(&p, n)
	if r == errOutOfMemory {
		var free, total uint64
		b.d.cuMemGetInfo(&free, &total)
		return 0, fmt.Errorf("cuda: out of GPU memory on %s: needed %.1f MiB, %.1f MiB free of %.1f GiB; use a smaller micro-batch or sequence length, or gradient checkpointing",
			b.dev.Name, float64(n)/(1<<20), float64(free)/(1<<20), float64(total)/(1<<30))
	}
	if err := b.d.check("cuMemAlloc", r); err != nil {
		return 0, err
	}
	b.live += n
	b.peak = max(b.peak, b.live)
	return p, nil
}

// free releases a buffer alloc returned (n: the size asked for).
func (b *Backend) free(p, n uint64) {
	if p == 0 {
		return
	}
	b.must("cuMemFree", b.d.cuMemFree(p))
	b.live -= min(b.live, max(n, 4))
}

// slot returns scratch buffer i with room for n bytes.
func (b *Backend) slot(i int, n uint64) uint64 {
	s := &b.slots[i]
	if s.size < n {
		if s.ptr != 0 {
			b.free(s.ptr, s.size)
			*s = dbuf{}
		}
		n = max(n, s.size*5/4)
		p, err := b.alloc(n)
		if err != nil {
			panic(err)
		}
		*s = dbuf{ptr: p, size: n}
	}
	return s.ptr
}

// put copies host floats into scratch slot i.
func (b *Backend) put(i int, x []float32) uint64 {
	n := uint64(len(x)) * 4
	p := b.slot(i, n)
	if n > 0 {
		b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p, unsafe.Pointer(&x[0]), n))
	}
	return p
}

// putInts copies ids into scratch slot i as int32.
func (b *Backend) putInts(i int, x []int) uint64 {
	b.i32 = b.i32[:0]
	for _, v := range x {
		b.i32 = append(b.i32, int32(v))
	}
	n := uint64(len(x)) * 4
	p := b.slot(i, n)
	if n > 0 {
		b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p, unsafe.Pointer(&b.i32[0]), n))
	}
	return p
}

// get copies device floats back.
func (b *Backend) get(x []float32, p uint64) {
	if len(x) > 0 {
		b.must("cuMemcpyDtoH", b.d.cuMemcpyDtoH(unsafe.Pointer(&x[0]), p, uint64(len(x))*4))
	}
}

// launch runs kernel name over grid blocks of block threads. Arguments are
// uint64 (device pointers), int (as int32), int64, float32.
func (b *Backend) launch(name string, grid, block int, args ...any) {
	if grid <= 0 {
		return
	}
	f, ok := b.fn[name]
	if !ok {
		panic("cuda: unknown kernel " + name)
	}
	if err := checkArgs(name, b.sig[name], args); err != nil {
		panic(err)
	}
	for i, a := range args {
		switch v := a.(type) {
		case uint64:
			b.argv[i] = v
		case int:
			b.argv[i] = uint64(uint32(int32(v)))
		case int64:
			b.argv[i] = uint64(v)
		case float32:
			b.argv[i] = uint64(math.Float32bits(v))
		default:
			panic(fmt.Sprintf("cuda: launch %s: argument %d has type %T", name, i, a))
		}
	}
	gx, gy := gridXY(grid)
	b.must("cuLaunchKernel "+name, b.d.cuLaunchKernel(f, uint32(gx), uint32(gy), 1, uint32(block), 1, 1, 0, 0, unsafe.Pointer(&b.argp[0]), nil))
	runtime.KeepAlive(b.argv)
	if b.sync {
		b.must("kernel "+name+" (cuCtxSynchronize)", b.d.cuCtxSynchronize())
	}
}

// ptxParams lists each entry point's parameter types ("u64", "u32",
// "f32", ...) as the PTX declares them; launch checks its arguments against
// them, so a Go call that disagrees with kernels.cu fails with both named
// instead of reading garbage on the device.
func ptxParams(src string) map[string][]string {
	out := map[string][]string{}
	for _, m := range entryRE.FindAllStringSubmatch(src, -1) {
		var types []string
		for _, p := range paramRE.FindAllStringSubmatch(m[2], -1) {
			types = append(types, p[1])
		}
		out[m[1]] = types
	}
	return out
}

var (
	entryRE = regexp.MustCompile(`\.entry\s+([A-Za-z0-9_]+)\s*\(([^)]*)\)`)
	paramRE = regexp.MustCompile(`\.param\s+\.([a-z]+[0-9]+)\s`)
)

// argFits reports whether a Go launch argument matches a PTX parameter type.
func argFits(a any, typ string) bool {
	switch a.(type) {
	case uint64, int64:
		return typ == "u64" || typ == "s64" || typ == "b64"
	case int:
		return typ == "u32" || typ == "s32" || typ == "b32"
	case float32:
		return typ == "f32"
	}
	return false
}

// checkArgs compares a launch's arguments with the kernel's PTX signature.
func checkArgs(name string, sig []string, args []any) error {
	if len(args) != len(sig) {
		return fmt.Errorf("cuda: launch %s: %d arguments, kernels.ptx declares %d (%v)", name, len(args), len(sig), sig)
	}
	for i, a := range args {
		if !argFits(a, sig[i]) {
			return fmt.Errorf("cuda: launch %s: argument %d is %T, kernels.ptx declares .%s", name, i, a, sig[i])
		}
	}
	return nil
}

// gridXY splits a block count over x and y when it passes the 2^31-1 limit
// of gridDim.x. Every kernel here indexes with blockIdx.x only, so larger
// grids are refused instead (they would need 2^31 rows).
func gridXY(n int) (int, int) {
	if n > math.MaxInt32 {
		panic(fmt.Sprintf("cuda: grid of %d blocks exceeds 2^31-1", n))
	}
	return n, 1
}

// blocks is ceil(n/per).
func blocks(n, per int) int { return (n + per - 1) / per }

func need(op, name string, got, want int) {
	if got < want {
		panic(fmt.Sprintf("cuda: %s: %s has %d elements, need %d", op, name, got, want))
	}
}

// weight returns the device copy of w (fp32, or bf16 when bf16 is set).
//
// F32 weights are the trainable ones (LoRA A and B, full fine-tuning's
// copies) and change between calls (optimizer steps, the adapter's shared
// Bᵀ scratch): f32Weight keeps the device copy of each (address, shape)
// with the host bytes it was made from, and uploads again only when they
// differ (a host memcmp instead of a PCIe copy). BF16, F16 and quantized
// weights are checkpoint views (mmapped, read-only by kernels.Weight's
// contract) and are uploaded and converted once, keyed by their address,
// shape and a fingerprint of sampled bytes. Matmuls do not call weight for
// a quantized weight (they dequantize tiles from qweight's raw blocks);
// the other ops get a dense copy dequantized on the device from them.
func (b *Backend) weight(w kernels.Weight, bf16 bool) (uint64, error) {
	if err := w.Check(); err != nil {
		return 0, err
	}
	n := uint64(w.Rows) * uint64(w.Cols)
	if w.DType == kernels.F32 && n > 0 && n*4 <= f32CacheMax {
		if p, ok, err := b.f32Weight(w, n, bf16); ok || err != nil {
			return p, err
		}
	}
	if w.DType == kernels.F32 {
		p := b.slot(8, n*4)
		if n > 0 {
			b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p, unsafe.Pointer(&w.Data[0]), n*4))
		}
		if bf16 {
			return b.toBF16(9, p, int(n)), nil
		}
		return p, nil
	}
	k := wkey{n: len(w.Data), dtype: w.DType, rows: w.Rows, cols: w.Cols}
	if len(w.Data) > 0 {
		k.ptr = uintptr(unsafe.Pointer(&w.Data[0]))
		k.sum = fingerprint(w.Data)
	}
	dw := b.weights[k]
	if dw == nil {
		dw = &dweight{}
		b.weights[k] = dw
	}
	dw.size = n * 4
	if bf16 {
		if dw.bf16 != 0 {
			return dw.bf16, nil
		}
		p, err := b.alloc(n * 2)
		if err != nil {
			return 0, err
		}
		if w.DType == kernels.BF16 {
			if n > 0 {
				b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p, unsafe.Pointer(&w.Data[0]), n*2))
			}
		} else {
			// F16 or quantized: through the cached fp32 copy.
			f, err := b.weight(w, false)
			if err != nil {
				return 0, err
			}
			b.launch("f32_to_bf16", blocks(int(n), 256), 256, p, f, int64(n))
		}
		dw.bf16 = p
		return p, nil
	}
	if dw.f32 != 0 {
		return dw.f32, nil
	}
	p, err := b.alloc(n * 4)
	if err != nil {
		return 0, err
	}
	switch {
	case n == 0:
	case w.DType == kernels.BF16 || w.DType == kernels.F16:
		raw := b.slot(7, n*2)
		b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(raw, unsafe.Pointer(&w.Data[0]), n*2))
		name := "bf16_to_f32"
		if w.DType == kernels.F16 {
			name = "f16_to_f32"
		}
		b.launch(name, blocks(int(n), 256), 256, p, raw, int64(n))
	case w.DType.Quantized() && b.deviceDequant(w):
		// From the raw blocks, on the device (dequant.go).
		if err := b.dequantDense(p, w); err != nil {
			b.free(p, n*4)
			return 0, err
		}
	case w.DType.Quantized():
		// TUNE_CUDA_DEQUANT=host: dequantized on the host, row by row,
		// with the reference dequantizer.
		f := w.DType.Format()
		row := make([]float32, w.Cols)
		rb := w.RowBytes()
		for r := 0; r < w.Rows; r++ {
			f.Dequantize(row, w.Data[r*rb:(r+1)*rb])
			b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(p+uint64(r*w.Cols*4), unsafe.Pointer(&row[0]), uint64(w.Cols)*4))
		}
	default:
		return 0, fmt.Errorf("cuda: weight dtype %v not supported", w.DType)
	}
	dw.f32 = p
	return p, nil
}

// f32Weight serves an F32 weight of n elements from the cache, uploading
// it when its host bytes changed since the last upload; ok is false when
// the cache is full (the caller uploads to scratch instead).
func (b *Backend) f32Weight(w kernels.Weight, n uint64, bf16 bool) (p uint64, ok bool, err error) {
	k := wkey{ptr: uintptr(unsafe.Pointer(&w.Data[0])), n: len(w.Data), dtype: kernels.F32, rows: w.Rows, cols: w.Cols}
	host := w.Data[:n*4]
	dw := b.weights[k]
	if dw == nil {
		if b.f32Held+n*4 > f32CacheTotal {
			return 0, false, nil
		}
		p, err := b.alloc(n * 4)
		if err != nil {
			return 0, false, err
		}
		dw = &dweight{f32: p, size: n * 4}
		b.weights[k] = dw
		b.f32Held += n * 4
	}
	if dw.shadow == nil || !bytes.Equal(dw.shadow, host) {
		b.must("cuMemcpyHtoD", b.d.cuMemcpyHtoD(dw.f32, unsafe.Pointer(&host[0]), n*4))
		dw.shadow = append(dw.shadow[:0], host...)
		dw.bf16ok = false
	}
	if !bf16 {
		return dw.f32, true, nil
	}
	if dw.bf16 == 0 {
		if dw.bf16, err = b.alloc(n * 2); err != nil {
			return 0, false, err
		}
	}
	if !dw.bf16ok {
		b.launch("f32_to_bf16", blocks(int(n), ewThreads), ewThreads, dw.bf16, dw.f32, int64(n))
		dw.bf16ok = true
	}
	return dw.bf16, true, nil
}

// fingerprint hashes the first and last 256 bytes and 64 evenly spaced
// 8-byte words: a cached weight whose buffer was rewritten in place gets a
// new key (a cheap guard, not a proof; see weight).
func fingerprint(data []byte) uint64 {
	h := fnv.New64a()
	h.Write(data[:min(256, len(data))])
	h.Write(data[max(0, len(data)-256):])
	if len(data) > 8 {
		for i := 0; i < 64; i++ {
			at := (len(data) - 8) / 64 * i
			h.Write(data[at : at+8])
		}
	}
	return h.Sum64()
}

// Prepare uploads w to the device now (a model calls it at load time so
// that an unsupported dtype or a lack of GPU memory is an error there, not
// a panic mid-forward).
func (b *Backend) Prepare(w kernels.Weight) error {
	defer b.enter()()
	if b.deviceDequant(w) {
		_, err := b.qweight(w) // quantized on the device; matmuls dequantize tiles
		return err
	}
	_, err := b.weight(w, b.bf16)
	return err
}

// ForgetWeights frees every cached device weight.
func (b *Backend) ForgetWeights() {
	defer b.enter()()
	for k, w := range b.weights {
		b.free(w.f32, w.size)
		b.free(w.bf16, w.size/2)
		delete(b.weights, k)
	}
	b.f32Held = 0
	b.forgetRaw()
}

func (b *Backend) mustWeight(op string, w kernels.Weight, bf16 bool) uint64 {
	p, err := b.weight(w, bf16)
	if err != nil {
		panic(fmt.Errorf("cuda: %s: %w", op, err))
	}
	return p
}
