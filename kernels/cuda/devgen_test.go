package cuda

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
)

// TestDeviceDecoder: decoding on the fake device (the pass's layers with a
// key/value cache on the device, the cache-form attention kernel, the LM
// head on the last row) gives the logits of the CPU's Forward over a Cache
// and Logits, for a 7-token prompt and then one token at a time, every tiny
// model (mistral's sliding window included), with and without a LoRA
// adapter: within 1e-5 relative; each step moves the token and its
// position up (8 bytes) and one row of logits down. model.Generate through
// it (greedy, and sampled with a seed) emits the CPU's tokens.
func TestDeviceDecoder(t *testing.T) {
	for _, name := range tinyModels {
		for _, adapter := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/adapter=%v", name, adapter), func(t *testing.T) {
				mc := loadOn(t, name, cpu.New(1))
				fb, fake := newFake(t, false)
				mg := loadOn(t, name, fb)
				if adapter {
					mc.SetAdapter(newAdapter(t, mc.Config, 0.25))
					mg.SetAdapter(newAdapter(t, mg.Config, 0.25))
				}
				const maxT = 16
				d, err := fb.NewDeviceDecoder(mg, maxT)
				if err != nil || d == nil {
					t.Fatalf("decoder %v, error %v", d, err)
				}
				dd := d.(*DeviceDecoder)
				defer dd.Close()
				V, C := mc.Config.Vocab, mc.Config.Hidden
				r := rand.New(rand.NewPCG(4, 2))
				c := mc.NewCache(maxT)
				want, got := make([]float32, V), make([]float32, V)
				toks := []int{}
				for range 7 {
					toks = append(toks, r.IntN(V))
				}
				worst := 0.0
				for step := 0; step < 6; step++ {
					h := make([]float32, len(toks)*C)
					if err := mc.Forward(c, toks, h); err != nil {
						t.Fatal(err)
					}
					mc.Logits(want, h[(len(toks)-1)*C:])
					h0, d0 := fake.htod, fake.dtoh
					if err := dd.Decode(toks, got); err != nil {
						t.Fatal(err)
					}
					if up, down := fake.htod-h0, fake.dtoh-d0; up != uint64(8*len(toks)) || down != uint64(4*V) {
						t.Fatalf("step %d moved %d bytes up and %d down, want %d and %d", step, up, down, 8*len(toks), 4*V)
					}
					e := maxRel(got, want)
					worst = max(worst, e)
					if e > 1e-5 {
						t.Fatalf("step %d (%d tokens at position %d): logits max rel err %.2e", step, len(toks), dd.n-len(toks), e)
					}
					toks = []int{r.IntN(V)}
				}
				if err := dd.Decode(make([]int, maxT), got); err == nil || !strings.Contains(err.Error(), "exceed the cache") {
					t.Fatalf("a window past the cache: %v", err)
				}
				// Generate through the decoder emits the CPU's tokens.
				prompt := []int{1, 5, 9, 2}
				for _, opts := range []model.SampleOptions{{}, {Temperature: 0.8, TopP: 0.9, Seed: 3}} {
					gen := func(m *model.Model) []int {
						var out []int
						if err := m.Generate(prompt, 10, nil, opts, func(id int) bool { out = append(out, id); return true }); err != nil {
							t.Fatal(err)
						}
						return out
					}
					launches := fake.launches["embedding_fwd"] + fake.launches["embedding_fwd_bf16"]
					wantIDs, gotIDs := gen(mc), gen(mg)
					if !slices.Equal(gotIDs, wantIDs) {
						t.Fatalf("Generate %+v: device %v, cpu %v", opts, gotIDs, wantIDs)
					}
					if fake.launches["embedding_fwd"]+fake.launches["embedding_fwd_bf16"]-launches != 10 {
						t.Fatalf("Generate did not decode through the device decoder")
					}
				}
				t.Logf("logits max rel err %.2e over 6 steps; Generate (greedy, sampled) = the CPU's", worst)
			})
		}
	}
}

// TestDeviceDecoderFallback: with TUNE_CUDA_PASS=host there is no device
// decoder and Generate runs op by op, with the same tokens.
func TestDeviceDecoderFallback(t *testing.T) {
	fb, fake := newFake(t, false)
	fb.devPass = false
	mg := loadOn(t, "qwen3-tied", fb)
	if d, err := fb.NewDeviceDecoder(mg, 8); d != nil || err != nil {
		t.Fatalf("decoder %v, error %v; want none", d, err)
	}
	mc := loadOn(t, "qwen3-tied", cpu.New(1))
	var a, b []int
	for _, x := range []struct {
		m   *model.Model
		out *[]int
	}{{mc, &a}, {mg, &b}} {
		if err := x.m.Generate([]int{3, 4}, 5, nil, model.SampleOptions{}, func(id int) bool { *x.out = append(*x.out, id); return true }); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(a, b) || fake.launches["gather_rows"] != 0 {
		t.Fatalf("per-op Generate %v, cpu %v (pass kernels ran: %d)", b, a, fake.launches["gather_rows"])
	}
}

// TestDeviceDecoderGPU is TestDeviceDecoder's logits check on the GPU, in
// the backend's GEMM mode (bf16: 2e-2), and greedy Generate against the
// CPU's tokens (reported; with bf16 GEMMs a near-tie may flip one).
func TestDeviceDecoderGPU(t *testing.T) {
	g := openOrSkip(t)
	tol := 1e-5
	if g.bf16 {
		tol = 2e-2
	}
	for _, name := range tinyModels {
		t.Run(name, func(t *testing.T) {
			mc, mg := loadOn(t, name, cpu.New(1)), loadOn(t, name, g)
			d, err := g.NewDeviceDecoder(mg, 32)
			if err != nil || d == nil {
				t.Fatalf("decoder %v, error %v", d, err)
			}
			dd := d.(*DeviceDecoder)
			defer dd.Close()
			V, C := mc.Config.Vocab, mc.Config.Hidden
			c := mc.NewCache(32)
			want, got := make([]float32, V), make([]float32, V)
			toks := []int{1, 7, 3, 9, 2, 8, 4}
			worst := 0.0
			for step := 0; step < 8; step++ {
				h := make([]float32, len(toks)*C)
				if err := mc.Forward(c, toks, h); err != nil {
					t.Fatal(err)
				}
				mc.Logits(want, h[(len(toks)-1)*C:])
				if err := dd.Decode(toks, got); err != nil {
					t.Fatal(err)
				}
				worst = max(worst, maxRel(got, want))
				toks = []int{(step*37 + 11) % V}
			}
			var a, b []int
			for _, x := range []struct {
				m   *model.Model
				out *[]int
			}{{mc, &a}, {mg, &b}} {
				if err := x.m.Generate([]int{1, 5, 9, 2}, 12, nil, model.SampleOptions{}, func(id int) bool { *x.out = append(*x.out, id); return true }); err != nil {
					t.Fatal(err)
				}
			}
			report(fmt.Sprintf("device decoder %-18s gemm %s: logits max rel err %.2e over 8 steps; greedy tokens equal the CPU's: %v\n",
				name, gemmMode(g), worst, slices.Equal(a, b)))
			if worst > tol || (!g.bf16 && !slices.Equal(a, b)) {
				t.Fatalf("logits max rel err %.2e; tokens %v, cpu %v", worst, b, a)
			}
		})
	}
}
