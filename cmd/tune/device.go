package main

import (
	"fmt"
	"os"
	"sync"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/kernels"
	_ "github.com/tunellm/tune/kernels/cpu" // the reference backend
	"github.com/tunellm/tune/kernels/cuda"
)

// device is the --device flag every command that runs a model honours.
var device = "cpu"

func addDeviceFlag(root *cobra.Command) {
	root.PersistentFlags().StringVar(&device, "device", "cpu", "where models run: cpu, cuda, or auto (cuda when a driver and a GPU are found, else cpu with a notice); the CUDA backend is new and not yet verified on hardware, so cpu is the default")
}

var (
	backendOnce sync.Once
	backend     kernels.Backend
	backendErr  error
)

// deviceBackend opens the backend --device names, once per process.
func deviceBackend() (kernels.Backend, error) {
	backendOnce.Do(func() { backend, backendErr = openBackend(device) })
	return backend, backendErr
}

func openBackend(dev string) (kernels.Backend, error) {
	switch dev {
	case "", "cpu":
		return kernels.Get("cpu")
	case "cuda":
		return kernels.Get("cuda")
	case "auto":
		info, err := cuda.Probe()
		if err == nil && len(info.Devices) > 0 {
			if be, err := kernels.Get("cuda"); err == nil {
				return be, nil
			} else {
				fmt.Fprintf(os.Stderr, "notice: --device auto: %v; running on the CPU\n", err)
			}
		} else {
			if err == nil {
				err = fmt.Errorf("the driver sees no GPU")
			}
			fmt.Fprintf(os.Stderr, "notice: --device auto: no usable GPU (%v); running on the CPU\n", err)
		}
		return kernels.Get("cpu")
	}
	return nil, flagErrorf("--device: want cpu, cuda or auto, got %q", dev)
}
