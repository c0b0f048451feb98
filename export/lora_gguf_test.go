package export

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/tunellm/tune/kernels/cpu" // the CPU backend registers itself
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize"
	"github.com/tunellm/tune/quantize/gguf"
)

func testModelDir(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join("..", "testdata", "models", name)
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err != nil {
		t.Fatalf("missing test checkpoint (regenerate with /usr/bin/python3 testdata/gen/reference.py): %v", err)
	}
	return dir
}

// adapterSpec describes a PEFT adapter the tests write: every linear layer
// of every block adapted, A and B random and nonzero.
type adapterSpec struct {
	r            int
	alpha        float64
	rslora       bool
	rankPattern  string // JSON object text, e.g. {"q_proj": 2}
	alphaPattern string
	seed         uint64
}

// writeAdapter writes the adapter as PEFT saves it and returns the scaling
// of each module as PEFT computes it (written out here, independently of
// ReadAdapter).
func writeAdapter(t *testing.T, dir string, mc *model.Config, s adapterSpec) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rp, ap := s.rankPattern, s.alphaPattern
	if rp == "" {
		rp = "{}"
	}
	if ap == "" {
		ap = "{}"
	}
	cfg := fmt.Sprintf(`{"peft_type": "LORA", "r": %d, "lora_alpha": %g, "use_rslora": %t, "use_dora": false,
  "target_modules": ["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"],
  "rank_pattern": %s, "alpha_pattern": %s, "bias": "none", "lora_dropout": 0.0, "task_type": "CAUSAL_LM"}`,
		s.r, s.alpha, s.rslora, rp, ap)
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var rpm map[string]int
	json.Unmarshal([]byte(rp), &rpm)
	rng := rand.New(rand.NewPCG(s.seed, 7))
	var ts []safetensors.WriteTensor
	for l := 0; l < mc.Layers; l++ {
		for m, mod := range lora.Modules {
			out, in := moduleShape(mc, m)
			key := moduleKey(l, mod)
			r := s.r
			for k, v := range rpm { // the tests' patterns never overlap
				if strings.HasSuffix(key, "."+k) {
					r = v
				}
			}
			for _, ab := range []struct {
				name  string
				shape []int
				scale float64
			}{{"lora_A", []int{r, in}, 1 / math.Sqrt(float64(in))}, {"lora_B", []int{out, r}, 0.05}} {
				n := ab.shape[0] * ab.shape[1]
				b := make([]byte, 4*n)
				for i := 0; i < n; i++ {
					v := float32((2*rng.Float64() - 1) * ab.scale)
					u := math.Float32bits(v)
					b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
				}
				ts = append(ts, safetensors.WriteTensor{Name: "base_model.model." + key + "." + ab.name + ".weight",
					DType: safetensors.F32, Shape: ab.shape, Write: safetensors.Bytes(b)})
			}
		}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}

func moduleKey(l int, mod string) string {
	if moduleIndex(mod) < 4 {
		return fmt.Sprintf("model.layers.%d.self_attn.%s", l, mod)
	}
	return fmt.Sprintf("model.layers.%d.mlp.%s", l, mod)
}

