package recipes

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/quantize/wq"
	"github.com/tunellm/tune/train"
)

const tinyModel = "../testdata/models/qwen3-tied"

// quantFolder writes `tune quantize --format safetensors` of a tiny model.
func quantFolder(t *testing.T, src string, o quantize.IntOptions) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "q")
	if _, err := quantize.QuantizeSafetensors(src, out, o); err != nil {
		t.Fatal(err)
	}
	return out
}

func setupErr(t *testing.T, sets ...string) error {
	t.Helper()
	d := t.TempDir()
	r, err := Load("tiny-test.yaml", append([]string{"output.dir=" + filepath.Join(d, "run"), "dataset.cache_dir=" + filepath.Join(d, "cache")}, sets...))
	if err != nil {
		return err
	}
	j, err := Setup(r, SetupOptions{})
	if err == nil {
		j.Close()
	}
	return err
}

func adapterBase(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "adapter_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Base string `json:"base_model_name_or_path"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c.Base
}

// TestBaseFromQuantizedFolder: lora.base_from a folder `tune quantize
// --format safetensors` wrote trains on its codes as stored: the base's
// linears are integer blocks that dequantize to wq.LoadModelDense's weights bit
// for bit, and the run equals (same loss, bit for bit) the run that
// quantizes model.path at load with the same scheme (lora.base_quant int4,
// group 32). The adapter names model.path as its base. With the quantized
// folder as model.path (no full-precision base named), the adapter names
// its recorded source, or the folder itself with a warning.
func TestBaseFromQuantizedFolder(t *testing.T) {
	q := quantFolder(t, tinyModel, quantize.IntOptions{Bits: 4, GroupSize: 32, Sym: true, Layout: wq.LayoutGPTQ})
	d := t.TempDir()
	jf := tinyJob(t, filepath.Join(d, "from"), "lora.dropout=0", "lora.base_from="+q)
	p := jf.Plan()
	if p.BaseFrom != q || p.BaseQuantized != "int4 g32 sym (gptq)" || p.Memory.BaseQuantized == 0 || p.Memory.BaseQuant != "int4 g32 sym (gptq)" {
		t.Fatalf("plan: base %q %q, memory %+v", p.BaseFrom, p.BaseQuantized, p.Memory)
	}
	ref, err := wq.LoadModelDense(q, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	for l := 0; l < ref.Config.Layers; l++ {
		for _, mod := range model.AdapterModules {
			w, _ := jf.m.LinearWeight(l, mod)
			rw, _ := ref.LinearWeight(l, mod)
			if w.DType != kernels.INT4_32 || rw.DType != kernels.F32 {
				t.Fatalf("layer %d %s: %v (reference %v)", l, mod, w.DType, rw.DType)
			}
			got := make([]float32, w.Cols)
			for r := 0; r < w.Rows; r++ {
				w.DType.Format().Dequantize(got, w.Data[r*w.RowBytes():(r+1)*w.RowBytes()])
				for c, v := range got {
					want := math.Float32frombits(uint32(rw.Data[4*(r*w.Cols+c)]) | uint32(rw.Data[4*(r*w.Cols+c)+1])<<8 | uint32(rw.Data[4*(r*w.Cols+c)+2])<<16 | uint32(rw.Data[4*(r*w.Cols+c)+3])<<24)
					if math.Float32bits(v) != math.Float32bits(want) {
						t.Fatalf("layer %d %s [%d,%d] = %v, folder %v", l, mod, r, c, v, want)
					}
				}
			}
		}
	}
	resFrom, err := jf.Train(context.Background(), TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	resQ, err := tinyJob(t, filepath.Join(d, "quant"), "lora.dropout=0", "lora.base_quant=int4", "lora.base_quant_group=32").Train(context.Background(), TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if resFrom.Loss != resQ.Loss || math.IsNaN(resFrom.Loss) {
		t.Fatalf("loss %.17g from the folder, %.17g quantized at load", resFrom.Loss, resQ.Loss)
	}
	abs, _ := filepath.Abs(tinyModel)
	if got := adapterBase(t, filepath.Join(d, "from", "run", "adapter")); !lora.SameBase(got, abs) || got == q {
		t.Errorf("adapter base %q, want model.path %s", got, abs)
	}

	// The folder as model.path: it names no source, so the adapter names
	// the folder, with a warning; with a model card naming its base, that.
	r, err := Load("tiny-test.yaml", []string{"model.path=" + q, "output.dir=" + filepath.Join(d, "mp", "run"), "dataset.cache_dir=" + filepath.Join(d, "cache"), "train.max_steps=2"})
	if err != nil {
		t.Fatal(err)
	}
	var warned []string
	j, err := Setup(r, SetupOptions{Warn: func(s string) { warned = append(warned, s) }})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if len(warned) != 1 || !strings.Contains(warned[0], "does not name the model it was made from") || j.Plan().BaseQuantized == "" {
		t.Fatalf("warnings %q, plan %+v", warned, j.Plan())
	}
	if _, err := j.Train(context.Background(), TrainOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := adapterBase(t, filepath.Join(d, "mp", "run", "adapter")); got != q {
		t.Errorf("adapter base %q, want the folder %s", got, q)
	}
	if err := os.WriteFile(filepath.Join(q, "README.md"), []byte("---\nbase_model: org/qwen3-tied\nlibrary_name: transformers\n---\n# q\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := quantizedSourceID(q); got != "org/qwen3-tied" {
		t.Errorf("source id %q", got)
	}
}

// TestBaseFromRefused: bases that cannot be trained on as stored, or that
// are not the adapter's, are one-line errors naming the file and why.
func TestBaseFromRefused(t *testing.T) {
	calib := [][]int{{1, 5, 9, 40, 2, 7, 99, 3, 12, 60, 4, 8}, {30, 2, 200, 17, 6, 9, 1, 44, 5, 71, 20, 3}}
	act := quantFolder(t, tinyModel, quantize.IntOptions{Bits: 4, GroupSize: 32, Sym: true, Layout: wq.LayoutGPTQ, Method: "gptq", Calib: calib, ActOrder: true})
	other := quantFolder(t, "../testdata/models/qwen3-untied-bf16", quantize.IntOptions{Bits: 8, GroupSize: -1, Sym: true, Layout: wq.LayoutCompressed})
	renamed := quantFolder(t, tinyModel, quantize.IntOptions{Bits: 8, GroupSize: -1, Sym: true, Layout: wq.LayoutCompressed})
	if err := os.WriteFile(filepath.Join(renamed, "README.md"), []byte("---\nbase_model: org/another-model\n---\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		sets []string
		want string
	}{
		{"act-order", []string{"lora.base_from=" + act}, "model.layers.0.self_attn.q_proj.weight: act-order checkpoint (g_idx["},
		{"other shape", []string{"lora.base_from=" + other}, "num_hidden_layers 3, but model.path's is 2"},
		{"other base", []string{"lora.base_from=" + renamed}, "was quantized from org/another-model, but the adapter is for"},
		{"not quantized", []string{"lora.base_from=" + tinyModel}, "not a quantized folder"},
	} {
		err := setupErr(t, tc.sets...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestBaseFromGGUF: a GGUF's quantized linears (and quantized embeddings
// and head) are trained through as mapped: the loss goes down from the
// first step's, and the adapter is an ordinary PEFT adapter for model.path.
func TestBaseFromGGUF(t *testing.T) {
	g := filepath.Join(t.TempDir(), "tiny-q8_0.gguf")
	if _, err := quantize.QuantizeGGUF(tinyModel, g, quantize.GGUFOptions{Type: "Q8_0"}); err != nil {
		t.Fatal(err)
	}
	d := t.TempDir()
	j := tinyJob(t, d, "lora.dropout=0", "lora.base_from="+g)
	if got := j.Plan().BaseQuantized; got != "GGUF Q8_0" {
		t.Fatalf("base %q", got)
	}
	var first float64
	res, err := j.Train(context.Background(), TrainOptions{Progress: func(e train.Event) {
		if e.Step == 1 && e.Train != nil {
			first = e.Train.Loss
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if math.IsNaN(res.Loss) || first == 0 || res.Loss >= first {
		t.Fatalf("loss %v after %v at step 1", res.Loss, first)
	}
	mc, _ := model.LoadConfig(tinyModel)
	if _, err := lora.Load(filepath.Join(d, "run", "adapter"), mc); err != nil {
		t.Fatal(err)
	}
	// K-quants on the micro model (widths 256, 768), down to Q2_K: two
	// steps each, through every block type the mixes use.
	for _, mix := range []struct{ name, types string }{{"Q4_K_M", "GGUF Q4_K+Q6_K"}, {"Q2_K", "GGUF Q2_K+Q3_K"}} {
		g := filepath.Join(t.TempDir(), "micro.gguf")
		if _, err := quantize.QuantizeGGUF("../models/micro-qwen3", g, quantize.GGUFOptions{Type: mix.name}); err != nil {
			t.Fatal(err)
		}
		d := t.TempDir()
		j := tinyJob(t, d, "model.path=../models/micro-qwen3", "lora.base_from="+g, "train.max_steps=2", "train.eval_every=0")
		if got := j.Plan().BaseQuantized; got != mix.types {
			t.Errorf("%s: base %q, want %q", mix.name, got, mix.types)
		}
		res, err := j.Train(context.Background(), TrainOptions{})
		if err != nil || math.IsNaN(res.Loss) || res.Loss <= 0 {
			t.Fatalf("%s: loss %v, %v", mix.name, res, err)
		}
	}
}

// TestInitAdapterBaseMismatch: continuing an adapter recorded for another
// base on a quantized base is refused.
func TestInitAdapterBaseMismatch(t *testing.T) {
	d := t.TempDir()
	if _, err := tinyJob(t, d, "train.max_steps=1").Train(context.Background(), TrainOptions{}); err != nil {
		t.Fatal(err)
	}
	ad := filepath.Join(d, "run", "adapter")
	cfg := filepath.Join(ad, "adapter_config.json")
	b, _ := os.ReadFile(cfg)
	var m map[string]any
	json.Unmarshal(b, &m)
	m["base_model_name_or_path"] = "org/another-model"
	b, _ = json.Marshal(m)
	os.WriteFile(cfg, b, 0o644)
	err := setupErr(t, "lora.base_quant=nf4", "lora.init_adapter="+ad)
	if err == nil || !strings.Contains(err.Error(), "lora: adapter was trained on org/another-model (base_model_name_or_path), not on") {
		t.Errorf("%v", err)
	}
	if err := setupErr(t, "lora.init_adapter="+ad); err != nil {
		t.Errorf("bf16 base: %v", err)
	}
}
