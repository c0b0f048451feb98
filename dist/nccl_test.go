package dist

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

// What can be checked of the NCCL binding without a GPU or libnccl: the
// nccl.h values, the id's size, the search, the errors and the choice of
// transport. Loading, ncclCommInitRankScalable and ncclAllReduce on device
// memory are unverified until a machine with GPUs and libnccl.so.2 runs
// the trainer (docs/SCALING.md).

func TestNCCLHeaderValues(t *testing.T) {
	// nccl.h (NCCL 2.x): typedef enum { ncclInt8 = 0, ..., ncclFloat16 = 6,
	// ncclFloat32 = 7, ncclFloat64 = 8, ncclBfloat16 = 9 } ncclDataType_t;
	// typedef enum { ncclSum = 0, ncclProd = 1, ... } ncclRedOp_t;
	// #define NCCL_UNIQUE_ID_BYTES 128; ncclSuccess = 0.
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"ncclFloat32", ncclFloat32, 7}, {"ncclFloat64", ncclFloat64, 8}, {"ncclSum", ncclSum, 0},
		{"ncclSuccess", ncclSuccess, 0}, {"NCCL_UNIQUE_ID_BYTES", ncclUniqueIDBytes, 128},
		{"sizeof(ncclUniqueId)", int(unsafe.Sizeof(ncclUniqueID{})), 128},
		{"sizeof(ncclUniqueId) by value", int(unsafe.Sizeof(ncclUniqueIDValue{})), 128},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, nccl.h says %d", c.name, c.got, c.want)
		}
	}
	for code, want := range map[int]string{22300: "2.23.0", 23007: "2.30.7", 21805: "2.18.5", 2708: "2.7.8"} {
		if got := NCCLVersionString(code); got != want {
			t.Errorf("version %d = %s, want %s", code, got, want)
		}
	}
}

// TestNCCLSignatures binds every NCCL call's Go signature to some libc
// symbol (never called): purego rejects argument or result types it cannot
// pass at registration (ncclCommInitRank's 128-byte id by value included:
// 16 stack words, within purego's 26), so this catches an unsupported
// signature here.
func TestNCCLSignatures(t *testing.T) {
	h, err := purego.Dlopen("libc.so.6", purego.RTLD_NOW)
	if err != nil {
		t.Skipf("no libc.so.6: %v", err)
	}
	sym, err := purego.Dlsym(h, "abs")
	if err != nil {
		t.Fatal(err)
	}
	var l ncclLib
	calls := append(l.calls(), struct {
		fn   any
		name string
	}{&l.commInitScalable, "ncclCommInitRankScalable"})
	for _, f := range calls {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s: purego cannot bind %T: %v", f.name, f.fn, r)
				}
			}()
			purego.RegisterFunc(f.fn, sym)
		}()
	}
}

func TestNCCLSearch(t *testing.T) {
	env := map[string]string{"LD_LIBRARY_PATH": "/opt/a:/opt/b", "HOME": "/home/u", "VIRTUAL_ENV": "/venv"}
	getenv := func(k string) string { return env[k] }
	glob := func(p string) ([]string, error) {
		switch p {
		case "/usr/local/cuda-*/lib64":
			return []string{"/usr/local/cuda-12.4/lib64", "/usr/local/cuda-12.8/lib64"}, nil
		case "/venv/lib/python3*/site-packages/nvidia/nccl/lib":
			return []string{"/venv/lib/python3.12/site-packages/nvidia/nccl/lib"}, nil
		}
		return nil, nil
	}
	got := ncclSearch(getenv, glob)
	idx := func(p string) int {
		i := slices.Index(got, p)
		if i < 0 {
			t.Fatalf("%s is not searched: %v", p, got)
		}
		return i
	}
	order := []string{"/opt/a/libnccl.so.2", "/opt/b/libnccl.so.2", "/usr/lib/x86_64-linux-gnu/libnccl.so.2",
		"/usr/local/cuda-12.8/lib64/libnccl.so.2", "/usr/local/cuda-12.4/lib64/libnccl.so.2",
		"/venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2", "libnccl.so.2"}
	for i := 1; i < len(order); i++ {
		if idx(order[i-1]) >= idx(order[i]) {
			t.Errorf("%s is searched after %s", order[i-1], order[i])
		}
	}
	if got[len(got)-1] != "libnccl.so" {
		t.Errorf("last tried %q, want the bare names last", got[len(got)-1])
	}
	env["TUNE_NCCL_LIB"] = "/x/libnccl.so.2.30.7"
	if got := ncclSearch(getenv, glob); !slices.Equal(got, []string{"/x/libnccl.so.2.30.7"}) {
		t.Errorf("TUNE_NCCL_LIB: search %v, want it alone", got)
	}
}

