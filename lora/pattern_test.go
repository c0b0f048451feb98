package lora

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const patternsAdapt = "../testdata/adapters/qwen3-tied-patterns-rslora"

// TestPatternResolution: rank_pattern and alpha_pattern resolve as PEFT's
// get_pattern_key: re.match(rf"(.*\.)?({key})$", name), first key wins.
func TestPatternResolution(t *testing.T) {
	mc := tinyConfig()
	for _, tc := range []struct {
		name     string
		rank     []Pattern
		alpha    []Pattern
		rs       bool
		key      string // a module of layer l
		wantR    int
		wantA    float64
		wantScal float64
	}{
		{"default", nil, nil, false, "model.layers.0.self_attn.q_proj", 4, 8, 2},
		{"suffix", []Pattern{{"q_proj", 2}}, nil, false, "model.layers.0.self_attn.q_proj", 2, 8, 4},
		{"suffix is a whole segment", []Pattern{{"proj", 2}}, nil, false, "model.layers.0.self_attn.q_proj", 4, 8, 2},
		{"regex", []Pattern{{".*proj", 2}}, nil, false, "model.layers.0.self_attn.q_proj", 2, 8, 4},
		{"dotted path", []Pattern{{`layers\.1\.mlp\.down_proj`, 16}}, nil, true, "model.layers.1.mlp.down_proj", 16, 8, 2},
		{"dotted path other layer", []Pattern{{`layers\.1\.mlp\.down_proj`, 16}}, nil, true, "model.layers.2.mlp.down_proj", 4, 8, 4},
		{"no partial layer number", []Pattern{{`layers\.1\..*`, 16}}, nil, false, "model.layers.11.mlp.down_proj", 4, 8, 2},
		{"first match wins", []Pattern{{"q_proj", 2}, {`layers\.0\..*`, 16}}, nil, false, "model.layers.0.self_attn.q_proj", 2, 8, 4},
		{"first match wins reversed", []Pattern{{`layers\.0\..*`, 16}, {"q_proj", 2}}, nil, false, "model.layers.0.self_attn.q_proj", 16, 8, 0.5},
		{"alternation grouped", nil, []Pattern{{"up_proj|gate_proj", 32}}, false, "model.layers.2.mlp.gate_proj", 4, 32, 8},
		{"alternation no stray match", nil, []Pattern{{"up_proj|gate_proj", 32}}, false, "model.layers.2.mlp.down_proj", 4, 8, 2},
		{"alpha and rank rslora", []Pattern{{"v_proj", 16}}, []Pattern{{"v_proj", 2}}, true, "model.layers.0.self_attn.v_proj", 16, 2, 0.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{R: 4, Alpha: 8, UseRSLoRA: tc.rs, TargetModules: []string{AllLinear}, RankPattern: tc.rank, AlphaPattern: tc.alpha}
			r, alpha, s, err := c.ModuleRank(tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if r != tc.wantR || alpha != tc.wantA || math.Abs(s-tc.wantScal) > 1e-15 {
				t.Errorf("%s: r=%d alpha=%g scaling=%g, want %d %g %g", tc.key, r, alpha, s, tc.wantR, tc.wantA, tc.wantScal)
			}
			if strings.Contains(tc.key, "layers.11") {
				return
			}
			a, err := newAdapter(c, mc)
			if err != nil {
				t.Fatal(err)
			}
			var l int
			var mod string
			parts := strings.Split(tc.key, ".")
			l, mod = int(parts[2][0]-'0'), parts[4]
			gr, ga, gs, ok := a.ModuleRank(l, mod)
			if !ok || gr != r || ga != alpha || gs != s {
				t.Errorf("Adapter.ModuleRank = %d %g %g %v, want %d %g %g", gr, ga, gs, ok, r, alpha, s)
			}
			md := a.get(l, mod)
			if len(md.a) != r*md.in || len(md.b) != md.out*r || md.s != float32(s) {
				t.Errorf("A %d, B %d floats, s %v; want r=%d", len(md.a), len(md.b), md.s, r)
			}
		})
	}
}

