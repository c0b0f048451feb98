package lora

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
)

const (
	qwenDir    = "../testdata/models/qwen3-tied"
	qwenBF16   = "../testdata/models/qwen3-untied-bf16"
	llamaDir   = "../testdata/models/llama3"
	qwenAdapt  = "../testdata/adapters/qwen3-tied-r4"
	llamaAdapt = "../testdata/adapters/llama3-r8-rslora"
)

func loadConfig(t *testing.T, dir string) *model.Config {
	t.Helper()
	mc, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	return mc
}

// python returns /usr/bin/python3 with numpy (an independent reader of the
// files' formats), or skips: CI images need not have it.
func python(t *testing.T) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import numpy").Run(); err != nil {
		t.Skipf("no %s with numpy: %v", py, err)
	}
	return py
}

func TestSaveLoadRoundTrip(t *testing.T) {
	mc := loadConfig(t, qwenDir)
	cfg := Config{R: 4, Alpha: 16, Dropout: 0.05, TargetModules: []string{"all-linear"}, LayersToTransform: []int{1},
		UseRSLoRA: true, BaseModel: "Qwen/Qwen3-ünïcode"}
	a, err := New(cfg, mc, 3)
	if err != nil {
		t.Fatal(err)
	}
	randomize(a.Params(), rand.New(rand.NewPCG(1, 2)), 0.3)
	for _, dt := range []string{"", "bf16", "f16"} {
		t.Run("dtype "+dt, func(t *testing.T) {
			dir := t.TempDir()
			if err := a.Save(dir, dt); err != nil {
				t.Fatal(err)
			}
			b, err := Load(dir, mc)
			if err != nil {
				t.Fatal(err)
			}
			want := a.Config()
			want.TargetModules = append([]string(nil), want.TargetModules...)
			sort.Strings(want.TargetModules)
			got := b.Config()
			if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
				t.Errorf("config after load\n got %s\nwant %s", g, w)
			}
			if b.Scaling() != a.Scaling() {
				t.Errorf("scaling %v, want %v", b.Scaling(), a.Scaling())
			}
			for i, v := range a.Params() {
				w := v
				switch dt {
				case "bf16":
					w = safetensors.BF16ToFloat32(safetensors.Float32ToBF16(v))
				case "f16":
					w = safetensors.F16ToFloat32(safetensors.Float32ToF16(v))
				}
				if b.Params()[i] != w {
					t.Fatalf("param %d: %v, want %v", i, b.Params()[i], w)
				}
			}
			r, err := safetensors.Open(filepath.Join(dir, WeightsFile))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if r.Metadata()["format"] != "pt" {
				t.Errorf("metadata %v, want format pt", r.Metadata())
			}
		})
	}
	if err := a.Save(t.TempDir(), "int8"); err == nil || !strings.Contains(err.Error(), "supported: f32, bf16, f16") {
		t.Errorf("Save int8: %v", err)
	}
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestConfigJSONFormat checks adapter_config.json byte for byte against
// Python's json.dumps(indent=2, sort_keys=True) of its own parse, which is
// how PEFT writes the file, and its key set against the one the PyTorch
// reference wrote as PEFT 0.19.1 does.
func TestConfigJSONFormat(t *testing.T) {
	py := python(t)
	mc := loadConfig(t, qwenDir)
	a, err := New(Config{R: 8, Alpha: 12.5, Dropout: 0.1, TargetModules: []string{"v_proj", "q_proj"}, LayersToTransform: []int{1, 0},
		BaseModel: "dir/with \"quotes\" and ünïcode ✓ 𝄞 <&>"}, mc, 1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := a.Save(dir, "f32"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, ConfigFile)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, "-c", `import json,sys
sys.stdout.write(json.dumps(json.load(open(sys.argv[1])), indent=2, sort_keys=True))`, path).Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(out) {
		t.Errorf("adapter_config.json differs from Python's json.dumps:\n%s\n---\n%s", got, out)
	}
	var mine, ref map[string]any
	json.Unmarshal(got, &mine)
	refData, err := os.ReadFile(filepath.Join(qwenAdapt, ConfigFile))
	if err != nil {
		t.Skipf("reference adapter missing: %v", err)
	}
	json.Unmarshal(refData, &ref)
	for k := range ref {
		if _, ok := mine[k]; !ok && k != "peft_version" {
			t.Errorf("key %q of PEFT's config is missing", k)
		}
	}
	for k := range mine {
		if _, ok := ref[k]; !ok && k != "velora_config" && k != "monteclora_config" { // PEFT 0.20 fields
			t.Errorf("key %q is not PEFT's", k)
		}
	}
	for k, want := range map[string]any{"r": 8.0, "lora_alpha": 12.5, "lora_dropout": 0.1, "peft_type": "LORA", "task_type": "CAUSAL_LM",
		"inference_mode": true, "bias": "none", "use_rslora": false, "use_dora": false} {
		if mine[k] != want {
			t.Errorf("%s = %v, want %v", k, mine[k], want)
		}
	}
	if g := mustJSON(t, mine["target_modules"]); g != `["q_proj","v_proj"]` {
		t.Errorf("target_modules %s", g)
	}
	if g := mustJSON(t, mine["layers_to_transform"]); g != `[0,1]` {
		t.Errorf("layers_to_transform %s", g)
	}
}

