package main

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/kernels/cpu"
)

// threadsValue is the --threads flag: setting it sizes the CPU backend's
// worker pool (kernels/cpu), which is created on first use, after the flags
// are parsed.
type threadsValue int

func (t *threadsValue) String() string { return strconv.Itoa(int(*t)) }
func (t *threadsValue) Type() string   { return "int" }

func (t *threadsValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("want a number of threads >= 0 (0: all, GOMAXPROCS), got %q", s)
	}
	*t = threadsValue(n)
	cpu.SetDefaultWorkers(n)
	return nil
}

// addThreadsFlag registers the persistent --threads flag on root.
func addThreadsFlag(root *cobra.Command) {
	var t threadsValue
	root.PersistentFlags().Var(&t, "threads", "worker threads of the CPU kernels (0: GOMAXPROCS, the cores Go uses); the results do not depend on it")
}
