package lora

import (
	"math"
	"strings"
	"testing"
)

func TestConfigErrors(t *testing.T) {
	mc := tinyConfig()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"r zero", Config{R: 0, Alpha: 8}, "lora: r = 0, want > 0"},
		{"r negative", Config{R: -2, Alpha: 8}, "lora: r = -2, want > 0"},
		{"alpha", Config{R: 4, Alpha: 0}, "lora_alpha = 0, want > 0"},
		{"dropout 1", Config{R: 4, Alpha: 8, Dropout: 1}, "lora_dropout = 1, want 0 <= p < 1"},
		{"unknown module", Config{R: 4, Alpha: 8, TargetModules: []string{"q_proj", "qproj"}},
			`lora: target_modules: "qproj" matches no module (the model has: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)`},
		{"lm_head", Config{R: 4, Alpha: 8, TargetModules: []string{"lm_head"}}, "LoRA on embeddings and lm_head is not supported"},
		{"layer out of range", Config{R: 4, Alpha: 8, LayersToTransform: []int{0, 3}}, "layers_to_transform: layer 3 out of range (the model has 3 layers: 0..2)"},
		{"negative layer", Config{R: 4, Alpha: 8, LayersToTransform: []int{-1}}, "layer -1 out of range"},
		{"bias", Config{R: 4, Alpha: 8, Bias: "all"}, `bias "all" is not supported (supported: none)`},
		{"layer and suffix adapt nothing", Config{R: 4, Alpha: 8, TargetModules: []string{"layers.0.self_attn.q_proj"}, LayersToTransform: []int{1}}, "adapt no module"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg, mc, 1)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestTargetResolution(t *testing.T) {
	mc := tinyConfig()
	for _, tc := range []struct {
		name   string
		cfg    Config
		want   []string // "layer/module" adapted
		saved  []string
		params int
	}{
		{"default is q,v", Config{R: 2, Alpha: 4}, []string{"0/q_proj", "0/v_proj", "1/q_proj", "1/v_proj", "2/q_proj", "2/v_proj"},
			[]string{"q_proj", "v_proj"}, 3 * (2*12 + 16*2 + 2*12 + 8*2)},
		{"all-linear", Config{R: 1, Alpha: 4, TargetModules: []string{"ALL-LINEAR"}, LayersToTransform: []int{1}},
			[]string{"1/q_proj", "1/k_proj", "1/v_proj", "1/o_proj", "1/gate_proj", "1/up_proj", "1/down_proj"}, Modules,
			(12 + 16) + (12 + 8) + (12 + 8) + (16 + 12) + (12 + 20) + (12 + 20) + (20 + 12)},
		{"dotted suffix", Config{R: 1, Alpha: 4, TargetModules: []string{"layers.2.mlp.down_proj", "self_attn.k_proj"}, LayersToTransform: []int{2, 2}},
			[]string{"2/k_proj", "2/down_proj"}, []string{"layers.2.mlp.down_proj", "self_attn.k_proj"}, (12 + 8) + (20 + 12)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(tc.cfg, mc, 1)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for l := 0; l < mc.Layers; l++ {
				for _, m := range Modules {
					if a.Has(l, m) {
						got = append(got, strings.Join([]string{string(rune('0' + l)), m}, "/"))
					}
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("adapted %v, want %v", got, tc.want)
			}
			if c := a.Config(); strings.Join(c.TargetModules, ",") != strings.Join(tc.saved, ",") {
				t.Errorf("TargetModules %v, want %v", c.TargetModules, tc.saved)
			}
			if a.NumParams() != tc.params || len(a.Grads()) != tc.params {
				t.Errorf("params %d grads %d, want %d", a.NumParams(), len(a.Grads()), tc.params)
			}
			// The views tile the slabs in order with no gap.
			off := 0
			for _, tn := range a.Tensors() {
				if tn.Offset != off || len(tn.Data) != tn.Shape[0]*tn.Shape[1] || &tn.Data[0] != &a.Params()[off] || &tn.Grad[0] != &a.Grads()[off] {
					t.Fatalf("%s: offset %d, want %d", tn.Name, tn.Offset, off)
				}
				off += len(tn.Data)
			}
			if off != a.NumParams() {
				t.Errorf("views cover %d of %d", off, a.NumParams())
			}
		})
	}
	if a, _ := New(Config{R: 4, Alpha: 8}, mc, 1); a.Has(0, "k_proj") || a.Has(5, "q_proj") || a.Has(0, "nope") {
		t.Error("Has true for a module that is not adapted")
	}
}

