package dist

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/ebitengine/purego"
)

// NVIDIA NCCL (libnccl.so.2), loaded at run time through purego like Open
// MPI (no cgo, no nccl.h at build time), for all-reduces of GPU memory
// between ranks that each drive one GPU. NCCL is not a Comm: it moves
// device buffers on a CUDA stream, so the trainer's gradient slab, living on
// the GPU, is summed without a trip through the host. Everything small
// (losses, token counts, the start-up state broadcast) stays on the MPI or
// TCP Comm, which also bootstraps NCCL: rank 0's ncclGetUniqueId (128 bytes)
// is broadcast over it.
//
// Values from nccl.h (the same in NCCL 2.x since 2.4): ncclFloat32 = 7,
// ncclFloat64 = 8 (ncclDataType_t), ncclSum = 0 (ncclRedOp_t),
// NCCL_UNIQUE_ID_BYTES = 128, ncclSuccess = 0; version codes are
// major*10000 + minor*100 + patch since 2.9.
//
// Joining: ncclCommInitRank takes the 128-byte ncclUniqueId by value (16
// stack words on x86-64, a pointer to a copy on arm64), which purego
// (>= 0.9) passes as a struct argument. ncclCommInitRankScalable (NCCL >=
// 2.23) takes a pointer to the ids instead and, with one id and a NULL
// config, is ncclCommInitRank (nccl.h); OpenNCCL calls it when the library
// has it (no struct argument), ncclCommInitRank otherwise. NCCL 2.4 or later
// (ncclCommGetAsyncError, ncclCommAbort).

const (
	ncclSuccess        = 0
	ncclFloat32        = 7
	ncclFloat64        = 8
	ncclSum            = 0
	ncclUniqueIDBytes  = 128
	ncclMinVersion     = 2400 // 2.4.0 (old encoding): ncclCommGetAsyncError, ncclCommAbort
	ncclMinVersionName = "2.4"
)

// ncclUniqueID is nccl.h's ncclUniqueId: char internal[NCCL_UNIQUE_ID_BYTES].
type ncclUniqueID [ncclUniqueIDBytes]byte

// ncclUniqueIDValue is the id as a struct, to pass it by value.
type ncclUniqueIDValue struct{ Internal ncclUniqueID }

type ncclLib struct {
	getVersion       func(v *int32) int32
	getUniqueID      func(id *ncclUniqueID) int32
	commInitScalable func(comm *uintptr, nranks, rank, nID int32, ids *ncclUniqueID, config uintptr) int32 // nil before 2.23
	commInitRank     func(comm *uintptr, nranks int32, id ncclUniqueIDValue, rank int32) int32
	allReduce        func(send, recv uintptr, count uint64, dtype, op int32, comm, stream uintptr) int32
	commDestroy      func(comm uintptr) int32
	commAbort        func(comm uintptr) int32
	commAsyncError   func(comm uintptr, r *int32) int32
	errorString      func(r int32) string
	path             string
	version          int
}

// ncclNames are the file names tried in each search folder.
var ncclNames = []string{"libnccl.so.2", "libnccl.so"}

