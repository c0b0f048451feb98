package train

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// TestFLOPCountByHand checks Sequence against a count done by hand for a
// tiny config (C 4, I 6, V 10, NH 2, KVH 1, HD 2, two layers, the second
// with a window of 2, one rank-1 LoRA on a 4x4 linear) and two packed
// documents of 3 and 2 tokens:
//
//	P = C·NH·HD + 2·C·KVH·HD + NH·HD·C + 3·C·I = 16 + 16 + 16 + 72 = 120
//	linear: 2·2·120 per token per layer × 2 layers × 5 tokens  = 4800
//	LoRA:   6·1·(4+4) = 48 per token × 5                        =  240
//	attention pairs: layer 0: 1+2+3 + 1+2 = 9; layer 1 (window 2):
//	        1+2+2 + 1+2 = 8; 17 pairs × 12·NH·HD = 17 × 48       =  816
//	lm_head: scored rows are labels 5, 6 and 7 (-100 and a document's
//	        first label are not): 3 × 4·C·V = 3 × 160           =  480
//	total                                                         6336
//
// Full training: linear 3·2·120·2·5 = 7200, attention 816, lm_head
// 3 × 6·C·V = 720: 8736.
func TestFLOPCountByHand(t *testing.T) {
	f := &FLOPCount{Hidden: 4, Intermediate: 6, Vocab: 10, Heads: 2, KVHeads: 1, HeadDim: 2, Windows: []int{0, 2},
		LoRA: []LoRAShape{{R: 1, In: 4, Out: 4}}}
	pos := []int32{0, 1, 2, 0, 1}
	seg := []int32{0, 0, 0, 1, 1}
	lab := []int32{-100, 5, 6, 9, 7}
	if got := f.LinearParams(); got != 120 {
		t.Fatalf("LinearParams = %d, want 120", got)
	}
	if got := f.Sequence(pos, seg, lab); got != 6336 {
		t.Errorf("LoRA: Sequence = %v, want 6336", got)
	}
	f.LoRA, f.Full = nil, true
	if got := f.Sequence(pos, seg, lab); got != 8736 {
		t.Errorf("full: Sequence = %v, want 8736", got)
	}
}

// TestFLOPCountQwen38B: at the Qwen3-8B shape the count is close
// to the usual 4·N (LoRA) rule: 4·6.95e9 non-embedding linear weights per
// token, plus the lm_head and attention on top.
func TestFLOPCountQwen38B(t *testing.T) {
	f := &FLOPCount{Hidden: 4096, Intermediate: 12288, Vocab: 151936, Heads: 32, KVHeads: 8, HeadDim: 128, Windows: make([]int, 36)}
	if p := float64(f.LinearParams()) * 36; math.Abs(p-6.946e9) > 0.01e9 {
		t.Fatalf("linear params %.4g, want 6.946e9 (Qwen3-8B without embeddings and norms)", p)
	}
	T := 2048
	pos, seg, lab := make([]int32, T), make([]int32, T), make([]int32, T)
	for i := range pos {
		pos[i] = int32(i)
	}
	perTok := f.Sequence(pos, seg, lab) / float64(T)
	lin := 4 * float64(f.LinearParams()) * 36
	attn := 12 * 32 * 128 * 36 * float64(T+1) / 2
	head := 4 * 4096 * 151936 * float64(T-1) / float64(T)
	if want := lin + attn + head; math.Abs(perTok-want) > 1e-9*want {
		t.Fatalf("per token %.6g, want %.6g", perTok, want)
	}
	t.Logf("Qwen3-8B LoRA-free, T=2048: %.4g FLOP/token (linear %.3g, attention %.3g, lm_head %.3g)", perTok, lin, attn, head)
}

