package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/kernels/cuda"
	"github.com/tunellm/tune/recipes"
	"github.com/tunellm/tune/train"
)

// noGPU skips when this machine has a usable GPU (the tests below are about
// machines without one, such as CI).
func noGPU(t *testing.T) {
	t.Helper()
	if info, err := cuda.Probe(); err == nil && len(info.Devices) > 0 {
		t.Skip("a GPU is present")
	}
}

func TestOpenBackendWithoutGPU(t *testing.T) {
	noGPU(t)
	var notice bytes.Buffer
	_, err := openBackend("cuda", &notice)
	var fe *FlagError
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "--device cuda: ") || errors.As(err, &fe) {
		t.Fatalf("--device cuda without a GPU: err %v, want one line starting --device cuda: (exit status 1)", err)
	}
	if exitCode(err) != 1 || notice.Len() != 0 {
		t.Fatalf("exit %d, notice %q", exitCode(err), notice.String())
	}
	be, err := openBackend("auto", &notice)
	if err != nil || be.Name() != "cpu" {
		t.Fatalf("auto: %v, %v", be, err)
	}
	if s := notice.String(); strings.Count(s, "\n") != 1 || !strings.HasPrefix(s, "notice: --device auto: ") || !strings.HasSuffix(s, "running on the CPU\n") {
		t.Fatalf("auto notice %q, want one line", s)
	}
	if _, err := openBackend("tpu", &notice); !errors.As(err, &fe) {
		t.Fatalf("--device tpu: %v, want a usage error", err)
	}
}

// TestLoRADeviceCUDAWithoutGPU: `tune lora --device cuda` (or train.device:
// cuda) on a machine without a GPU fails at once with one line.
func TestLoRADeviceCUDAWithoutGPU(t *testing.T) {
	noGPU(t)
	for _, args := range [][]string{{"--device", "cuda"}, {"--set", "train.device=cuda"}} {
		dir := t.TempDir()
		_, _, err := runCLI(t, "", append(append([]string{"lora", "--recipe", tinyRecipe()}, args...), tinySets(dir)...)...)
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "--device cuda: ") || exitCode(err) != 1 {
			t.Fatalf("%v: err %v, want a one-line error with exit status 1", args, err)
		}
	}
	device, deviceFlag = "cpu", nil // runCLI's root set them
}

func TestTrainDevice(t *testing.T) {
	defer func(d string) { device, deviceFlag = d, nil }(device)
	root := &cobra.Command{Use: "x", Run: func(*cobra.Command, []string) {}}
	addDeviceFlag(root)
	r := &recipes.Recipe{}
	r.Train.Device = "auto"
	if got := trainDevice(r); got != "auto" {
		t.Fatalf("recipe auto, no --device: %q", got)
	}
	root.SetArgs([]string{"--device", "cpu"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if got := trainDevice(r); got != "cpu" {
		t.Fatalf("recipe auto, --device cpu: %q, want the flag to win", got)
	}
}

type fakeBackend struct{ kernels.Backend }

func (fakeBackend) Name() string { return "fake" }

// TestSetupBackend: the backend reaches recipes.SetupOptions.Backend.
func TestSetupBackend(t *testing.T) {
	cpu, err := kernels.Get("cpu")
	if err != nil {
		t.Fatal(err)
	}
	var o recipes.SetupOptions
	if err := setupBackend(&o, cpu); err != nil {
		t.Fatal(err)
	}
	err = setupBackend(&o, fakeBackend{})
	if err != nil || o.Backend == nil || o.Backend.Name() != "fake" {
		t.Fatalf("err %v, Backend %v", err, o.Backend)
	}
}

func TestMFUText(t *testing.T) {
	for _, c := range []struct {
		mfu  float64
		want string
	}{{0, ""}, {0.0004, " MFU 0.040%"}, {0.123, " MFU 12.3%"}} {
		if got := mfuText(c.mfu); got != c.want {
			t.Errorf("mfuText(%v) = %q, want %q", c.mfu, got, c.want)
		}
	}
}

func TestTrainCatching(t *testing.T) {
	_, err := trainCatching(func() (*train.Result, error) {
		panic(fmt.Errorf("cuda: out of GPU memory on NVIDIA H200: needed 512.0 MiB, 100.0 MiB free of 139.8 GiB; use a smaller micro-batch"))
	})
	if err == nil || !strings.HasPrefix(err.Error(), "cuda: out of GPU memory") || !strings.Contains(err.Error(), "--resume") || exitCode(err) != 1 {
		t.Fatalf("err %v", err)
	}
	defer func() {
		if r := recover(); r != "bug" {
			t.Fatalf("recovered %v, want the other panic to go on", r)
		}
	}()
	trainCatching(func() (*train.Result, error) { panic("bug") })
}
