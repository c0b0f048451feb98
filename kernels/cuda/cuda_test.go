package cuda

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
)

// These tests need no GPU: they run in CI.

func TestSearchDirsOrder(t *testing.T) {
	env := map[string]string{
		"TUNE_CUDA_LIB_DIR": "/opt/mine:/opt/mine2",
		"LD_LIBRARY_PATH":   "/ld/a::/opt/mine",
		"HOME":              "/home/u",
		"VIRTUAL_ENV":       "/venv",
	}
	globs := map[string][]string{
		"/usr/local/cuda-*/lib64":                       {"/usr/local/cuda-11.8/lib64", "/usr/local/cuda-12.4/lib64"},
		"/venv/lib/python3*/site-packages/nvidia/*/lib": {"/venv/lib/python3.11/site-packages/nvidia/cublas/lib"},
		"/usr/local/lib/python3*/dist-packages/nvidia/*/lib": {"/usr/local/lib/python3.10/dist-packages/nvidia/cuda_runtime/lib",
			"/usr/local/lib/python3.10/dist-packages/nvidia/cublas/lib"},
	}
	got := searchDirs(func(k string) string { return env[k] }, func(p string) ([]string, error) { return globs[p], nil })
	want := []string{"/opt/mine", "/opt/mine2", "/ld/a", "/usr/local/cuda/lib64", "/usr/local/cuda-12.4/lib64", "/usr/local/cuda-11.8/lib64",
		"/usr/lib/x86_64-linux-gnu"}
	if !slices.Equal(got[:len(want)], want) {
		t.Fatalf("search order starts %q, want %q", got[:len(want)], want)
	}
	venv := slices.Index(got, "/venv/lib/python3.11/site-packages/nvidia/cublas/lib")
	sys := slices.Index(got, "/usr/local/lib/python3.10/dist-packages/nvidia/cublas/lib")
	if venv < 0 || sys < 0 || venv > sys {
		t.Fatalf("pip wheel folders: virtualenv at %d, system at %d in %q", venv, sys, got)
	}
	if n := strings.Count(strings.Join(got, "\n"), "/opt/mine\n"); n != 1 {
		t.Fatalf("/opt/mine listed %d times: %q", n, got)
	}
}

func TestOpenLibraryMissing(t *testing.T) {
	dir := t.TempDir()
	_, err := openLibraryIn([]string{"libtune-no-such-lib.so.1"}, []string{dir})
	if err == nil || !strings.Contains(err.Error(), "libtune-no-such-lib.so.1 not found in "+dir) {
		t.Fatalf("err = %v", err)
	}
	// A file that exists but is not a shared object is reported by path.
	bad := filepath.Join(dir, "libtune-bad.so.1")
	os.WriteFile(bad, []byte("not an ELF"), 0o644)
	_, err = openLibraryIn([]string{"libtune-bad.so.1"}, []string{dir})
	if err == nil || !strings.Contains(err.Error(), bad+":") {
		t.Fatalf("err = %v, want it to name %s", err, bad)
	}
}

// TestPTXEmbedded checks that the embedded PTX is what `make kernels`
// builds: compute_80 PTX with every entry point the backend looks up.
func TestPTXEmbedded(t *testing.T) {
	if !strings.Contains(ptx, ".target sm_80") {
		t.Fatalf("kernels.ptx does not target sm_80 (regenerate with make kernels)")
	}
	// minDriver (11.8) must be able to JIT it: PTX ISA 7.8 at most.
	if m := regexp.MustCompile(`(?m)^\.version (\d+)\.(\d+)`).FindStringSubmatch(ptx); m == nil || m[1] != "7" || m[2] > "8" {
		t.Fatalf("kernels.ptx .version %v: raise minDriver with the PTX ISA", m)
	}
	entries := map[string]bool{}
	for _, m := range regexp.MustCompile(`\.entry\s+([A-Za-z0-9_]+)\s*\(`).FindAllStringSubmatch(ptx, -1) {
		entries[m[1]] = true
	}
	for _, n := range kernelNames {
		if !entries[n] {
			t.Errorf("kernels.ptx has no entry %s (stale PTX? make kernels)", n)
		}
	}
	var src []byte
	for _, f := range []string{"kernels.cu", "dora.cu", "kld.cu"} { // #included by kernels.cu
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src = append(src, b...)
	}
	for _, inc := range []string{`#include "dora.cu"`, `#include "kld.cu"`} {
		if !strings.Contains(string(src), inc) {
			t.Errorf("kernels.cu lacks %s", inc)
		}
	}
	for _, m := range regexp.MustCompile(`extern "C" __global__ void ([A-Za-z0-9_]+)\(`).FindAllStringSubmatch(string(src), -1) {
		if !entries[m[1]] {
			t.Errorf("kernels.cu defines %s but kernels.ptx lacks it: run make kernels", m[1])
		}
	}
}

