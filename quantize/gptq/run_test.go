package gptq

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/model/safetensors"
	"github.com/tunellm/tune/quantize/wq"
)

func loadModel(t *testing.T, name string) *model.Model {
	t.Helper()
	m, err := model.Load(filepath.Join("..", "..", "testdata", "models", name), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func randSeqs(seed uint64, n, T, V int) [][]int {
	r := rand.New(rand.NewPCG(seed, 1))
	seqs := make([][]int, n)
	for i := range seqs {
		seqs[i] = make([]int, T)
		for j := range seqs[i] {
			seqs[i][j] = r.IntN(V)
		}
	}
	return seqs
}

// hiddenStates runs each sequence through Forward and concatenates the
// final-normed hidden states.
func hiddenStates(t *testing.T, m *model.Model, seqs [][]int) []float32 {
	t.Helper()
	var out []float32
	for _, s := range seqs {
		h := make([]float32, len(s)*m.Config.Hidden)
		if err := m.Forward(m.NewCache(len(s)), s, h); err != nil {
			t.Fatal(err)
		}
		out = append(out, h...)
	}
	return out
}

func mse(a, b []float32) float64 {
	var s float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		s += d * d
	}
	return s / float64(len(a))
}

// TestRunBeatsRTN quantizes the tiny test models with GPTQ on random-token
// calibration sequences: every module's output error on its calibration
// inputs is at most round-to-nearest's, the mean clearly lower, and on
// held-out sequences the model's final hidden states stay closer to the
// original's than with RTN weights.
func TestRunBeatsRTN(t *testing.T) {
	for _, tc := range []struct {
		model string
		s     wq.Scheme
		act   bool
		seq   bool
	}{
		{"qwen3-tied", wq.Scheme{Bits: 4, GroupSize: 32}, false, false},
		{"qwen3-tied", wq.Scheme{Bits: 4, GroupSize: -1, Sym: true}, true, true},
		{"llama3", wq.Scheme{Bits: 4, GroupSize: 32, Sym: true}, true, false},
		{"llama3", wq.Scheme{Bits: 4, GroupSize: 32, Sym: true}, true, true},
		{"qwen2", wq.Scheme{Bits: 8, GroupSize: -1}, false, true},
	} {
		t.Run(fmt.Sprintf("%s_%v_act=%v_trueseq=%v", tc.model, tc.s, tc.act, tc.seq), func(t *testing.T) {
			m := loadModel(t, tc.model)
			V, L := m.Config.Vocab, m.Config.Layers
			calib := randSeqs(1, 16, 64, V)
			heldOut := randSeqs(2, 4, 64, V)
			want := hiddenStates(t, m, heldOut)

			var got []*wq.QTensor
			var progress []int
			rep, err := Run(m, calib, Options{Scheme: tc.s, ActOrder: tc.act, TrueSequential: tc.seq, Workers: 2,
				Progress: func(l, n int) { progress = append(progress, l, n) }},
				func(q *wq.QTensor) error { got = append(got, q); return nil })
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 7*L || len(rep.Modules) != 7*L || !slices.Equal(progress, []int{1, L, 2, L}[:2*L]) {
				t.Fatalf("%d tensors, %d module reports, progress %v; want %d, %d, 1..%d", len(got), len(rep.Modules), progress, 7*L, 7*L, L)
			}
			for i, q := range got {
				l, mod := i/7, model.AdapterModules[i%7]
				if q.Name != WeightName(l, mod) {
					t.Fatalf("tensor %d is %q, want %q", i, q.Name, WeightName(l, mod))
				}
				if err := q.Check(); err != nil {
					t.Fatal(err)
				}
				// The model now computes with the dequantized weights.
				w, _ := m.LinearWeight(l, mod)
				if w.DType != kernels.F32 {
					t.Fatalf("%s: model weight is %v, want F32", q.Name, w.DType)
				}
				dq := make([]float32, w.Rows*w.Cols)
				if err := safetensors.ToFloat32(dq, w.Data, safetensors.F32); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(dq, q.Dequantize()) {
					t.Fatalf("%s: the model's weight is not the dequantized tensor", q.Name)
				}
			}
			for _, mr := range rep.Modules {
				t.Logf("%-36s GPTQ %.3e  RTN %.3e", mr.Name, mr.GPTQError, mr.RTNError)
				if mr.GPTQError > mr.RTNError {
					t.Errorf("%s: GPTQ error %.4g above RTN's %.4g", mr.Name, mr.GPTQError, mr.RTNError)
				}
			}
			if !(rep.MeanGPTQError < 0.8*rep.MeanRTNError) {
				t.Errorf("mean error GPTQ %.4g, RTN %.4g: want GPTQ below 0.8×RTN", rep.MeanGPTQError, rep.MeanRTNError)
			}
			if rep.Tokens != 16*64 || rep.Sequences != 16 {
				t.Errorf("report counts %d sequences, %d tokens", rep.Sequences, rep.Tokens)
			}

			// Held out: GPTQ's model is closer to the original than RTN's.
			gptqMSE := mse(hiddenStates(t, m, heldOut), want)
			r := loadModel(t, tc.model)
			for l := range L {
				for _, mod := range model.AdapterModules {
					w, _ := r.LinearWeight(l, mod)
					f := make([]float32, w.Rows*w.Cols)
					dt := map[kernels.DType]safetensors.DType{kernels.F32: safetensors.F32, kernels.F16: safetensors.F16, kernels.BF16: safetensors.BF16}[w.DType]
					if err := safetensors.ToFloat32(f, w.Data, dt); err != nil {
						t.Fatal(err)
					}
					q, err := wq.RTN("w", f, w.Rows, w.Cols, tc.s)
					if err != nil {
						t.Fatal(err)
					}
					if err := r.SetLinearWeight(l, mod, kernels.Weight{DType: kernels.F32, Data: f32Bytes(q.Dequantize()), Rows: w.Rows, Cols: w.Cols}); err != nil {
						t.Fatal(err)
					}
				}
			}
			rtnMSE := mse(hiddenStates(t, r, heldOut), want)
			t.Logf("mean relative module error: GPTQ %.4g, RTN %.4g; held-out hidden-state MSE: GPTQ %.4g, RTN %.4g",
				rep.MeanGPTQError, rep.MeanRTNError, gptqMSE, rtnMSE)
			if !(gptqMSE < rtnMSE) {
				t.Errorf("held-out hidden-state MSE: GPTQ %.4g, RTN %.4g: want GPTQ lower", gptqMSE, rtnMSE)
			}
		})
	}
}

// TestTrueSequential: layer 0's q/k/v see the same inputs either way; o_proj
// then sees the quantized attention's output and differs.
func TestTrueSequential(t *testing.T) {
	var runs [2][]*wq.QTensor
	for i, seq := range []bool{false, true} {
		m := loadModel(t, "qwen3-tied")
		_, err := Run(m, randSeqs(4, 4, 40, m.Config.Vocab), Options{Scheme: wq.Scheme{Bits: 4, GroupSize: 32}, TrueSequential: seq},
			func(q *wq.QTensor) error { runs[i] = append(runs[i], q); return nil })
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		a, b := runs[0][i], runs[1][i]
		if eq := slices.Equal(a.Q, b.Q) && slices.Equal(a.Scales, b.Scales); eq != (i < 3) {
			t.Errorf("%s: equal with and without TrueSequential: %v, want %v", a.Name, eq, i < 3)
		}
	}
}

// TestRunDeterministic: Run's tensors do not depend on Workers.
func TestRunDeterministic(t *testing.T) {
	var runs [2][]*wq.QTensor
	for i, workers := range []int{1, 3} {
		m := loadModel(t, "qwen3-untied-bf16")
		_, err := Run(m, randSeqs(3, 4, 33, m.Config.Vocab), Options{Scheme: wq.Scheme{Bits: 4, GroupSize: 32}, ActOrder: true, Workers: workers},
			func(q *wq.QTensor) error { runs[i] = append(runs[i], q); return nil })
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range runs[0] {
		a, b := runs[0][i], runs[1][i]
		if !slices.Equal(a.Q, b.Q) || !slices.Equal(a.Scales, b.Scales) || !slices.Equal(a.Zeros, b.Zeros) || !slices.Equal(a.GIdx, b.GIdx) {
			t.Fatalf("%s differs between Workers=1 and Workers=3", a.Name)
		}
	}
}

func TestRunErrors(t *testing.T) {
	m := loadModel(t, "qwen3-tied")
	s := wq.Scheme{Bits: 4, GroupSize: 32}
	for _, tc := range []struct {
		name  string
		calib [][]int
		o     Options
		emit  func(*wq.QTensor) error
		want  string
	}{
		{"no calib", nil, Options{Scheme: s}, nil, "no calibration sequences"},
		{"empty seq", [][]int{{1, 2}, {}}, Options{Scheme: s}, nil, "calibration sequence 1: model: embed: no tokens"},
		{"vocab", [][]int{{1, 9999}}, Options{Scheme: s}, nil, "outside the vocabulary"},
		{"group", [][]int{{1, 2}}, Options{Scheme: wq.Scheme{Bits: 4, GroupSize: 48}}, nil, "not a multiple of the group size 48"},
		{"emit", [][]int{{1, 2}}, Options{Scheme: s}, func(*wq.QTensor) error { return errTest }, "emit failed"},
	} {
		_, err := Run(m, tc.calib, tc.o, tc.emit)
		if err == nil || !contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
	if m.CurrentAdapter() != nil {
		t.Error("Run left its capture adapter installed")
	}
}

var errTest = errorString("emit failed")

type errorString string

func (e errorString) Error() string { return string(e) }

func contains(s, sub string) bool { return strings.Contains(s, sub) }
