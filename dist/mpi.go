package dist

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// Open MPI's C API, loaded at run time (no cgo, no mpi.h at build time).
// Open MPI's handles are addresses of exported globals (mpi.h:
// #define MPI_COMM_WORLD OMPI_PREDEFINED_GLOBAL(MPI_Comm, ompi_mpi_comm_world),
// likewise MPI_FLOAT = &ompi_mpi_float, MPI_DOUBLE = &ompi_mpi_double,
// MPI_BYTE = &ompi_mpi_byte, MPI_SUM = &ompi_mpi_op_sum; MPI_STATUS_IGNORE
// is NULL, MPI_IN_PLACE is (void*)1; counts are C int). MPICH names its
// handles as integer constants instead, so this binding is Open MPI's only.

const (
	mpiSuccess          = 0
	mpiThreadSerialized = 2 // enum { SINGLE, FUNNELED, SERIALIZED, MULTIPLE }
	mpiInPlace          = uintptr(1)
	mpiMaxCount         = 1 << 30 // elements per call, below C int's limit
)

type mpiLib struct {
	initThread     func(argc, argv unsafe.Pointer, required int32, provided *int32) int32
	initialized    func(flag *int32) int32
	finalize       func() int32
	abort          func(comm uintptr, code int32) int32
	commRank       func(comm uintptr, rank *int32) int32
	commSize       func(comm uintptr, size *int32) int32
	allreduce      func(send uintptr, recv unsafe.Pointer, count int32, dtype, op, comm uintptr) int32
	bcast          func(buf unsafe.Pointer, count int32, dtype uintptr, root int32, comm uintptr) int32
	send           func(buf unsafe.Pointer, count int32, dtype uintptr, dest, tag int32, comm uintptr) int32
	recv           func(buf unsafe.Pointer, count int32, dtype uintptr, src, tag int32, comm uintptr, status unsafe.Pointer) int32
	barrier        func(comm uintptr) int32
	errorString    func(code int32, s *byte, n *int32) int32
	commWorld      uintptr
	float, double  uintptr
	byteT, opSum   uintptr
	path           string
	mu             sync.Mutex // MPI_THREAD_SERIALIZED: one call at a time
	finalizeCalled bool
}

// mpiPaths are tried in order; TUNE_MPI_LIB names the library explicitly.
var mpiPaths = []string{"libmpi.so.40", "libmpi.so", "/usr/lib/x86_64-linux-gnu/libmpi.so.40", "/usr/lib/aarch64-linux-gnu/libmpi.so.40", "/usr/lib64/openmpi/lib/libmpi.so.40", "/opt/openmpi/lib/libmpi.so.40"}

var loadMPI = sync.OnceValues(func() (*mpiLib, error) {
	paths := mpiPaths
	if p := os.Getenv("TUNE_MPI_LIB"); p != "" {
		paths = []string{p}
	}
	var h uintptr
	var path string
	var errs []string
	for _, p := range paths {
		// RTLD_GLOBAL: Open MPI's plugins (mca_*.so) resolve libmpi's
		// symbols from the global scope.
		var err error
		h, err = purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err == nil {
			path = p
			break
		}
		errs = append(errs, err.Error())
	}
	if h == 0 {
		return nil, fmt.Errorf("dist: mpi: load libmpi.so (Open MPI; apt-get install openmpi-bin libopenmpi-dev, or TUNE_MPI_LIB=path): %s", strings.Join(errs, "; "))
	}
	l := &mpiLib{path: path}
	var err error
	reg := func(fn any, name string) {
		if err != nil {
			return
		}
		var sym uintptr
		if sym, err = purego.Dlsym(h, name); err != nil {
			err = fmt.Errorf("dist: mpi: %s: no %s: %v", path, name, err)
			return
		}
		purego.RegisterFunc(fn, sym)
	}
	global := func(dst *uintptr, name string) {
		if err != nil {
			return
		}
		if *dst, err = purego.Dlsym(h, name); err != nil {
			err = fmt.Errorf("dist: mpi: %s: no %s (not Open MPI? MPICH and Intel MPI are not supported yet): %v", path, name, err)
		}
	}
	reg(&l.initThread, "MPI_Init_thread")
	reg(&l.initialized, "MPI_Initialized")
	reg(&l.finalize, "MPI_Finalize")
	reg(&l.abort, "MPI_Abort")
	reg(&l.commRank, "MPI_Comm_rank")
	reg(&l.commSize, "MPI_Comm_size")
	reg(&l.allreduce, "MPI_Allreduce")
	reg(&l.bcast, "MPI_Bcast")
	reg(&l.send, "MPI_Send")
	reg(&l.recv, "MPI_Recv")
	reg(&l.barrier, "MPI_Barrier")
	reg(&l.errorString, "MPI_Error_string")
	global(&l.commWorld, "ompi_mpi_comm_world")
	global(&l.float, "ompi_mpi_float")
	global(&l.double, "ompi_mpi_double")
	global(&l.byteT, "ompi_mpi_byte")
	global(&l.opSum, "ompi_mpi_op_sum")
	if err != nil {
		return nil, err
	}
	return l, nil
})

type mpiComm struct {
	l          *mpiLib
	rank, size int
	closed     bool
}