func TestPatternErrors(t *testing.T) {
	mc := tinyConfig()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"rank not int", Config{R: 4, Alpha: 8, RankPattern: []Pattern{{"q_proj", 1.5}}}, `rank_pattern["q_proj"] = 1.5, want a positive integer`},
		{"rank zero", Config{R: 4, Alpha: 8, RankPattern: []Pattern{{"q_proj", 0}}}, `rank_pattern["q_proj"] = 0`},
		{"alpha negative", Config{R: 4, Alpha: 8, AlphaPattern: []Pattern{{"q_proj", -1}}}, `alpha_pattern["q_proj"] = -1, want > 0`},
		{"bad regex", Config{R: 4, Alpha: 8, AlphaPattern: []Pattern{{"q_proj(", 2}}}, `alpha_pattern: key "q_proj(" is not a regular expression`},
		// Trained with "q_proj" first, saved sorted ("layers..." first): layer 0
		// q_proj would reload with another rank.
		{"order changes on save", Config{R: 4, Alpha: 8, TargetModules: []string{"q_proj"}, RankPattern: []Pattern{{"q_proj", 2}, {`layers\.0\..*`, 8}}},
			`rank_pattern: model.layers.0.self_attn.q_proj gets 2 from the first matching key, but 8 with the keys in sorted order`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg, mc, 1)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

// TestPatternSaveLoad: Save keeps the patterns (sorted keys, as PEFT), Load
// gives every module its rank and scaling back, and a hand-written file's
// key order (not sorted) decides the first match, as json.load's dict does.
func TestPatternSaveLoad(t *testing.T) {
	mc := tinyConfig()
	cfg := Config{R: 4, Alpha: 8, UseRSLoRA: true, TargetModules: []string{AllLinear},
		RankPattern:  []Pattern{{`layers\.1\..*`, 2}, {"v_proj", 8}},
		AlphaPattern: []Pattern{{"o_proj", 2.5}, {"down_proj", 16}}}
	a, err := New(cfg, mc, 3)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := a.Save(dir, "f32"); err != nil {
		t.Fatal(err)
	}
	js, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	for _, want := range []string{"\"alpha_pattern\": {\n    \"down_proj\": 16,\n    \"o_proj\": 2.5\n  }",
		"\"rank_pattern\": {\n    \"layers\\\\.1\\\\..*\": 2,\n    \"v_proj\": 8\n  }"} {
		if !bytes.Contains(js, []byte(want)) {
			t.Errorf("adapter_config.json lacks %q:\n%s", want, js)
		}
	}
	b, err := Load(dir, mc)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Params(), b.Params()) {
		t.Error("params differ after Save/Load")
	}
	for l := 0; l < mc.Layers; l++ {
		for _, mod := range Modules {
			r1, a1, s1, _ := a.ModuleRank(l, mod)
			r2, a2, s2, _ := b.ModuleRank(l, mod)
			if r1 != r2 || a1 != a2 || s1 != s2 {
				t.Errorf("layer %d %s: loaded r=%d alpha=%g s=%g, saved %d %g %g", l, mod, r2, a2, s2, r1, a1, s1)
			}
		}
	}
	if r, _, _, _ := b.ModuleRank(1, "v_proj"); r != 2 {
		t.Errorf("layer 1 v_proj r=%d, want 2 (first key)", r)
	}

	// File order decides: "v_proj" before "layers\.1\..*" gives layer 1 v_proj r=8.
	var raw map[string]any
	json.Unmarshal(js, &raw)
	raw["rank_pattern"] = json.RawMessage(`{"v_proj": 8, "layers\\.1\\..*": 2}`)
	c, err := parseConfig(mustMarshal(t, raw))
	if err != nil {
		t.Fatal(err)
	}
	if r, _, _, _ := c.ModuleRank("model.layers.1.self_attn.v_proj"); r != 8 {
		t.Errorf("file order: layer 1 v_proj r=%d, want 8", r)
	}
}