func TestScaling(t *testing.T) {
	if s := (Config{R: 16, Alpha: 32}).Scaling(); s != 2 {
		t.Errorf("alpha/r = %v, want 2", s)
	}
	if s := (Config{R: 16, Alpha: 32, UseRSLoRA: true}).Scaling(); s != 8 {
		t.Errorf("alpha/sqrt(r) = %v, want 8", s)
	}
}

// TestInit checks PEFT's init: A ~ U(-1/√C, 1/√C) (torch kaiming_uniform_
// with a=√5), B = 0, reproducible per seed.
func TestInit(t *testing.T) {
	mc := tinyConfig()
	mc.Hidden, mc.Intermediate = 256, 512
	a, err := New(Config{R: 8, Alpha: 16, TargetModules: []string{"gate_proj", "down_proj"}}, mc, 42)
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range a.Tensors() {
		if strings.HasSuffix(tn.Name, "lora_B.weight") {
			for _, v := range tn.Data {
				if v != 0 {
					t.Fatalf("%s: nonzero %v", tn.Name, v)
				}
			}
			continue
		}
		bound := 1 / math.Sqrt(float64(tn.Shape[1]))
		var sum, sq float64
		for _, v := range tn.Data {
			if math.Abs(float64(v)) > bound {
				t.Fatalf("%s: |%v| > bound %v", tn.Name, v, bound)
			}
			sum += float64(v)
			sq += float64(v) * float64(v)
		}
		n := float64(len(tn.Data))
		mean, variance := sum/n, sq/n-(sum/n)*(sum/n)
		wantVar := bound * bound / 3
		if math.Abs(mean) > 5*math.Sqrt(wantVar/n) {
			t.Errorf("%s: mean %.4g, want 0 ± %.3g", tn.Name, mean, 5*math.Sqrt(wantVar/n))
		}
		// var of the sample variance of U(-b,b): (b⁴/5 - b⁴/9)/n
		if sd := math.Sqrt((math.Pow(bound, 4)/5 - math.Pow(bound, 4)/9) / n); math.Abs(variance-wantVar) > 5*sd {
			t.Errorf("%s: var %.4g, want %.4g ± %.3g", tn.Name, variance, wantVar, 5*sd)
		}
	}
	b, _ := New(Config{R: 8, Alpha: 16, TargetModules: []string{"gate_proj", "down_proj"}}, mc, 42)
	c, _ := New(Config{R: 8, Alpha: 16, TargetModules: []string{"gate_proj", "down_proj"}}, mc, 43)
	d, _ := New(Config{R: 8, Alpha: 16, TargetModules: []string{"down_proj"}}, mc, 42)
	sameB, diffC := true, false
	for i, v := range a.Params() {
		sameB = sameB && v == b.Params()[i]
		diffC = diffC || v != c.Params()[i]
	}
	if !sameB || !diffC {
		t.Errorf("same seed equal: %v, other seed differs: %v", sameB, diffC)
	}
	// A tensor's values do not depend on what else is targeted.
	want := a.get(1, "down_proj").a
	for i, v := range d.get(1, "down_proj").a {
		if v != want[i] {
			t.Fatal("down_proj init depends on the other targets")
		}
	}
}