// TestNewFLOPCount: the adapter's A/B shapes become one LoRAShape per
// adapted linear.
func TestNewFLOPCount(t *testing.T) {
	root := filepath.Join("..", "testdata")
	mc, err := model.LoadConfig(filepath.Join(root, "models", "qwen3-tied"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := lora.Load(filepath.Join(root, "adapters", "qwen3-tied-r4"), mc)
	if err != nil {
		t.Fatal(err)
	}
	f := NewFLOPCount(mc, a)
	if len(f.LoRA) != len(a.Tensors())/2 {
		t.Fatalf("%d LoRA shapes for %d tensors", len(f.LoRA), len(a.Tensors()))
	}
	var n int
	for _, s := range f.LoRA {
		if s.R <= 0 || s.In <= 0 || s.Out <= 0 {
			t.Fatalf("shape %+v", s)
		}
		n += s.R * (s.In + s.Out)
	}
	if n != a.NumParams() {
		t.Fatalf("LoRA shapes hold %d parameters, the adapter %d", n, a.NumParams())
	}
	if full := NewFLOPCount(mc, nil); !full.Full || full.LoRA != nil || len(full.Windows) != mc.Layers {
		t.Fatalf("full count %+v", full)
	}
}

func TestCPUPeak(t *testing.T) {
	two := func(flags, name, mhz string) string {
		var sb strings.Builder
		for i := 0; i < 4; i++ { // 2 cores x 2 threads
			sb.WriteString("processor\t: " + string(rune('0'+i)) + "\nmodel name\t: " + name + "\ncpu MHz\t\t: " + mhz +
				"\nphysical id\t: 0\ncore id\t\t: " + string(rune('0'+i/2)) + "\nflags\t\t: fpu " + flags + " sse2\n\n")
		}
		return sb.String()
	}
	for _, c := range []struct {
		name, info string
		khz        int
		want       float64
	}{
		{"avx512 cpufreq", two("avx2 fma avx512f", "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", "1000.0"), 3_000_000, 2 * 64 * 3e9},
		{"avx2 model name", two("avx2 fma", "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "800.0"), 0, 2 * 32 * 3.2e9},
		{"cpu MHz", two("avx2 fma avx512f", "AMD EPYC", "2596.150"), 0, 2 * 64 * 2.59615e9},
		{"sse", two("sse4_2", "Old", "2000"), 0, 2 * 16 * 2e9},
	} {
		got, what := cpuPeak(c.info, c.khz)
		if math.Abs(got-c.want) > 1e-6*c.want || what == "" {
			t.Errorf("%s: %.4g (%s), want %.4g", c.name, got, what, c.want)
		}
	}
	if got, _ := cpuPeak("", 0); got != 0 {
		t.Errorf("empty cpuinfo: %v", got)
	}
}

// TestTrainerMFU: with FLOPs and PeakFLOPS set, each step's MFU is the
// step's model FLOPs over its time over the peak, the same time its
// tokens/s uses, and metrics.jsonl carries it.
func TestTrainerMFU(t *testing.T) {
	g, m, a, run := goldenLoRARun(t)
	T := len(g.Batch.Tokens)
	bt := data.Batch{B: 1, T: T, IDs: g.Batch.Tokens, Labels: g.Batch.Labels, Positions: g.Batch.Positions, SegIDs: g.Batch.SegIDs}
	fc := NewFLOPCount(m.Config, a)
	const peak = 1e12
	dir := t.TempDir()
	var steps []StepMetrics
	tr := &Trainer{Cfg: Config{MaxSteps: 2, BatchSize: 1, GradAccum: 1, LR: 1e-3, Schedule: "constant", KeepCheckpoints: 1, Dir: dir, DType: "f32",
		AdamW: AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}}, Model: run, Params: run, Data: oneBatch{bt},
		FLOPs: fc, PeakFLOPS: peak, Progress: func(e Event) {
			if e.Train != nil {
				steps = append(steps, *e.Train)
			}
		}}
	if _, err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	flops := fc.Sequence(bt.Positions, bt.SegIDs, bt.Labels)
	for _, s := range steps {
		want := flops * s.TokensPerS / float64(s.Tokens) / peak
		if s.MFU <= 0 || math.Abs(s.MFU-want) > 1e-9*want {
			t.Errorf("step %d: mfu %v, want %v", s.Step, s.MFU, want)
		}
	}
	mj, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	if err != nil || strings.Count(string(mj), `"mfu":`) != 2 {
		t.Fatalf("metrics.jsonl: %v\n%s", err, mj)
	}
}
