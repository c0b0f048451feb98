package train

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunellm/tune/dist"
)

// The data-parallel trainer against one process: ranks are goroutines of
// this test joined over the TCP transport (and, in TestDataParallelMPI,
// processes under mpirun). The oracle is the single-process trainer, whose
// behaviour the other tests pin.

// rankSetup is one rank's model and the hooks a test puts on it.
type rankSetup struct {
	cfg   func(c *Config)
	model func(rank int, m *fakeModel, c dist.Comm) Model
	ctx   context.Context
	// trainer, when set, adjusts each rank's Trainer (Params, OpenDevice).
	trainer func(rank int, tr *Trainer)
}

type rankResult struct {
	res *Result
	err error
	p   *fakeParams
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// runRanks trains newFake(9) on W TCP ranks sharing dir; a rank that fails
// aborts its comm, as tune does, so that the others stop.
func runRanks(t *testing.T, W int, dir string, s rankSetup) []rankResult {
	t.Helper()
	port := freePort(t)
	out := make([]rankResult, W)
	var wg sync.WaitGroup
	for r := range W {
		wg.Go(func() {
			c, err := dist.OpenTCP(r, W, "127.0.0.1", port, 5*time.Second)
			if err != nil {
				out[r].err = err
				return
			}
			defer c.Close()
			m, p, d := newFake(9)
			cfg := fakeConfig(dir)
			if s.cfg != nil {
				s.cfg(&cfg)
			}
			var model Model = m
			if s.model != nil {
				model = s.model(r, m, c)
			}
			ctx := context.Background()
			if s.ctx != nil && r == 0 {
				ctx = s.ctx
			}
			tr := &Trainer{Cfg: cfg, Model: model, Params: p, Data: d, Comm: c}
			if s.trainer != nil {
				s.trainer(r, tr)
			}
			res, err := tr.Run(ctx)
			var ie *InterruptedError
			if err != nil && !errors.As(err, &ie) {
				c.Abort(1)
			}
			out[r] = rankResult{res, err, p}
		})
	}
	wg.Wait()
	return out
}

func oneProcess(t *testing.T, dir string, mut func(c *Config)) {
	t.Helper()
	m, p, d := newFake(9)
	cfg := fakeConfig(dir)
	if mut != nil {
		mut(&cfg)
	}
	if _, err := (&Trainer{Cfg: cfg, Model: m, Params: p, Data: d}).Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func readW(t *testing.T, dir string) []float32 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "adapter", "w.f32"))
	if err != nil {
		t.Fatal(err)
	}
	w := make([]float32, len(b)/4)
	for i := range w {
		w[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return w
}

// closeW compares adapters to fp32 summation-order rounding.
func closeW(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d weights, want %d", what, len(got), len(want))
	}
	for i := range got {
		if d := math.Abs(float64(got[i] - want[i])); d > 2e-6*max(1, math.Abs(float64(want[i]))) {
			t.Errorf("%s: w[%d] = %v, one process %v (diff %.2g)", what, i, got[i], want[i], d)
		}
	}
}

func evalLosses(t *testing.T, dir string) []float64 {
	var out []float64
	for _, m := range readMetrics(t, dir) {
		if v, ok := m["eval_loss"]; ok {
			out = append(out, v)
		}
	}
	return out
}

