package dist

import (
	"bytes"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDetect(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    Launch
		backend string
		err     string
	}{
		{"single", nil, Launch{Size: 1}, "none", ""},
		{"mpirun", map[string]string{"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
			Launch{Launcher: "mpirun", Rank: 1, Size: 4, LocalRank: 1, LocalSize: 2}, "mpi", ""},
		{"srun", map[string]string{"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3"},
			Launch{Launcher: "srun", Rank: 3, Size: 8, LocalRank: 3}, "mpi", ""},
		{"pmi", map[string]string{"PMI_RANK": "0", "PMI_SIZE": "2"}, Launch{Launcher: "srun", Rank: 0, Size: 2}, "mpi", ""},
		{"torchrun", map[string]string{"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"},
			Launch{Launcher: "torchrun", Rank: 2, Size: 3, MasterAddr: "10.0.0.1", MasterPort: 29500}, "tcp", ""},
		{"override", map[string]string{"RANK": "0", "WORLD_SIZE": "2", "TUNE_DIST": "none"}, Launch{Launcher: "torchrun", Size: 2}, "none", ""},
		{"mpi wins over RANK", map[string]string{"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "RANK": "5", "WORLD_SIZE": "9"},
			Launch{Launcher: "mpirun", Size: 2}, "mpi", ""},
		{"rank without size", map[string]string{"RANK": "1"}, Launch{}, "", "RANK is set but WORLD_SIZE is not"},
		{"rank past size", map[string]string{"RANK": "2", "WORLD_SIZE": "2"}, Launch{}, "", "want 0 <= rank < size"},
		{"bad number", map[string]string{"WORLD_SIZE": "two", "RANK": "0"}, Launch{}, "", `WORLD_SIZE="two"`},
		{"bad port", map[string]string{"MASTER_PORT": "70000"}, Launch{}, "", "MASTER_PORT=70000"},
		{"bad backend", map[string]string{"TUNE_DIST": "gloo"}, Launch{Size: 1}, "", `TUNE_DIST="gloo"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			l, err := Detect(getenv)
			var b string
			if err == nil {
				b, err = Backend(l, getenv)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l != tc.want || b != tc.backend {
				t.Errorf("got %+v %s, want %+v %s", l, b, tc.want, tc.backend)
			}
		})
	}
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// group opens size TCP ranks in this process.
func group(t testing.TB, size int, timeout time.Duration) []Comm {
	t.Helper()
	port := freePort(t)
	comms := make([]Comm, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for r := range size {
		wg.Go(func() { comms[r], errs[r] = OpenTCP(r, size, "127.0.0.1", port, timeout) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	t.Cleanup(func() {
		for _, c := range comms {
			c.Close()
		}
	})
	return comms
}

// each runs f on every rank concurrently and returns the errors.
func each(comms []Comm, f func(c Comm) error) []error {
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Go(func() { errs[r] = f(c) })
	}
	wg.Wait()
	return errs
}

// collectives checks AllReduce (in the fixed rank order), Broadcast,
// Send/Recv and Barrier on one rank; every rank runs it.
func collectives(c Comm) error {
	r, w := c.Rank(), c.Size()
	// float32 sums where order matters: 1e8 + 1 - 1e8 ... rank order only.
	f32 := []float32{[]float32{1e8, 1, -1e8, 3}[r%4], float32(r), 0.1 * float32(r+1)}
	want32 := []float32{0, 0, 0}
	for k := 0; k < w; k++ {
		src := []float32{[]float32{1e8, 1, -1e8, 3}[k%4], float32(k), 0.1 * float32(k+1)}
		for i := range want32 {
			want32[i] += src[i]
		}
	}
	if err := c.AllReduceF32(f32); err != nil {
		return err
	}
	if c.Backend() == "tcp" || w <= 2 {
		for i := range f32 {
			if math.Float32bits(f32[i]) != math.Float32bits(want32[i]) {
				return fmt.Errorf("rank %d: AllReduceF32[%d] = %v, want %v (rank order)", r, i, f32[i], want32[i])
			}
		}
	}
	f64 := []float64{float64(r) + 0.5, -1}
	if err := c.AllReduceF64(f64); err != nil {
		return err
	}
	if want := float64(w*(w-1))/2 + 0.5*float64(w); f64[0] != want || f64[1] != -float64(w) {
		return fmt.Errorf("rank %d: AllReduceF64 = %v, want [%v %v]", r, f64, want, -w)
	}
	b := make([]byte, 5)
	if r == w-1 {
		copy(b, "hello")
	}
	if err := c.Broadcast(b, w-1); err != nil {
		return err
	}
	if string(b) != "hello" {
		return fmt.Errorf("rank %d: Broadcast got %q", r, b)
	}
	// A chain 0 -> 1 -> ... -> w-1, each adding its rank.
	v := []float32{0, 0}
	if r > 0 {
		if err := c.RecvF32(v, r-1); err != nil {
			return err
		}
	}
	v[0] += float32(r)
	v[1] = float32(r)
	if r < w-1 {
		if err := c.SendF32(v, r+1); err != nil {
			return err
		}
	} else if want := float32(w * (w - 1) / 2); v[0] != want {
		return fmt.Errorf("rank %d: chain sum %v, want %v", r, v[0], want)
	}
	return c.Barrier()
}

func TestTCPCollectives(t *testing.T) {
	for _, size := range []int{2, 3, 4} {
		comms := group(t, size, 10*time.Second)
		for r, err := range each(comms, collectives) {
			if err != nil {
				t.Errorf("size %d rank %d: %v", size, r, err)
			}
		}
	}
}

func TestTCPDeadRank(t *testing.T) {
	comms := group(t, 3, 10*time.Second)
	comms[2].Close() // rank 2 dies
	errs := each(comms[:2], func(c Comm) error { return c.AllReduceF64(make([]float64, 4)) })
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "rank 2 is gone") {
		t.Fatalf("rank 0 after rank 2 died: %v", errs[0])
	}
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "rank 0 is gone") {
		t.Fatalf("rank 1 after rank 2 died: %v", errs[1])
	}
	// A hung rank: rank 1 of a new group never calls the collective.
	comms = group(t, 2, 300*time.Millisecond)
	err := comms[0].Barrier()
	if err == nil || !strings.Contains(err.Error(), "is rank 1 hung") {
		t.Fatalf("rank 0 with rank 1 hung: %v", err)
	}
}

func TestTCPRendezvousErrors(t *testing.T) {
	port := freePort(t)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	wg.Go(func() { _, errs[0] = OpenTCP(0, 2, "127.0.0.1", port, 2*time.Second) })
	wg.Go(func() { _, errs[1] = OpenTCP(1, 3, "127.0.0.1", port, 2*time.Second) })
	wg.Wait()
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "rank 1 says WORLD_SIZE=3, rank 0 has 2") {
		t.Errorf("size mismatch: %v", errs[0])
	}
	_, err := OpenTCP(1, 2, "127.0.0.1", freePort(t), 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "cannot reach rank 0") {
		t.Errorf("no rank 0: %v", err)
	}
}

// TestMPI runs the collectives under mpirun with two ranks of this test
// binary. It skips without mpirun unless CI=true.
func TestMPI(t *testing.T) {
	if os.Getenv("TUNE_DIST_WORKER") == "mpi" {
		c, err := World()
		if err != nil {
			t.Fatal(err)
		}
		if c == nil || c.Backend() != "mpi" {
			t.Fatalf("World() = %v under mpirun, want an MPI comm", c)
		}
		if err := collectives(c); err != nil {
			t.Fatal(err)
		}
		if err := Finalize(); err != nil {
			t.Fatal(err)
		}
		return
	}
	mpirun := MPIRun(t)
	cmd := exec.Command(mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "TUNE_DIST_WORKER=mpi",
		os.Args[0], "-test.run=^TestMPI$", "-test.v")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("mpirun: %v\n%s", err, out.String())
	}
	if n := strings.Count(out.String(), "--- PASS: TestMPI"); n != 2 {
		t.Fatalf("%d of 2 ranks passed:\n%s", n, out.String())
	}
}

// MPIRun returns mpirun's path, skipping the test without it (failing it
// when CI=true).
func MPIRun(t testing.TB) string {
	p, err := exec.LookPath("mpirun")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mpirun is missing and CI=true: apt-get install openmpi-bin libopenmpi-dev")
		}
		t.Skip("no mpirun (apt-get install openmpi-bin libopenmpi-dev)")
	}
	return p
}

// BenchmarkTCPAllReduce: two ranks summing a LoRA gradient slab the size of
// r=16 on all linear layers of the 4-layer micro model (311,296 floats).
func BenchmarkTCPAllReduce(b *testing.B) {
	comms := group(b, 2, 10*time.Second)
	bufs := [][]float32{make([]float32, 311296), make([]float32, 311296)}
	b.SetBytes(4 * 311296)
	for b.Loop() {
		each(comms, func(c Comm) error { return c.AllReduceF32(bufs[c.Rank()]) })
	}
}

// TestWorldDevice: the device communicator's opener is registered and
// unregistered process-wide (cmd/tune sets it, train reads it).
func TestWorldDevice(t *testing.T) {
	if WorldDevice() != nil {
		t.Fatal("an opener before any was set")
	}
	called := false
	SetWorldDevice(func(boot Comm) (DeviceComm, error) { called = true; return nil, nil })
	defer SetWorldDevice(nil)
	if open := WorldDevice(); open == nil {
		t.Fatal("no opener after SetWorldDevice")
	} else if _, err := open(nil); err != nil || !called {
		t.Fatalf("the opener returned %v, called %v", err, called)
	}
	SetWorldDevice(nil)
	if WorldDevice() != nil {
		t.Fatal("an opener after SetWorldDevice(nil)")
	}
}
