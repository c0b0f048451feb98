package lora

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/tunellm/tune/kernels/cpu"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
)

func readTensor(t *testing.T, r *safetensors.Reader, name string) ([]float32, safetensors.DType) {
	t.Helper()
	tn, err := r.Tensor(name)
	if err != nil {
		t.Fatal(err)
	}
	out, err := tn.Float32()
	if err != nil {
		t.Fatal(err)
	}
	return out, tn.DType
}

// wantMerged is W + s·B·A in float64 from the formula, independent of
// mergeRows.
func wantMerged(w []float32, md *module, s float64, R int) []float64 {
	out := make([]float64, len(w))
	for o := 0; o < md.out; o++ {
		for c := 0; c < md.in; c++ {
			var d float64
			for k := 0; k < R; k++ {
				d += float64(md.b[o*R+k]) * float64(md.a[k*md.in+c])
			}
			out[o*md.in+c] = float64(w[o*md.in+c]) + s*d
		}
	}
	return out
}

func TestMerge(t *testing.T) {
	for _, tc := range []struct {
		name, base, dtype string
		outDT             safetensors.DType
		torchDType        string
		shard             int64
	}{
		{"f32", qwenDir, "f32", safetensors.F32, "float32", 0},
		{"bf16 base to bf16", qwenBF16, "", safetensors.BF16, "bfloat16", 0},
		{"f32 to f16 sharded", qwenDir, "f16", safetensors.F16, "float16", 60_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mc := loadConfig(t, tc.base)
			a, err := New(Config{R: 3, Alpha: 5, TargetModules: []string{"q_proj", "o_proj", "down_proj"}, LayersToTransform: []int{1}}, mc, 7)
			if err != nil {
				t.Fatal(err)
			}
			randomize(a.Params(), rand.New(rand.NewPCG(4, 4)), 0.2)
			out := filepath.Join(t.TempDir(), "merged")
			if err := MergeWith(tc.base, out, a, MergeOptions{DType: tc.dtype, MaxShardBytes: tc.shard}); err != nil {
				t.Fatal(err)
			}
			base, err := safetensors.Open(tc.base)
			if err != nil {
				t.Fatal(err)
			}
			defer base.Close()
			merged, err := safetensors.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer merged.Close()
			if strings.Join(base.Names(), ",") != strings.Join(merged.Names(), ",") {
				t.Fatalf("tensor names differ:\n%v\n%v", base.Names(), merged.Names())
			}
			if nf := len(merged.Files()); (tc.shard > 0) != (nf > 1) {
				t.Errorf("%d files with MaxShardBytes %d", nf, tc.shard)
			}
			round := func(x float64) float32 {
				f := float32(x)
				switch tc.outDT {
				case safetensors.BF16:
					return safetensors.BF16ToFloat32(safetensors.Float32ToBF16(f))
				case safetensors.F16:
					return safetensors.F16ToFloat32(safetensors.Float32ToF16(f))
				}
				return f
			}
			adapted := 0
			for _, name := range base.Names() {
				w, _ := readTensor(t, base, name)
				got, dt := readTensor(t, merged, name)
				if dt != tc.outDT {
					t.Fatalf("%s: dtype %s, want %s", name, dt, tc.outDT)
				}
				want := make([]float64, len(w))
				for i, v := range w {
					want[i] = float64(v)
				}
				for l := range a.mods {
					for _, md := range a.mods[l] {
						if md != nil && name == moduleKey(md.layer, md.m)+".weight" {
							want = wantMerged(w, md, a.cfg.Scaling(), a.cfg.R)
							adapted++
						}
					}
				}
				for i := range got {
					// Exact: the same float64 sum in the same order, rounded once
					// to float32, then to the output dtype.
					if r := round(want[i]); got[i] != r {
						t.Fatalf("%s[%d] = %v, want %v", name, i, got[i], r)
					}
				}
			}
			if adapted != 3 {
				t.Errorf("%d adapted tensors checked, want 3", adapted)
			}
			var cfg map[string]any
			b, _ := os.ReadFile(filepath.Join(out, "config.json"))
			if err := json.Unmarshal(b, &cfg); err != nil || cfg["torch_dtype"] != tc.torchDType {
				t.Errorf("config.json torch_dtype %v (%v), want %s", cfg["torch_dtype"], err, tc.torchDType)
			}
			for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
				x, _ := os.ReadFile(filepath.Join(tc.base, f))
				y, err := os.ReadFile(filepath.Join(out, f))
				if err != nil || !bytes.Equal(x, y) {
					t.Errorf("%s not copied: %v", f, err)
				}
			}
			m, err := model.Load(out, model.LoadOptions{})
			if err != nil {
				t.Fatalf("model.Load(merged): %v", err)
			}
			m.Close()
			entries, _ := os.ReadDir(filepath.Dir(out))
			if len(entries) != 1 {
				t.Errorf("left next to the output: %v", entries)
			}
		})
	}
}

