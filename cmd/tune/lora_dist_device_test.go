package main

import (
	"errors"
	"strings"
	"testing"
)

// The device plumbing of data-parallel runs: which GPU a rank opens, and
// whether its gradients are summed by NCCL or on the host. The oracle is
// the rule written out per case (docs/SCALING.md); the environment is a
// fake getenv.

func fakeEnv(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestGPUChoice(t *testing.T) {
	torchrun := []string{"RANK", "5", "WORLD_SIZE", "8", "LOCAL_RANK", "5", "MASTER_ADDR", "h", "MASTER_PORT", "29500"}
	for _, c := range []struct {
		name  string
		env   []string
		gpus  int
		idx   int
		words string
	}{
		{"single process", nil, 8, 0, "GPU 0 (default)"},
		{"mpirun local rank 3", []string{"OMPI_COMM_WORLD_RANK", "11", "OMPI_COMM_WORLD_SIZE", "16", "OMPI_COMM_WORLD_LOCAL_RANK", "3"}, 8, 3, "GPU 3 (local rank 3)"},
		{"srun", []string{"SLURM_PROCID", "6", "SLURM_NTASKS", "8", "SLURM_LOCALID", "2"}, 4, 2, "GPU 2 (local rank 2)"},
		{"torchrun, one GPU visible per rank", torchrun, 1, 0, "GPU 0 (local rank 5, the one visible GPU)"},
		{"torchrun, more ranks than GPUs", torchrun, 4, 1, "GPU 1 (local rank 5 mod 4 GPUs: shared with local rank 1)"},
		{"TUNE_CUDA_DEVICE wins", append([]string{"TUNE_CUDA_DEVICE", "7"}, torchrun...), 8, 7, "GPU 7 (TUNE_CUDA_DEVICE)"},
		{"TUNE_CUDA_DEVICE out of range", []string{"TUNE_CUDA_DEVICE", "8"}, 8, -1, `cuda: TUNE_CUDA_DEVICE="8": want 0..7`},
		{"TUNE_CUDA_DEVICE not a number", []string{"TUNE_CUDA_DEVICE", "one"}, 2, -1, `cuda: TUNE_CUDA_DEVICE="one": want 0..1`},
		{"malformed launch: no rank", []string{"RANK", "x", "WORLD_SIZE", "2"}, 2, 0, "GPU 0 (default)"},
	} {
		idx, words := gpuChoice(fakeEnv(c.env...), c.gpus)
		if idx != c.idx || words != c.words {
			t.Errorf("%s: GPU %d, %q; want %d, %q", c.name, idx, words, c.idx, c.words)
		}
	}
}

func TestGradientTransport(t *testing.T) {
	ok := func() (string, string, error) { return "/usr/lib/x86_64-linux-gnu/libnccl.so.2", "2.21.5", nil }
	missing := func() (string, string, error) { return "", "", errors.New("dist: nccl: libnccl.so.2 not found") }
	torchrun := []string{"RANK", "1", "WORLD_SIZE", "2", "LOCAL_RANK", "1", "MASTER_ADDR", "h", "MASTER_PORT", "29500"}
	mpirun := []string{"OMPI_COMM_WORLD_RANK", "1", "OMPI_COMM_WORLD_SIZE", "2", "OMPI_COMM_WORLD_LOCAL_RANK", "1"}
	with := func(env []string, kv ...string) []string { return append(append([]string(nil), env...), kv...) }
	shared := []string{"RANK", "5", "WORLD_SIZE", "8", "LOCAL_RANK", "5", "LOCAL_WORLD_SIZE", "8", "MASTER_ADDR", "h", "MASTER_PORT", "29500"}
	for _, c := range []struct {
		name      string
		device    string
		gpus      int
		env       []string
		nccl      func() (string, string, error)
		transport string
		line, err string
	}{
		{"single process", "cuda", 8, nil, ok, "", "", ""},
		{"TUNE_DIST=none", "cuda", 8, with(torchrun, "TUNE_DIST", "none"), ok, "", "", ""},
		{"torchrun on cuda", "cuda", 8, torchrun, ok, "nccl", "; gradients summed on the GPUs by NCCL 2.21.5 (losses over tcp)", ""},
		{"--nproc-per-node's ranks (auto)", "cuda", 8, with(torchrun, "TUNE_DIST", "auto"), ok, "nccl", "; gradients summed on the GPUs by NCCL 2.21.5 (losses over tcp)", ""},
		{"mpirun on cuda", "cuda", 8, mpirun, ok, "nccl", "; gradients summed on the GPUs by NCCL 2.21.5 (losses over mpi)", ""},
		{"no libnccl", "cuda", 8, torchrun, missing, "host", "; gradients summed on the host over tcp", ""},
		{"TUNE_DIST=tcp", "cuda", 8, with(torchrun, "TUNE_DIST", "tcp"), ok, "host", "; gradients summed on the host over tcp", ""},
		{"cpu", "cpu", 8, torchrun, ok, "host", "; gradients summed on the host over tcp", ""},
		{"TUNE_DIST=nccl on the cpu", "cpu", 8, with(torchrun, "TUNE_DIST", "nccl"), ok, "", "", `TUNE_DIST=nccl, but the device is "cpu"`},
		{"8 local ranks on 4 GPUs", "cuda", 4, shared, ok, "host", "; gradients summed on the host over tcp (8 local ranks share 4 GPUs, and NCCL needs one GPU per rank)", ""},
		{"8 local ranks on 4 GPUs, TUNE_DIST=nccl", "cuda", 4, with(shared, "TUNE_DIST", "nccl"), ok, "", "", "TUNE_DIST=nccl: 8 local ranks share 4 GPUs, and NCCL needs one GPU per rank: start at most 4 ranks per machine"},
		{"8 local ranks on 8 GPUs", "cuda", 8, shared, ok, "nccl", "; gradients summed on the GPUs by NCCL 2.21.5 (losses over tcp)", ""},
		{"TUNE_DIST=nccl, no libnccl", "cuda", 8, with(torchrun, "TUNE_DIST", "nccl"), missing, "", "", "TUNE_DIST=nccl: dist: nccl: libnccl.so.2 not found"},
	} {
		tr, line, err := gradientTransport(c.device, c.gpus, fakeEnv(c.env...), c.nccl)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want one containing %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil || tr != c.transport || line != c.line {
			t.Errorf("%s: %q, %q, %v; want %q, %q", c.name, tr, line, err, c.transport, c.line)
		}
	}
}

func TestRankDist(t *testing.T) {
	for in, want := range map[string]string{"": "auto", "auto": "auto", "NCCL": "nccl", "nccl": "nccl", "tcp": "tcp", "mpi": "tcp", "none": "tcp"} {
		if got := rankDist(fakeEnv("TUNE_DIST", in)); got != want {
			t.Errorf("TUNE_DIST=%q: the spawned ranks get %q, want %q", in, got, want)
		}
	}
}
