package recipes

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// TestBaseQuantTrains: lora.base_quant nf4 and q8_0 train the tiny model (a
// few steps; the loss stays within reach of the bf16-base run), the plan's
// memory shows the base in its quantized size, and the saved adapter is an
// ordinary PEFT adapter that loads on the unquantized base config.
func TestBaseQuantTrains(t *testing.T) {
	dir := t.TempDir()
	plain, err := tinyJob(t, filepath.Join(dir, "none"), "lora.dropout=0").Train(context.Background(), TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode          string
		bytesPer64    int64 // per 64 elements
		denseBytesPer int64
	}{{"nf4", 36, 4}, {"q8_0", 68, 4}} {
		t.Run(tc.mode, func(t *testing.T) {
			d := filepath.Join(dir, tc.mode)
			j := tinyJob(t, d, "lora.dropout=0", "lora.base_quant="+tc.mode)
			mem := j.Plan().Memory
			if mem.BaseQuant != tc.mode || mem.BaseDense == 0 || mem.BaseQuantized != mem.BaseDense/tc.denseBytesPer/64*tc.bytesPer64 {
				t.Fatalf("memory %+v: want the base at %d bytes per 64 elements", mem, tc.bytesPer64)
			}
			if mem.Total != mem.Weights+mem.BaseQuantized+mem.Activations+mem.Trainable {
				t.Fatalf("memory total %+v", mem)
			}
			res, err := j.Train(context.Background(), TrainOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if math.IsNaN(res.Loss) || math.Abs(res.Loss-plain.Loss) > 0.5*plain.Loss+0.1 || res.Loss == plain.Loss {
				t.Fatalf("loss %v with %s base, %v with the f32 base", res.Loss, tc.mode, plain.Loss)
			}
			t.Logf("%s: loss %.4f (f32 base %.4f), eval %+v, memory %+v", tc.mode, res.Loss, plain.Loss, res.Eval, mem)
			mc, err := model.LoadConfig("../testdata/models/qwen3-tied")
			if err != nil {
				t.Fatal(err)
			}
			ad, err := lora.Load(filepath.Join(d, "run", "adapter"), mc)
			if err != nil {
				t.Fatalf("saved adapter: %v", err)
			}
			if ad.NumParams() == 0 {
				t.Fatal("empty adapter")
			}
			cfg, err := os.ReadFile(filepath.Join(d, "run", "adapter", "adapter_config.json"))
			if err != nil || !strings.Contains(string(cfg), `"peft_type"`) {
				t.Fatalf("adapter_config.json: %v %s", err, cfg)
			}
		})
	}
}

func TestBaseQuantRefused(t *testing.T) {
	for _, tc := range []struct {
		sets []string
		want string
	}{
		{[]string{"lora.base_quant=nf4", "train.mode=full"}, "lora.base_quant: nf4 with train.mode full"},
		{[]string{"lora.base_quant=nf4", "lora.use_dora=true"}, "lora.use_dora"},
		{[]string{"lora.base_quant=int3"}, "lora.base_quant"},
	} {
		_, err := Load("tiny-test.yaml", tc.sets)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.sets, err, tc.want)
		}
	}
	// q4_k needs widths that are multiples of 256; the tiny model's are 64.
	r, err := Load("tiny-test.yaml", []string{"lora.base_quant=q4_k", "output.dir=" + t.TempDir(), "dataset.cache_dir=" + t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Setup(r, SetupOptions{}); err == nil || !strings.Contains(err.Error(), "not a multiple of the Q4_K block size 256") {
		t.Errorf("q4_k on the tiny model: %v", err)
	}
}
