package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cuda"
)

// EnvOptions are the inputs of `tune env`.
type EnvOptions struct {
	IO   *IOStreams
	JSON bool
	// Probe looks for CUDA; tests replace it. nil: cuda.Probe.
	Probe func() (cuda.Info, error)
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
capability, and the cuBLAS version, or the one-line reason CUDA is unusable.
Nothing is allocated on the GPU.`,
		Example: `  tune env
  tune env --json | jq '.cuda.devices[0].name'
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
	if !rep.CUDA.Available {
		fmt.Fprintf(out, "  searched: %s\n", strings.Join(rep.CUDA.Searched, ":"))
	}
	return nil
}
