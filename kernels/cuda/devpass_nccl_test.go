package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunellm/tune/dist"
	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/train"
)

// Data-parallel LoRA training with the gradients summed on the devices
// (devpass_nccl.go): two ranks in this process (goroutines joined over the
// TCP transport for everything small), each on its own fake device, and a
// stand-in for NCCL that sums the two fake devices' memory at the
// addresses AllReduceGrads hands it. The oracles are the host-synchronised
// 2-rank run (grads down, summed over TCP, params up: what the trainer did
// before) and one process on the CPU backend over the same global batches.

// fakeNCCL is the ranks' shared all-reduce: every rank posts its device
// and buffer, the last to arrive sums in rank order (as dist's TCP path and
// NCCL's ring for two ranks: g0+g1) into every rank's recv, and all go on.
type fakeNCCL struct {
	W     int
	mu    sync.Mutex
	cond  *sync.Cond
	gen   int
	posts []ncclPost
	calls []int  // per rank
	mut   string // a broken all-reduce: "twice" sums the slab twice, "none" leaves it as it is
}

type ncclPost struct {
	dev              *fakeDev
	send, recv       uint64
	count            int
	stream           uint64
	arrived, claimed bool
}

func newFakeNCCL(W int) *fakeNCCL {
	h := &fakeNCCL{W: W, posts: make([]ncclPost, W), calls: make([]int, W)}
	h.cond = sync.NewCond(&h.mu)
	return h
}

func (h *fakeNCCL) allReduce(rank int, dev *fakeDev, send, recv uint64, count int, stream uint64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	gen := h.gen
	h.calls[rank]++
	if h.mut == "none" {
		return nil
	}
	h.posts[rank] = ncclPost{dev: dev, send: send, recv: recv, count: count, stream: stream, arrived: true}
	n := 0
	for _, p := range h.posts {
		if p.arrived {
			n++
		}
	}
	if n < h.W {
		for gen == h.gen {
			h.cond.Wait()
		}
		return nil
	}
	for r, p := range h.posts {
		if p.count != h.posts[0].count {
			return fmt.Errorf("fake nccl: rank %d sums %d floats, rank 0 %d", r, p.count, h.posts[0].count)
		}
	}
	sum := make([]float32, count)
	for _, p := range h.posts {
		for i, x := range p.dev.f32(p.send, p.count) {
			sum[i] += x
		}
	}
	if h.mut == "twice" {
		for i := range sum {
			sum[i] *= 2
		}
	}
	for _, p := range h.posts {
		copy(p.dev.f32(p.recv, p.count), sum)
	}
	h.posts = make([]ncclPost, h.W)
	h.gen++
	h.cond.Broadcast()
	return nil
}

// rankNCCL is one rank's dist.DeviceComm on the fake hub.
type rankNCCL struct {
	h             *fakeNCCL
	rank          int
	dev           *fakeDev
	closed, abort bool
	count         int // the adapter's parameters: the only count to sum
	bad           []string
}

func (n *rankNCCL) AllReduceF32(send, recv uint64, count int, stream uint64) error {
	if recv != send || stream != 0 || count != n.count {
		n.bad = append(n.bad, fmt.Sprintf("all-reduce of %d floats %#x -> %#x on stream %d, want %d in place on stream 0", count, send, recv, stream, n.count))
	}
	return n.h.allReduce(n.rank, n.dev, send, recv, count, stream)
}
func (n *rankNCCL) Close() error { n.closed = true; return nil }
func (n *rankNCCL) Abort()       { n.abort = true }

func freeTCPPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// dpConfig is the trainer's configuration of these runs (trainSteps').
func dpConfig(dir string, steps int) train.Config {
	return train.Config{MaxSteps: steps, BatchSize: 2, GradAccum: 1, LR: 1e-3, Schedule: "constant",
		AdamW:       train.AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01},
		MaxGradNorm: 1, KeepCheckpoints: 1, Dir: dir, DType: "f32", Seed: 42}
}

// dpRank is what one rank of a 2-rank run ended with.
type dpRank struct {
	run       *loraRun
	fake      *fakeDev
	nccl      *rankNCCL
	opened    int
	up, down  uint64 // bytes over "PCIe" during Run
	metrics   []train.StepMetrics
	notices   []string
	err       error
	onDevice  bool
	reduceDev bool
}

// runDP trains name on W=2 fake devices. hub: the trainer gets an
// OpenDevice on it (nil: none, the host sum); devPass false is
// TUNE_CUDA_PASS=host.
func runDP(t *testing.T, name string, steps int, devPass bool, hub *fakeNCCL) []*dpRank {
	t.Helper()
	return runDPIn(t, name, steps, devPass, hub, t.TempDir(), false, 0)
}