// pyTensorStats reads a safetensors file with plain Python (struct + json +
// numpy, no safetensors package) and returns per tensor [sum, first, last].
func pyTensorStats(t *testing.T, path string) map[string][]float64 {
	py := python(t)
	out, err := exec.Command(py, "-c", `import json,struct,sys
import numpy as np
b=open(sys.argv[1],'rb').read()
n=struct.unpack('<Q',b[:8])[0]
h=json.loads(b[8:8+n]); d=b[8+n:]
res={}
for k,v in h.items():
    if k=='__metadata__': continue
    s,e=v['data_offsets']
    dt={'F32':np.float32,'F16':np.float16}.get(v['dtype'])
    if v['dtype']=='BF16':
        a=(np.frombuffer(d[s:e],dtype=np.uint16).astype(np.uint32)<<16).view(np.float32)
    else:
        a=np.frombuffer(d[s:e],dtype=dt).astype(np.float32)
    a=a.astype(np.float64)
    res[k]=[float(a.sum()),float(a[0]),float(a[-1]),list(v['shape'])]
print(json.dumps(res))`, path).Output()
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string][]any
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatal(err)
	}
	res := map[string][]float64{}
	for k, v := range raw {
		sh := v[3].([]any)
		res[k] = []float64{v[0].(float64), v[1].(float64), v[2].(float64), sh[0].(float64), sh[1].(float64)}
	}
	return res
}

