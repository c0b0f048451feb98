package recipes

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const minimal = `model:
  path: models/qwen
dataset:
  path: data/train.jsonl
output:
  dir: runs/x
`

func TestDefaults(t *testing.T) {
	r, err := Parse("dir/r.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	// The documented defaults, written out by hand.
	want := TrainSection{Mode: "lora", Epochs: 1, BatchSize: 1, GradAccum: 1, MaxSeqLen: 2048, Packing: true,
		LR: 2e-4, Schedule: "cosine", WarmupSteps: 10, AdamBeta1: 0.9, AdamBeta2: 0.999, AdamEps: 1e-8,
		MaxGradNorm: 1, Seed: 42, Device: "cpu", ComputeDType: "f32", EvalEvery: 100, SaveEvery: 100, KeepCheckpoints: 3}
	if !reflect.DeepEqual(r.Train, want) {
		t.Errorf("train defaults\n got %+v\nwant %+v", r.Train, want)
	}
	wantL := LoRASection{R: 16, Alpha: 32, Dropout: 0.05, TargetModules: []string{"all-linear"}, LayersToTransform: []int{},
		RankPattern: map[string]string{}, AlphaPattern: map[string]string{}, BaseQuant: "none", BaseQuantSym: true, BaseQuantMaxKLD: 0.1}
	if !reflect.DeepEqual(r.LoRA, wantL) {
		t.Errorf("lora defaults\n got %+v\nwant %+v", r.LoRA, wantL)
	}
	if r.Dataset.Format != "chat" || !r.Dataset.AddEOS || r.Dataset.TrainOn != "assistant" || r.Output.DType != "f32" {
		t.Errorf("dataset/output defaults: %+v %+v", r.Dataset, r.Output)
	}
	// Relative paths resolve against the recipe's folder.
	if r.Model.Path != filepath.Join("dir", "models/qwen") || r.Output.Dir != filepath.Join("dir", "runs/x") {
		t.Errorf("paths: model %q output %q", r.Model.Path, r.Output.Dir)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(r *Recipe) bool
	}{
		{"numbers", "train:\n  lr: 1e-4\n  epochs: 3\n  max_grad_norm: 0\n  seed: 7\n",
			func(r *Recipe) bool {
				return r.Train.LR == 1e-4 && r.Train.Epochs == 3 && r.Train.MaxGradNorm == 0 && r.Train.Seed == 7
			}},
		{"modules list", "lora:\n  target_modules: [q_proj, v_proj]\n  layers_to_transform: [0, 1]\n",
			func(r *Recipe) bool {
				return reflect.DeepEqual(r.LoRA.TargetModules, []string{"q_proj", "v_proj"}) && reflect.DeepEqual(r.LoRA.LayersToTransform, []int{0, 1})
			}},
		{"modules string", "lora:\n  target_modules: q_proj\n", func(r *Recipe) bool { return reflect.DeepEqual(r.LoRA.TargetModules, []string{"q_proj"}) }},
		{"validation fraction", "dataset:\n  validation: 0.1\n", func(r *Recipe) bool { return r.Dataset.Validation == Validation{Fraction: 0.1} }},
		{"validation path", "dataset:\n  validation: val.jsonl\n", func(r *Recipe) bool { return r.Dataset.Validation == Validation{Path: filepath.Join("d", "val.jsonl")} }},
		{"absolute path kept", "model:\n  path: /m\n", func(r *Recipe) bool { return r.Model.Path == "/m" }},
		{"columns", "dataset:\n  columns: {messages: conversations}\n", func(r *Recipe) bool { return r.Dataset.Columns["messages"] == "conversations" }},
		{"null keeps default", "train:\n  lr:\n", func(r *Recipe) bool { return r.Train.LR == 2e-4 }},
		{"empty file", "", func(r *Recipe) bool { return r.Train.LR == 2e-4 }},
		{"int as float", "train:\n  max_steps: 1e3\n", func(r *Recipe) bool { return r.Train.MaxSteps == 1000 }},
		{"bool", "train:\n  packing: false\n", func(r *Recipe) bool { return !r.Train.Packing }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse("d/r.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(r) {
				t.Errorf("unexpected recipe: %+v", r)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"typo", "train:\n  epochs: 1\n  lrr: 3\n", `recipes/legal.yaml:3:3: unknown key "train.lrr" (did you mean "train.lr"?)`},
		{"section typo", "trian:\n  lr: 1\n", `recipes/legal.yaml:1:1: unknown key "trian" (did you mean "train"?)`},
		{"far key", "train:\n  zzzzzzzzzzzz: 1\n", `unknown key "train.zzzzzzzzzzzz" (known: `},
		{"word for number", "train:\n  lr: fast\n", `recipes/legal.yaml:2:7: train.lr: want a number, found "fast"`},
		{"quoted number", "train:\n  lr: \"1e-4\"\n", `train.lr: want a number, found "1e-4"`},
		{"fraction int", "train:\n  epochs: 1.5\n", `train.epochs: want an integer, found "1.5"`},
		{"list for int", "lora:\n  r: [1]\n", `lora.r: want an integer, found a list`},
		{"bad bool", "train:\n  packing: maybe\n", `train.packing: want true or false, found "maybe"`},
		{"section scalar", "train: 3\n", `recipes/legal.yaml:1:8: train: want a mapping of keys, found "3"`},
		{"twice", "train:\n  lr: 1\n  lr: 2\n", `train.lr is set twice`},
		{"not a mapping", "- a\n", `want a mapping of sections`},
		{"bad yaml", "train:\n  lr: [\n", `recipes/legal.yaml: `},
		{"ints item", "lora:\n  layers_to_transform: [0, x]\n", `lora.layers_to_transform: list item: want an integer, found "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("recipes/legal.yaml", []byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name, extra, want string
	}{
		{"ok", "", ""},
		{"schedule", "train:\n  schedule: step\n", `r.yaml:8:3: train.schedule: "step" is not supported (supported: constant, linear, cosine)`},
		{"device", "train:\n  device: tpu\n", `train.device: "tpu" is not supported (supported: cpu, cuda, auto)`},
		{"beta", "train:\n  adam_beta2: 1\n", `train.adam_beta2: want a value in [0, 1), found 1`},
		{"lr", "train:\n  lr: 0\n", `train.lr: want a value in (0, +Inf), found 0`},
		{"batch", "train:\n  batch_size: 0\n", `train.batch_size: want a positive integer, found 0`},
		{"nothing", "train:\n  epochs: 0\n", `nothing to train`},
		{"mode", "train:\n  mode: qlora\n", `train.mode: "qlora" is not supported (supported: lora, full)`},
		{"dtype", "output:\n  dtype: fp8\n", `output.dtype: "fp8" is not supported`},
		{"dropout", "lora:\n  dropout: 1\n", `lora.dropout: want a value in [0, 1), found 1`},
		{"val fraction", "dataset:\n  validation: 1.5\n", `dataset.validation: want a value in [0, 1), found 1.5`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse("r.yaml", []byte(minimal+tt.extra))
			if err != nil {
				t.Fatal(err)
			}
			err = r.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
	r, _ := Parse("r.yaml", []byte("train:\n  lr: 1\n"))
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "model.path is required") {
		t.Fatalf("missing model.path: %v", err)
	}
}

func TestOverrides(t *testing.T) {
	tests := []struct {
		set   string
		check func(r *Recipe) bool
		want  string // error
	}{
		{set: "train.lr=1e-4", check: func(r *Recipe) bool { return r.Train.LR == 1e-4 }},
		{set: "lora.target_modules=[q_proj,v_proj]", check: func(r *Recipe) bool { return reflect.DeepEqual(r.LoRA.TargetModules, []string{"q_proj", "v_proj"}) }},
		{set: "dataset.system_prompt=You are a lawyer: be precise.", check: func(r *Recipe) bool { return r.Dataset.SystemPrompt == "You are a lawyer: be precise." }},
		{set: "output.dir=rel/out", check: func(r *Recipe) bool { return r.Output.Dir == "rel/out" }},
		{set: "train.packing=false", check: func(r *Recipe) bool { return !r.Train.Packing }},
		{set: "train.lr=fast", want: `--set train.lr=fast: train.lr: want a number, found "fast"`},
		{set: "train.lrr=1", want: `--set train.lrr=1: unknown key "train.lrr" (did you mean "train.lr"?)`},
		{set: "train.lr", want: `want key=value`},
	}
	for _, tt := range tests {
		t.Run(tt.set, func(t *testing.T) {
			r, err := Parse("d/r.yaml", []byte(minimal))
			if err != nil {
				t.Fatal(err)
			}
			err = r.Set(tt.set)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("error %v, want %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(r) {
				t.Errorf("override not applied: %+v", r)
			}
		})
	}
	// An override's validation error points at the --set.
	r, _ := Parse("d/r.yaml", []byte(minimal))
	if err := r.Set("train.schedule=step"); err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err == nil || !strings.HasPrefix(err.Error(), "--set train.schedule=step: train.schedule:") {
		t.Fatalf("validation of an override: %v", err)
	}
}

// TestYAMLRoundTrip: the resolved YAML parses back to the same recipe.
func TestYAMLRoundTrip(t *testing.T) {
	r, err := Parse("/abs/r.yaml", []byte(minimal+"lora:\n  target_modules: [q_proj, 'a: b']\ndataset:\n  columns: {messages: conv}\n  system_prompt: \"line\\none #x\"\n  validation: 0.25\n"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Parse("/abs/r.yaml", []byte(r.YAML()))
	if err != nil {
		t.Fatalf("%v\n%s", err, r.YAML())
	}
	if !reflect.DeepEqual(r.Model, r2.Model) || !reflect.DeepEqual(r.Dataset, r2.Dataset) || !reflect.DeepEqual(r.LoRA, r2.LoRA) ||
		!reflect.DeepEqual(r.Train, r2.Train) || !reflect.DeepEqual(r.Output, r2.Output) {
		t.Fatalf("round trip differs\n%s", r.YAML())
	}
}

func TestExplainListsEveryKey(t *testing.T) {
	e := Explain()
	for _, k := range keys {
		if k.doc == "" {
			t.Errorf("%s has no doc", k.name)
		}
		_, name, _ := strings.Cut(k.name, ".")
		if !strings.Contains(e, k.name) {
			t.Errorf("Explain misses %s (%s)", k.name, name)
		}
	}
	for _, want := range []string{"train.lr", "default 0.0002", "lora.r", "default 16", "train.schedule", "default cosine"} {
		if !strings.Contains(e, want) {
			t.Errorf("Explain misses %q", want)
		}
	}
}

// TestShippedRecipes: the recipes in this folder load and validate, and their
// dataset files exist.
func TestShippedRecipes(t *testing.T) {
	for _, name := range []string{"legal.yaml", "tiny-test.yaml", "tiny-pipeline.yaml"} {
		r, err := Load(name, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{r.Model.Path, r.Dataset.Path} {
			if _, err := os.Stat(p); err != nil && strings.HasPrefix(name, "tiny-") {
				t.Errorf("%s: %v", name, err)
			}
		}
		if _, err := os.Stat(r.Dataset.Path); err != nil {
			t.Errorf("%s: dataset: %v", name, err)
		}
		files := []string{r.Checks.Data}
		for _, b := range r.Checks.Bench {
			files = append(files, b.Data)
		}
		for _, p := range files {
			if _, err := os.Stat(p); p != "" && err != nil {
				t.Errorf("%s: validate: %v", name, err)
			}
		}
	}
}

// PEFT's rank_pattern/alpha_pattern reach the adapter config; bad ones name the key.
func TestLoRAPatterns(t *testing.T) {
	r, err := Parse("/abs/r.yaml", []byte(minimal+"lora:\n  rank_pattern: {q_proj: 8, 'layers\\.1\\.mlp\\.down_proj': 4}\n  alpha_pattern: {v_proj: 64}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	c := r.LoRAConfig()
	if got, _, _, err := c.ModuleRank("model.layers.0.self_attn.q_proj"); err != nil || got != 8 {
		t.Errorf("q_proj rank %d, want 8", got)
	}
	if got, _, _, err := c.ModuleRank("model.layers.1.mlp.down_proj"); err != nil || got != 4 {
		t.Errorf("layer 1 down_proj rank %d, want 4", got)
	}
	if got, _, _, err := c.ModuleRank("model.layers.0.mlp.down_proj"); err != nil || got != 16 {
		t.Errorf("layer 0 down_proj rank %d, want lora.r 16", got)
	}
	if len(c.AlphaPattern) != 1 || c.AlphaPattern[0].Key != "v_proj" {
		t.Errorf("alpha pattern %+v", c.AlphaPattern)
	}
	bad, err := Parse("/abs/r.yaml", []byte(minimal+"lora:\n  rank_pattern: {q_proj: half}\n"))
	if err == nil {
		err = bad.Validate()
	}
	if err == nil || !strings.Contains(err.Error(), "lora.rank_pattern") {
		t.Errorf("bad rank_pattern: %v", err)
	}
}