// ncclSearch lists the libraries to try, in order: $TUNE_NCCL_LIB alone
// when set; else libnccl.so.2 in $LD_LIBRARY_PATH's folders, the
// distribution's library folders (Debian/Ubuntu's libnccl2 package),
// /usr/local/cuda*/lib64 (newest first), and the nvidia/nccl/lib folders of
// pip's nvidia-nccl-cu12/cu13 wheels (system, user, virtualenv, conda);
// then the bare name for the dynamic loader's own search. getenv and glob
// are parameters so tests can fake a machine.
func ncclSearch(getenv func(string) string, glob func(string) ([]string, error)) []string {
	if p := getenv("TUNE_NCCL_LIB"); p != "" {
		return []string{p}
	}
	var dirs []string
	seen := map[string]bool{}
	add := func(d string) {
		if d != "" && !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	globAdd := func(pattern string) {
		m, _ := glob(pattern)
		slices.Sort(m)
		slices.Reverse(m) // cuda-12.8 before cuda-12.4, python3.12 before python3.10
		for _, d := range m {
			add(d)
		}
	}
	for _, d := range filepath.SplitList(getenv("LD_LIBRARY_PATH")) {
		add(d)
	}
	add("/usr/lib/x86_64-linux-gnu")
	add("/usr/lib/aarch64-linux-gnu")
	add("/usr/lib64")
	add("/usr/local/cuda/lib64")
	globAdd("/usr/local/cuda-*/lib64")
	var sites []string
	if v := getenv("VIRTUAL_ENV"); v != "" {
		sites = append(sites, v+"/lib/python3*/site-packages")
	}
	if v := getenv("CONDA_PREFIX"); v != "" {
		sites = append(sites, v+"/lib/python3*/site-packages")
	}
	if h := getenv("HOME"); h != "" {
		sites = append(sites, h+"/.local/lib/python3*/site-packages")
	}
	sites = append(sites, "/usr/local/lib/python3*/dist-packages", "/usr/local/lib/python3*/site-packages",
		"/usr/lib/python3/dist-packages", "/opt/conda/lib/python3*/site-packages")
	for _, s := range sites {
		globAdd(s + "/nvidia/nccl/lib")
	}
	var paths []string
	for _, d := range dirs {
		for _, n := range ncclNames {
			paths = append(paths, filepath.Join(d, n))
		}
	}
	return append(paths, ncclNames...)
}

// errNoNCCL is wrapped by every "the library is not there" error.
var errNoNCCL = errors.New("libnccl.so.2 not found")

// openNCCL loads the first of paths that dlopens and binds the calls.
func openNCCL(paths []string) (*ncclLib, error) {
	var h uintptr
	var path string
	var tried []string
	for _, p := range paths {
		var err error
		if h, err = purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL); err == nil {
			path = p
			break
		}
		if strings.Contains(p, "/") {
			if _, serr := os.Stat(p); serr != nil {
				tried = append(tried, p)
				continue // absent: no need to print dlopen's words for it
			}
		}
		tried = append(tried, fmt.Sprintf("%s (%v)", p, err))
	}
	if h == 0 {
		return nil, fmt.Errorf("dist: nccl: %w (tried %s): install NVIDIA's libnccl2 package or pip's nvidia-nccl-cu12, or set TUNE_NCCL_LIB=/path/libnccl.so.2; TUNE_DIST=mpi or tcp sums gradients on the host instead", errNoNCCL, shortList(tried))
	}
	l := &ncclLib{path: path}
	var err error
	reg := func(fn any, name string) {
		if err != nil {
			return
		}
		var sym uintptr
		if sym, err = purego.Dlsym(h, name); err != nil {
			err = fmt.Errorf("dist: nccl: %s: no %s (NCCL older than %s?): %v", path, name, ncclMinVersionName, err)
			return
		}
		purego.RegisterFunc(fn, sym)
	}
	for _, f := range l.calls()[:2] {
		reg(f.fn, f.name)
	}
	if err != nil {
		return nil, err
	}
	var v int32
	if r := l.getVersion(&v); r != ncclSuccess {
		return nil, l.err("ncclGetVersion", r)
	}
	l.version = int(v)
	if l.version < ncclMinVersion {
		return nil, fmt.Errorf("dist: nccl: %s is NCCL %s: tune needs %s or later", path, NCCLVersionString(l.version), ncclMinVersionName)
	}
	for _, f := range l.calls()[2:] {
		reg(f.fn, f.name)
	}
	if err != nil {
		return nil, err
	}
	if sym, err := purego.Dlsym(h, "ncclCommInitRankScalable"); err == nil {
		purego.RegisterFunc(&l.commInitScalable, sym)
	}
	return l, nil
}

// calls are the bound functions and their C names; the first two are
// bound before the version check.
func (l *ncclLib) calls() []struct {
	fn   any
	name string
} {
	return []struct {
		fn   any
		name string
	}{
		{&l.getVersion, "ncclGetVersion"},
		{&l.errorString, "ncclGetErrorString"},
		{&l.getUniqueID, "ncclGetUniqueId"},
		{&l.commInitRank, "ncclCommInitRank"},
		{&l.allReduce, "ncclAllReduce"},
		{&l.commDestroy, "ncclCommDestroy"},
		{&l.commAbort, "ncclCommAbort"},
		{&l.commAsyncError, "ncclCommGetAsyncError"},
	}
}

