package cpu

import (
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// ulps is the distance in units in the last place between two finite
// float32 of the same sign (0 when equal).
func ulps(a, b float32) int64 {
	ia, ib := int64(math.Float32bits(a)), int64(math.Float32bits(b))
	if ia > ib {
		return ia - ib
	}
	return ib - ia
}

// TestExpf: expf against the correctly rounded float32 of float64
// math.Exp: at most 2 ulp for normal results, within one denormal step
// below, exact specials; and the AVX2 kernel bit-identical to expf, lane for
// lane, on every tail length.
func TestExpf(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	xs := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 0.5, -0.5, 1e-8, -1e-8, 88.72283, 88.72284, 89, 1000,
		-87.33654, -87.4, -100, -103.9, -103.97, -104, -104.1, -1e6, float32(math.Inf(1)), float32(math.Inf(-1)),
		float32(math.NaN()), 0.693359375, -0.693359375, 44.36, 88.5, 88.0}
	for i := 0; i < 200000; i++ {
		xs = append(xs, float32(rng.Float64()*200-105))
	}
	for i := 0; i < 20000; i++ { // softmax's range: x - max <= 0, mostly small
		xs = append(xs, -float32(rng.ExpFloat64()*3))
	}
	worst := int64(0)
	for _, x := range xs {
		got := expf(x)
		want := float32(math.Exp(float64(x)))
		switch {
		case x != x:
			if got == got {
				t.Fatalf("expf(NaN) = %v", got)
			}
			continue
		case math.IsInf(float64(want), 0) || want == 0:
			if got != want {
				t.Fatalf("expf(%v) = %v, want %v", x, got, want)
			}
			continue
		case want < math.SmallestNonzeroFloat32*(1<<23): // denormal
			if d := math.Abs(float64(got) - math.Exp(float64(x))); d > 1.5*math.SmallestNonzeroFloat32 {
				t.Fatalf("expf(%v) = %v, want %v (denormal)", x, got, want)
			}
			continue
		}
		if u := ulps(got, want); u > worst {
			worst = u
			if u > 2 {
				t.Fatalf("expf(%v) = %v, want %v: %d ulp", x, got, want, u)
			}
		}
	}
	t.Logf("worst error over %d arguments: %d ulp", len(xs), worst)

	for _, ab := range [][2]float32{{1, 0}, {-1, 0}, {0.125, -3.5}, {1, -12.25}} {
		for n := 0; n <= 67; n++ {
			for _, off := range []int{0, 1, 3} { // unaligned starts
				src := xs[1000+off : 1000+off+n]
				got := make([]float32, n+off)[off:]
				want := make([]float32, n)
				expAffine(got, src, ab[0], ab[1])
				expAffineGo(want, src, ab[0], ab[1])
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("a=%v b=%v n=%d i=%d: kernel %v, Go %v", ab[0], ab[1], n, i, got[i], want[i])
					}
				}
			}
		}
		all := make([]float32, len(xs))
		ref := make([]float32, len(xs))
		expAffine(all, xs, ab[0], ab[1])
		expAffineGo(ref, xs, ab[0], ab[1])
		for i := range ref {
			if math.Float32bits(all[i]) != math.Float32bits(ref[i]) && !(all[i] != all[i] && ref[i] != ref[i]) {
				t.Fatalf("a=%v b=%v x=%v: kernel %v, Go %v", ab[0], ab[1], xs[i], all[i], ref[i])
			}
		}
	}
}

func BenchmarkExp(b *testing.B) {
	src := make([]float32, 4096)
	for i := range src {
		src[i] = -float32(i%97) * 0.13
	}
	dst := make([]float32, len(src))
	b.Run("kernel", func(b *testing.B) {
		for b.Loop() {
			expAffine(dst, src, 1, 0)
		}
		b.ReportMetric(float64(len(src)*b.N)/b.Elapsed().Seconds()/1e9, "Gexp/s")
	})
	b.Run("math.Exp", func(b *testing.B) {
		for b.Loop() {
			for i, x := range src {
				dst[i] = float32(math.Exp(float64(x)))
			}
		}
		b.ReportMetric(float64(len(src)*b.N)/b.Elapsed().Seconds()/1e9, "Gexp/s")
	})
}

// TestMeasurePeakFLOPS: the measured FMA peak is positive with the assembly
// kernels (0 in noasm builds) and scales with threads (2 threads at least
// 1.2x one on a machine with 2 free cores; not asserted: CI's cores may be
// shared).
func TestMeasurePeakFLOPS(t *testing.T) {
	one := MeasurePeakFLOPS(1, 50*time.Millisecond)
	all := MeasurePeakFLOPS(runtime.GOMAXPROCS(0), 50*time.Millisecond)
	t.Logf("fp32 FMA peak: 1 thread %.1f GFLOP/s, %d threads %.1f GFLOP/s", one/1e9, runtime.GOMAXPROCS(0), all/1e9)
	if useAVX2 && (one <= 0 || all <= 0) {
		t.Fatalf("peak %v, %v with FMA kernels", one, all)
	}
	if !useAVX2 && (one != 0 || all != 0) {
		t.Fatalf("peak %v, %v without FMA kernels", one, all)
	}
}