func TestNCCLLoadErrors(t *testing.T) {
	_, err := openNCCL([]string{"/nonexistent/libnccl.so.2", "/also/not/libnccl.so.2"})
	if err == nil || !errors.Is(err, errNoNCCL) {
		t.Fatalf("no library: %v", err)
	}
	for _, want := range []string{"dist: nccl: libnccl.so.2 not found (tried /nonexistent/libnccl.so.2, /also/not/libnccl.so.2)", "TUNE_NCCL_LIB", "TUNE_DIST=mpi or tcp"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// A library that is there but is not NCCL.
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/libc.so.6"); err == nil {
		_, err := openNCCL([]string{"/usr/lib/x86_64-linux-gnu/libc.so.6"})
		if err == nil || !strings.Contains(err.Error(), "libc.so.6: no ncclGetVersion") {
			t.Errorf("libc as NCCL: %v", err)
		}
	}
	// On a machine without NCCL, OpenNCCL says so (and needs a group).
	if _, err := OpenNCCL(nil, NCCLOptions{}); err == nil || !strings.Contains(err.Error(), "no bootstrap group") {
		t.Errorf("OpenNCCL(nil): %v", err)
	}
	if _, _, err := NCCLAvailable(); err != nil {
		c := group(t, 2, 5*time.Second)
		if _, err2 := OpenNCCL(c[0], NCCLOptions{}); err2 == nil || err2.Error() != err.Error() {
			t.Errorf("OpenNCCL without the library: %v, want %v", err2, err)
		}
		t.Logf("this machine: %v", err)
	} else {
		p, v, _ := NCCLAvailable()
		t.Logf("this machine has %s (NCCL %s)", p, v)
	}
}

func TestGradientTransport(t *testing.T) {
	ok := func() error { return nil }
	missing := func() error { return errors.New("dist: nccl: libnccl.so.2 not found (tried ...)") }
	for _, tc := range []struct {
		name, device, env string
		load              func() error
		want, err         string
	}{
		{"cuda with nccl", "cuda", "", ok, "nccl", ""},
		{"cuda without nccl", "cuda", "", missing, "host", ""},
		{"cpu", "cpu", "", ok, "host", ""},
		{"auto", "cuda", "auto", ok, "nccl", ""},
		{"forced", "cuda", "nccl", ok, "nccl", ""},
		{"forced, missing", "cuda", "NCCL", missing, "", "TUNE_DIST=nccl: dist: nccl: libnccl.so.2 not found"},
		{"forced on cpu", "cpu", "nccl", ok, "", `the device is "cpu"`},
		{"mpi overrides", "cuda", "mpi", ok, "host", ""},
		{"tcp overrides", "cuda", "tcp", ok, "host", ""},
		{"bad", "cuda", "gloo", ok, "", `TUNE_DIST="gloo": want mpi, tcp, nccl or none`},
	} {
		got, err := GradientTransport(tc.device, func(k string) string {
			if k == "TUNE_DIST" {
				return tc.env
			}
			return ""
		}, tc.load)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	// TUNE_DIST=nccl keeps the launcher's host transport for the bootstrap.
	for launcher, want := range map[string]string{"mpirun": "mpi", "torchrun": "tcp"} {
		b, err := Backend(Launch{Launcher: launcher, Size: 2}, func(k string) string {
			if k == "TUNE_DIST" {
				return "nccl"
			}
			return ""
		})
		if err != nil || b != want {
			t.Errorf("TUNE_DIST=nccl under %s: host backend %q, %v; want %s", launcher, b, err, want)
		}
	}
}

// fakeNCCL builds testdata/fakenccl.c into a library with cc, skipping
// without a C compiler (failing under CI=true: .ci/run installs one).
func fakeNCCL(t *testing.T, flags ...string) string {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("no C compiler (cc) to build the stand-in libnccl.so.2; .ci/run installs g++")
		}
		t.Skip("no C compiler to build the stand-in libnccl.so.2")
	}
	out := filepath.Join(t.TempDir(), "libnccl.so.2")
	args := append([]string{"-shared", "-fPIC", "-O1", "-o", out, filepath.Join("testdata", "fakenccl.c")}, flags...)
	if b, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, b)
	}
	return out
}