// shortList joins what was tried, eliding the middle of a long list.
func shortList(s []string) string {
	if len(s) > 8 {
		s = append(append(slices.Clone(s[:4]), fmt.Sprintf("... %d more ...", len(s)-7)), s[len(s)-3:]...)
	}
	return strings.Join(s, ", ")
}

var loadNCCL = sync.OnceValues(func() (*ncclLib, error) {
	return openNCCL(ncclSearch(os.Getenv, filepath.Glob))
})

// NCCLVersionString formats an NCCL version code (ncclGetVersion):
// major*10000 + minor*100 + patch from 2.9 on, major*1000 + minor*100 +
// patch before.
func NCCLVersionString(code int) string {
	if code >= 20900 {
		return fmt.Sprintf("%d.%d.%d", code/10000, code/100%100, code%100)
	}
	return fmt.Sprintf("%d.%d.%d", code/1000, code/100%10, code%100)
}

// NCCLAvailable loads libnccl.so.2 (once) and returns its path and version,
// or why it cannot be used.
func NCCLAvailable() (path, version string, err error) {
	l, err := loadNCCL()
	if err != nil {
		return "", "", err
	}
	return l.path, NCCLVersionString(l.version), nil
}

func (l *ncclLib) err(call string, r int32) error {
	msg := ""
	if l.errorString != nil {
		msg = l.errorString(r)
	}
	return fmt.Errorf("dist: nccl: %s: %s (ncclResult_t %d)", call, msg, r)
}

// NCCLOptions configure OpenNCCL.
type NCCLOptions struct {
	// Enter, when set, is called around every NCCL call and must make the
	// GPU's CUDA context current on the calling OS thread (locking the
	// goroutine to it) and return the function that undoes that. NCCL uses
	// the current device/context of the thread it is called on; the CUDA
	// backend (kernels/cuda) owns that context.
	Enter func() (leave func())
}

// NCCL is one rank's NCCL communicator.
type NCCL struct {
	l          *ncclLib
	comm       uintptr
	rank, size int
	enter      func() func()
	closed     bool
}

// OpenNCCL creates the NCCL communicator of boot's ranks: rank 0 makes the
// unique id, boot broadcasts it, and every rank joins with its boot rank.
// Every rank of boot calls it, after selecting its GPU (LOCAL_RANK's) in
// opts.Enter's context. On an error the caller aborts boot, as after any
// failed collective, so that the other ranks do not wait in the broadcast
// or in NCCL's own rendezvous.
func OpenNCCL(boot Comm, opts NCCLOptions) (*NCCL, error) {
	if boot == nil {
		return nil, errors.New("dist: nccl: no bootstrap group (a single process needs no NCCL)")
	}
	l, err := loadNCCL()
	if err != nil {
		return nil, err
	}
	return openNCCLComm(l, boot, opts)
}

func openNCCLComm(l *ncclLib, boot Comm, opts NCCLOptions) (*NCCL, error) {
	n := &NCCL{l: l, rank: boot.Rank(), size: boot.Size(), enter: opts.Enter}
	if n.enter == nil {
		n.enter = func() func() { return func() {} }
	}
	var id ncclUniqueID
	if n.rank == 0 {
		leave := n.enter()
		r := l.getUniqueID(&id)
		leave()
		if r != ncclSuccess {
			return nil, l.err("ncclGetUniqueId", r)
		}
	}
	if err := boot.Broadcast(id[:], 0); err != nil {
		return nil, fmt.Errorf("dist: nccl: broadcast of the unique id: %w", err)
	}
	leave := n.enter()
	call := "ncclCommInitRankScalable"
	var r int32
	if l.commInitScalable != nil {
		r = l.commInitScalable(&n.comm, int32(n.size), int32(n.rank), 1, &id, 0)
	} else {
		call = "ncclCommInitRank"
		r = l.commInitRank(&n.comm, int32(n.size), ncclUniqueIDValue{id}, int32(n.rank))
	}
	leave()
	if r != ncclSuccess {
		return nil, fmt.Errorf("rank %d of %d: %w", n.rank, n.size, l.err(call, r))
	}
	return n, nil
}

// Rank is this rank's place in the communicator (boot's rank).
func (n *NCCL) Rank() int { return n.rank }

// Size is the number of ranks.
func (n *NCCL) Size() int { return n.size }

