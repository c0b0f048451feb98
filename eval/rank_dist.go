package eval

// Parallel evaluation: the measures split their windows (ppl, kld) or items
// (bench) across the ranks of a data-parallel group, rank r taking r, r+W,
// r+2W, ..., and exchange per-window (per-token, per-item) numbers so that
// every rank adds them up in the one process's order. The results are bit
// for bit those of one process: each slot of the exchanged buffer is written
// by one rank and is 0 on the others, and x + 0 = x exactly in any order.

// Reducer is the part of a data-parallel group (dist.Comm) the measures use.
type Reducer interface {
	Rank() int
	Size() int
	// AllReduceF64 replaces buf by the element-wise sum over ranks.
	AllReduceF64(buf []float64) error
}

// rankOf is (rank, size) of d; a nil d is rank 0 of 1.
func rankOf(d Reducer) (int, int) {
	if d == nil || d.Size() < 1 {
		return 0, 1
	}
	return d.Rank(), d.Size()
}

// gatherWindows completes buf on every rank: each rank filled the slots of
// the windows it scored and left the others 0.
func gatherWindows(d Reducer, buf []float64) error {
	if _, size := rankOf(d); size == 1 {
		return nil
	}
	return d.AllReduceF64(buf)
}
