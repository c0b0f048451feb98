package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels/cuda"
)

func TestEnv(t *testing.T) {
	h200 := cuda.Info{Driver: "12.8", DriverLib: "/usr/lib/x86_64-linux-gnu/libcuda.so.1", Cublas: "12.8.4",
		CublasLib: "/usr/local/cuda/lib64/libcublas.so.12", SearchedPaths: []string{"/usr/local/cuda/lib64"},
		Devices: []cuda.Device{{Index: 0, Name: "NVIDIA H200", TotalMem: 150 << 30, Major: 9, Minor: 0, SMs: 132}}}
	noDriver := cuda.Info{SearchedPaths: []string{"/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"}}
	for _, c := range []struct {
		name string
		info cuda.Info
		err  error
		json bool
		want []string
	}{
		{"gpu", h200, nil, false, []string{"cuda:     available", "supports CUDA 12.8", "cuBLAS:  12.8.4", "gpu 0:   NVIDIA H200, 150.0 GiB, compute capability 9.0, 132 SMs"}},
		{"gpu json", h200, nil, true, []string{`"available": true`, `"compute_capability": "9.0"`, `"cublas_version": "12.8.4"`}},
		{"no driver", noDriver, errors.New("cuda: no NVIDIA driver: libcuda.so.1 not found"), false,
			[]string{"cuda:     unavailable: cuda: no NVIDIA driver: libcuda.so.1 not found", "driver:  not found", "searched: /usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu"}},
		{"no driver json", noDriver, errors.New("cuda: no NVIDIA driver"), true, []string{`"available": false`, `"error": "cuda: no NVIDIA driver"`, `"devices": []`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			opts := &EnvOptions{IO: &IOStreams{Out: &out, ErrOut: &out}, JSON: c.json,
				Probe: func() (cuda.Info, error) { return c.info, c.err }}
			if err := envRun(opts); err != nil {
				t.Fatal(err)
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if c.json {
				var rep envReport
				if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
					t.Fatalf("not JSON: %v\n%s", err, out.String())
				}
				if rep.CUDA.Available != (c.err == nil) {
					t.Errorf("available = %v", rep.CUDA.Available)
				}
			}
		})
	}
}

// TestEnvReal runs the real probe: on a machine without a GPU it must still
// succeed and say why CUDA is unavailable.
func TestEnvReal(t *testing.T) {
	var out bytes.Buffer
	if err := envRun(&EnvOptions{IO: &IOStreams{Out: &out, ErrOut: &out}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "cuda:") || !strings.Contains(out.String(), "backends:") {
		t.Fatalf("output:\n%s", out.String())
	}
	t.Log(out.String())
}

// TestEnvRank: as a rank of a launch, tune env names the GPU the rank
// trains on, and whether NCCL loads.
func TestEnvRank(t *testing.T) {
	info := cuda.Info{Driver: "12.8", DriverLib: "/usr/lib/x86_64-linux-gnu/libcuda.so.1", Cublas: "12.8.4", CublasLib: "/x/libcublas.so.12"}
	for i := range 8 {
		info.Devices = append(info.Devices, cuda.Device{Index: i, Name: "NVIDIA H200", TotalMem: 150 << 30, Major: 9})
	}
	mpirun := fakeEnv("OMPI_COMM_WORLD_RANK", "10", "OMPI_COMM_WORLD_SIZE", "16", "OMPI_COMM_WORLD_LOCAL_RANK", "2")
	for _, c := range []struct {
		name   string
		getenv func(string) string
		nccl   func() (string, string, error)
		json   bool
		want   []string
	}{
		{"rank", mpirun, func() (string, string, error) { return "/usr/lib/libnccl.so.2", "2.21.5", nil }, false,
			[]string{"  uses:    GPU 2 (local rank 2)\n", "nccl:     2.21.5 (/usr/lib/libnccl.so.2)\n"}},
		{"rank json", mpirun, func() (string, string, error) { return "/usr/lib/libnccl.so.2", "2.21.5", nil }, true,
			[]string{`"uses": "GPU 2 (local rank 2)"`, `"nccl_version": "2.21.5"`}},
		{"single process, no nccl", fakeEnv(), func() (string, string, error) { return "", "", errors.New("dist: nccl: libnccl.so.2 not found") }, false,
			[]string{"  uses:    GPU 0 (default)\n", "nccl:     unavailable (gradients of data-parallel runs are summed on the host): dist: nccl: libnccl.so.2 not found\n"}},
	} {
		var out bytes.Buffer
		opts := &EnvOptions{IO: &IOStreams{Out: &out, ErrOut: &out}, JSON: c.json, Getenv: c.getenv, NCCL: c.nccl,
			Probe: func() (cuda.Info, error) { return info, nil }}
		if err := envRun(opts); err != nil {
			t.Fatal(err)
		}
		for _, w := range c.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%s: output lacks %q:\n%s", c.name, w, out.String())
			}
		}
	}
}
