package train

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/tunellm/tune/kernels"
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// Model FLOPs utilisation (MFU): the matmul FLOPs a training step needs by
// the formula below, per second, over the device's peak. Like PaLM's MFU
// (Chowdhery et al. 2022, appendix B) it counts the model's FLOPs, not what
// the implementation executes: recomputation (gradient checkpointing, the
// attention backward's recomputed scores) is not counted, so MFU does not
// rise by recomputing. Elementwise work (norms, RoPE, SwiGLU, softmax) is
// left out. Per packed sequence, with C hidden, I intermediate, V vocab,
// NH/KVH heads of HD, L layers, docs/GPU.md "MFU" derives it:
//
//	linear   per token:   k·2·P,  P = C·NH·HD + 2·C·KVH·HD + NH·HD·C + 3·C·I
//	                      (q,k,v,o,gate,up,down), k = 2 for LoRA (forward and
//	                      input grads; the frozen base gets no weight grad),
//	                      k = 3 in full training (weight grads too)
//	LoRA     per token:   6·r·(in+out) per adapted linear (forward x·Aᵀ and
//	                      u·Bᵀ; backward dB, dout·B, dA, din)
//	attention per layer:  12·NH·HD per (query, visible key) pair: forward
//	                      QKᵀ and PV 4·NH·HD, backward dQ, dK, dV, dP 8·NH·HD;
//	                      the pairs are causal, inside each packed document
//	                      and the layer's sliding window
//	lm_head  per scored token (only those rows get logits): 4·C·V (logits
//	                      and the hidden grad), 6·C·V in full training
//
// The embedding lookup has no FLOPs. Biases, DoRA's norms and QLoRA's
// dequantization are not counted (small, or not model FLOPs).

// LoRAShape is one adapted linear: rank R, in and out features.
type LoRAShape struct{ R, In, Out int }

// FLOPCount is what the count needs from the model and the adapter.
type FLOPCount struct {
	Hidden, Intermediate, Vocab, Heads, KVHeads, HeadDim int
	Windows                                              []int // per layer; 0: full causal
	LoRA                                                 []LoRAShape
	Full                                                 bool // weight grads of every linear and the lm_head
}

// NewFLOPCount describes model c with adapter a (nil: full training).
func NewFLOPCount(c *model.Config, a *lora.Adapter) *FLOPCount {
	f := &FLOPCount{Hidden: c.Hidden, Intermediate: c.Intermediate, Vocab: c.Vocab, Heads: c.Heads,
		KVHeads: c.KVHeads, HeadDim: c.HeadDim, Windows: append([]int(nil), c.Windows...), Full: a == nil}
	if a == nil {
		return f
	}
	// lora_A is [R,in] and lora_B [out,R]: pair them by (layer, module).
	type key struct {
		l int
		m string
	}
	in := map[key]LoRAShape{}
	for _, t := range a.Tensors() {
		k := key{t.Layer, t.Module}
		s := in[k]
		switch {
		case strings.HasSuffix(t.Name, "lora_A.weight") && len(t.Shape) == 2:
			s.R, s.In = t.Shape[0], t.Shape[1]
		case strings.HasSuffix(t.Name, "lora_B.weight") && len(t.Shape) == 2:
			s.Out = t.Shape[0]
		default:
			continue
		}
		in[k] = s
	}
	for _, t := range a.Tensors() {
		if s, ok := in[key{t.Layer, t.Module}]; ok && strings.HasSuffix(t.Name, "lora_A.weight") {
			f.LoRA = append(f.LoRA, s)
		}
	}
	return f
}

// LinearParams is P, the weights of one decoder layer's seven linears.
func (f *FLOPCount) LinearParams() int64 {
	C, I, qd, kvd := int64(f.Hidden), int64(f.Intermediate), int64(f.Heads*f.HeadDim), int64(f.KVHeads*f.HeadDim)
	return C*qd + 2*C*kvd + qd*C + 3*C*I
}

