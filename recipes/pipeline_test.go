package recipes

import (
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestPipelineDefaults(t *testing.T) {
	r, err := Parse("d/r.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if r.Pipeline() {
		t.Error("a recipe without merge/quantize/validate asks for the pipeline")
	}
	if !r.Merge.Enabled || r.Merge.DType != "" || len(r.Quantize) != 0 {
		t.Errorf("merge/quantize defaults: %+v %+v", r.Merge, r.Quantize)
	}
	c := r.Checks
	// The documented defaults, written out by hand (min_ppl_decrease_pct is off).
	if c.Ctx != 512 || c.MaxPPLIncreasePct != 5 || c.MaxMeanKLD != 0.1 || c.MinTop1Agreement != 0.9 || c.MaxAccDrop != 0.05 ||
		!math.IsNaN(c.MinPPLDecreasePct) || c.MergeLogitTol != 0.01 || c.Data != "" || len(c.Bench) != 0 {
		t.Errorf("validate defaults: %+v", c)
	}
}

func TestPipelineParse(t *testing.T) {
	y := minimal + `merge:
  dtype: bf16
quantize:
  - {format: gguf, type: q4_k_m}
  - format: safetensors
    bits: 8
    group_size: -1
    layout: compressed-tensors
  - {format: safetensors, bits: 4, method: gptq, calib: calib.txt, sym: false}
validate:
  data: held.txt
  ctx: 256
  bench:
    - {task: mmlu, data: mmlu.parquet, limit: 20, shots: 5}
  max_mean_kld: 0.05
  min_top1_agreement: off
`
	r, err := Parse("d/r.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	want := []QuantizeOutput{
		{Format: "gguf", Type: "Q4_K_M", Bits: 4, GroupSize: 128, Method: "rtn", Layout: "gptq", Sym: true},
		{Format: "safetensors", Type: "Q4_K_M", Bits: 8, GroupSize: -1, Method: "rtn", Layout: "compressed-tensors", Sym: true},
		{Format: "safetensors", Type: "Q4_K_M", Bits: 4, GroupSize: 128, Method: "gptq", Layout: "gptq", Sym: false, Calib: filepath.Join("d", "calib.txt")},
	}
	if !reflect.DeepEqual(r.Quantize, want) {
		t.Errorf("quantize\n got %+v\nwant %+v", r.Quantize, want)
	}
	var names []string
	for _, q := range r.Quantize {
		names = append(names, q.Name())
	}
	if got := strings.Join(names, " "); got != "gguf-q4_k_m int8-ch-rtn-ct int4-g128-gptq-asym" {
		t.Errorf("names %s", got)
	}
	if r.Merge.DType != "bf16" || !r.Pipeline() {
		t.Errorf("merge %+v pipeline %v", r.Merge, r.Pipeline())
	}
	c := r.Checks
	if c.Data != filepath.Join("d", "held.txt") || c.Ctx != 256 || c.MaxMeanKLD != 0.05 || !math.IsNaN(c.MinTop1Agreement) ||
		!reflect.DeepEqual(c.Bench, []BenchSpec{{Task: "mmlu", Data: filepath.Join("d", "mmlu.parquet"), Limit: 20, Shots: 5}}) {
		t.Errorf("validate %+v", c)
	}
	// The resolved YAML reads back the same (paths are absolute, so that
	// reading them again does not join them to the folder twice).
	ra, err := Parse("/abs/r.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := ra.Validate(); err != nil {
		t.Fatal(err)
	}
	ra2, err := Parse("/abs/r.yaml", []byte(ra.YAML()))
	if err != nil {
		t.Fatalf("%v\n%s", err, ra.YAML())
	}
	if !reflect.DeepEqual(ra.Quantize, ra2.Quantize) || !reflect.DeepEqual(ra.Merge, ra2.Merge) ||
		!reflect.DeepEqual(ra.Checks.Bench, ra2.Checks.Bench) || ra.Checks.Data != ra2.Checks.Data ||
		!math.IsNaN(ra2.Checks.MinTop1Agreement) || ra2.Checks.MaxMeanKLD != 0.05 {
		t.Errorf("round trip differs\n%s", ra.YAML())
	}
	if !strings.Contains(ra.YAML(), "\nquantize: [{format: gguf, type: Q4_K_M}, ") || !strings.Contains(ra.YAML(), "  min_top1_agreement: off\n") {
		t.Errorf("YAML:\n%s", ra.YAML())
	}
	// TrainingYAML leaves the stages after training out.
	if tr := ra.TrainingYAML(); strings.Contains(tr, "quantize") || strings.Contains(tr, "validate") || !strings.Contains(tr, "output:") {
		t.Errorf("TrainingYAML:\n%s", tr)
	}
}

func TestPipelineParseErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"item key typo", "quantize:\n  - {format: gguf, tpye: Q8_0}\n", `r.yaml:8:20: quantize: item 0: unknown key "tpye" (did you mean "type"?)`},
		{"item key on its line", "quantize:\n  - format: safetensors\n    bitz: 4\n", `r.yaml:9:5: quantize: item 0: unknown key "bitz" (did you mean "bits"?)`},
		{"item value", "quantize:\n  - {format: safetensors, bits: four}\n", `r.yaml:8:33: quantize: item 0: bits: want an integer, found "four"`},
		{"item twice", "quantize:\n  - {format: gguf, format: gguf}\n", `item 0: format is set twice`},
		{"not a list", "quantize: Q8_0\n", `r.yaml:7:11: quantize: want a list of mappings`},
		{"item scalar", "quantize:\n  - Q8_0\n", `r.yaml:8:5: quantize: item 0: want a mapping (key: value, ...), found "Q8_0"`},
		{"threshold word", "validate:\n  max_mean_kld: small\n", `r.yaml:8:17: validate.max_mean_kld: want a number or off, found "small"`},
		{"threshold quoted", "validate:\n  max_acc_drop: \"0.1\"\n", `validate.max_acc_drop: want a number or off, found "0.1"`},
		{"threshold list", "validate:\n  merge_logit_tol: [1]\n", `validate.merge_logit_tol: want a number or off, found a list`},
		{"section key typo", "validate:\n  max_kld: 1\n", `unknown key "validate.max_kld" (did you mean "validate.max_mean_kld"?)`},
		{"section typo", "quantise:\n  - {format: gguf}\n", `unknown key "quantise" (did you mean "quantize"?)`},
		{"bench key", "validate:\n  bench: [{task: mmlu, dta: x}]\n", `validate.bench: item 0: unknown key "dta" (did you mean "data"?)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("r.yaml", []byte(minimal+tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestPipelineValidate(t *testing.T) {
	tests := []struct {
		name, extra, want string
	}{
		{"gguf type", "quantize:\n  - {format: gguf, type: Q1_Z}\n", `quantize: item 0: type "Q1_Z" is not a llama.cpp mix (supported: `},
		{"format", "quantize:\n  - {format: onnx}\n", `quantize: item 0: format "onnx" is not supported (supported: gguf, safetensors)`},
		{"bits", "quantize:\n  - {format: safetensors, bits: 3}\n", `quantize: item 0: bits: want 4 or 8, found 3`},
		{"group", "quantize:\n  - {format: safetensors, group_size: 0}\n", `group_size: want a positive number of columns or -1`},
		{"method", "quantize:\n  - {format: safetensors, method: awq}\n", `method "awq" is not supported (supported: rtn, gptq)`},
		{"layout", "quantize:\n  - {format: safetensors, layout: exl2}\n", `layout "exl2" is not supported`},
		{"gptq calib", "quantize:\n  - {format: safetensors, method: gptq}\n", `method gptq needs calib`},
		{"duplicate", "quantize:\n  - {format: gguf, type: Q8_0}\n  - {format: gguf, type: q8_0}\n", `quantize: item 1: same output as item 0 (gguf-q8_0)`},
		{"no merge", "merge:\n  enabled: false\nquantize:\n  - {format: gguf}\n", `merge.enabled: false with quantize`},
		{"merge dtype", "merge:\n  dtype: fp8\n", `r.yaml:8:3: merge.dtype: "fp8" is not supported`},
		{"ctx", "validate:\n  ctx: 2\n", `validate.ctx: want at least 3 tokens, found 2`},
		{"task", "validate:\n  bench: [{task: squad, data: x}]\n", `validate.bench: item 0: task "squad" is not supported`},
		{"bench data", "validate:\n  bench: [{task: mmlu}]\n", `item 0: data is required`},
		{"top1 range", "validate:\n  min_top1_agreement: 95\n", `validate.min_top1_agreement: want a value in [0, 1] or off, found 95`},
		{"kld negative", "validate:\n  max_mean_kld: -1\n", `validate.max_mean_kld: want a value in [0, +Inf] or off, found -1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse("r.yaml", []byte(minimal+tt.extra))
			if err != nil {
				t.Fatal(err)
			}
			err = r.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestPipelineOverrides(t *testing.T) {
	tests := []struct {
		set   string
		check func(r *Recipe) bool
		want  string
	}{
		{set: "quantize=[{format: gguf, type: Q2_K}]", check: func(r *Recipe) bool { return len(r.Quantize) == 1 && r.Quantize[0].Type == "Q2_K" }},
		{set: "quantize=[]", check: func(r *Recipe) bool { return len(r.Quantize) == 0 && r.Pipeline() }},
		{set: "validate.max_mean_kld=off", check: func(r *Recipe) bool { return math.IsNaN(r.Checks.MaxMeanKLD) }},
		{set: "validate.max_mean_kld=0.02", check: func(r *Recipe) bool { return r.Checks.MaxMeanKLD == 0.02 }},
		{set: "validate.data=rel/held.txt", check: func(r *Recipe) bool { return r.Checks.Data == "rel/held.txt" }},
		{set: "merge.enabled=false", check: func(r *Recipe) bool { return !r.Merge.Enabled && r.Pipeline() }},
		{set: "validate.max_mean_kld=tiny", want: `--set validate.max_mean_kld=tiny: validate.max_mean_kld: want a number or off, found "tiny"`},
		{set: "quantize=[{format: gguf, kind: x}]", want: `--set quantize=[{format: gguf, kind: x}]: quantize: item 0: unknown key "kind"`},
		{set: "validate.max_kld=1", want: `(did you mean "validate.max_mean_kld"?)`},
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
				t.Errorf("override not applied: %+v %+v %+v", r.Merge, r.Quantize, r.Checks)
			}
		})
	}
}

// FuzzParse: no recipe bytes make Parse or Validate panic, and what parses
// prints YAML that parses again.
func FuzzParse(f *testing.F) {
	for _, s := range []string{minimal, minimal + "quantize:\n  - {format: gguf, type: Q8_0}\n", "validate:\n  bench: [{task: mcq, data: x, limit: 2}]\n  max_mean_kld: off\n",
		"quantize: {format: safetensors, bits: 4}\n", "merge:\n  enabled: no\n", "train: [\n", "- a\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Parse("/f/r.yaml", b)
		if err != nil {
			return
		}
		r.Validate()
		if _, err := Parse("/f/r.yaml", []byte(r.YAML())); err != nil {
			t.Fatalf("YAML of a parsed recipe does not parse: %v\n%s", err, r.YAML())
		}
	})
}
