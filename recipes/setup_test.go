package recipes

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/train"
)

func tinyJob(t *testing.T, dir string, extra ...string) *Job {
	t.Helper()
	sets := append([]string{"output.dir=" + filepath.Join(dir, "run"), "dataset.cache_dir=" + filepath.Join(dir, "cache"),
		"train.max_steps=8", "train.eval_every=3", "train.save_every=0", "lora.dropout=0.1", "train.schedule=cosine", "train.warmup_steps=2"}, extra...)
	r, err := Load("tiny-test.yaml", sets)
	if err != nil {
		t.Fatal(err)
	}
	j, err := Setup(r, SetupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// TestResumeBitIdenticalOnTinyModel: 8 steps straight, and 4 steps,
// interrupt, resume in a fresh job, 4 steps, give the same bytes (LoRA with
// dropout on, and full training; cosine schedule with warmup, validation
// passes in between).
func TestResumeBitIdenticalOnTinyModel(t *testing.T) {
	for _, tc := range []struct {
		mode, file string
		sets       []string
	}{
		{"lora", filepath.Join("adapter", "adapter_model.safetensors"), nil},
		{"full", filepath.Join("model", "model.safetensors"), []string{"train.mode=full", "train.lr=1e-3"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			straight := t.TempDir()
			res, err := tinyJob(t, straight, tc.sets...).Train(context.Background(), TrainOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Eval == nil || !(res.Loss < 10) {
				t.Errorf("straight run: loss %v, eval %+v", res.Loss, res.Eval)
			}
			want, err := os.ReadFile(filepath.Join(straight, "run", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if tc.mode == "full" {
				// The trained folder is a model folder.
				m, err := model.Load(filepath.Join(straight, "run", "model"), model.LoadOptions{})
				if err != nil {
					t.Fatal(err)
				}
				m.Close()
			}
			dir := t.TempDir()
			ctx, cancel := context.WithCancel(context.Background())
			_, err = tinyJob(t, dir, tc.sets...).Train(ctx, TrainOptions{Progress: func(e train.Event) {
				if e.Train != nil && e.Step == 4 {
					cancel()
				}
			}})
			var ie *train.InterruptedError
			if !errors.As(err, &ie) || ie.Step != 4 {
				t.Fatalf("interrupt: %v", err)
			}
			res, err = tinyJob(t, dir, tc.sets...).Train(context.Background(), TrainOptions{Resume: true})
			if err != nil {
				t.Fatal(err)
			}
			if res.ResumedFrom != 4 || res.Steps != 8 {
				t.Fatalf("resumed from %d, ended at %d", res.ResumedFrom, res.Steps)
			}
			got, err := os.ReadFile(filepath.Join(dir, "run", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the resumed run's result differs from the uninterrupted run's")
			}
			// And the metrics agree line for line, bar the timing.
			strip := func(path string) []byte {
				b, _ := os.ReadFile(path)
				var out [][]byte
				for line := range bytes.Lines(b) {
					if i := bytes.Index(line, []byte(`,"tokens_per_s"`)); i >= 0 {
						line = line[:i]
					}
					out = append(out, bytes.TrimSpace(line))
				}
				return bytes.Join(out, []byte("\n"))
			}
			if a, b := strip(filepath.Join(straight, "run", "metrics.jsonl")), strip(filepath.Join(dir, "run", "metrics.jsonl")); !bytes.Equal(a, b) {
				t.Errorf("metrics differ:\n%s\n---\n%s", a, b)
			}
		})
	}
}

// TestTrainerDropoutChangesTheRun guards the test above: with dropout the
// run differs from one without, so dropout masks really are in play.
func TestTrainerDropoutChangesTheRun(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if _, err := tinyJob(t, a, "train.max_steps=2").Train(context.Background(), TrainOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := tinyJob(t, b, "train.max_steps=2", "lora.dropout=0").Train(context.Background(), TrainOptions{}); err != nil {
		t.Fatal(err)
	}
	x, _ := os.ReadFile(filepath.Join(a, "run", "adapter", "adapter_model.safetensors"))
	y, _ := os.ReadFile(filepath.Join(b, "run", "adapter", "adapter_model.safetensors"))
	if bytes.Equal(x, y) {
		t.Error("dropout 0.1 and 0 trained the same adapter")
	}
}

// TestComputeDTypeBF16: train.compute_dtype bf16 trains the BF16 tiny
// model with the bf16-compute matmuls (a loss near, but not equal to, the
// f32 run's), only while training (the mode is off again after), or, on a
// CPU without AVX512_BF16, warns and trains in f32 (the same loss).
func TestComputeDTypeBF16(t *testing.T) {
	bf16Model := "model.path=../testdata/models/qwen3-untied-bf16"
	d := t.TempDir()
	f32, err := tinyJob(t, filepath.Join(d, "f32"), bf16Model).Train(context.Background(), TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Load("tiny-test.yaml", []string{"output.dir=" + filepath.Join(d, "bf16", "run"), "dataset.cache_dir=" + filepath.Join(d, "bf16", "cache"),
		"train.max_steps=8", "train.eval_every=3", "train.save_every=0", "lora.dropout=0.1", "train.schedule=cosine", "train.warmup_steps=2",
		bf16Model, "train.compute_dtype=bf16"})
	if err != nil {
		t.Fatal(err)
	}
	var warns []string
	j, err := Setup(r, SetupOptions{Warn: func(s string) { warns = append(warns, s) }})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	bf, err := j.Train(context.Background(), TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cpu.ComputeBF16() {
		t.Error("bf16 compute still on after training")
	}
	t.Logf("final loss f32 %.7f, bf16 %.7f; warnings %q", f32.Loss, bf.Loss, warns)
	if !cpu.HasBF16() {
		if len(warns) == 0 || bf.Loss != f32.Loss {
			t.Fatalf("no AVX512_BF16: warnings %q, loss %v vs f32 %v", warns, bf.Loss, f32.Loss)
		}
		return
	}
	if len(warns) != 0 || bf.Loss == f32.Loss || math.Abs(bf.Loss-f32.Loss) > 0.02*math.Abs(f32.Loss) {
		t.Fatalf("bf16 compute: warnings %q, loss %v vs f32 %v (want different, within 2%%)", warns, bf.Loss, f32.Loss)
	}
	if _, err := Load("tiny-test.yaml", []string{"train.compute_dtype=f16"}); err == nil || !strings.Contains(err.Error(), `train.compute_dtype: "f16" is not supported (supported: f32, bf16)`) {
		t.Errorf("compute_dtype f16: %v", err)
	}
}