// Sequence is the model FLOPs of one training pass (forward and backward)
// over a packed sequence: positions restart at 0 in each document, labels
// are unshifted with -100 for no loss (data's convention).
func (f *FLOPCount) Sequence(positions, segIDs, labels []int32) float64 {
	T := len(positions)
	k := 2.0
	head := 4.0
	if f.Full {
		k, head = 3, 6
	}
	L := float64(len(f.Windows))
	tok := k * 2 * float64(f.LinearParams()) * L
	for _, s := range f.LoRA {
		tok += 6 * float64(s.R) * float64(s.In+s.Out)
	}
	flops := tok * float64(T)
	// Attention pairs, per layer (windows differ between layers).
	perPair := 12 * float64(f.Heads*f.HeadDim)
	for _, w := range f.Windows {
		var pairs float64
		for _, p := range positions {
			n := int(p) + 1
			if w > 0 && n > w {
				n = w
			}
			pairs += float64(n)
		}
		flops += perPair * pairs
	}
	// Scored rows: row t-1 predicts labels[t] inside one document.
	scored := 0
	for t := 1; t < T && t < len(labels) && t < len(segIDs); t++ {
		if labels[t] != model.IgnoreIndex && segIDs[t] == segIDs[t-1] {
			scored++
		}
	}
	flops += head * float64(f.Hidden) * float64(f.Vocab) * float64(scored)
	return flops
}

// Peaker is a backend that knows its device's peak FLOP/s (the cuda backend:
// the bf16 dense tensor-core peak of its GPU) and says what the number is.
type Peaker interface {
	PeakFLOPS() (flops float64, what string)
}

// PeakFLOPS is the peak MFU divides by: the backend's own (Peaker: the cuda
// backend's bf16 datasheet peak, the cpu backend's fp32 FMA peak measured
// once per process) or, for another CPU backend, CPUPeakFLOPS. 0 when
// unknown (MFU is then not reported).
func PeakFLOPS(be kernels.Backend) (float64, string) {
	if p, ok := be.(Peaker); ok {
		return p.PeakFLOPS()
	}
	if be != nil && be.Name() == "cpu" {
		return CPUPeakFLOPS()
	}
	return 0, ""
}

// CPUPeakFLOPS estimates the machine's fp32 peak (the CPU backend computes
// in fp32): physical cores × FLOPs per cycle × clock, where a core does two
// FMA instructions per cycle (two FMA ports, as on Intel Skylake-SP and
// later server parts and AMD Zen 4/5) of 16 fp32 lanes with AVX-512F, 8 with
// AVX2+FMA, 4 otherwise; an FMA counts 2 FLOPs. The clock is the CPU's
// maximum frequency (cpufreq), else the "@ x.xxGHz" of its model name, else
// /proc/cpuinfo's current "cpu MHz". An upper bound: AVX-512 clocks lower,
// and some parts have one 512-bit FMA port. Linux only; 0 elsewhere.
func CPUPeakFLOPS() (float64, string) {
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0, ""
	}
	return cpuPeak(string(info), readCPUFreqKHz())
}

func readCPUFreqKHz() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
	if err != nil {
		return 0
	}
	v, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return v
}

// cpuPeak is CPUPeakFLOPS from /proc/cpuinfo's text and cpufreq's maximum
// (kHz, 0 if unknown).
func cpuPeak(cpuinfo string, maxKHz int) (float64, string) {
	cores := map[string]bool{}
	var flags, name string
	var mhz float64
	logical := 0
	var phys string
	sc := bufio.NewScanner(strings.NewReader(cpuinfo))
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "processor":
			logical++
		case "physical id":
			phys = v
		case "core id":
			cores[phys+"/"+v] = true
		case "flags":
			if flags == "" {
				flags = " " + v + " "
			}
		case "model name":
			if name == "" {
				name = v
			}
		case "cpu MHz":
			if mhz == 0 {
				mhz, _ = strconv.ParseFloat(v, 64)
			}
		}
	}
	n := len(cores)
	if n == 0 {
		n = logical
	}
	if n == 0 {
		n = runtime.NumCPU()
	}
	ghz := float64(maxKHz) / 1e6
	if ghz == 0 {
		if i := strings.LastIndex(name, "@"); i >= 0 {
			if g, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(name[i+1:]), "GHz"), 64); err == nil {
				ghz = g
			}
		}
	}
	if ghz == 0 {
		ghz = mhz / 1000
	}
	if ghz == 0 {
		return 0, ""
	}
	lanes, isa := 4, "SSE"
	switch {
	case strings.Contains(flags, " avx512f "):
		lanes, isa = 16, "AVX-512"
	case strings.Contains(flags, " avx2 ") && strings.Contains(flags, " fma "):
		lanes, isa = 8, "AVX2"
	}
	perCycle := 2 * lanes * 2
	peak := float64(n) * float64(perCycle) * ghz * 1e9
	return peak, strconv.Itoa(n) + " cores × " + strconv.Itoa(perCycle) + " fp32 FLOP/cycle (" + isa + ") × " +
		strconv.FormatFloat(ghz, 'f', 2, 64) + " GHz"
}
