package main

import (
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/spf13/pflag"
	"github.com/tunellm/tune/dist"
	"github.com/tunellm/tune/eval"
)

// Data-parallel commands other than `tune lora` (eval ppl/kld/bench, GPTQ
// calibration): the same launch rules as lora_dist.go. A process started by
// mpirun, srun or torchrun joins the launcher's group; --nproc-per-node N
// spawns N local TCP ranks (spawnRanks); otherwise the command runs as one
// process. Rank 0 alone prints; a failing rank ends the group (MPI_Abort,
// or closed TCP connections) so that the others do not wait for it.

// addNprocFlag registers --nproc-per-node for a command that does what.
func addNprocFlag(fl *pflag.FlagSet, n *int, what string) {
	fl.IntVar(n, "nproc-per-node", 0, what+" on N local processes (data parallel over TCP; mpirun -np N, srun and torchrun launches need no flag)")
}

// distRun runs run(c) as one rank of the launcher's group, spawns nproc
// local ranks that do so, or runs run(nil) as a single process. Ranks other
// than 0 get io.Discard as ios.Out and no terminal on ios.ErrOut (their
// error lines still reach stderr, prefixed by the spawner).
func distRun(ios *IOStreams, nproc int, run func(c dist.Comm) error) error {
	if nproc < 0 {
		return flagErrorf("--nproc-per-node %d: want 1 or more processes", nproc)
	}
	l, err := dist.Detect(os.Getenv)
	if err != nil {
		return err
	}
	if nproc > 1 && !l.Distributed() {
		return spawnRanks(ios, nproc)
	}
	if l.LocalSize > 1 && os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(max(1, runtime.NumCPU()/l.LocalSize))
	}
	c, err := dist.World()
	if err != nil {
		return err
	}
	if c == nil {
		return run(nil)
	}
	rank, size := c.Rank(), c.Size()
	if rank != 0 {
		ios.Out, ios.ErrTTY = io.Discard, false
	}
	if err := run(c); err != nil {
		if c.Backend() == "mpi" {
			fmt.Fprintf(ios.ErrOut, "tune: rank %d of %d: %v\n", rank, size, err)
		}
		c.Abort(1) // MPI: ends the job here; TCP: the others see this rank gone
		return fmt.Errorf("rank %d of %d: %w", rank, size, err)
	}
	return dist.Finalize()
}

// reducer is c as the eval package's Reducer; nil stays nil (an interface
// holding a nil dist.Comm would not be).
func reducer(c dist.Comm) eval.Reducer {
	if c == nil {
		return nil
	}
	return c
}