// TestNCCLBindingABI drives the binding against a stand-in libnccl.so.2 in
// C with nccl.h's signatures, two ranks bootstrapped over TCP: the unique
// id crosses the broadcast and reaches ncclCommInitRankScalable (by
// pointer) or ncclCommInitRank (by value) intact, ncclAllReduce gets the
// buffers, count, ncclFloat32/ncclFloat64, ncclSum and the stream, and
// errors carry ncclGetErrorString's text. What it cannot show is NCCL
// itself on GPUs.
func TestNCCLBindingABI(t *testing.T) {
	for _, v := range []struct {
		name  string
		flags []string
		init  string
	}{
		{"2.30 (scalable init)", []string{"-DSCALABLE"}, "ncclCommInitRankScalable"},
		{"2.18 (init by value)", []string{"-DVERSION=21805"}, "ncclCommInitRank"},
	} {
		lib := fakeNCCL(t, v.flags...)
		l, err := openNCCL([]string{lib})
		if err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		h, _ := purego.Dlopen(lib, purego.RTLD_NOW)
		var last func(which int32) int64
		var state func(comm uintptr) int32
		purego.RegisterLibFunc(&last, h, "fake_last")
		purego.RegisterLibFunc(&state, h, "fake_comm_state")
		if got := l.commInitScalable != nil; got != (v.init == "ncclCommInitRankScalable") {
			t.Fatalf("%s: scalable init bound: %v", v.name, got)
		}
		comms := group(t, 2, 5*time.Second)
		ns := make([]*NCCL, 2)
		errs := each(comms, func(c Comm) error {
			var err error
			ns[c.Rank()], err = openNCCLComm(l, c, NCCLOptions{})
			return err
		})
		for r, err := range errs {
			if err != nil {
				t.Fatalf("%s: rank %d: %v", v.name, r, err)
			}
		}
		n := ns[1]
		if n.Rank() != 1 || n.Size() != 2 || state(n.comm) != 2 {
			t.Fatalf("%s: rank %d of %d, the library's comm has %d ranks", v.name, n.Rank(), n.Size(), state(n.comm))
		}
		f32 := []float32{1.5, -2, 3}
		out32 := make([]float32, 3)
		if err := n.AllReduceF32(devPtr(f32), devPtr(out32), 3, 0x1234); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(out32, []float32{3, -4, 6}) || last(0) != 3 || last(1) != 7 || last(2) != 0 || last(3) != 0x1234 {
			t.Errorf("%s: f32 all-reduce gave %v; the library saw count %d dtype %d op %d stream %#x", v.name, out32, last(0), last(1), last(2), last(3))
		}
		f64 := []float64{0.25, 1e300}
		if err := n.AllReduceF64(devPtr(f64), devPtr(f64), 2, 7); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(f64, []float64{0.5, 2e300}) || last(1) != 8 || last(3) != 7 {
			t.Errorf("%s: f64 in place gave %v, dtype %d stream %d", v.name, f64, last(1), last(3))
		}
		big := make([]float32, 13)
		err = n.AllReduceF32(devPtr(big), devPtr(big), 13, 0)
		if err == nil || err.Error() != "rank 1 of 2: dist: nccl: ncclAllReduce: invalid usage (ncclResult_t 5)" {
			t.Errorf("%s: error %v", v.name, err)
		}
		if err := n.AllReduceF32(0, 0, 3, 0); err == nil || !strings.Contains(err.Error(), "want count >= 0 and device addresses") {
			t.Errorf("%s: null pointers: %v", v.name, err)
		}
		if err := ns[0].AsyncError(); err != nil {
			t.Errorf("%s: rank 0 async: %v", v.name, err)
		}
		if err := n.AsyncError(); err == nil || !strings.Contains(err.Error(), "asynchronous error: unknown result (ncclResult_t 6)") {
			t.Errorf("%s: rank 1 async: %v", v.name, err)
		}
		if err := ns[0].Close(); err != nil || state(ns[0].comm) != -1 {
			t.Errorf("%s: destroy: %v, state %d", v.name, err, state(ns[0].comm))
		}
		n.Abort()
		if state(n.comm) != -2 {
			t.Errorf("%s: abort: state %d", v.name, state(n.comm))
		}
		if err := n.AllReduceF32(devPtr(f32), devPtr(f32), 3, 0); err == nil || !strings.Contains(err.Error(), "closed") {
			t.Errorf("%s: after abort: %v", v.name, err)
		}
	}
	lib := fakeNCCL(t, "-DVERSION=2307")
	if _, err := openNCCL([]string{lib}); err == nil || !strings.Contains(err.Error(), "is NCCL 2.3.7: tune needs 2.4 or later") {
		t.Errorf("NCCL 2.3.7: %v", err)
	}
}

// devPtr stands host memory in for a device address (the stand-in library
// reads and writes it as such).
func devPtr[T any](s []T) uint64 { return uint64(uintptr(unsafe.Pointer(&s[0]))) }
