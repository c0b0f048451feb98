package cpu

import (
	"fmt"
	"math"
)

type softmaxTask struct {
	out, in []float32
	C       int
}

// SoftmaxForward: out[n,:] = exp(in[n,:]-max) / sum(exp(in[n,:]-max)).
func (b *Backend) SoftmaxForward(out, in []float32, N, C int) {
	need("softmax", "out", len(out), N*C)
	need("softmax", "in", len(in), N*C)
	b.mu.Lock()
	defer b.mu.Unlock()
	s := &b.sm
	*s = softmaxTask{out: out, in: in, C: C}
	b.pool.do(s, N)
	*s = softmaxTask{}
}

func (s *softmaxTask) run(_ *worker, n int) {
	x := s.in[n*s.C : (n+1)*s.C]
	o := s.out[n*s.C : (n+1)*s.C]
	o = o[:len(x)]
	mx := float32(math.Inf(-1))
	for _, v := range x {
		mx = max(mx, v)
	}
	expAffine(o, x, 1, -mx)
	var sum float64
	for _, e := range o {
		sum += float64(e)
	}
	inv := float32(1 / sum)
	for i := range o {
		o[i] *= inv
	}
}

type nllTask struct {
	nll     []float64
	logits  []float32
	targets []int
	V       int
}

// LogSoftmaxNLLForward: nll[n] = logsumexp(logits[n,:]) - logits[n,targets[n]],
// with the max subtracted and the sum of exponentials kept in float64.
func (b *Backend) LogSoftmaxNLLForward(nll []float64, logits []float32, targets []int, N, V int) {
	need("log_softmax_nll", "nll", len(nll), N)
	need("log_softmax_nll", "logits", len(logits), N*V)
	need("log_softmax_nll", "targets", len(targets), N)
	for i, id := range targets[:N] {
		if id < 0 || id >= V {
			panic(fmt.Sprintf("cpu: log_softmax_nll: targets[%d] = %d outside [0,%d)", i, id, V))
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := &b.nll
	*s = nllTask{nll: nll, logits: logits, targets: targets, V: V}
	b.pool.do(s, N)
	*s = nllTask{}
}

func (s *nllTask) run(_ *worker, n int) {
	x := s.logits[n*s.V : (n+1)*s.V]
	mx, sum := maxExpSum(x)
	s.nll[n] = float64(mx) + math.Log(sum) - float64(x[s.targets[n]])
}

type nllBackTask struct {
	dlogits, logits []float32
	targets         []int
	dloss           float32
	V               int
}

// LogSoftmaxNLLBackward differentiates dloss * sum_n nll[n] (LogSoftmaxNLLForward):
//
//	dlogits[n,v] = dloss * (softmax(logits[n,:])[v] - [v == targets[n]])
//
// overwritten, with the same max-subtracted float64 sum as the forward.
// dlogits may alias logits.
func (b *Backend) LogSoftmaxNLLBackward(dlogits, logits []float32, targets []int, dloss float32, N, V int) {
	need("log_softmax_nll_back", "dlogits", len(dlogits), N*V)
	need("log_softmax_nll_back", "logits", len(logits), N*V)
	need("log_softmax_nll_back", "targets", len(targets), N)
	for i, id := range targets[:N] {
		if id < 0 || id >= V {
			panic(fmt.Sprintf("cpu: log_softmax_nll_back: targets[%d] = %d outside [0,%d)", i, id, V))
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := &b.nllB
	*s = nllBackTask{dlogits: dlogits, logits: logits, targets: targets, dloss: dloss, V: V}
	b.pool.do(s, N)
	*s = nllBackTask{}
}

func (s *nllBackTask) run(_ *worker, n int) {
	x := s.logits[n*s.V : (n+1)*s.V]
	d := s.dlogits[n*s.V : (n+1)*s.V]
	d = d[:len(x)]
	mx, sum := maxExpSum(x)
	inv := 1 / sum
	expAffine(d, x, 1, -mx) // d may alias x: each element is read before it is written
	for i, e := range d {
		d[i] = s.dloss * float32(float64(e)*inv)
	}
	d[s.targets[n]] -= s.dloss
}

// maxExpSum returns the row's maximum and expSum(x, max).
func maxExpSum(x []float32) (mx float32, sum float64) {
	mx = float32(math.Inf(-1))
	for _, v := range x {
		mx = max(mx, v)
	}
	return mx, expSum(x, mx)
}

// expSum is sum_i e^(x[i]-mx): float32 exponentials (expf) summed in
// float64 in index order, a chunk of 256 exponentials at a time on the
// stack.
func expSum(x []float32, mx float32) (sum float64) {
	var buf [256]float32
	for i := 0; i < len(x); i += len(buf) {
		e := buf[:min(len(buf), len(x)-i)]
		expAffine(e, x[i:], 1, -mx)
		for _, v := range e {
			sum += float64(v)
		}
	}
	return sum
}