func TestMergeRefusals(t *testing.T) {
	mc := loadConfig(t, qwenDir)
	a, err := New(Config{R: 2, Alpha: 4}, mc, 1)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, "keep.txt"), []byte("x"), 0o644)
	if err := Merge(qwenDir, out, a, "bf16"); err == nil || !strings.Contains(err.Error(), "exists and is not empty") {
		t.Fatalf("non-empty outDir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "keep.txt")); err != nil {
		t.Fatal("refused merge touched outDir")
	}
	if err := MergeWith(qwenDir, out, a, MergeOptions{DType: "bf16", Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "keep.txt")); err == nil {
		t.Error("Force kept the old contents")
	}
	if _, err := os.Stat(filepath.Join(out, "model.safetensors")); err != nil {
		t.Error(err)
	}
	if err := Merge(qwenDir, qwenDir, a, "f32"); err == nil || !strings.Contains(err.Error(), "is the base folder") {
		t.Errorf("merge into the base: %v", err)
	}
	if err := Merge(llamaDir, filepath.Join(t.TempDir(), "x"), a, "f32"); err == nil || !strings.Contains(err.Error(), "the adapter was made for") {
		t.Errorf("other base: %v", err)
	}
	if err := Merge(qwenDir, filepath.Join(t.TempDir(), "x"), a, "q4"); err == nil || !strings.Contains(err.Error(), "supported: f32, bf16, f16") {
		t.Errorf("bad dtype: %v", err)
	}
}

// TestMergeGolden: the reference adapter merged into an F32 folder and run
// through model.Load must give the PyTorch reference's logits of base +
// unmerged adapter.
func TestMergeGolden(t *testing.T) {
	for _, golden := range []string{"../testdata/golden/lora-qwen3-tied.json", "../testdata/golden/lora-dora-qwen3-tied.json",
		"../testdata/golden/lora-patterns-qwen3-tied.json", "../testdata/golden/lora-patterns-dora-qwen3-tied.json"} {
		t.Run(filepath.Base(golden), func(t *testing.T) { mergeGolden(t, golden) })
	}
}

func mergeGolden(t *testing.T, golden string) {
	data, err := os.ReadFile(golden)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skipf("%v (regenerate with testdata/gen/lora_reference.py)", err)
	}
	var g struct {
		Merge struct {
			AdapterDir string      `json:"adapter_dir"`
			Tokens     []int       `json:"tokens"`
			Logits     [][]float64 `json:"logits"`
		} `json:"merge"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	mc := loadConfig(t, qwenDir)
	a, err := Load(filepath.Join("..", g.Merge.AdapterDir), mc)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "merged")
	if err := Merge(qwenDir, out, a, "f32"); err != nil {
		t.Fatal(err)
	}
	// The merged folder, and the base with the adapter attached unmerged
	// (model.SetAdapter, what --adapter does), both give the reference's logits.
	for _, tc := range []struct {
		name, dir string
		attach    bool
	}{{"merged", out, false}, {"unmerged", qwenDir, true}} {
		m, err := model.Load(tc.dir, model.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if tc.attach {
			m.SetAdapter(a)
		}
		logits, err := m.ForwardLogits(m.NewCache(len(g.Merge.Tokens)), g.Merge.Tokens)
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(logits) != len(g.Merge.Logits) {
			t.Fatalf("%s: %d rows, want %d", tc.name, len(logits), len(g.Merge.Logits))
		}
		maxd := 0.0
		for i := range logits {
			for j, w := range g.Merge.Logits[i] {
				maxd = math.Max(maxd, math.Abs(float64(logits[i][j])-w))
			}
		}
		t.Logf("%s logits vs reference base+adapter: max |diff| %.3g", tc.name, maxd)
		if maxd > 1e-4 {
			t.Errorf("%s: max |diff| %.3g > 1e-4", tc.name, maxd)
		}
	}
}

func TestMergedWeight(t *testing.T) {
	mc := tinyConfig()
	a, err := New(Config{R: 3, Alpha: 7, TargetModules: []string{"up_proj"}}, mc, 2)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	randomize(a.Params(), rng, 0.5)
	md := a.get(2, "up_proj")
	w := make([]float32, md.out*md.in)
	randomize(w, rng, 1)
	got, err := a.MergedWeight(2, "up_proj", w)
	if err != nil {
		t.Fatal(err)
	}
	checkTensor(t, "merged up_proj", got, wantMerged(w, md, 7.0/3, 3), 1e-7)
	if _, err := a.MergedWeight(2, "up_proj", w[1:]); err == nil {
		t.Error("short weight accepted")
	}
	if _, err := a.MergedWeight(2, "q_proj", w); err == nil {
		t.Error("unadapted module accepted")
	}
}