// TestLoadReference loads the adapters the PyTorch reference wrote as PEFT
// does, and checks each tensor against an independent Python read.
func TestLoadReference(t *testing.T) {
	for _, tc := range []struct {
		adapter, base string
		r             int
		scaling       float32
		ntensors      int
	}{
		{qwenAdapt, qwenDir, 4, 2, 2 * 7 * 2},
		{llamaAdapt, llamaDir, 8, 16 / float32(2.8284271247461903), 1 * 3 * 2},
	} {
		t.Run(filepath.Base(tc.adapter), func(t *testing.T) {
			if _, err := os.Stat(tc.adapter); err != nil {
				t.Skipf("reference adapter missing (testdata/gen/lora_reference.py writes it): %v", err)
			}
			a, err := Load(tc.adapter, loadConfig(t, tc.base))
			if err != nil {
				t.Fatal(err)
			}
			if a.Config().R != tc.r || a.Scaling() != tc.scaling || len(a.Tensors()) != tc.ntensors {
				t.Errorf("r=%d scaling=%v tensors=%d, want %d %v %d", a.Config().R, a.Scaling(), len(a.Tensors()), tc.r, tc.scaling, tc.ntensors)
			}
			stats := pyTensorStats(t, filepath.Join(tc.adapter, WeightsFile))
			for _, tn := range a.Tensors() {
				st, ok := stats[tn.Name]
				if !ok {
					t.Fatalf("%s not in the file", tn.Name)
				}
				var sum float64
				for _, v := range tn.Data {
					sum += float64(v)
				}
				if int(st[3]) != tn.Shape[0] || int(st[4]) != tn.Shape[1] || float64(tn.Data[0]) != st[1] ||
					float64(tn.Data[len(tn.Data)-1]) != st[2] || abs(sum-st[0]) > 1e-9*(1+abs(st[0])) {
					t.Errorf("%s: shape %v first %v last %v sum %v; python: %v", tn.Name, tn.Shape, tn.Data[0], tn.Data[len(tn.Data)-1], sum, st)
				}
			}
		})
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// TestLoadBad corrupts a valid adapter folder one way at a time.
func TestLoadBad(t *testing.T) {
	mc := loadConfig(t, qwenDir)
	good, err := New(Config{R: 4, Alpha: 8, TargetModules: []string{"q_proj", "down_proj"}}, mc, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		config func(map[string]any)
		edit   func([]safetensors.WriteTensor) []safetensors.WriteTensor
		mc     *model.Config
		want   string
	}{
		{name: "r mismatch with the tensors", config: func(c map[string]any) { c["r"] = 8 },
			want: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight: shape [4 64], want [8 64] (r=8, hidden_size=64)"},
		{name: "wrong shape", edit: func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			for i := range ts {
				if strings.Contains(ts[i].Name, "layers.1.mlp.down_proj.lora_B") {
					ts[i] = zeros(ts[i].Name, safetensors.F32, 32, 4)
				}
			}
			return ts
		}, want: "layers.1.mlp.down_proj.lora_B.weight: shape [32 4], want [64 4] (hidden_size=64, r=4)"},
		{name: "missing tensor", edit: func(ts []safetensors.WriteTensor) []safetensors.WriteTensor { return ts[1:] },
			want: "tensor base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight is missing"},
		{name: "unknown module tensor", edit: func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			return append(ts, zeros("base_model.model.model.layers.0.self_attn.qq_proj.lora_A.weight", safetensors.F32, 4, 64))
		}, want: "unknown tensor base_model.model.model.layers.0.self_attn.qq_proj.lora_A.weight"},
		{name: "untargeted module tensor", config: func(c map[string]any) { c["target_modules"] = []string{"q_proj"} },
			want: "layer 0 down_proj is not adapted by target_modules [q_proj]"},
		{name: "unknown target module", config: func(c map[string]any) { c["target_modules"] = []string{"q_proj", "c_attn"} },
			want: `target_modules: "c_attn" matches no module (the model has: q_proj,`},
		{name: "regex target", config: func(c map[string]any) { c["target_modules"] = ".*q_proj" },
			want: `target_modules = ".*q_proj": a regular expression is not supported`},
		{name: "dora magnitude", edit: func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			return append(ts, zeros("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", safetensors.F32, 1, 64))
		}, want: "a DoRA magnitude, but adapter_config.json has use_dora false"},
		{name: "use_dora without magnitudes", config: func(c map[string]any) { c["use_dora"] = true },
			want: "self_attn.q_proj.lora_magnitude_vector is missing"},
		{name: "rank_pattern mismatch with the tensors", config: func(c map[string]any) { c["rank_pattern"] = map[string]any{"q_proj": 8} },
			want: "q_proj.lora_A.weight: shape [4 64], want [8 64] (r=8 from rank_pattern, hidden_size=64)"},
		{name: "rank_pattern not an int", config: func(c map[string]any) { c["rank_pattern"] = map[string]any{"q_proj": 2.5} },
			want: `rank_pattern["q_proj"] = 2.5, want a positive integer`},
		{name: "alpha_pattern zero", config: func(c map[string]any) { c["alpha_pattern"] = map[string]any{"down_proj": 0} },
			want: `alpha_pattern["down_proj"] = 0, want > 0`},
		{name: "alpha_pattern not an object", config: func(c map[string]any) { c["alpha_pattern"] = []int{1} },
			want: `alpha_pattern = [1], want an object`},
		{name: "pattern lookahead", config: func(c map[string]any) { c["rank_pattern"] = map[string]any{"(?!q)_proj": 4} },
			want: `rank_pattern: key "(?!q)_proj" is not a regular expression Go can read`},
		{name: "modules_to_save", config: func(c map[string]any) { c["modules_to_save"] = []string{"lm_head"} }, want: "modules_to_save = "},
		{name: "bias", config: func(c map[string]any) { c["bias"] = "lora_only" }, want: `bias "lora_only" is not supported`},
		{name: "peft type", config: func(c map[string]any) { c["peft_type"] = "IA3" }, want: `peft_type "IA3" is not supported`},
		{name: "pissa", config: func(c map[string]any) { c["init_lora_weights"] = "pissa" }, want: "expects a modified base model"},
		{name: "layer out of range", config: func(c map[string]any) { c["layers_to_transform"] = 2 }, want: "layer 2 out of range"},
		{name: "int dtype", edit: func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			ts[0] = zeros(ts[0].Name, safetensors.I32, 4, 64)
			return ts
		}, want: "dtype I32 is not supported"},
		{name: "other base", mc: loadConfig(t, llamaDir), want: "layers.0.self_attn.q_proj.lora_B.weight: shape [128 4], want [64 4] (num_attention_heads*head_dim=64, r=4)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := good.Save(dir, "f32"); err != nil {
				t.Fatal(err)
			}
			if tc.config != nil {
				var c map[string]any
				b, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
				json.Unmarshal(b, &c)
				tc.config(c)
				b, _ = json.Marshal(c)
				os.WriteFile(filepath.Join(dir, ConfigFile), b, 0o644)
			}
			if tc.edit != nil {
				var ts []safetensors.WriteTensor
				for _, tn := range good.Tensors() {
					ts = append(ts, zeros(tn.Name, safetensors.F32, tn.Shape...))
				}
				if err := safetensors.WriteFile(filepath.Join(dir, WeightsFile), tc.edit(ts), nil); err != nil {
					t.Fatal(err)
				}
			}
			m := mc
			if tc.mc != nil {
				m = tc.mc
			}
			_, err := Load(dir, m)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, tc.want)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Errorf("multi-line error: %q", err)
			}
		})
	}
	if _, err := Load(t.TempDir(), mc); err == nil || !strings.Contains(err.Error(), ConfigFile) {
		t.Errorf("empty folder: %v", err)
	}
}

func zeros(name string, dt safetensors.DType, shape ...int) safetensors.WriteTensor {
	n := dt.Size()
	for _, d := range shape {
		n *= d
	}
	return safetensors.WriteTensor{Name: name, DType: dt, Shape: shape, Write: safetensors.Bytes(make([]byte, n))}
}
