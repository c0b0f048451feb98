package train

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model"
)

// TestEstimateLoRAStepMatchesPass: the shape-only estimate equals what a
// real training pass allocates (ActivationBytes) and what the model holds
// (BaseLinearBytes after QuantizeBase NF4), on the tiny models, with and
// without checkpointing.
func TestEstimateLoRAStepMatchesPass(t *testing.T) {
	for _, name := range []string{"qwen3-tied", "qwen3-untied-bf16", "llama3"} {
		m, err := model.Load(filepath.Join("..", "testdata", "models", name), model.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		c := m.Config
		sh := Shape{Layers: c.Layers, Hidden: c.Hidden, Intermediate: c.Intermediate, Heads: c.Heads, KVHeads: c.KVHeads,
			HeadDim: c.HeadDim, Vocab: c.Vocab, QKNorm: c.QKNorm, Tied: c.TieEmbeddings}
		for _, ckpt := range []bool{false, true} {
			for _, T := range []int{7, 100} {
				p, err := m.NewPass(T, model.TrainOptions{Checkpointing: ckpt, LossChunk: 32})
				if err != nil {
					t.Fatal(err)
				}
				e, err := EstimateLoRAStep(LoRAStep{Shape: sh, BaseDType: kernels.NF4, EmbedDType: kernels.BF16, Rank: 4, SeqLen: T, Checkpointing: ckpt, LossChunk: 32})
				if err != nil {
					t.Fatal(err)
				}
				if e.Activations != p.ActivationBytes() {
					t.Errorf("%s T=%d ckpt=%v: activations %d, the pass has %d", name, T, ckpt, e.Activations, p.ActivationBytes())
				}
			}
		}
		e, _ := EstimateLoRAStep(LoRAStep{Shape: sh, BaseDType: kernels.NF4, EmbedDType: kernels.BF16, Rank: 4, SeqLen: 8})
		if err := m.QuantizeBase(kernels.NF4, 2, nil); err != nil {
			t.Fatal(err)
		}
		if got := m.BaseLinearBytes(); e.BaseLinears != got {
			t.Errorf("%s: NF4 linears %d, the model holds %d", name, e.BaseLinears, got)
		}
	}
}

// TestQwen3_8BQLoRAMemory: a Qwen3-8B-shaped model (36 layers, hidden 4096,
// intermediate 12288, 32 heads, 8 KV heads, head_dim 128, vocabulary
// 151936, untied head), LoRA r=16 on all linears, 2048 tokens, gradient
// checkpointing: the NF4 base (linears in NF4, embeddings and head in
// bf16) fits in about 6 GB and the whole step in under 12 GB, as issue 11
// asks; the table goes to docs/QLORA.md (go test -v -run Qwen3_8B).
func TestQwen3_8BQLoRAMemory(t *testing.T) {
	sh := Shape{Layers: 36, Hidden: 4096, Intermediate: 12288, Heads: 32, KVHeads: 8, HeadDim: 128, Vocab: 151936, QKNorm: true}
	gb := func(n int64) string { return fmt.Sprintf("%.2f", float64(n)/1e9) }
	var rows []string
	est := map[kernels.DType]StepEstimate{}
	for _, dt := range []kernels.DType{kernels.BF16, kernels.INT8, kernels.Q8_0, kernels.NF4, kernels.INT4, kernels.Q4_K} {
		e, err := EstimateLoRAStep(LoRAStep{Shape: sh, BaseDType: dt, EmbedDType: kernels.BF16, Rank: 16, SeqLen: 2048, Checkpointing: true})
		if err != nil {
			t.Fatal(err)
		}
		est[dt] = e
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s |", dt, gb(e.BaseLinears), gb(e.BaseLinears+e.Embeddings),
			gb(e.Activations), gb(e.Trainable), gb(e.Scratch), gb(e.Total)))
	}
	t.Log("\n| base linears | linears GB | base GB (+ bf16 embeddings, head) | activations GB | adapter + AdamW GB | adapter scratch GB | step GB |\n|---|---|---|---|---|---|---|\n" + strings.Join(rows, "\n"))
	nf4 := est[kernels.NF4]
	if base := nf4.BaseLinears + nf4.Embeddings; base > 6.5e9 {
		t.Errorf("NF4 base %s GB, want about 6", gb(base))
	}
	if nf4.Total >= 12e9 {
		t.Errorf("NF4 step %s GB, want under 12", gb(nf4.Total))
	}
	// Exact parts: 6.95e9 linear weights at 36 bytes per 64; 43.6M adapter
	// parameters at 16 bytes each.
	if lin := int64(36) * (2*4096*4096 + 2*4096*1024 + 3*4096*12288); nf4.BaseLinears != lin/64*36 || est[kernels.BF16].BaseLinears != 2*lin {
		t.Errorf("linears %d (NF4), %d (BF16) for %d weights", nf4.BaseLinears, est[kernels.BF16].BaseLinears, lin)
	}
	if params := int64(36 * 16 * (2*4096 + 2*(4096+1024) + 2*4096 + 3*(4096+12288))); nf4.Trainable != 16*params {
		t.Errorf("trainable %d bytes for %d parameters", nf4.Trainable, params)
	}
}
