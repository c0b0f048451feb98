package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tunellm/tune/data"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/train"
)

// TestBench8B (TUNE_CUDA_BENCH=1) trains LoRA r=16 on every linear layer
// of a model of Qwen3-8B's shape (36 layers, hidden 4096, intermediate
// 12288, 32 heads, 8 KV heads, head dim 128, vocab 151,936, untied lm_head)
// whose bf16 weights are random (made here, in memory: no download), one
// sequence of 2048 tokens per step, through train.Trainer on the cuda
// backend (train.NewLoRA takes the device-resident pass, host-synchronised:
// AdamW on the host; TestBench8BDevice times the pass with the optimizer
// on the device), without and with gradient checkpointing. It reports tokens/s,
// MFU (train.FLOPCount over the device's bf16 peak, and over the ~790
// TFLOP/s measured bf16 GEMM ceiling of the lent H200), the backend's peak
// GPU memory, and the host activation memory. Sized for gpu-check.sh:
// TUNE_CUDA_BENCH_BUDGET seconds (default 150) for both runs; a run stops
// adding steps once the budget is spent.
func TestBench8B(t *testing.T) {
	if os.Getenv("TUNE_CUDA_BENCH") != "1" {
		t.Skip("set TUNE_CUDA_BENCH=1 to time the GPU")
	}
	g := openOrSkip(t)
	budget := 150.0
	if s := os.Getenv("TUNE_CUDA_BENCH_BUDGET"); s != "" {
		budget, _ = strconv.ParseFloat(s, 64)
	}
	benchLoRA(t, g, qwen3Config(36, 4096, 12288, 32, 8, 128, 151936), 2048, budget)
}

// TestDryBenchLoRA runs TestBench8B's code on a small Qwen3 shape through
// the dry backend (CI: the random model, the trainer wiring, the report).
func TestDryBenchLoRA(t *testing.T) {
	b := newDry(t)
	b.dev = Device{Name: "NVIDIA H200", Major: 9}
	benchLoRA(t, b, qwen3Config(2, 64, 160, 4, 2, 16, 300), 64, 60)
}

func qwen3Config(L, C, I, NH, KVH, HD, V int) string {
	return fmt.Sprintf(`{"model_type":"qwen3","architectures":["Qwen3ForCausalLM"],"hidden_size":%d,"intermediate_size":%d,
"num_hidden_layers":%d,"num_attention_heads":%d,"num_key_value_heads":%d,"head_dim":%d,"vocab_size":%d,
"max_position_embeddings":40960,"rms_norm_eps":1e-6,"rope_theta":1000000,"tie_word_embeddings":false,
"hidden_act":"silu","torch_dtype":"bfloat16","bos_token_id":1,"eos_token_id":2}`, C, I, L, NH, KVH, HD, V)
}

func benchLoRA(t *testing.T, g *Backend, cfgJSON string, T int, budget float64) {
	start := time.Now()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfgJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.New(cfg, newRandomBF16(cfg), model.LoadOptions{Backend: g})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ad, err := lora.New(lora.Config{R: 16, Alpha: 32, TargetModules: []string{"all-linear"}}, m.Config, 1)
	if err != nil {
		t.Fatal(err)
	}
	benchLine("qwen3 L=%d C=%d I=%d V=%d: random bf16 weights made in %.1f s; LoRA r=16 all-linear, %d trainable parameters; GEMM %s",
		cfg.Layers, cfg.Hidden, cfg.Intermediate, cfg.Vocab, time.Since(start).Seconds(), ad.NumParams(), gemmMode(g))
	r := rand.New(rand.NewPCG(41, 42))
	b := data.Batch{B: 1, T: T}
	for i := 0; i < T; i++ {
		id := int32(r.IntN(cfg.Vocab))
		b.IDs, b.Labels, b.Positions, b.SegIDs = append(b.IDs, id), append(b.Labels, id), append(b.Positions, int32(i)), append(b.SegIDs, 0)
	}
	b.Labels[0] = data.IgnoreIndex
	ds := fixedData{[]data.Batch{b}}
	peak, what := train.PeakFLOPS(g)
	fc := train.NewFLOPCount(m.Config, ad)
	perTok := fc.Sequence(b.Positions, b.SegIDs, b.Labels) / float64(T)
	benchLine("model FLOPs %.4g per token (train.FLOPCount); peak %s", perTok, what)
	for _, ckpt := range []bool{false, true} {
		left := budget - time.Since(start).Seconds()
		if left < 20 {
			benchLine("checkpointing=%v: skipped (%.0f s of the %.0f s budget left)", ckpt, left, budget)
			continue
		}
		run, err := train.NewLoRA(m, ad, T, model.TrainOptions{Checkpointing: ckpt})
		if err != nil {
			t.Fatal(err)
		}
		g.ResetPeak()
		ctx, cancel := context.WithCancel(context.Background())
		var steps []train.StepMetrics
		t0 := time.Now()
		tr := &train.Trainer{Cfg: train.Config{MaxSteps: 4, BatchSize: 1, GradAccum: 1, LR: 1e-4, Schedule: "constant",
			AdamW: train.AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}, MaxGradNorm: 1, KeepCheckpoints: 1,
			Dir: t.TempDir(), DType: "bf16"}, Model: run, Params: run, Data: ds, FLOPs: fc, PeakFLOPS: peak,
			Progress: func(e train.Event) {
				if e.Train == nil {
					return
				}
				steps = append(steps, *e.Train)
				// The first step includes uploading the weights; stop once
				// another step would not fit in the budget.
				per := time.Since(t0).Seconds() / float64(len(steps))
				if len(steps) >= 2 && time.Since(start).Seconds()+per > budget {
					cancel()
				}
			}}
		_, err = tr.Run(ctx)
		cancel()
		var ie *train.InterruptedError
		if err != nil && !errors.As(err, &ie) {
			t.Fatal(err)
		}
		mem := g.Memory()
		act := float64(run.ActivationBytes()) / (1 << 30)
		onDev := run.OnDevice()
		run.Close()
		if len(steps) == 0 {
			benchLine("checkpointing=%v: no step finished", ckpt)
			continue
		}
		// Steady state: the steps after the first (which uploads weights).
		timed := steps
		if len(steps) > 1 {
			timed = steps[1:]
		}
		var tps, mfu float64
		for _, s := range timed {
			tps += s.TokensPerS / float64(len(timed))
			mfu += s.MFU / float64(len(timed))
		}
		sec := float64(T) / tps
		benchLine("lora r=16 T=%d checkpointing=%-5v: %d steps (first %.1f s), %.1f s/step, %.0f tokens/s, MFU %.2f%% of %.0f TFLOP/s (%.2f%% of 790 measured); loss %.3f; GPU peak %.1f GiB (backend), %.1f GiB used on the device; activations %.1f GiB (device pass: %v)",
			T, ckpt, len(steps), float64(T)/steps[0].TokensPerS, sec, tps, 100*mfu, peak/1e12, 100*mfu*peak/790e12,
			steps[len(steps)-1].Loss, float64(mem.Peak)/(1<<30), float64(mem.DeviceUsed)/(1<<30), act, onDev)
		if math.IsNaN(steps[0].Loss) {
			t.Errorf("checkpointing=%v: loss NaN", ckpt)
		}
		run = nil
		runtime.GC()
	}
}

