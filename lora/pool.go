package lora

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// task is one parallel op: run computes chunk i with worker w's scratch.
// Chunks write disjoint outputs and every output is one sequential sum, so
// neither the chunking nor the number of cores changes a result bit.
type task interface {
	run(w *worker, chunk int)
}

// worker owns scratch reused across calls (a dropped-out input row, a
// column-block accumulator), so Forward and Backward allocate nothing.
type worker struct {
	row []float32
	acc []float32
}

func (w *worker) rowBuf(n int) []float32 {
	if cap(w.row) < n {
		w.row = make([]float32, n)
	}
	return w.row[:n]
}

func (w *worker) accBuf(n int) []float32 {
	if cap(w.acc) < n {
		w.acc = make([]float32, n)
	}
	return w.acc[:n]
}

// pool is a fixed set of goroutines shared by every Adapter of the process;
// the calling goroutine acts as worker 0. One job runs at a time (mu).
type pool struct {
	mu      sync.Mutex
	workers []*worker
	wake    []chan struct{}
	done    sync.WaitGroup
	job     task
	nchunks int64
	next    atomic.Int64
}

var sharedPool = sync.OnceValue(func() *pool {
	n := runtime.GOMAXPROCS(0)
	p := &pool{workers: make([]*worker, n), wake: make([]chan struct{}, n)}
	for i := range p.workers {
		p.workers[i] = &worker{}
		if i > 0 {
			p.wake[i] = make(chan struct{}, 1)
			go p.loop(i)
		}
	}
	return p
})

func (p *pool) loop(i int) {
	for range p.wake[i] {
		p.drain(p.workers[i])
		p.done.Done()
	}
}

func (p *pool) drain(w *worker) {
	for {
		c := p.next.Add(1) - 1
		if c >= p.nchunks {
			return
		}
		p.job.run(w, int(c))
	}
}

// do runs chunks 0..n-1 of t and returns when all are done. The caller
// holds p.mu.
func (p *pool) do(t task, n int) {
	if n <= 0 {
		return
	}
	if n == 1 || len(p.workers) == 1 {
		for c := 0; c < n; c++ {
			t.run(p.workers[0], c)
		}
		return
	}
	p.job, p.nchunks = t, int64(n)
	p.next.Store(0)
	extra := min(len(p.workers), n) - 1
	p.done.Add(extra)
	for i := 1; i <= extra; i++ {
		p.wake[i] <- struct{}{}
	}
	p.drain(p.workers[0])
	p.done.Wait()
	p.job = nil
}

// chunks splits n items into pieces of at least minSize, about four per
// worker for load balance; it returns the piece size and count.
func (p *pool) chunks(n, minSize int) (size, count int) {
	if n <= 0 {
		return 1, 0
	}
	size = max(minSize, (n+4*len(p.workers)-1)/(4*len(p.workers)))
	return size, (n + size - 1) / size
}
