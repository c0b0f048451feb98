package cuda

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// runEmulated compiles scripts/gpu/emulate/<prog>.cpp (kernels.cu under
// emu.h: CUDA threads as OS threads) with g++, runs it on the cases bytes
// and returns what it wrote. Without g++ it skips, except under CI=true
// (.ci/run installs g++), where it fails. opt is g++'s -O level ("1", "2").
func runEmulated(t *testing.T, prog, opt string, cases []byte) []byte {
	t.Helper()
	gxx, err := exec.LookPath("g++")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no g++: the emulated %s check needs g++ (C++20); .ci/run installs it", prog)
		}
		t.Skipf("no g++: the emulated %s check needs g++ (C++20)", prog)
	}
	dir := t.TempDir()
	in, out, bin := filepath.Join(dir, "cases.bin"), filepath.Join(dir, "out.bin"), filepath.Join(dir, prog)
	if err := os.WriteFile(in, cases, 0o644); err != nil {
		t.Fatal(err)
	}
	src, _ := filepath.Abs(filepath.Join("..", "..", "scripts", "gpu", "emulate", prog+".cpp"))
	t0 := time.Now()
	if msg, err := exec.Command(gxx, "-std=c++20", "-O"+opt, "-pthread", "-ffp-contract=off", "-fno-strict-aliasing", "-w", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("g++ %s: %v\n%s", prog, err, msg)
	}
	t1 := time.Now()
	if msg, err := exec.Command(bin, in, out).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", prog, err, msg)
	}
	t.Logf("%s: compile %.1f s, run %.1f s", prog, t1.Sub(t0).Seconds(), time.Since(t1).Seconds())
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