// randomBF16 is a model.TensorSource of random bf16 weights for a config:
// matrices ~N(0, 0.02²), norm weights 1. The values come from one table of
// 2^20 random bf16 numbers read at a different offset per tensor (cheap to
// make 16 GB of; distinct buffers, so the device holds every tensor).
type randomBF16 struct {
	cfg   *model.Config
	table []byte
	r     *rand.Rand
}

func newRandomBF16(cfg *model.Config) *randomBF16 {
	r := rand.New(rand.NewPCG(51, 52))
	tab := make([]byte, 2<<20)
	for i := 0; i < len(tab)/2; i++ {
		u := math.Float32bits(float32(r.NormFloat64() * 0.02))
		u += 0x7fff + (u>>16)&1
		tab[2*i], tab[2*i+1] = byte(u>>16), byte(u>>24)
	}
	return &randomBF16{cfg: cfg, table: tab, r: r}
}

func (s *randomBF16) Tensor(name string) (safetensors.Tensor, error) {
	c := s.cfg
	C, I, V, qd, kvd := c.Hidden, c.Intermediate, c.Vocab, c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	var shape []int
	norm := false
	switch {
	case name == "model.embed_tokens.weight" || name == "lm_head.weight":
		shape = []int{V, C}
	case strings.HasSuffix(name, "layernorm.weight") || name == "model.norm.weight":
		shape, norm = []int{C}, true
	case strings.HasSuffix(name, "q_norm.weight") || strings.HasSuffix(name, "k_norm.weight"):
		shape, norm = []int{c.HeadDim}, true
	case strings.HasSuffix(name, "q_proj.weight"):
		shape = []int{qd, C}
	case strings.HasSuffix(name, "k_proj.weight") || strings.HasSuffix(name, "v_proj.weight"):
		shape = []int{kvd, C}
	case strings.HasSuffix(name, "o_proj.weight"):
		shape = []int{C, qd}
	case strings.HasSuffix(name, "gate_proj.weight") || strings.HasSuffix(name, "up_proj.weight"):
		shape = []int{I, C}
	case strings.HasSuffix(name, "down_proj.weight"):
		shape = []int{C, I}
	default:
		return safetensors.Tensor{}, fmt.Errorf("random model: no tensor %q", name)
	}
	n := 1
	for _, d := range shape {
		n *= d
	}
	buf := make([]byte, 2*n)
	if norm {
		for i := 0; i < n; i++ {
			buf[2*i], buf[2*i+1] = 0x80, 0x3f // 1.0
		}
	} else {
		for off := 0; off < len(buf); {
			at := 2 * s.r.IntN(len(s.table)/2)
			off += copy(buf[off:], s.table[at:])
		}
	}
	return safetensors.Tensor{Name: name, DType: safetensors.BF16, Shape: shape, Data: buf}, nil
}