// OpenMPI initialises MPI (once per process) over MPI_COMM_WORLD.
func OpenMPI() (Comm, error) {
	l, err := loadMPI()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var flag int32
	l.initialized(&flag)
	if flag == 0 {
		var provided int32
		if rc := l.initThread(nil, nil, mpiThreadSerialized, &provided); rc != mpiSuccess {
			return nil, l.err("MPI_Init_thread", rc)
		}
		if provided < mpiThreadSerialized {
			// Calls come from whichever OS thread runs the goroutine.
			return nil, fmt.Errorf("dist: mpi: %s gives thread level %d, tune needs MPI_THREAD_SERIALIZED (2)", l.path, provided)
		}
	}
	var rank, size int32
	if rc := l.commRank(l.commWorld, &rank); rc != mpiSuccess {
		return nil, l.err("MPI_Comm_rank", rc)
	}
	if rc := l.commSize(l.commWorld, &size); rc != mpiSuccess {
		return nil, l.err("MPI_Comm_size", rc)
	}
	return &mpiComm{l: l, rank: int(rank), size: int(size)}, nil
}

func (l *mpiLib) err(call string, rc int32) error {
	buf := make([]byte, 256)
	n := int32(len(buf))
	if l.errorString(rc, &buf[0], &n) == mpiSuccess && n > 0 && int(n) <= len(buf) {
		return fmt.Errorf("dist: mpi: %s: %s (error %d)", call, buf[:n], rc)
	}
	return fmt.Errorf("dist: mpi: %s: error %d", call, rc)
}

func (c *mpiComm) Rank() int       { return c.rank }
func (c *mpiComm) Size() int       { return c.size }
func (c *mpiComm) Backend() string { return "mpi" }

func (c *mpiComm) check() error {
	if c.closed {
		return errors.New("dist: mpi: the communicator is closed (MPI_Finalize was called)")
	}
	return nil
}

// chunks calls f over [0,n) in pieces C int can count.
func chunks(n int, f func(lo, hi int) error) error {
	for lo := 0; lo < n; lo += mpiMaxCount {
		if err := f(lo, min(n, lo+mpiMaxCount)); err != nil {
			return err
		}
	}
	return nil
}

func (c *mpiComm) AllReduceF64(buf []float64) error {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if err := c.check(); err != nil {
		return err
	}
	return chunks(len(buf), func(lo, hi int) error {
		if rc := c.l.allreduce(mpiInPlace, unsafe.Pointer(&buf[lo]), int32(hi-lo), c.l.double, c.l.opSum, c.l.commWorld); rc != mpiSuccess {
			return c.l.err("MPI_Allreduce", rc)
		}
		return nil
	})
}

func (c *mpiComm) AllReduceF32(buf []float32) error {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if err := c.check(); err != nil {
		return err
	}
	return chunks(len(buf), func(lo, hi int) error {
		if rc := c.l.allreduce(mpiInPlace, unsafe.Pointer(&buf[lo]), int32(hi-lo), c.l.float, c.l.opSum, c.l.commWorld); rc != mpiSuccess {
			return c.l.err("MPI_Allreduce", rc)
		}
		return nil
	})
}

func (c *mpiComm) Broadcast(buf []byte, root int) error {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if err := c.check(); err != nil {
		return err
	}
	return chunks(len(buf), func(lo, hi int) error {
		if rc := c.l.bcast(unsafe.Pointer(&buf[lo]), int32(hi-lo), c.l.byteT, int32(root), c.l.commWorld); rc != mpiSuccess {
			return c.l.err("MPI_Bcast", rc)
		}
		return nil
	})
}

func (c *mpiComm) SendF32(buf []float32, to int) error {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if err := c.check(); err != nil {
		return err
	}
	return chunks(len(buf), func(lo, hi int) error {
		if rc := c.l.send(unsafe.Pointer(&buf[lo]), int32(hi-lo), c.l.float, int32(to), 0, c.l.commWorld); rc != mpiSuccess {
			return c.l.err("MPI_Send", rc)
		}
		return nil
	})
}

func (c *mpiComm) RecvF32(buf []float32, from int) error {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if err := c.check(); err != nil {
		return err
	}
	return chunks(len(buf), func(lo, hi int) error {
		if rc := c.l.recv(unsafe.Pointer(&buf[lo]), int32(hi-lo), c.l.float, int32(from), 0, c.l.commWorld, nil); rc != mpiSuccess {
			return c.l.err("MPI_Recv", rc)
		}
		return nil
	})
}

func (c *mpiComm) Barrier() error {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if err := c.check(); err != nil {
		return err
	}
	if rc := c.l.barrier(c.l.commWorld); rc != mpiSuccess {
		return c.l.err("MPI_Barrier", rc)
	}
	return nil
}

func (c *mpiComm) Close() error {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if c.closed || c.l.finalizeCalled {
		c.closed = true
		return nil
	}
	c.closed, c.l.finalizeCalled = true, true
	if rc := c.l.finalize(); rc != mpiSuccess {
		return c.l.err("MPI_Finalize", rc)
	}
	return nil
}

// Abort ends every rank of the job (mpirun reports it); it does not return.
func (c *mpiComm) Abort(code int) {
	c.l.abort(c.l.commWorld, int32(code))
	os.Exit(code)
}
