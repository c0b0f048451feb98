package cpu

import (
	"sync"
	"sync/atomic"
)

// task is one parallel op: run computes chunk i with worker w's scratch.
// Chunks write disjoint outputs, so the split never changes results.
type task interface {
	run(w *worker, chunk int)
}

// worker owns scratch buffers reused across calls.
type worker struct {
	wbuf    []float32 // converted weight tile
	scores  []float32 // attention scores
	scores2 []float32 // attention backward: dout·v per key
	row     []float32 // matmul: one converted weight row segment
	cs      []float32 // matmul: a micro-kernel's output block at the edges
	acc     []float32 // attention backward: dk, dv accumulators
	kr      kRow      // qint8: one weight row's decoded K-quant scales
	qd      []float32 // qint8: dot products of one weight row with a run of activation rows
	k8      k8Group   // qint8: eight K-quant rows prepared for the VNNI kernel (amd64)
}

// grow returns (*buf)[:n], reallocating when too small.
func grow(buf *[]float32, n int) []float32 {
	if cap(*buf) < n {
		*buf = make([]float32, n)
	}
	return (*buf)[:n]
}

func (w *worker) tile(n int) []float32 {
	if cap(w.wbuf) < n {
		w.wbuf = make([]float32, n)
	}
	return w.wbuf[:n]
}

func (w *worker) scoreBuf(n int) []float32 {
	if cap(w.scores) < n {
		w.scores = make([]float32, n)
	}
	return w.scores[:n]
}

// pool is a fixed set of goroutines; the calling goroutine acts as worker 0.
// Chunks are handed out through an atomic counter (dynamic load balancing).
// One job runs at a time: the Backend's mutex guarantees it.
type pool struct {
	workers []*worker
	wake    []chan struct{}
	done    sync.WaitGroup

	job     task
	nchunks int64
	next    atomic.Int64
}

func newPool(n int) *pool {
	p := &pool{workers: make([]*worker, n), wake: make([]chan struct{}, n)}
	for i := range p.workers {
		p.workers[i] = &worker{}
		if i > 0 {
			p.wake[i] = make(chan struct{}, 1)
			go p.loop(i)
		}
	}
	return p
}

func (p *pool) loop(i int) {
	w := p.workers[i]
	for range p.wake[i] {
		p.drain(w)
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

// do runs chunks 0..n-1 of t and returns when all are done.
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