// runDPIn is runDP in the run folder dir, resuming from its last
// checkpoint, or stopping (as Ctrl-C on rank 0) after step stopAfter > 0.
func runDPIn(t *testing.T, name string, steps int, devPass bool, hub *fakeNCCL, dir string, resume bool, stopAfter int) []*dpRank {
	t.Helper()
	const W, T = 2, 24
	opts := model.TrainOptions{LossChunk: 8}
	ranks := make([]*dpRank, W)
	for r := range ranks {
		fb, fake := newFake(t, false)
		fb.devPass = devPass
		run := newLoRARun(t, name, fb, T, opts, 0.1)
		t.Cleanup(run.run.Close)
		ranks[r] = &dpRank{run: run, fake: fake, onDevice: run.run.OnDevice(), reduceDev: run.run.DeviceGrads()}
	}
	ds := fixedData{batches: packedBatches(rand.New(rand.NewPCG(9, 9)), 3, 2, T, ranks[0].run.m.Config.Vocab)}
	port := freeTCPPort(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for r, x := range ranks {
		wg.Go(func() {
			c, err := dist.OpenTCP(r, W, "127.0.0.1", port, 20*time.Second)
			if err != nil {
				x.err = err
				return
			}
			defer c.Close()
			cfg := dpConfig(dir, steps)
			cfg.Resume = resume
			tr := &train.Trainer{Cfg: cfg, Model: x.run.run, Params: x.run.run, Data: ds, Comm: c,
				Progress: func(e train.Event) {
					if e.Train != nil {
						x.metrics = append(x.metrics, *e.Train)
						if e.Train.Step == stopAfter {
							cancel()
						}
					}
				},
				Log: func(f string, a ...any) { x.notices = append(x.notices, fmt.Sprintf(f, a...)) }}
			if hub != nil {
				tr.OpenDevice = func(boot dist.Comm) (dist.DeviceComm, error) {
					x.opened++
					if boot != c {
						return nil, errors.New("OpenDevice got another bootstrap group")
					}
					x.nccl = &rankNCCL{h: hub, rank: r, dev: x.fake, count: len(x.run.ad.Params())}
					return x.nccl, nil
				}
			}
			h0, d0 := x.fake.htod, x.fake.dtoh
			rctx := context.Background()
			if r == 0 {
				rctx = ctx
			}
			_, x.err = tr.Run(rctx)
			x.up, x.down = x.fake.htod-h0, x.fake.dtoh-d0
			var ie *train.InterruptedError
			if x.err != nil && !errors.As(x.err, &ie) {
				c.Abort(1)
			}
		})
	}
	wg.Wait()
	for r, x := range ranks {
		var ie *train.InterruptedError
		if x.err != nil && !(stopAfter > 0 && errors.As(x.err, &ie) && ie.Step == stopAfter) {
			t.Fatalf("rank %d: %v", r, x.err)
		}
	}
	return ranks
}

// TestDevicePassNCCL: the gradients summed on the devices give the
// host-synchronised run's losses, grad norms and adapter, and one
// process's on the CPU; a step moves no gradient or parameter over PCIe.
func TestDevicePassNCCL(t *testing.T) {
	const steps = 4
	for _, name := range []string{"qwen3-untied-bf16", "qwen2"} {
		t.Run(name, func(t *testing.T) {
			hub := newFakeNCCL(2)
			dev := runDP(t, name, steps, true, hub)
			host := runDP(t, name, steps, true, nil)
			ref := newLoRARun(t, name, cpu.New(1), 24, model.TrainOptions{LossChunk: 8}, 0.1)
			ds := fixedData{batches: packedBatches(rand.New(rand.NewPCG(9, 9)), 3, 2, 24, ref.m.Config.Vocab)}
			one := ref.trainSteps(t, ds, steps, cpu.New(1))
			N := len(ref.ad.Params())
			for r, x := range dev {
				if !x.onDevice || !x.reduceDev || x.opened != 1 {
					t.Fatalf("rank %d: device pass %v, reduces on the device %v, opened NCCL %d times", r, x.onDevice, x.reduceDev, x.opened)
				}
				if hub.calls[r] != steps || len(x.nccl.bad) > 0 || !x.nccl.closed || x.nccl.abort {
					t.Fatalf("rank %d: %d all-reduces in %d steps (%v); closed %v, aborted %v", r, hub.calls[r], steps, x.nccl.bad, x.nccl.closed, x.nccl.abort)
				}
				// Per step (one sequence per rank): the int32 inputs up, the
				// loss and the grad norm down; once per run 3N up
				// (LoadFromHost: params and moments) and 3N down
				// (SyncToHost before the adapter is saved).
				wantUp, wantDown := uint64(steps*5*24*4+3*N*4), uint64(steps*(8+8)+3*N*4)
				if x.up != wantUp || x.down != wantDown {
					t.Fatalf("rank %d moved %d bytes up and %d down, want %d and %d (no grads down, no params up per step)", r, x.up, x.down, wantUp, wantDown)
				}
				if r > 0 && !allEqual(x.run.ad.Params(), dev[0].run.ad.Params()) {
					t.Fatalf("rank %d's adapter differs from rank 0's", r)
				}
				if len(x.notices) > 0 && strings.Contains(strings.Join(x.notices, "\n"), "notice") {
					t.Fatalf("rank %d: notices %q", r, x.notices)
				}
			}
			// Host-synchronised: the grads come down every step, the params
			// go up before every step after the first.
			if host[0].up < uint64((steps-1)*N*4) || host[0].down < uint64(steps*N*4) {
				t.Fatalf("the host-synchronised run moved %d bytes up and %d down: expected the %d-byte slabs every step", host[0].up, host[0].down, N*4)
			}
			mh, mo := host[0].metrics, one
			md := dev[0].metrics
			if len(md) != steps || len(mh) != steps {
				t.Fatalf("%d and %d steps of metrics, want %d", len(md), len(mh), steps)
			}
			var worstL, worstN float64
			for i := range md {
				for _, ref := range []struct {
					what string
					m    train.StepMetrics
				}{{"host-synchronised 2 ranks", mh[i]}, {"one process on the CPU", mo[i]}} {
					el := math.Abs(md[i].Loss-ref.m.Loss) / ref.m.Loss
					en := math.Abs(md[i].GradNorm-ref.m.GradNorm) / ref.m.GradNorm
					worstL, worstN = max(worstL, el), max(worstN, en)
					if el > 1e-5 || en > 1e-5 {
						t.Fatalf("step %d: loss %v grad norm %v; %s: %v and %v", i+1, md[i].Loss, md[i].GradNorm, ref.what, ref.m.Loss, ref.m.GradNorm)
					}
				}
			}
			eh, eo := maxRel(dev[0].run.ad.Params(), host[0].run.ad.Params()), maxRel(dev[0].run.ad.Params(), ref.ad.Params())
			// One process accumulates both sequences into one slab, the
			// ranks add two partial sums: fp32 summation order (see
			// docs/SCALING.md), plus the device-vs-CPU kernels' rounding,
			// compounded by 4 AdamW steps (measured: 3.5e-6 and 1.3e-5).
			if eh > 1e-5 || eo > 5e-5 {
				t.Fatalf("adapter after %d steps: max relative error %.2e vs the host-synchronised ranks, %.2e vs one process", steps, eh, eo)
			}
			t.Logf("%d steps: loss %.5f -> %.5f; max rel err loss %.1e, grad norm %.1e; adapter %.1e (host ranks), %.1e (cpu); per rank %d B up, %d B down (host-synchronised: %d, %d)",
				steps, md[0].Loss, md[steps-1].Loss, worstL, worstN, eh, eo, dev[0].up, dev[0].down, host[0].up, host[0].down)
		})
	}
}

// TestDevicePassNCCLMutations: an all-reduce that sums twice, or none,
// must not pass for the right answer.
func TestDevicePassNCCLMutations(t *testing.T) {
	const steps, name = 2, "qwen3-untied-bf16"
	host := runDP(t, name, steps, true, nil)
	for _, mut := range []string{"twice", "none"} {
		hub := newFakeNCCL(2)
		hub.mut = mut
		dev := runDP(t, name, steps, true, hub)
		d, h := dev[0].metrics, host[0].metrics
		en := math.Abs(d[0].GradNorm-h[0].GradNorm) / h[0].GradNorm
		ea := maxRel(dev[0].run.ad.Params(), host[0].run.ad.Params())
		t.Logf("%s: step-1 grad norm %v (right: %v), adapter max rel err %.2e", mut, d[0].GradNorm, h[0].GradNorm, ea)
		if en < 1e-3 && ea < 1e-3 {
			t.Errorf("%s: the broken all-reduce is not seen: grad norm rel err %.2e, adapter %.2e", mut, en, ea)
		}
	}
}

// TestDevicePassNCCLFallback: NCCL chosen but no device pass
// (TUNE_CUDA_PASS=host: the per-op path, host grads) sums the gradients on
// the host with a one-line notice, without opening NCCL, and trains as the
// host-synchronised device pass does.
func TestDevicePassNCCLFallback(t *testing.T) {
	const steps, name = 2, "qwen3-untied-bf16"
	hub := newFakeNCCL(2)
	perOp := runDP(t, name, steps, false, hub)
	for r, x := range perOp {
		if x.onDevice || x.reduceDev || x.opened != 0 || hub.calls[r] != 0 {
			t.Fatalf("rank %d: device pass %v, device grads %v, NCCL opened %d times, %d all-reduces", r, x.onDevice, x.reduceDev, x.opened, hub.calls[r])
		}
	}
	if n := perOp[0].notices; len(n) != 1 || !strings.HasPrefix(n[0], "notice: gradients are summed on the host over tcp") || strings.Contains(n[0], "\n") {
		t.Fatalf("rank 0's notices: %q, want one line saying the gradients are summed on the host", n)
	}
	host := runDP(t, name, steps, true, nil)
	for i, m := range perOp[0].metrics {
		h := host[0].metrics[i]
		if math.Abs(m.Loss-h.Loss) > 1e-5*h.Loss || math.Abs(m.GradNorm-h.GradNorm) > 1e-5*h.GradNorm {
			t.Fatalf("step %d: loss %v grad norm %v, the device pass's %v and %v", i+1, m.Loss, m.GradNorm, h.Loss, h.GradNorm)
		}
	}
	t.Logf("notice: %s", perOp[0].notices[0])
}

// TestAllReduceGrads: the pass hands sum its grad slab, in place, on the
// pass's stream, with its length; an error of sum is the method's, and a
// host-synchronised pass refuses (its host grads would miss the sum).
func TestAllReduceGrads(t *testing.T) {
	fb, fake := newFake(t, false)
	m := loadOn(t, "qwen3-tied", fb)
	ad := newAdapter(t, m.Config, 0)
	p, err := fb.NewLoRAPass(m, ad, PassOptions{MaxT: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sum := func(send, recv uint64, count int, stream uint64) error {
		return errors.New("must not be called")
	}
	if err := p.AllReduceGrads(sum); err == nil || !strings.Contains(err.Error(), "DeviceOptimizer") {
		t.Fatalf("host-synchronised pass: %v", err)
	}
	p.DeviceOptimizer()
	N := len(ad.Params())
	g := fake.f32(p.G, N)
	for i := range g {
		g[i] = float32(i)
	}
	calls := 0
	err = p.AllReduceGrads(func(send, recv uint64, count int, stream uint64) error {
		// NCCL's calls enter the context as dist.NCCL does (Enter:
		// CurrentContext) with the backend held: no deadlock.
		defer fb.CurrentContext()()
		calls++
		if send != p.G || recv != p.G || count != N || stream != 0 {
			t.Errorf("sum(%#x, %#x, %d, %d), want (%#x, %#x, %d, 0)", send, recv, count, stream, p.G, p.G, N)
		}
		for i, x := range fake.f32(send, count) {
			fake.f32(recv, count)[i] = 3 * x
		}
		return nil
	})
	if err != nil || calls != 1 {
		t.Fatalf("AllReduceGrads: %v, %d calls", err, calls)
	}
	if g[N-1] != 3*float32(N-1) {
		t.Fatalf("grad %d after the sum: %v, want %v", N-1, g[N-1], 3*float32(N-1))
	}
	err = p.AllReduceGrads(func(send, recv uint64, count int, stream uint64) error {
		return errors.New("ncclAllReduce: unhandled system error")
	})
	if err == nil || !strings.Contains(err.Error(), "all-reduce of the") || !strings.Contains(err.Error(), "unhandled system error") {
		t.Fatalf("a failing sum: %v", err)
	}
}

// TestDevicePassNCCLResume: a run with the gradients summed on the devices,
// stopped after step 2 (rank 0 checkpoints the device's parameters and
// moments) and resumed on fresh ranks (every rank loads rank 0's state onto
// its device), ends with the straight run's adapter, bit for bit.
func TestDevicePassNCCLResume(t *testing.T) {
	const steps, name = 4, "qwen3-untied-bf16"
	straight := runDP(t, name, steps, true, newFakeNCCL(2))
	dir := t.TempDir()
	stopped := runDPIn(t, name, steps, true, newFakeNCCL(2), dir, false, 2)
	for r, x := range stopped {
		if x.err == nil || !x.nccl.closed || x.nccl.abort {
			t.Fatalf("rank %d after the stop: %v; NCCL closed %v, aborted %v", r, x.err, x.nccl.closed, x.nccl.abort)
		}
	}
	resumed := runDPIn(t, name, steps, true, newFakeNCCL(2), dir, true, 0)
	for r, x := range resumed {
		if !allEqual(x.run.ad.Params(), straight[0].run.ad.Params()) {
			t.Fatalf("rank %d: the resumed adapter differs from the straight run's (max rel %.2e)", r, maxRel(x.run.ad.Params(), straight[0].run.ad.Params()))
		}
	}
	if m := resumed[0].metrics; len(m) != 2 || m[1].Loss != straight[0].metrics[3].Loss {
		t.Fatalf("resumed steps %+v, straight step 4 loss %v", m, straight[0].metrics[3].Loss)
	}
}
