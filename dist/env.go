// Package dist is what tune's data-parallel training needs from a cluster:
// which rank this process is (from the variables the launcher set) and a few
// collectives between ranks (all-reduce, broadcast, point-to-point, barrier).
//
// It builds no cluster layer of its own. Under mpirun or srun the
// collectives are Open MPI's (libmpi.so, loaded at run time through purego,
// no cgo); under torchrun-style launches (RANK, WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT) and for `tune lora --nproc-per-node N` a small TCP transport
// in pure Go takes over. TUNE_DIST=mpi|tcp|none overrides the choice.
//
// Every collective has a fixed reduction order (rank 0 + rank 1 + ... on the
// TCP path; two ranks are order-free under MPI since a+b == b+a), so a run
// is reproducible bit for bit. Between GPUs, NCCL (nccl.go, loaded at run
// time too, bootstrapped over the MPI or TCP comm to exchange the
// ncclUniqueId) sums device memory; GradientTransport picks it.
//
// It is not a scheduler: it neither places ranks nor restarts them.
package dist

import (
	"fmt"
	"strconv"
	"strings"
)

// Launch is what the environment says about this process's place in a job.
type Launch struct {
	Launcher   string // "mpirun", "srun", "torchrun" (RANK/WORLD_SIZE), or "" when not launched as a rank
	Rank, Size int
	LocalRank  int
	LocalSize  int    // ranks on this machine; 0 when the launcher does not say
	MasterAddr string // torchrun/k8s rendezvous (TCP path)
	MasterPort int
}

// Distributed reports whether the process is one rank of several.
func (l Launch) Distributed() bool { return l.Size > 1 }

// Detect reads the launcher's variables from getenv (os.Getenv in
// production): Open MPI's OMPI_COMM_WORLD_*, then PMI_*/SLURM_* (srun), then
// RANK/WORLD_SIZE (torchrun, Kubernetes operators, tune --nproc-per-node).
// No variables is a single process (Size 1); contradictory or malformed
// ones are an error naming the variable.
func Detect(getenv func(string) string) (Launch, error) {
	l := Launch{Size: 1}
	num := func(key string, dst *int) (bool, error) {
		s := strings.TrimSpace(getenv(key))
		if s == "" {
			return false, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return false, fmt.Errorf("dist: %s=%q: want a non-negative integer", key, s)
		}
		*dst = n
		return true, nil
	}
	type scheme struct {
		launcher, rank, size, local string
	}
	schemes := []scheme{
		{"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
		{"mpirun", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
		{"srun", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
		{"srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
		{"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
	}
	for _, s := range schemes {
		var rank, size int
		okR, err := num(s.rank, &rank)
		if err != nil {
			return l, err
		}
		okS, err := num(s.size, &size)
		if err != nil {
			return l, err
		}
		if !okR && !okS {
			continue
		}
		if okR != okS {
			return l, fmt.Errorf("dist: %s is set but %s is not: a %s launch sets both", pick(okR, s.rank, s.size), pick(okR, s.size, s.rank), s.launcher)
		}
		if size < 1 || rank >= size {
			return l, fmt.Errorf("dist: %s=%d with %s=%d: want 0 <= rank < size", s.rank, rank, s.size, size)
		}
		l.Launcher, l.Rank, l.Size = s.launcher, rank, size
		if _, err := num(s.local, &l.LocalRank); err != nil {
			return l, err
		}
		break
	}
	for _, k := range []string{"OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS"} {
		if ok, err := num(k, &l.LocalSize); err != nil {
			return l, err
		} else if ok {
			break
		}
	}
	l.MasterAddr = strings.TrimSpace(getenv("MASTER_ADDR"))
	if _, err := num("MASTER_PORT", &l.MasterPort); err != nil {
		return l, err
	}
	if l.MasterPort > 65535 {
		return l, fmt.Errorf("dist: MASTER_PORT=%d: want a TCP port (1-65535)", l.MasterPort)
	}
	return l, nil
}

func pick(b bool, x, y string) string {
	if b {
		return x
	}
	return y
}

// Backend picks the transport for l: TUNE_DIST when set, else MPI under
// mpirun/srun and TCP under torchrun-style launches. "none" means a single
// process even when launched as a rank. TUNE_DIST=nccl picks the host
// transport as "auto" does: NCCL's bootstrap and the small collectives run
// on it (see GradientTransport).
func Backend(l Launch, getenv func(string) string) (string, error) {
	switch v := strings.ToLower(strings.TrimSpace(getenv("TUNE_DIST"))); v {
	case "mpi", "tcp", "none":
		return v, nil
	case "", "auto", "nccl":
	default:
		return "", fmt.Errorf("dist: TUNE_DIST=%q: want mpi, tcp, nccl or none", v)
	}
	switch {
	case !l.Distributed():
		return "none", nil
	case l.Launcher == "mpirun" || l.Launcher == "srun":
		return "mpi", nil
	default:
		return "tcp", nil
	}
}