func TestParsePatterns(t *testing.T) {
	got, err := ParsePatterns("rank_pattern", map[string]string{"q_proj": "8", `layers\.0\..*`: " 2 "})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Pattern{{`layers\.0\..*`, 2}, {"q_proj", 8}}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for _, tc := range []struct {
		what string
		m    map[string]string
		want string
	}{
		{"rank_pattern", map[string]string{"q_proj": "x"}, `rank_pattern["q_proj"] = "x", want a number`},
		{"rank_pattern", map[string]string{"q_proj": "2.5"}, "want a positive integer"},
		{"alpha_pattern", map[string]string{"q_proj(": "2"}, "not a regular expression"},
		{"r", nil, "neither"},
	} {
		if _, err := ParsePatterns(tc.what, tc.m); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.m, err, tc.want)
		}
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPatternReferenceConfig: the PyTorch reference's adapter with patterns
// loads with the per-module ranks and scalings the reference used, and Save
// writes the same adapter_config.json (but peft_version, which tune leaves out).
func TestPatternReferenceConfig(t *testing.T) {
	g, err := os.ReadFile("../testdata/golden/lora-patterns-qwen3-tied.json")
	if err != nil {
		t.Skip(err)
	}
	var golden struct {
		Lora struct {
			Modules map[string][3]float64 `json:"module_r_alpha_scaling"`
		} `json:"lora"`
	}
	if err := json.Unmarshal(g, &golden); err != nil {
		t.Fatal(err)
	}
	mc := loadConfig(t, qwenDir)
	a, err := Load(patternsAdapt, mc)
	if err != nil {
		t.Fatal(err)
	}
	if len(golden.Lora.Modules) != 14 {
		t.Fatalf("%d modules in the golden", len(golden.Lora.Modules))
	}
	for key, want := range golden.Lora.Modules {
		p := strings.Split(key, ".")
		r, alpha, s, ok := a.ModuleRank(int(p[2][0]-'0'), p[4])
		if !ok || float64(r) != want[0] || alpha != want[1] || s != want[2] {
			t.Errorf("%s: r=%d alpha=%g scaling=%.17g, reference %v", key, r, alpha, s, want)
		}
	}
	dir := t.TempDir()
	if err := a.Save(dir, "f32"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	ref, _ := os.ReadFile(filepath.Join(patternsAdapt, ConfigFile))
	ref = bytes.Replace(ref, []byte("  \"peft_version\": \"0.19.1\",\n"), nil, 1)
	// PEFT 0.20 fields tune writes and the 0.19.1 reference lacks.
	got = bytes.Replace(got, []byte("  \"monteclora_config\": null,\n"), nil, 1)
	got = bytes.Replace(got, []byte("  \"velora_config\": null\n"), nil, 1)
	got = bytes.Replace(got, []byte("\"use_rslora\": true,\n"), []byte("\"use_rslora\": true\n"), 1)
	if !bytes.Equal(got, ref) {
		t.Errorf("saved adapter_config.json differs from the reference's:\n%s\n---\n%s", got, ref)
	}
}

// FuzzParseConfig: adapter_config.json is untrusted. Whatever parses must
// resolve every module without panicking, with positive ranks and alphas.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 4, "layers\\.1\\..*": 2}, "alpha_pattern": {"o_proj": 3}}`))
	f.Add([]byte(`{"r": 8, "rank_pattern": {"(": 4}}`))
	f.Add([]byte(`{"r": 8, "rank_pattern": {"q_proj": 4, "q_proj": 2}, "alpha_pattern": null}`))
	f.Add([]byte(`{"target_modules": "all-linear", "layers_to_transform": 1, "use_rslora": true}`))
	mc := tinyConfig()
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		for l := 0; l < mc.Layers; l++ {
			for m := range Modules {
				r, alpha, _, err := c.ModuleRank(moduleKey(l, m))
				if err != nil {
					t.Fatalf("parsed but ModuleRank fails: %v", err)
				}
				if r <= 0 && c.R > 0 || alpha <= 0 && c.Alpha > 0 {
					t.Fatalf("r=%d alpha=%g for %s", r, alpha, moduleKey(l, m))
				}
			}
		}
		small := c.R > 0 && c.R < 64
		for _, p := range c.RankPattern {
			small = small && p.Value < 64
		}
		if small {
			newAdapter(c, mc) // must not panic
		}
	})
}
