package dist

import "sync"

// DeviceComm sums buffers in device memory over a group's ranks, beside
// the host Comm that carries everything small: *NCCL.
type DeviceComm interface {
	// AllReduceF32 sums count float32s at the device address send over
	// the ranks into recv (in place when equal), enqueued on stream.
	AllReduceF32(send, recv uint64, count int, stream uint64) error
	// Close ends the communicator after a run that ended well on every
	// rank; Abort after an error (a peer may be gone).
	Close() error
	Abort()
}

// DeviceOpener opens the device communicator of boot's ranks, using boot
// to bootstrap it (OpenNCCL). Every rank of boot calls it, or none.
type DeviceOpener func(boot Comm) (DeviceComm, error)

var worldDevice struct {
	mu   sync.Mutex
	open DeviceOpener
}

// SetWorldDevice registers how to open World's device communicator: the
// command that opened the GPU backend and chose NCCL (GradientTransport)
// sets it, the trainer calls it when the gradients it sums live on the
// device of every rank (package train), so that a run that keeps them on
// the host never opens one. nil unregisters it.
func SetWorldDevice(open DeviceOpener) {
	worldDevice.mu.Lock()
	defer worldDevice.mu.Unlock()
	worldDevice.open = open
}

// WorldDevice is what SetWorldDevice registered (nil: none; gradients are
// summed on the host Comm).
func WorldDevice() DeviceOpener {
	worldDevice.mu.Lock()
	defer worldDevice.mu.Unlock()
	return worldDevice.open
}

var _ DeviceComm = (*NCCL)(nil)
