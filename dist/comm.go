package dist

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// Comm is a group of ranks and the collectives the trainer uses. Every rank
// calls the same collectives in the same order; a rank that dies makes the
// others' calls fail (TCP: an error naming it; MPI: mpirun ends the job).
type Comm interface {
	Rank() int
	Size() int
	// Backend is "mpi" or "tcp" (NCCL is not a Comm: see NCCL).
	Backend() string
	// AllReduceF64 and AllReduceF32 replace buf by the element-wise sum
	// over ranks, the same bits on every rank.
	AllReduceF64(buf []float64) error
	AllReduceF32(buf []float32) error
	// Broadcast copies root's buf into every rank's buf (same length).
	Broadcast(buf []byte, root int) error
	// SendF32 and RecvF32 move one message between two ranks; the lengths
	// must match.
	SendF32(buf []float32, to int) error
	RecvF32(buf []float32, from int) error
	Barrier() error
	// Close ends the rank's part in the group (MPI_Finalize): every rank
	// calls it once, after its last collective.
	Close() error
	// Abort ends the whole job from one rank after an error (MPI_Abort);
	// on TCP it closes the connections so that the others fail fast.
	Abort(code int)
}

// Options configure Open.
type Options struct {
	// Backend is "mpi", "tcp" or "" (Backend(l, getenv)).
	Backend string
	// Timeout bounds one TCP collective and the rendezvous (default
	// TUNE_DIST_TIMEOUT seconds, else 10 minutes).
	Timeout time.Duration
}

// Open joins the group l describes. A launch of one process returns nil,
// nil: callers treat a nil Comm as "single process".
func Open(l Launch, opts Options) (Comm, error) {
	b := opts.Backend
	if b == "" {
		var err error
		if b, err = Backend(l, os.Getenv); err != nil {
			return nil, err
		}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Minute
		if s := os.Getenv("TUNE_DIST_TIMEOUT"); s != "" {
			sec, err := strconv.ParseFloat(s, 64)
			if err != nil || sec <= 0 {
				return nil, fmt.Errorf("dist: TUNE_DIST_TIMEOUT=%q: want seconds > 0", s)
			}
			opts.Timeout = time.Duration(sec * float64(time.Second))
		}
	}
	switch b {
	case "none":
		return nil, nil
	case "mpi":
		c, err := OpenMPI()
		if err != nil {
			return nil, err
		}
		if l.Launcher != "" && (c.Rank() != l.Rank || c.Size() != l.Size) {
			return nil, fmt.Errorf("dist: MPI says rank %d of %d, the %s variables say %d of %d", c.Rank(), c.Size(), l.Launcher, l.Rank, l.Size)
		}
		if c.Size() == 1 {
			c.Close()
			return nil, nil
		}
		return c, nil
	case "tcp":
		if !l.Distributed() {
			return nil, nil
		}
		if l.MasterAddr == "" || l.MasterPort == 0 {
			return nil, fmt.Errorf("dist: rank %d of %d over TCP needs MASTER_ADDR and MASTER_PORT (rank 0's address and a free port)", l.Rank, l.Size)
		}
		return OpenTCP(l.Rank, l.Size, l.MasterAddr, l.MasterPort, opts.Timeout)
	}
	return nil, fmt.Errorf("dist: backend %q: want mpi, tcp or none", b)
}

// World is the process's group, opened once from the environment (Detect,
// Backend, Open): nil for a single process. Commands that finish a
// distributed run call Finalize.
var World = sync.OnceValues(func() (Comm, error) {
	l, err := Detect(os.Getenv)
	if err != nil {
		return nil, err
	}
	return Open(l, Options{})
})

// Finalize closes World if it was opened as a group.
func Finalize() error {
	c, err := World()
	if err != nil || c == nil {
		return nil
	}
	return c.Close()
}

// f32Bytes and f64Bytes view float slices as bytes for the transports.
func f32Bytes(s []float32) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), 4*len(s))
}

func f64Bytes(s []float64) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), 8*len(s))
}

// BroadcastF32 broadcasts float32 slabs from root, one after another.
func BroadcastF32(c Comm, root int, slabs ...[]float32) error {
	for _, s := range slabs {
		if err := c.Broadcast(f32Bytes(s), root); err != nil {
			return err
		}
	}
	return nil
}