func TestDataParallelMatchesOneProcess(t *testing.T) {
	single := t.TempDir()
	oneProcess(t, single, nil)
	want := readW(t, single)
	wantLoss, wantEval := stepLosses(t, single), evalLosses(t, single)
	var first []byte
	for _, W := range []int{2, 4, 2} {
		dir := t.TempDir()
		rs := runRanks(t, W, dir, rankSetup{})
		for r, x := range rs {
			if x.err != nil {
				t.Fatalf("%d ranks: rank %d: %v", W, r, x.err)
			}
			if !equal32(x.p.w, rs[0].p.w) {
				t.Errorf("%d ranks: rank %d's weights differ from rank 0's", W, r)
			}
			if x.res.Steps != 6 || x.res.Loss != rs[0].res.Loss {
				t.Errorf("%d ranks: rank %d: %d steps, loss %v; rank 0 %d, %v", W, r, x.res.Steps, x.res.Loss, rs[0].res.Steps, rs[0].res.Loss)
			}
		}
		got := readW(t, dir)
		closeW(t, fmt.Sprintf("%d ranks", W), got, want)
		var maxd float64
		for i := range got {
			maxd = max(maxd, math.Abs(float64(got[i]-want[i])))
		}
		t.Logf("%d ranks: adapter max |diff| vs one process %.3g (bit-identical: %v)", W, maxd, equal32(got, want))
		gl, ge := stepLosses(t, dir), evalLosses(t, dir)
		// Step 1 and the step-0 evaluation see the same weights: exact.
		if len(gl) != len(wantLoss) || gl[0] != wantLoss[0] || ge[0] != wantEval[0] {
			t.Errorf("%d ranks: step-1 loss %v, step-0 eval %v; one process %v, %v", W, gl[0], ge[0], wantLoss[0], wantEval[0])
		}
		for i := range gl {
			if math.Abs(gl[i]-wantLoss[i]) > 1e-6 {
				t.Errorf("%d ranks: step %d loss %v, one process %v", W, i+1, gl[i], wantLoss[i])
			}
		}
		for _, f := range []string{"recipe.yaml", "metrics.jsonl"} {
			if _, err := os.Stat(filepath.Join(dir, f)); f == "metrics.jsonl" && err != nil {
				t.Error(err)
			}
		}
		b, _ := os.ReadFile(filepath.Join(dir, "adapter", "w.f32"))
		if W == 2 {
			if first == nil {
				first = b
			} else if !bytes.Equal(first, b) {
				t.Error("two 2-rank runs differ: the reduction order is not fixed")
			}
		}
	}
}