// TestNoDriver: where CUDA is unusable, Open and kernels.Get("cuda") fail
// with one line naming the cause, and Probe still reports the search.
func TestNoDriver(t *testing.T) {
	info, err := Probe()
	if err == nil {
		t.Skipf("a usable GPU is present (%s): the no-driver path is not exercised here", info)
	}
	if !strings.HasPrefix(err.Error(), "cuda: ") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Probe error %q: want one line starting with cuda:", err)
	}
	if len(info.SearchedPaths) == 0 {
		t.Fatalf("Probe reports no searched folders")
	}
	if _, oerr := Open(); oerr == nil || oerr.Error() != err.Error() {
		t.Fatalf("Open error %v, want %v", oerr, err)
	}
	_, gerr := kernels.Get("cuda")
	if gerr == nil || !strings.Contains(gerr.Error(), err.Error()) {
		t.Fatalf("kernels.Get(cuda) error %v, want it to contain %v", gerr, err)
	}
	t.Logf("no GPU, as expected here: %v", err)
	t.Logf("report:\n%s", info)
}

// TestLaunchArgs checks every b.launch("kernel", grid, block, args...) call
// in this package against kernels.ptx: the kernel exists and the argument
// count matches its parameters. (Types are checked at run time by
// checkArgs, tested below.)
func TestLaunchArgs(t *testing.T) {
	sigs := ptxParams(ptx)
	if len(sigs) != len(kernelNames) {
		t.Fatalf("parsed %d PTX entries, want %d", len(sigs), len(kernelNames))
	}
	fset := token.NewFileSet()
	files, _ := filepath.Glob("*.go")
	calls := 0
	for _, fn := range files {
		f, err := parser.ParseFile(fset, fn, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			// launch("kernel", grid, block, args...), or the device pass's
			// ew("kernel", n, args...) (grid and block from n).
			sel, ok := call.Fun.(*ast.SelectorExpr)
			fixed := 3
			if ok && sel.Sel.Name == "ew" {
				fixed = 2
			}
			if !ok || (sel.Sel.Name != "launch" && sel.Sel.Name != "ew") || len(call.Args) < fixed {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok {
				return true
			}
			calls++
			name := strings.Trim(lit.Value, `"`)
			sig, ok := sigs[name]
			if !ok {
				t.Errorf("%s: launch of %s, which kernels.ptx lacks", fset.Position(call.Pos()), name)
				return true
			}
			if got := len(call.Args) - fixed; got != len(sig) {
				t.Errorf("%s: launch %s with %d arguments, kernels.ptx declares %d", fset.Position(call.Pos()), name, got, len(sig))
			}
			return true
		})
	}
	if calls < len(kernelNames) {
		t.Errorf("found %d launch calls, fewer than the %d kernels", calls, len(kernelNames))
	}
}

func TestCheckArgs(t *testing.T) {
	sig := ptxParams(ptx)["attention_fwd"]
	if want := []string{"u64", "u64", "u64", "u64", "u64", "u32", "u32", "u32", "u32", "u32", "u32", "f32"}; !slices.Equal(sig, want) {
		t.Fatalf("attention_fwd params %v, want %v", sig, want)
	}
	ok := []any{uint64(1), uint64(2), uint64(3), uint64(4), uint64(0), 0, 5, 8, 2, 128, 0, float32(0.1)}
	if err := checkArgs("attention_fwd", sig, ok); err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(ok)
	bad[11] = 0.1 // float64: the kernel reads a float
	if err := checkArgs("attention_fwd", sig, bad); err == nil || !strings.Contains(err.Error(), "argument 11 is float64") {
		t.Fatalf("err = %v", err)
	}
	if err := checkArgs("attention_fwd", sig, ok[:11]); err == nil || !strings.Contains(err.Error(), "11 arguments") {
		t.Fatalf("err = %v", err)
	}
}

func TestBlocks(t *testing.T) {
	for _, c := range []struct{ n, per, want int }{{0, 256, 0}, {1, 256, 1}, {256, 256, 1}, {257, 256, 2}, {151936 * 4, 4, 151936}} {
		if got := blocks(c.n, c.per); got != c.want {
			t.Errorf("blocks(%d, %d) = %d, want %d", c.n, c.per, got, c.want)
		}
	}
	if x, y := gridXY(1 << 20); x != 1<<20 || y != 1 {
		t.Errorf("gridXY(2^20) = %d, %d", x, y)
	}
}

func TestSupportsEveryCPUOp(t *testing.T) {
	var b *Backend
	s := b.Supports()
	for _, op := range kernels.Ops() {
		if op == kernels.OpSoftmaxBack {
			continue // no backend implements it yet
		}
		if !s[op] {
			t.Errorf("cuda backend does not claim %v", op)
		}
	}
}
