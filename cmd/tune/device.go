package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cpu" // the reference backend (registers itself)
	"github.com/tunellm/tune/kernels/cuda"
	"github.com/tunellm/tune/recipes"
	"github.com/tunellm/tune/train"
)

// device is the --device flag every command that runs a model honours.
var (
	device     = "cpu"
	deviceFlag *pflag.Flag // to tell an explicit --device from the default
)

func addDeviceFlag(root *cobra.Command) {
	root.PersistentFlags().StringVar(&device, "device", "cpu", "where models run: cpu, cuda, or auto (cuda when a driver and a GPU are found, else cpu with a notice); for training it overrides the recipe's train.device. The CUDA backend is new and not yet verified on hardware, so cpu is the default")
	deviceFlag = root.PersistentFlags().Lookup("device")
}

var (
	backendOnce sync.Once
	backend     kernels.Backend
	backendErr  error
)

// deviceBackend opens the backend --device names, once per process.
func deviceBackend() (kernels.Backend, error) {
	backendOnce.Do(func() { backend, backendErr = openBackend(device, os.Stderr) })
	return backend, backendErr
}

// openBackend opens dev's backend. auto falls back to the CPU with a
// one-line notice on notice when there is no usable GPU; cuda without one is
// a one-line error.
func openBackend(dev string, notice io.Writer) (kernels.Backend, error) {
	switch dev {
	case "", "cpu":
		return kernels.Get("cpu")
	case "cuda":
		be, err := kernels.Get("cuda")
		if err != nil {
			return nil, fmt.Errorf("--device cuda: %s (use --device cpu, or auto to fall back to the CPU)", oneLine(err))
		}
		return be, nil
	case "auto":
		info, err := cuda.Probe()
		if err == nil && len(info.Devices) > 0 {
			be, err := kernels.Get("cuda")
			if err == nil {
				return be, nil
			}
			fmt.Fprintf(notice, "notice: --device auto: %s; running on the CPU\n", oneLine(err))
		} else {
			if err == nil {
				err = fmt.Errorf("the driver sees no GPU")
			}
			fmt.Fprintf(notice, "notice: --device auto: no usable GPU (%s); running on the CPU\n", oneLine(err))
		}
		return kernels.Get("cpu")
	}
	return nil, flagErrorf("--device: want cpu, cuda or auto, got %q", dev)
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// trainDevice is where a recipe trains: --device when given on the command
// line, else its train.device.
func trainDevice(r *recipes.Recipe) string {
	if deviceFlag != nil && deviceFlag.Changed {
		return device
	}
	if r.Train.Device != "" {
		return r.Train.Device
	}
	return device
}

// trainBackend opens the backend a recipe trains on and describes it in
// one line ("cuda: NVIDIA H200, compute capability 9.0, 139.8 GiB; MFU
// against 989 TFLOP/s ...").
func trainBackend(r *recipes.Recipe, notice io.Writer) (kernels.Backend, string, error) {
	be, err := openBackend(trainDevice(r), notice)
	if err != nil {
		return nil, "", err
	}
	desc := be.Name()
	if g, ok := be.(*cuda.Backend); ok {
		d := g.Device()
		desc += fmt.Sprintf(": %s, compute capability %s, %.1f GiB", d.Name, d.CC(), float64(d.TotalMem)/(1<<30))
		if g.BF16GEMM() {
			desc += ", bf16 GEMMs"
		} else {
			desc += ", fp32 GEMMs (TUNE_CUDA_GEMM=bf16 for tensor cores)"
		}
	}
	if _, what := train.PeakFLOPS(be); what != "" {
		desc += "; MFU against " + what
	}
	return be, desc, nil
}

// setupBackend hands be to recipes.Setup.
func setupBackend(opts *recipes.SetupOptions, be kernels.Backend) error {
	opts.Backend = be
	return nil
}

// trainCatching runs a training run, turning a device failure inside an op
// into an error: the cuda backend panics with an error "cuda: ..." when a
// launch fails or GPU memory runs out (an op has nothing to return it
// through), and the run stops there with its last checkpoint intact. Any
// other panic is a bug and goes on.
func trainCatching(run func() (*train.Result, error)) (res *train.Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			e, ok := p.(error)
			if !ok || !strings.HasPrefix(e.Error(), "cuda: ") {
				panic(p)
			}
			res, err = nil, fmt.Errorf("%s (checkpoints already in output.dir are intact: fix the cause and continue with --resume)", oneLine(e))
		}
	}()
	return run()
}

// qmatmulDefault makes quantized GGUF weights compute as llama.cpp computes
// them (activations rounded to 8-bit blocks, integer dot products), so
// eval, generate and the pipeline's GGUF validations give llama.cpp's
// numbers, faster; TUNE_QMATMUL=exact keeps "dequantize, then fp32".
// Training pins exact (recipes.Job.Train).
func qmatmulDefault() {
	if _, set := cpu.QMatMulEnv(); !set {
		cpu.SetQMatMulMode(cpu.QInt8)
	}
}