// Library is the loaded library's path and NCCL version.
func (n *NCCL) Library() (string, string) { return n.l.path, NCCLVersionString(n.l.version) }

// AllReduceF32 sums count float32s at the device address send over the
// ranks into recv (which may equal send: in place), enqueued on the CUDA
// stream (0: the legacy default stream). It returns when enqueued; the sum
// is there once the stream reaches it. Addresses are CUdeviceptr values the
// caller allocated.
func (n *NCCL) AllReduceF32(send, recv uint64, count int, stream uint64) error {
	return n.allReduce(send, recv, count, ncclFloat32, stream)
}

// AllReduceF64 is AllReduceF32 for float64s.
func (n *NCCL) AllReduceF64(send, recv uint64, count int, stream uint64) error {
	return n.allReduce(send, recv, count, ncclFloat64, stream)
}

func (n *NCCL) allReduce(send, recv uint64, count int, dtype int32, stream uint64) error {
	if n.closed {
		return errors.New("dist: nccl: the communicator is closed")
	}
	if count < 0 || count > 0 && (send == 0 || recv == 0) {
		return fmt.Errorf("dist: nccl: all-reduce of %d elements at %#x -> %#x: want count >= 0 and device addresses", count, send, recv)
	}
	leave := n.enter()
	defer leave()
	if r := n.l.allReduce(uintptr(send), uintptr(recv), uint64(count), dtype, ncclSum, n.comm, uintptr(stream)); r != ncclSuccess {
		return fmt.Errorf("rank %d of %d: %w", n.rank, n.size, n.l.err("ncclAllReduce", r))
	}
	return nil
}

// AsyncError reports an error NCCL met in the background (a peer gone, a
// network failure); poll it while waiting on the stream.
func (n *NCCL) AsyncError() error {
	var r int32
	leave := n.enter()
	defer leave()
	if rc := n.l.commAsyncError(n.comm, &r); rc != ncclSuccess {
		return n.l.err("ncclCommGetAsyncError", rc)
	}
	if r != ncclSuccess {
		return fmt.Errorf("rank %d of %d: %w", n.rank, n.size, n.l.err("asynchronous error", r))
	}
	return nil
}

// Close destroys the communicator (after the stream's work is done).
func (n *NCCL) Close() error {
	if n.closed {
		return nil
	}
	n.closed = true
	leave := n.enter()
	defer leave()
	if r := n.l.commDestroy(n.comm); r != ncclSuccess {
		return n.l.err("ncclCommDestroy", r)
	}
	return nil
}

// Abort tears the communicator down at once, after an error on any rank.
func (n *NCCL) Abort() {
	if n.closed {
		return
	}
	n.closed = true
	leave := n.enter()
	defer leave()
	n.l.commAbort(n.comm)
}

// GradientTransport says how a data-parallel trainer on device ("cuda",
// "cpu", ...) sums its gradients: "nccl" when TUNE_DIST=nccl forces it, or
// when the device is CUDA and load (libnccl.so.2) succeeds; "host" (the MPI
// or TCP Comm) otherwise, and always when TUNE_DIST names mpi, tcp or none.
// Forcing NCCL without the library, or off CUDA, is an error.
func GradientTransport(device string, getenv func(string) string, load func() error) (string, error) {
	forced := false
	switch v := strings.ToLower(strings.TrimSpace(getenv("TUNE_DIST"))); v {
	case "mpi", "tcp", "none":
		return "host", nil
	case "nccl":
		forced = true
	case "", "auto":
	default:
		return "", fmt.Errorf("dist: TUNE_DIST=%q: want mpi, tcp, nccl or none", v)
	}
	if device != "cuda" {
		if forced {
			return "", fmt.Errorf("dist: TUNE_DIST=nccl, but the device is %q: NCCL sums GPU memory (use --device cuda, or TUNE_DIST=mpi|tcp)", device)
		}
		return "host", nil
	}
	if err := load(); err != nil {
		if forced {
			return "", fmt.Errorf("dist: TUNE_DIST=nccl: %w", err)
		}
		return "host", nil
	}
	return "nccl", nil
}

// LoadNCCL is GradientTransport's load in production.
func LoadNCCL() error {
	_, err := loadNCCL()
	return err
}