// mergeForTest writes base + adapter as a plain F32 model folder, computing
// W + scaling·B·A in float64 with PEFT's scaling for each module taken from
// the spec (pattern entries are module-name suffixes in these tests): the
// independent reference for the pattern cases (package lora reads patterns too, and is checked against it).
func mergeForTest(t *testing.T, baseDir, adapterDir, outDir string, s adapterSpec) {
	t.Helper()
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(baseDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "config.json" {
			b = bytes.Replace(b, []byte(`"torch_dtype": "float16"`), []byte(`"torch_dtype": "float32"`), 1)
		}
		if err := os.WriteFile(filepath.Join(outDir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var rpm, apm map[string]float64
	json.Unmarshal([]byte(s.rankPattern), &rpm)
	json.Unmarshal([]byte(s.alphaPattern), &apm)
	base, err := safetensors.Open(filepath.Join(baseDir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	ad, err := safetensors.Open(filepath.Join(adapterDir, "adapter_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer ad.Close()
	read := func(r *safetensors.Reader, name string) ([]float32, []int) {
		tt, err := r.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		v := make([]float32, tt.NumElements())
		if err := safetensors.ToFloat32(v, tt.Data, tt.DType); err != nil {
			t.Fatal(err)
		}
		return v, tt.Shape
	}
	var ts []safetensors.WriteTensor
	for _, name := range base.Names() {
		w, shape := read(base, name)
		key := strings.TrimSuffix(name, ".weight")
		if ad.Has("base_model.model." + key + ".lora_A.weight") {
			a, as := read(ad, "base_model.model."+key+".lora_A.weight")
			b, _ := read(ad, "base_model.model."+key+".lora_B.weight")
			r, alpha := float64(s.r), s.alpha
			for k, v := range rpm {
				if strings.HasSuffix(key, "."+k) {
					r = v
				}
			}
			for k, v := range apm {
				if strings.HasSuffix(key, "."+k) {
					alpha = v
				}
			}
			if int(r) != as[0] {
				t.Fatalf("%s: rank %d in the file, %g from the spec", key, as[0], r)
			}
			scaling := alpha / r
			if s.rslora {
				scaling = alpha / math.Sqrt(r)
			}
			R, out, in := as[0], shape[0], shape[1]
			for o := 0; o < out; o++ {
				for i := 0; i < in; i++ {
					var d float64
					for k := 0; k < R; k++ {
						d += float64(b[o*R+k]) * float64(a[k*in+i])
					}
					w[o*in+i] = float32(float64(w[o*in+i]) + scaling*d)
				}
			}
		}
		buf := make([]byte, 4*len(w))
		for i, v := range w {
			u := math.Float32bits(v)
			buf[4*i], buf[4*i+1], buf[4*i+2], buf[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
		}
		ts = append(ts, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: shape, Write: safetensors.Bytes(buf)})
	}
	if err := safetensors.WriteFile(filepath.Join(outDir, "model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}

var loraCases = []struct {
	name  string
	model string
	spec  adapterSpec
	// viaLora: tune's logits come from the unmerged adapter (loadModel's
	// path); otherwise from mergeForTest, which package lora's unmerged
	// adapter (rank/alpha patterns) is then also checked against.
	viaLora bool
}{
	{"qwen3-plain", "qwen3-tied", adapterSpec{r: 4, alpha: 8, seed: 1}, true},
	{"qwen3-rslora-patterns", "qwen3-tied", adapterSpec{r: 4, alpha: 8, rslora: true, seed: 2,
		rankPattern: `{"q_proj": 2, "layers.1.mlp.down_proj": 6}`, alphaPattern: `{"v_proj": 3, "up_proj": 20}`}, false},
	{"llama3-rslora", "llama3", adapterSpec{r: 8, alpha: 16, rslora: true, seed: 3}, true},
	{"llama3-rslora-patterns", "llama3", adapterSpec{r: 8, alpha: 16, rslora: true, seed: 4,
		rankPattern: `{"k_proj": 2, "q_proj": 4, "layers.0.mlp.gate_proj": 3}`, alphaPattern: `{"q_proj": 5, "o_proj": 32}`}, false},
}

// TestWriteLoRAGGUFLayout reads the file back: names, shapes, metadata, and
// that llama.cpp's alpha/R times lora_b·lora_a (un-permuting llama q/k rows)
// gives PEFT's scaling·B·A for every pair.
func TestWriteLoRAGGUFLayout(t *testing.T) {
	for _, tc := range loraCases {
		t.Run(tc.name, func(t *testing.T) {
			base := testModelDir(t, tc.model)
			mc, err := model.LoadConfig(base)
			if err != nil {
				t.Fatal(err)
			}
			adir := filepath.Join(t.TempDir(), "adapter")
			writeAdapter(t, adir, mc, tc.spec)
			out := filepath.Join(t.TempDir(), "lora.gguf")
			rep, err := WriteLoRAGGUF(adir, base, out, LoRAOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Pairs != 7*mc.Layers {
				t.Errorf("pairs %d, want %d", rep.Pairs, 7*mc.Layers)
			}
			if want := tc.spec.rslora || tc.spec.alphaPattern != ""; rep.Folded != want {
				t.Errorf("folded %v, want %v", rep.Folded, want)
			}
			f, err := gguf.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			arch := map[string]string{"qwen3-tied": "qwen3", "llama3": "llama"}[tc.model]
			for k, want := range map[string]any{"general.architecture": arch, "general.type": "adapter", "adapter.type": "lora",
				"adapter.lora.alpha": float32(tc.spec.alpha)} {
				if v, ok := f.Value(k); !ok || v != want {
					t.Errorf("%s = %v (%T), want %v", k, v, v, want)
				}
			}
			ad, err := ReadAdapter(adir, mc)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range ad.Pairs {
				g, _, _, _ := quantize.GGUFTensorName(p.HF)
				ta, ok1 := f.Tensor(g + ".lora_a")
				tb, ok2 := f.Tensor(g + ".lora_b")
				if !ok1 || !ok2 {
					t.Fatalf("%s: lora_a/lora_b missing", g)
				}
				if fmt.Sprint(ta.Shape) != fmt.Sprint([]int{p.R, p.In}) || fmt.Sprint(tb.Shape) != fmt.Sprint([]int{p.Out, p.R}) {
					t.Fatalf("%s: shapes %v %v, want [%d %d] [%d %d]", g, ta.Shape, tb.Shape, p.R, p.In, p.Out, p.R)
				}
				bb, err := f.TensorData(g + ".lora_b")
				if err != nil {
					t.Fatal(err)
				}
				perm := identity
				if arch == "llama" && (p.Module == "q_proj" || p.Module == "k_proj") {
					nh := mc.Heads
					if p.Module == "k_proj" {
						nh = mc.KVHeads
					}
					perm, _ = ropePermutation(p.Out, nh)
				}
				llamaScale := tc.spec.alpha / float64(p.R)
				for r := 0; r < p.Out; r++ {
					for k := 0; k < p.R; k++ {
						got := llamaScale * float64(math.Float32frombits(le32(bb[4*(r*p.R+k):])))
						want := p.Scaling * float64(p.B[perm(r)*p.R+k])
						if math.Abs(got-want) > 1e-6*math.Abs(want)+1e-12 {
							t.Fatalf("%s row %d col %d: llama.cpp scale·b = %g, PEFT scaling·B = %g", g, r, k, got, want)
						}
					}
				}
			}
		})
	}
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func TestWriteLoRAGGUFErrors(t *testing.T) {
	base := testModelDir(t, "qwen3-tied")
	for _, tc := range []struct {
		name, adapter, want string
	}{
		{"dora", filepath.Join("..", "testdata", "adapters", "qwen3-tied-r4-dora"), "llama.cpp has no DoRA"},
		{"missing", filepath.Join(t.TempDir(), "nope"), "no such file"},
		{"wrong base", filepath.Join("..", "testdata", "adapters", "llama3-r8-rslora"), "shape"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := WriteLoRAGGUF(tc.adapter, base, filepath.Join(t.TempDir(), "x.gguf"), LoRAOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	// An existing output needs Force.
	out := filepath.Join(t.TempDir(), "x.gguf")
	os.WriteFile(out, []byte("x"), 0o644)
	_, err := WriteLoRAGGUF(filepath.Join("..", "testdata", "adapters", "qwen3-tied-r4"), base, out, LoRAOptions{})
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("err = %v, want --force", err)
	}
	if _, err := WriteLoRAGGUF(filepath.Join("..", "testdata", "adapters", "qwen3-tied-r4"), base, out, LoRAOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
}

// llamaCppDir returns bench/llamacpp when llama.cpp (node-llama-cpp) can
// run and TUNE_LLAMACPP=1 asks for it; it skips otherwise, and fails under
// CI=true.
func llamaCppDir(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short")
	}
	dir, _ := filepath.Abs(filepath.Join("..", "bench", "llamacpp"))
	_, errNode := exec.LookPath("node")
	_, errMods := os.Stat(filepath.Join(dir, "node_modules", "node-llama-cpp"))
	if errNode != nil || errMods != nil {
		if os.Getenv("CI") == "true" && os.Getenv("TUNE_LLAMACPP") == "1" {
			t.Fatalf("llama.cpp oracle missing (run npm install --omit=optional in bench/llamacpp): node %v, node_modules %v", errNode, errMods)
		}
		t.Skip("llama.cpp oracle missing: run `npm install --omit=optional` in bench/llamacpp")
	}
	if os.Getenv("TUNE_LLAMACPP") != "1" {
		t.Skip("set TUNE_LLAMACPP=1 to run llama.cpp")
	}
	return dir
}

// TestLoRAGGUFLlamaCpp is the proof: llama.cpp applies our adapter
// file to our F32 base GGUF and its logits at every position equal tune's
// with base + PEFT adapter (rsLoRA and rank/alpha patterns folded in).
func TestLoRAGGUFLlamaCpp(t *testing.T) {
	dir := llamaCppDir(t)
	tokens := []int{1, 17, 42, 99, 5, 200, 31, 7, 64, 128}
	for _, tc := range loraCases {
		t.Run(tc.name, func(t *testing.T) {
			base := testModelDir(t, tc.model)
			mc, err := model.LoadConfig(base)
			if err != nil {
				t.Fatal(err)
			}
			tmp := t.TempDir()
			adir := filepath.Join(tmp, "adapter")
			writeAdapter(t, adir, mc, tc.spec)
			baseGGUF, loraGGUF := filepath.Join(tmp, "base.gguf"), filepath.Join(tmp, "lora.gguf")
			if err := quantize.ExportGGUF(base, baseGGUF, "f32"); err != nil {
				t.Fatal(err)
			}
			if _, err := WriteLoRAGGUF(adir, base, loraGGUF, LoRAOptions{}); err != nil {
				t.Fatal(err)
			}
			loraF16 := filepath.Join(tmp, "lora-f16.gguf")
			if _, err := WriteLoRAGGUF(adir, base, loraF16, LoRAOptions{Type: "f16"}); err != nil {
				t.Fatal(err)
			}
			// tune's logits.
			var m *model.Model
			if tc.viaLora {
				m, err = model.Load(base, model.LoadOptions{})
				if err != nil {
					t.Fatal(err)
				}
				a, err := lora.Load(adir, m.Config)
				if err != nil {
					t.Fatal(err)
				}
				m.SetAdapter(a)
			} else {
				merged := filepath.Join(tmp, "merged")
				mergeForTest(t, base, adir, merged, tc.spec)
				m, err = model.Load(merged, model.LoadOptions{})
				if err != nil {
					t.Fatal(err)
				}
			}
			defer m.Close()
			want, err := m.ForwardLogits(m.NewCache(len(tokens)), tokens)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.viaLora {
				// lora reads rank/alpha patterns too: its unmerged adapter on
				// the base gives the independently merged model's logits.
				um, err := model.Load(base, model.LoadOptions{})
				if err != nil {
					t.Fatal(err)
				}
				defer um.Close()
				a, err := lora.Load(adir, um.Config)
				if err != nil {
					t.Fatal(err)
				}
				um.SetAdapter(a)
				got, err := um.ForwardLogits(um.NewCache(len(tokens)), tokens)
				if err != nil {
					t.Fatal(err)
				}
				maxd := 0.0
				for p := range want {
					for v := range want[p] {
						maxd = math.Max(maxd, math.Abs(float64(got[p][v]-want[p][v])))
					}
				}
				t.Logf("lora unmerged (patterns) vs merged reference: max |diff| %.3g", maxd)
				if maxd > 1e-4 {
					t.Errorf("lora unmerged with patterns vs merged reference: max |diff| %.3g > 1e-4", maxd)
				}
			}
			// The adapter must matter: compare with the base alone too.
			bm, err := model.Load(base, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer bm.Close()
			baseLogits, err := bm.ForwardLogits(bm.NewCache(len(tokens)), tokens)
			if err != nil {
				t.Fatal(err)
			}
			// F32: exact but for summation order. F16 rounds A and the folded
			// B (relative 2^-11 each): measured 8e-5 to 9e-4, bound 2e-3; run
			// on the pattern cases only, to keep the test short.
			compareLlamaCppLoRA(t, dir, baseGGUF, loraGGUF, tokens, want, baseLogits, 1e-4)
			if strings.HasSuffix(tc.name, "patterns") {
				compareLlamaCppLoRA(t, dir, baseGGUF, loraF16, tokens, want, baseLogits, 2e-3)
			}
		})
	}
}

func compareLlamaCppLoRA(t *testing.T, dir, baseGGUF, loraGGUF string, tokens []int, want, baseLogits [][]float32, tol float64) {
	t.Helper()
	args := []string{"lora.mjs", baseGGUF, loraGGUF, "--all"}
	for _, id := range tokens {
		args = append(args, fmt.Sprint(id))
	}
	cmd := exec.Command("node", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	var got struct {
		Positions []int       `json:"positions"`
		Logits    [][]float64 `json:"logits"`
	}
	if err := json.Unmarshal(outb, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Positions) != len(tokens) {
		t.Fatalf("llama.cpp gave %d positions, want %d", len(got.Positions), len(tokens))
	}
	maxRel, adapterEffect, at := 0.0, 0.0, ""
	for k, p := range got.Positions {
		scale := 0.0
		for _, v := range want[p] {
			scale = math.Max(scale, math.Abs(float64(v)))
		}
		for v, x := range got.Logits[k] {
			if v >= len(want[p]) {
				break
			}
			d := math.Abs(x-float64(want[p][v])) / scale
			if d > maxRel || math.IsNaN(d) {
				maxRel, at = d, fmt.Sprintf("position %d token %d: llama.cpp %v, tune %v", p, v, x, want[p][v])
			}
			adapterEffect = math.Max(adapterEffect, math.Abs(float64(want[p][v]-baseLogits[p][v]))/scale)
		}
	}
	t.Logf("%s: max |llama.cpp - tune| / max|logit| = %.3g; adapter moves logits by up to %.3g (relative)", filepath.Base(loraGGUF), maxRel, adapterEffect)
	if adapterEffect < 1e-2 {
		t.Errorf("the adapter barely changes the logits (%.3g): the test would not see a wrong fold", adapterEffect)
	}
	if !(maxRel <= tol) {
		t.Errorf("%s: logits differ by %.3g (relative) > %g at %s", filepath.Base(loraGGUF), maxRel, tol, at)
	}
}

// TestLoRAGGUFLlamaCppReference: the PyTorch reference's adapter with
// rank_pattern, alpha_pattern and rsLoRA (testdata/gen/lora_reference.py,
// per-module ranks 2..8), exported to a llama.cpp LoRA GGUF, gives in
// llama.cpp the logits PyTorch computed for base + unmerged adapter
// (testdata/golden/lora-patterns-qwen3-tied.json "merge").
func TestLoRAGGUFLlamaCppReference(t *testing.T) {
	dir := llamaCppDir(t)
	b, err := os.ReadFile(filepath.Join("..", "testdata", "golden", "lora-patterns-qwen3-tied.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Merge struct {
			AdapterDir string      `json:"adapter_dir"`
			Tokens     []int       `json:"tokens"`
			Logits     [][]float32 `json:"logits"`
		} `json:"merge"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	base := testModelDir(t, "qwen3-tied")
	tmp := t.TempDir()
	baseGGUF, loraGGUF := filepath.Join(tmp, "base.gguf"), filepath.Join(tmp, "lora.gguf")
	if err := quantize.ExportGGUF(base, baseGGUF, "f32"); err != nil {
		t.Fatal(err)
	}
	rep, err := WriteLoRAGGUF(filepath.Join("..", g.Merge.AdapterDir), base, loraGGUF, LoRAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Folded || !rep.Patterns || len(rep.Ranks) < 3 {
		t.Errorf("report %+v: want folded patterns with several ranks", rep)
	}
	bm, err := model.Load(base, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer bm.Close()
	baseLogits, err := bm.ForwardLogits(bm.NewCache(len(g.Merge.Tokens)), g.Merge.Tokens)
	if err != nil {
		t.Fatal(err)
	}
	compareLlamaCppLoRA(t, dir, baseGGUF, loraGGUF, g.Merge.Tokens, g.Merge.Logits, baseLogits, 1e-4)
}