func equal32(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// TestDataParallelResume: a 2-rank run interrupted on rank 0 stops on both
// ranks at one step; it resumes with 2 ranks bit for bit, and with 1.
func TestDataParallelResume(t *testing.T) {
	straight := t.TempDir()
	runRanks(t, 2, straight, rankSetup{})
	want := readW(t, straight)
	for _, resumeW := range []int{2, 1} {
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		rs := runRanks(t, 2, dir, rankSetup{ctx: ctx, model: func(rank int, m *fakeModel, c dist.Comm) Model {
			if rank != 0 {
				return m
			}
			return &cancelModel{fakeModel: m, after: 5, cancel: cancel}
		}})
		for r, x := range rs {
			var ie *InterruptedError
			// Rank 0's 5th Forward is in step 3, which the ranks finish.
			if !errors.As(x.err, &ie) || ie.Step != 3 || ie.Checkpoint != checkpointDir(dir, 3) {
				t.Fatalf("rank %d: %v, want an interrupt after step 3", r, x.err)
			}
		}
		if err := CheckCheckpoint(checkpointDir(dir, 3)); err != nil {
			t.Fatal(err)
		}
		if resumeW == 1 {
			m, p, d := newFake(9)
			cfg := fakeConfig(dir)
			cfg.Resume = true
			res, err := (&Trainer{Cfg: cfg, Model: m, Params: p, Data: d}).Run(context.Background())
			if err != nil || res.ResumedFrom != 3 {
				t.Fatalf("resume on 1 rank: %v %+v", err, res)
			}
			closeW(t, "2 ranks then 1", readW(t, dir), want)
			continue
		}
		rs = runRanks(t, 2, dir, rankSetup{cfg: func(c *Config) { c.Resume = true }})
		for r, x := range rs {
			if x.err != nil || x.res.ResumedFrom != 3 {
				t.Fatalf("resume rank %d: %v", r, x.err)
			}
		}
		if got := readW(t, dir); !equal32(got, want) {
			t.Errorf("2 ranks interrupted and resumed on 2: %v, straight %v", got, want)
		}
	}
	// 1 process interrupted, resumed on 2 ranks.
	dir := t.TempDir()
	m, p, d := newFake(9)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := (&Trainer{Cfg: fakeConfig(dir), Model: &cancelModel{fakeModel: m, after: 9, cancel: cancel}, Params: p, Data: d}).Run(ctx)
	var ie *InterruptedError
	if !errors.As(err, &ie) {
		t.Fatal(err)
	}
	rs := runRanks(t, 2, dir, rankSetup{cfg: func(c *Config) { c.Resume = true }})
	if rs[0].err != nil || rs[1].err != nil {
		t.Fatalf("resume on 2 ranks: %v, %v", rs[0].err, rs[1].err)
	}
	single := t.TempDir()
	oneProcess(t, single, nil)
	closeW(t, "1 rank then 2", readW(t, dir), readW(t, single))
}

// dyingModel closes its rank's connections at a Forward call, as a killed
// process would.
type dyingModel struct {
	*fakeModel
	at int
	c  dist.Comm
}

func (m *dyingModel) Forward(a, b, s, l []int32) (float64, int, error) {
	if m.fakeModel.forwards+1 == m.at {
		m.c.Close()
		return 0, 0, errors.New("killed")
	}
	return m.fakeModel.Forward(a, b, s, l)
}

func TestDataParallelBadGroups(t *testing.T) {
	// A rank dies in step 3: the other names it; the checkpoint of step 2
	// is complete and resumes.
	dir := t.TempDir()
	rs := runRanks(t, 2, dir, rankSetup{model: func(rank int, m *fakeModel, c dist.Comm) Model {
		if rank == 1 {
			return &dyingModel{fakeModel: m, at: 5, c: c} // steps of 4 sequences: 2 per rank
		}
		return m
	}})
	if rs[0].err == nil || !strings.Contains(rs[0].err.Error(), "rank 1 is gone") {
		t.Fatalf("rank 0 after rank 1 died: %v", rs[0].err)
	}
	cks, _ := Checkpoints(dir)
	if len(cks) != 1 || filepath.Base(cks[0]) != "step-2" || CheckCheckpoint(cks[0]) != nil {
		t.Fatalf("checkpoints %v after the failure, want a complete step-2", cks)
	}
	rs = runRanks(t, 2, dir, rankSetup{cfg: func(c *Config) { c.Resume = true }})
	if rs[0].err != nil || rs[0].res.ResumedFrom != 2 {
		t.Fatalf("resume after the failure: %v", rs[0].err)
	}
	straight := t.TempDir()
	runRanks(t, 2, straight, rankSetup{})
	if !equal32(readW(t, dir), readW(t, straight)) {
		t.Error("resumed after a dead rank: adapter differs from the straight 2-rank run")
	}

	// A start-up failure on rank 0 (the folder holds a run) reaches every rank.
	rs = runRanks(t, 2, dir, rankSetup{})
	if rs[0].err == nil || !strings.Contains(rs[0].err.Error(), "holds a run") ||
		rs[1].err == nil || !strings.Contains(rs[1].err.Error(), "rank 1: rank 0 failed at start-up: train: "+dir+" holds a run") {
		t.Errorf("a second run in the folder: rank 0 %v; rank 1 %v", rs[0].err, rs[1].err)
	}

	// Ranks with different recipes.
	port := freePort(t)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	dir = t.TempDir()
	for r := range 3 {
		wg.Go(func() {
			c, err := dist.OpenTCP(r, 3, "127.0.0.1", port, 5*time.Second)
			if err != nil {
				errs[r] = err
				return
			}
			defer c.Close()
			m, p, d := newFake(9)
			cfg := fakeConfig(dir)
			if r == 2 {
				cfg.LR = 0.01
			}
			_, errs[r] = (&Trainer{Cfg: cfg, Model: m, Params: p, Data: d, Comm: c}).Run(context.Background())
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "rank 2's recipe or flags differ from rank 0's") {
			t.Errorf("rank %d with a different lr on rank 2: %v", r, err)
		}
	}
	// 3 ranks, 4 sequences a step.
	rs = runRanks(t, 3, t.TempDir(), rankSetup{})
	for r, x := range rs {
		if x.err == nil || !strings.Contains(x.err.Error(), "3 ranks do not divide a step's 4 sequences") || !strings.Contains(x.err.Error(), "[1 2 4]") {
			t.Errorf("rank %d of 3: %v", r, x.err)
		}
	}
}

// TestDataParallelMPI trains on two ranks under mpirun (Open MPI through
// purego) and checks the adapter against the TCP path's (bit for bit: with
// two ranks both sums are g0+g1) and one process's; then a rank killed
// mid-run stops the job, and the run resumes on one process.
func TestDataParallelMPI(t *testing.T) {
	if os.Getenv("TUNE_TRAIN_WORKER") != "" {
		mpiWorker(t)
		return
	}
	mpirun := mpiRun(t)
	run := func(dir string, env ...string) (string, error) {
		args := []string{"--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "TUNE_TRAIN_WORKER=1", "-x", "TUNE_TEST_DIR=" + dir}
		for _, e := range env {
			args = append(args, "-x", e)
		}
		args = append(args, os.Args[0], "-test.run=^TestDataParallelMPI$", "-test.v")
		cmd := exec.Command(mpirun, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	dir := t.TempDir()
	if out, err := run(dir); err != nil {
		t.Fatalf("mpirun: %v\n%s", err, out)
	}
	tcp := t.TempDir()
	runRanks(t, 2, tcp, rankSetup{})
	if got, want := readW(t, dir), readW(t, tcp); !equal32(got, want) {
		t.Errorf("MPI adapter %v, TCP %v", got, want)
	}
	single := t.TempDir()
	oneProcess(t, single, nil)
	closeW(t, "MPI 2 ranks", readW(t, dir), readW(t, single))

	// Rank 1 exits in step 3: mpirun ends the job and says which rank.
	dir = t.TempDir()
	out, err := run(dir, "TUNE_TEST_DIE_AT=5")
	// mpirun names the first failing process as [[job,1],rank].
	if err == nil || !regexp.MustCompile(`Process name: \[\[\d+,\d+\],1\]`).MatchString(out) {
		t.Fatalf("a dead rank: mpirun %v, want it to name rank 1:\n%s", err, out)
	}
	if i := strings.Index(out, "exiting on purpose"); i >= 0 {
		t.Logf("mpirun after rank 1 died: %v\n%s", err, out[i:])
	}
	cks, _ := Checkpoints(dir)
	if len(cks) != 1 || CheckCheckpoint(cks[0]) != nil {
		t.Fatalf("checkpoints %v after the failure", cks)
	}
	if out, err := run(dir, "TUNE_TEST_RESUME=1"); err != nil {
		t.Fatalf("resume under mpirun: %v\n%s", err, out)
	}
	if got, want := readW(t, dir), readW(t, tcp); !equal32(got, want) {
		t.Errorf("MPI run killed and resumed: %v, straight %v", got, want)
	}
}

func mpiWorker(t *testing.T) {
	c, err := dist.World()
	if err != nil || c == nil || c.Backend() != "mpi" {
		t.Fatalf("dist.World() under mpirun: %v %v", c, err)
	}
	m, p, d := newFake(9)
	cfg := fakeConfig(os.Getenv("TUNE_TEST_DIR"))
	cfg.Resume = os.Getenv("TUNE_TEST_RESUME") != ""
	var model Model = m
	if at, _ := strconv.Atoi(os.Getenv("TUNE_TEST_DIE_AT")); at > 0 && c.Rank() == 1 {
		model = &exitModel{fakeModel: m, at: at}
	}
	if _, err := (&Trainer{Cfg: cfg, Model: model, Params: p, Data: d}).Run(context.Background()); err != nil {
		t.Error(err)
		c.Abort(1)
	}
	if err := dist.Finalize(); err != nil {
		t.Fatal(err)
	}
}

// exitModel ends the process at a Forward call (kill -9 would do the same
// to mpirun).
type exitModel struct {
	*fakeModel
	at int
}

func (m *exitModel) Forward(a, b, s, l []int32) (float64, int, error) {
	if m.fakeModel.forwards+1 == m.at {
		fmt.Fprintln(os.Stderr, "rank 1: exiting on purpose")
		os.Exit(3)
	}
	return m.fakeModel.Forward(a, b, s, l)
}

func mpiRun(t testing.TB) string {
	p, err := exec.LookPath("mpirun")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mpirun is missing and CI=true: apt-get install openmpi-bin libopenmpi-dev")
		}
		t.Skip("no mpirun (apt-get install openmpi-bin libopenmpi-dev)")
	}
	return p
}

// devParams are fakeParams whose "device" is the host slabs: the device
// optimizer (DeviceOptimizer) runs the host's GradNorm, ClipGrads and
// AdamW on them, and AllReduceGrads hands sum the rank's grad slab by a
// fake device address (devHub maps it back).
type devParams struct {
	*fakeParams
	rank     int
	onDevice bool // DeviceGrads
	opt      *AdamW
	reduces  int // AllReduceGrads calls
	enabled  bool
}

func devAddr(rank int) uint64 { return uint64(rank+1) << 32 }

func (d *devParams) DeviceGrads() bool { return d.onDevice }
func (d *devParams) EnableDeviceOptimizer() bool {
	d.enabled = d.onDevice
	return d.onDevice
}
func (d *devParams) StepDevice(lr, maxNorm float64, c AdamWConfig) (float64, error) {
	norm := GradNorm(d.g)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return norm, nil
	}
	ClipGrads(norm, maxNorm, d.g)
	d.opt.Update(lr, [][]float32{d.w}, [][]float32{d.g})
	return norm, nil
}
func (d *devParams) SyncToHost(opt *AdamW) error {
	copy(opt.M, d.opt.M)
	copy(opt.V, d.opt.V)
	opt.Step = d.opt.Step
	return nil
}
func (d *devParams) LoadFromHost(opt *AdamW) error {
	d.opt = &AdamW{Cfg: opt.Cfg, Step: opt.Step, M: append([]float32(nil), opt.M...), V: append([]float32(nil), opt.V...)}
	return nil
}
func (d *devParams) AllReduceGrads(sum func(send, recv uint64, count int, stream uint64) error) error {
	d.reduces++
	return sum(devAddr(d.rank), devAddr(d.rank), len(d.g), 0)
}

var _ DeviceGradReducer = (*devParams)(nil)

// devHub is NCCL for devParams: every rank posts its slab, the last adds
// them in rank order (as the TCP transport does) into every rank's.
type devHub struct {
	mu       sync.Mutex
	cond     *sync.Cond
	W, gen   int
	slabs    map[int][]float32
	opened   []int
	closed   []string // "close" or "abort", per rank
	failOpen error
}

func newDevHub(W int) *devHub {
	h := &devHub{W: W, slabs: map[int][]float32{}, opened: make([]int, W), closed: make([]string, W)}
	h.cond = sync.NewCond(&h.mu)
	return h
}

type hubRank struct {
	h    *devHub
	rank int
	p    *devParams
}

func (h *devHub) opener(rank int, p *devParams) dist.DeviceOpener {
	return func(boot dist.Comm) (dist.DeviceComm, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.opened[rank]++
		if boot.Rank() != rank || boot.Size() != h.W {
			return nil, fmt.Errorf("bootstrap group rank %d of %d, want %d of %d", boot.Rank(), boot.Size(), rank, h.W)
		}
		if h.failOpen != nil && rank == 1 {
			return nil, h.failOpen
		}
		return &hubRank{h: h, rank: rank, p: p}, nil
	}
}

func (r *hubRank) AllReduceF32(send, recv uint64, count int, stream uint64) error {
	h := r.h
	if send != devAddr(r.rank) || recv != send || count != len(r.p.g) || stream != 0 {
		return fmt.Errorf("rank %d: all-reduce(%#x, %#x, %d, %d): not its grad slab in place", r.rank, send, recv, count, stream)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	gen := h.gen
	h.slabs[r.rank] = r.p.g
	if len(h.slabs) < h.W {
		for gen == h.gen {
			h.cond.Wait()
		}
		return nil
	}
	sum := make([]float32, count)
	for q := range h.W {
		for i, x := range h.slabs[q] {
			sum[i] += x
		}
	}
	for _, g := range h.slabs {
		copy(g, sum)
	}
	h.slabs = map[int][]float32{}
	h.gen++
	h.cond.Broadcast()
	return nil
}
func (r *hubRank) Close() error {
	r.h.mu.Lock()
	r.h.closed[r.rank] = "close"
	r.h.mu.Unlock()
	return nil
}
func (r *hubRank) Abort() { r.h.mu.Lock(); r.h.closed[r.rank] = "abort"; r.h.mu.Unlock() }

// countComm counts the host gradient all-reduces (float32: the trainer's
// only AllReduceF32 use).
type countComm struct {
	dist.Comm
	f32 int
}

func (c *countComm) AllReduceF32(b []float32) error {
	c.f32++
	return c.Comm.AllReduceF32(b)
}

// TestDataParallelDeviceSum: with a device communicator, ranks whose
// gradients are on the device sum them there (once per step, never over
// the host Comm), run the optimizer on the device, and end with the host
// path's adapter and losses bit for bit (same sums in the same order);
// checkpoints and the saved adapter see the device's state.
func TestDataParallelDeviceSum(t *testing.T) {
	host := t.TempDir()
	runRanks(t, 2, host, rankSetup{})
	dir := t.TempDir()
	hub := newDevHub(2)
	dps := make([]*devParams, 2)
	comms := make([]*countComm, 2)
	var logs [2][]string
	rs := runRanks(t, 2, dir, rankSetup{trainer: func(r int, tr *Trainer) {
		dps[r] = &devParams{fakeParams: tr.Params.(*fakeParams), rank: r, onDevice: true}
		comms[r] = &countComm{Comm: tr.Comm}
		tr.Params, tr.Comm, tr.OpenDevice = dps[r], comms[r], hub.opener(r, dps[r])
		tr.Log = func(f string, a ...any) { logs[r] = append(logs[r], fmt.Sprintf(f, a...)) }
	}})
	for r, x := range rs {
		if x.err != nil {
			t.Fatalf("rank %d: %v", r, x.err)
		}
		d := dps[r]
		if hub.opened[r] != 1 || hub.closed[r] != "close" || !d.enabled || d.reduces != x.res.Steps || comms[r].f32 != 0 {
			t.Fatalf("rank %d: opened %d, %q; device optimizer %v; %d device all-reduces in %d steps; %d host float32 all-reduces",
				r, hub.opened[r], hub.closed[r], d.enabled, d.reduces, x.res.Steps, comms[r].f32)
		}
	}
	for _, l := range logs[0] {
		if strings.HasPrefix(l, "notice:") {
			t.Errorf("notice on the device path: %s", l)
		}
	}
	if got, want := readW(t, dir), readW(t, host); !equal32(got, want) {
		t.Errorf("adapter %v, the host sum's %v", got, want)
	}
	gl, hl := stepLosses(t, dir), stepLosses(t, host)
	for i := range hl {
		if gl[i] != hl[i] {
			t.Errorf("step %d loss %v, the host sum's %v", i+1, gl[i], hl[i])
		}
	}
	cks, _ := Checkpoints(dir)
	hcks, _ := Checkpoints(host)
	if len(cks) == 0 || len(cks) != len(hcks) {
		t.Fatalf("checkpoints %v, the host run's %v", cks, hcks)
	}
	for i := range cks {
		a, _ := os.ReadFile(filepath.Join(cks[i], "optimizer.bin"))
		b, _ := os.ReadFile(filepath.Join(hcks[i], "optimizer.bin"))
		if !bytes.Equal(a, b) {
			t.Errorf("%s: the optimizer state differs from the host run's", cks[i])
		}
	}
}

// TestDataParallelDeviceSumFallback: where a rank's gradients are not on
// the device, every rank sums on the host (one notice, no error, no
// device communicator opened); a device communicator that fails to open
// is an error; an error after it opened aborts it.
func TestDataParallelDeviceSumFallback(t *testing.T) {
	host := t.TempDir()
	runRanks(t, 2, host, rankSetup{})
	want := readW(t, host)
	for _, c := range []struct {
		name     string
		onDevice [2]bool
		notice   string
	}{
		{"no rank on the device", [2]bool{false, false}, "NCCL needs the device-resident LoRA pass"},
		{"rank 1 on the host", [2]bool{true, false}, "some ranks compute op by op"},
	} {
		dir := t.TempDir()
		hub := newDevHub(2)
		var logs []string
		rs := runRanks(t, 2, dir, rankSetup{trainer: func(r int, tr *Trainer) {
			d := &devParams{fakeParams: tr.Params.(*fakeParams), rank: r, onDevice: c.onDevice[r]}
			tr.Params, tr.OpenDevice = d, hub.opener(r, d)
			if r == 0 {
				tr.Log = func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }
			}
		}})
		for r, x := range rs {
			if x.err != nil || hub.opened[r] != 0 {
				t.Fatalf("%s: rank %d: %v; device communicator opened %d times", c.name, r, x.err, hub.opened[r])
			}
		}
		var notes []string
		for _, l := range logs {
			if strings.HasPrefix(l, "notice:") {
				notes = append(notes, l)
			}
		}
		if len(notes) != 1 || !strings.Contains(notes[0], c.notice) || !strings.Contains(notes[0], "summed on the host over tcp") {
			t.Errorf("%s: notices %q, want one saying %q", c.name, notes, c.notice)
		}
		if got := readW(t, dir); !equal32(got, want) {
			t.Errorf("%s: adapter %v, the host sum's %v", c.name, got, want)
		}
	}

	// NCCL fails to open on rank 1.
	hub := newDevHub(2)
	hub.failOpen = errors.New("ncclCommInitRank: unhandled cuda error")
	rs := runRanks(t, 2, t.TempDir(), rankSetup{trainer: func(r int, tr *Trainer) {
		d := &devParams{fakeParams: tr.Params.(*fakeParams), rank: r, onDevice: true}
		tr.Params, tr.OpenDevice = d, hub.opener(r, d)
	}})
	if err := rs[1].err; err == nil || !strings.Contains(err.Error(), "rank 1: opening the device communicator for the gradients: ncclCommInitRank: unhandled cuda error") {
		t.Fatalf("rank 1: %v", err)
	}

	// Rank 1 dies in step 3: rank 0 aborts its device communicator.
	hub = newDevHub(2)
	rs = runRanks(t, 2, t.TempDir(), rankSetup{
		model: func(rank int, m *fakeModel, c dist.Comm) Model {
			if rank == 1 {
				return &dyingModel{fakeModel: m, at: 5, c: c}
			}
			return m
		},
		trainer: func(r int, tr *Trainer) {
			d := &devParams{fakeParams: tr.Params.(*fakeParams), rank: r, onDevice: true}
			tr.Params, tr.OpenDevice = d, hub.opener(r, d)
		}})
	if rs[0].err == nil || hub.closed[0] != "abort" || hub.closed[1] != "abort" {
		t.Fatalf("after rank 1 died: rank 0 %v; device communicators %q, want both aborted", rs[0].err, hub.closed)
	}
}
