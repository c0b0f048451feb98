package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/tunellm/tune/dist"
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

// launchLocalRank is this process's rank among the ranks a launcher
// (mpirun, srun, torchrun, --nproc-per-node) started on this machine, or -1
// when it is not one (or the variables are malformed: the launch itself
// reports that).
func launchLocalRank(getenv func(string) string) int {
	l, err := dist.Detect(getenv)
	if err != nil || l.Launcher == "" {
		return -1
	}
	return l.LocalRank
}

// gpuChoice says which GPU the cuda backend opens in this process and why
// (cuda.ChooseDevice with the launch's local rank): "GPU 1 (local rank 1)".
func gpuChoice(getenv func(string) string, count int) (int, string) {
	idx, why, err := cuda.ChooseDevice(getenv, launchLocalRank(getenv), count)
	if err != nil {
		return -1, oneLine(err)
	}
	return idx, fmt.Sprintf("GPU %d (%s)", idx, why)
}

// openBackend opens dev's backend. auto falls back to the CPU with a
// one-line notice on notice when there is no usable GPU; cuda without one is
// a one-line error. In a rank of a launch the GPU is the local rank's
// (modulo the GPUs) unless TUNE_CUDA_DEVICE names one.
func openBackend(dev string, notice io.Writer) (kernels.Backend, error) {
	if dev == "cuda" || dev == "auto" {
		cuda.SetLocalRank(launchLocalRank(os.Getenv))
	}
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
	gpus := 0 // GPUs on this machine, when known
	if g, ok := be.(*cuda.Backend); ok {
		d := g.Device()
		gpu := fmt.Sprintf("GPU %d", d.Index)
		if info, err := cuda.Probe(); err == nil {
			gpus = len(info.Devices)
			if idx, why := gpuChoice(os.Getenv, len(info.Devices)); idx == d.Index {
				gpu = why
			}
		}
		desc += fmt.Sprintf(": %s, %s, compute capability %s, %.1f GiB", gpu, d.Name, d.CC(), float64(d.TotalMem)/(1<<30))
		if g.BF16GEMM() {
			desc += ", bf16 GEMMs"
		} else {
			desc += ", fp32 GEMMs (TUNE_CUDA_GEMM=bf16 for tensor cores)"
		}
	}
	if _, what := train.PeakFLOPS(be); what != "" {
		desc += "; MFU against " + what
	}
	transport, line, err := gradientTransport(be.Name(), gpus, os.Getenv, dist.NCCLAvailable)
	if err != nil {
		return nil, "", err
	}
	dist.SetWorldDevice(nil)
	if g, ok := be.(*cuda.Backend); ok && transport == "nccl" {
		dist.SetWorldDevice(ncclOpener(g))
	}
	return be, desc + line, nil
}

// gradientTransport is how a rank of a data-parallel run on device sums
// its gradients (dist.GradientTransport: "nccl" or "host"; "" for a single
// process) and the words the device line gets for it. nccl reports the
// library (dist.NCCLAvailable in production). NCCL needs a GPU per rank:
// with more local ranks than the machine's gpus (0: unknown) the ranks
// share GPUs, and the sum stays on the host (an error when TUNE_DIST=nccl
// insists). With "nccl" the trainer still sums on the host, with a notice,
// when a rank's LoRA computes op by op (TUNE_CUDA_PASS=host, or an adapter
// or base the device pass does not take).
func gradientTransport(device string, gpus int, getenv func(string) string, nccl func() (path, version string, err error)) (transport, line string, err error) {
	l, err := dist.Detect(getenv)
	if err != nil || !l.Distributed() {
		return "", "", nil // distRun reports malformed variables
	}
	host, err := dist.Backend(l, getenv)
	if err != nil || host == "none" {
		return "", "", err
	}
	var version string
	transport, err = dist.GradientTransport(device, getenv, func() error {
		var err error
		_, version, err = nccl()
		return err
	})
	if err != nil {
		return "", "", err
	}
	if transport == "nccl" && gpus > 0 && (l.LocalRank >= gpus || l.LocalSize > gpus) {
		ranks := max(l.LocalSize, l.LocalRank+1)
		shared := fmt.Sprintf("%d local ranks share %d GPUs, and NCCL needs one GPU per rank", ranks, gpus)
		if strings.EqualFold(strings.TrimSpace(getenv("TUNE_DIST")), "nccl") {
			return "", "", fmt.Errorf("TUNE_DIST=nccl: %s: start at most %d ranks per machine", shared, gpus)
		}
		return "host", fmt.Sprintf("; gradients summed on the host over %s (%s)", host, shared), nil
	}
	if transport == "nccl" {
		return transport, fmt.Sprintf("; gradients summed on the GPUs by NCCL %s (losses over %s)", version, host), nil
	}
	return transport, fmt.Sprintf("; gradients summed on the host over %s", host), nil
}

// ncclOpener opens NCCL over the host group on g's GPU (the trainer calls
// it on every rank when the gradients are on the device everywhere).
func ncclOpener(g *cuda.Backend) dist.DeviceOpener {
	return func(boot dist.Comm) (dc dist.DeviceComm, err error) {
		defer func() {
			// CurrentContext panics with the driver's error when the
			// context cannot be made current.
			if p := recover(); p != nil {
				e, ok := p.(error)
				if !ok {
					panic(p)
				}
				dc, err = nil, fmt.Errorf("dist: nccl: %w", e)
			}
		}()
		n, err := dist.OpenNCCL(boot, dist.NCCLOptions{Enter: g.CurrentContext})
		if err != nil {
			return nil, err
		}
		return n, nil
	}
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
