package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/dist"
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cuda"
)

// EnvOptions are the inputs of `tune env`.
type EnvOptions struct {
	IO   *IOStreams
	JSON bool
	// Probe looks for CUDA; tests replace it. nil: cuda.Probe.
	Probe func() (cuda.Info, error)
	// NCCL looks for libnccl.so.2 when CUDA is available; nil:
	// dist.NCCLAvailable.
	NCCL func() (path, version string, err error)
	// Getenv reads the launch's variables and TUNE_CUDA_DEVICE (which GPU
	// this process would use); nil: os.Getenv.
	Getenv func(string) string
}

func newCmdEnv(f *Factory, runF func(*EnvOptions) error) *cobra.Command {
	opts := &EnvOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "env",
		Short: "Show the compute tune can use: CPU, NVIDIA driver, GPUs, cuBLAS",
		Long: `Env reports what this machine offers tune: the CPU cores, the compute backends
built in, and for CUDA what was found at run time (libcuda.so.1 and cuBLAS are
loaded from the driver's and toolkit's usual places, TUNE_CUDA_LIB_DIR first):
the CUDA version the driver supports, each GPU's name, memory and compute
capability, and the cuBLAS version, or the one-line reason CUDA is unusable;
which GPU this process would train on (TUNE_CUDA_DEVICE, else, as a rank
of mpirun/srun/torchrun, its local rank modulo the GPUs, else 0), and
whether NCCL (libnccl.so.2, for summing gradients between GPUs) loads.
Nothing is allocated on the GPU.`,
		Example: `  tune env
  tune env --json | jq '.cuda.devices[0].name'
  mpirun -np 2 tune env   # each rank's GPU
  TUNE_CUDA_LIB_DIR=$HOME/.local/lib/python3.11/site-packages/nvidia/cublas/lib tune env`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return envRun(opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print a JSON object")
	return cmd
}

type envDevice struct {
	Index             int     `json:"index"`
	Name              string  `json:"name"`
	MemoryGiB         float64 `json:"memory_gib"`
	ComputeCapability string  `json:"compute_capability"`
	SMs               int     `json:"sms"`
}

type envCUDA struct {
	Available bool        `json:"available"`
	Error     string      `json:"error,omitempty"`
	Driver    string      `json:"driver_cuda_version,omitempty"`
	DriverLib string      `json:"driver_lib,omitempty"`
	Cublas    string      `json:"cublas_version,omitempty"`
	CublasLib string      `json:"cublas_lib,omitempty"`
	Devices   []envDevice `json:"devices"`
	Searched  []string    `json:"searched"`
	// Uses is the GPU this process opens and why ("GPU 1 (local rank 1)").
	Uses      string `json:"uses,omitempty"`
	NCCL      string `json:"nccl_version,omitempty"`
	NCCLLib   string `json:"nccl_lib,omitempty"`
	NCCLError string `json:"nccl_error,omitempty"`
}

type envReport struct {
	Version  string   `json:"version"`
	Go       string   `json:"go"`
	OS       string   `json:"os"`
	Arch     string   `json:"arch"`
	CPUs     int      `json:"cpus"`
	Backends []string `json:"backends"`
	CUDA     envCUDA  `json:"cuda"`
}

func envRun(opts *EnvOptions) error {
	probe := opts.Probe
	if probe == nil {
		probe = cuda.Probe
	}
	info, err := probe()
	rep := envReport{Version: versionString(), Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		CPUs: runtime.NumCPU(), Backends: kernels.Backends(),
		CUDA: envCUDA{Available: err == nil, Driver: info.Driver, DriverLib: info.DriverLib, Cublas: info.Cublas,
			CublasLib: info.CublasLib, Devices: []envDevice{}, Searched: info.SearchedPaths}}
	if err != nil {
		rep.CUDA.Error = err.Error()
	}
	for _, d := range info.Devices {
		rep.CUDA.Devices = append(rep.CUDA.Devices, envDevice{Index: d.Index, Name: d.Name,
			MemoryGiB: float64(d.TotalMem) / (1 << 30), ComputeCapability: d.CC(), SMs: d.SMs})
	}
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	if len(info.Devices) > 0 {
		_, rep.CUDA.Uses = gpuChoice(getenv, len(info.Devices))
	}
	if rep.CUDA.Available {
		nccl := opts.NCCL
		if nccl == nil {
			nccl = dist.NCCLAvailable
		}
		if path, version, err := nccl(); err != nil {
			rep.CUDA.NCCLError = oneLine(err)
		} else {
			rep.CUDA.NCCL, rep.CUDA.NCCLLib = version, path
		}
	}
	out := opts.IO.Out
	if opts.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(out, "tune %s (%s, %s/%s), %d CPUs\n", rep.Version, rep.Go, rep.OS, rep.Arch, rep.CPUs)
	fmt.Fprintf(out, "backends: %s\n", strings.Join(rep.Backends, ", "))
	if rep.CUDA.Available {
		fmt.Fprintf(out, "cuda:     available\n")
	} else {
		fmt.Fprintf(out, "cuda:     unavailable: %s\n", rep.CUDA.Error)
	}
	for _, line := range strings.Split(strings.TrimRight(info.String(), "\n"), "\n") {
		fmt.Fprintf(out, "  %s\n", line)
	}
	if rep.CUDA.Uses != "" {
		fmt.Fprintf(out, "  uses:    %s\n", rep.CUDA.Uses)
	}
	if !rep.CUDA.Available {
		fmt.Fprintf(out, "  searched: %s\n", strings.Join(rep.CUDA.Searched, ":"))
		return nil
	}
	if rep.CUDA.NCCLError != "" {
		fmt.Fprintf(out, "nccl:     unavailable (gradients of data-parallel runs are summed on the host): %s\n", rep.CUDA.NCCLError)
	} else {
		fmt.Fprintf(out, "nccl:     %s (%s)\n", rep.CUDA.NCCL, rep.CUDA.NCCLLib)
	}
	return nil
}
