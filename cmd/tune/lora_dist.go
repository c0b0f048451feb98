package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"github.com/tunellm/tune/dist"
	"github.com/tunellm/tune/recipes"
)

// Data-parallel `tune lora`: the rank plumbing around loraRun. A process
// started by mpirun, srun or torchrun (or by --nproc-per-node below) finds
// its rank in the environment (package dist), joins the group before it
// loads anything, trains its share of every step (package train), and
// leaves the group: MPI_Finalize on success, MPI_Abort (mpirun then stops
// every rank and names this one) or closed TCP connections on failure.

// distOptions are the flags of a data-parallel run.
type distOptions struct {
	nprocPerNode int
}

func (d *distOptions) addFlags(fl *pflag.FlagSet) {
	fl.IntVar(&d.nprocPerNode, "nproc-per-node", 1, "train on N local processes (data parallel over TCP; mpirun -np N, srun and torchrun launches need no flag)")
}

// loraDist runs run as one rank of the launcher's group, spawns
// --nproc-per-node ranks, or just runs it (a single process): distRun, with
// recipes whose pipeline steps would run on every rank refused.
func loraDist(opts *LoRAOptions, d *distOptions, run func() error) error {
	if d.nprocPerNode < 1 {
		return flagErrorf("--nproc-per-node %d: want 1 or more processes", d.nprocPerNode)
	}
	if opts.DryRun {
		return run()
	}
	return distRun(opts.IO, d.nprocPerNode, func(c dist.Comm) error {
		if c != nil {
			if r, err := recipes.Load(opts.Recipe, opts.Set); err == nil && r.Pipeline() {
				// Merging and quantizing would run on every rank, into the
				// same folders.
				return fmt.Errorf("the recipe has merge:, quantize: or validate: steps, which run on one process: train here with a recipe of model, dataset, lora, train and output only, then run the rest with tune run --resume on one process")
			}
		}
		return run()
	})
}

// spawnRanks starts n copies of this command on this machine as ranks
// 0..n-1 of a TCP group (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT, as torchrun sets them), each with GOMAXPROCS = cores/n
// unless set, forwards Ctrl-C to them, and waits. Rank 0's output is ours;
// the other ranks' error lines are prefixed with their rank.
func spawnRanks(ios *IOStreams, n int) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--nproc-per-node: cannot find this program to start its ranks: %w", err)
	}
	port, err := freeTCPPort()
	if err != nil {
		return fmt.Errorf("--nproc-per-node: no free TCP port for the ranks' rendezvous: %w", err)
	}
	procs := os.Getenv("GOMAXPROCS")
	if procs == "" {
		procs = strconv.Itoa(max(1, runtime.NumCPU()/n))
	}
	cmds := make([]*exec.Cmd, n)
	var outMu sync.Mutex
	for r := range n {
		cmd := exec.Command(exe, os.Args[1:]...)
		cmd.Env = append(os.Environ(), "RANK="+strconv.Itoa(r), "WORLD_SIZE="+strconv.Itoa(n), "LOCAL_RANK="+strconv.Itoa(r),
			"LOCAL_WORLD_SIZE="+strconv.Itoa(n), "MASTER_ADDR=127.0.0.1", "MASTER_PORT="+strconv.Itoa(port), "TUNE_DIST="+rankDist(os.Getenv), "GOMAXPROCS="+procs)
		if r == 0 {
			cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, ios.Out, ios.ErrOut
		} else {
			pr, pw := io.Pipe()
			cmd.Stderr = pw
			go func() {
				sc := bufio.NewScanner(pr)
				for sc.Scan() {
					outMu.Lock()
					fmt.Fprintf(ios.ErrOut, "[rank %d] %s\n", r, sc.Text())
					outMu.Unlock()
				}
			}()
			defer pw.Close()
		}
		if err := cmd.Start(); err != nil {
			for _, c := range cmds[:r] {
				c.Process.Kill()
			}
			return fmt.Errorf("--nproc-per-node: start rank %d: %w", r, err)
		}
		cmds[r] = cmd
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	type exit struct {
		rank int
		err  error
	}
	done := make(chan exit, n)
	for r, c := range cmds {
		go func() { done <- exit{r, c.Wait()} }()
	}
	var failed []exit
	var kill <-chan time.Time
	for left := n; left > 0; {
		select {
		case s := <-sig:
			for _, c := range cmds {
				c.Process.Signal(s) // the ranks stop together at a step and rank 0 checkpoints
			}
		case <-kill:
			for _, c := range cmds {
				c.Process.Kill()
			}
			kill = nil
		case e := <-done:
			left--
			if e.err != nil {
				failed = append(failed, e)
				if kill == nil {
					// The others fail on their own when a rank's
					// connections close; give them a moment, then end them.
					kill = time.After(10 * time.Second)
				}
			}
		}
	}
	if len(failed) == 0 {
		return nil
	}
	// A rank ended by a signal (killed, crashed) is the cause; the others
	// only noticed it.
	sort.SliceStable(failed, func(i, j int) bool { return signaled(failed[i].err) && !signaled(failed[j].err) })
	msg := ""
	for i, e := range failed {
		if i > 0 {
			msg += ", "
		}
		msg += fmt.Sprintf("rank %d: %v", e.rank, e.err)
	}
	return fmt.Errorf("--nproc-per-node %d: %s (see the messages above)", n, msg)
}

// rankDist is TUNE_DIST for the ranks spawnRanks starts: they talk TCP
// (torchrun-style variables), and TUNE_DIST=nccl or the default (auto) is
// kept so that on CUDA the gradients can still be summed by NCCL
// (dist.GradientTransport); mpi and none, which do not apply to ranks this
// command starts, become tcp (which also keeps the gradients on the host).
func rankDist(getenv func(string) string) string {
	switch v := strings.ToLower(strings.TrimSpace(getenv("TUNE_DIST"))); v {
	case "nccl":
		return v
	case "", "auto":
		return "auto"
	}
	return "tcp"
}

func signaled(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
			return ws.Signaled()
		}
	}
	return false
}

func freeTCPPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
