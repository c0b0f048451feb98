package cuda

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// attnCase is one shape of the tensor-core attention checks: seg nil means
// one document (segStart NULL), window 0 none; qScale widens the scores (a
// large one exercises the forward's lazy rescale).
type attnCase struct {
	T, NH, KVH, HD, window int
	docs                   []int // first rows of the 2nd, 3rd... document
	qScale                 float32
}

func (c attnCase) String() string {
	return fmt.Sprintf("T%d NH%d KVH%d HD%d win%d docs%v", c.T, c.NH, c.KVH, c.HD, c.window, c.docs)
}

func (c attnCase) seg() []int32 {
	if c.docs == nil {
		return nil
	}
	s := make([]int32, c.T)
	for t := range s {
		for _, d := range c.docs {
			if t >= d {
				s[t] = int32(d)
			}
		}
	}
	return s
}

// roundBF16 rounds x to bf16 values in place and returns it: the kernels
// convert their operands so, so the reference starts from the same numbers.
func roundBF16(x []float32) []float32 {
	for i, v := range x {
		x[i] = bf16ToF32(f32ToBF16(v))
	}
	return x
}

// attnRef is causal GQA attention forward and backward in float64, written
// from the definitions (softmax(q·kᵀ·scale) over keys [key_lo(t), t], the
// packed documents and window as the warp kernels' key_lo), independent of
// the kernels: out, lse, and the grads of sum(out∘dout).
func attnRef(c attnCase, seg []int32, q, k, v, dout []float32) (out, lse, dq, dk, dv []float64) {
	T, NH, KVH, HD := c.T, c.NH, c.KVH, c.HD
	scale := 1 / math.Sqrt(float64(HD))
	out, lse, dq = make([]float64, T*NH*HD), make([]float64, T*NH), make([]float64, T*NH*HD)
	dk, dv = make([]float64, T*KVH*HD), make([]float64, T*KVH*HD)
	p := make([]float64, T)
	for t := range T {
		lo := 0
		if seg != nil {
			lo = int(seg[t])
		}
		if c.window > 0 && t-c.window+1 > lo {
			lo = t - c.window + 1
		}
		for h := range NH {
			g := h / (NH / KVH)
			qr, dor := q[(t*NH+h)*HD:][:HD], dout[(t*NH+h)*HD:][:HD]
			m := math.Inf(-1)
			for s := lo; s <= t; s++ {
				kr := k[(s*KVH+g)*HD:][:HD]
				var dot float64
				for d := range HD {
					dot += float64(qr[d]) * float64(kr[d])
				}
				p[s] = dot * scale
				m = max(m, p[s])
			}
			var sum float64
			for s := lo; s <= t; s++ {
				p[s] = math.Exp(p[s] - m)
				sum += p[s]
			}
			lse[t*NH+h] = m + math.Log(sum)
			o := out[(t*NH+h)*HD:][:HD]
			var D float64
			for s := lo; s <= t; s++ {
				p[s] /= sum
				vr := v[(s*KVH+g)*HD:][:HD]
				var dp float64
				for d := range HD {
					o[d] += p[s] * float64(vr[d])
					dp += float64(dor[d]) * float64(vr[d])
				}
				D += p[s] * dp
			}
			for s := lo; s <= t; s++ {
				kr, vr := k[(s*KVH+g)*HD:][:HD], v[(s*KVH+g)*HD:][:HD]
				var dp float64
				for d := range HD {
					dp += float64(dor[d]) * float64(vr[d])
				}
				ds := p[s] * (dp - D) * scale
				for d := range HD {
					dq[(t*NH+h)*HD+d] += ds * float64(kr[d])
					dk[(s*KVH+g)*HD+d] += ds * float64(qr[d])
					dv[(s*KVH+g)*HD+d] += p[s] * float64(dor[d])
				}
			}
		}
	}
	return
}

// relErr is max |got-want| / max |want| (NaN in got counts as +Inf).
func relErr(got []float32, want []float64) float64 {
	var e, s float64
	for i, w := range want {
		g := float64(got[i])
		if math.IsNaN(g) {
			return math.Inf(1)
		}
		e = max(e, math.Abs(g-w))
		s = max(s, math.Abs(w))
	}
	return e / max(s, 1e-30)
}

// The shapes: T not a multiple of the 64-row block nor the 32-row tile, NULL
// and explicit segStart, 2 and 3 documents, windows short enough that whole
// key tiles are skipped, GQA 1:1 to 4:1, HD 16 and 48 (partly used 32 and
// 64 buckets), 32, 64, 128.
var attnTCCases = []attnCase{
	{T: 300, NH: 2, KVH: 1, HD: 16, window: 20, qScale: 1},
	{T: 150, NH: 4, KVH: 2, HD: 64, docs: []int{61}, qScale: 4},
	{T: 131, NH: 8, KVH: 2, HD: 32, window: 40, docs: []int{90}, qScale: 1},
	{T: 200, NH: 4, KVH: 1, HD: 64, window: 70, docs: []int{}, qScale: 2},
	{T: 100, NH: 2, KVH: 2, HD: 128, docs: []int{33, 80}, qScale: 1},
	{T: 70, NH: 3, KVH: 1, HD: 48, docs: []int{5}, qScale: 1},
}

// Tolerances (max abs error / max |want|): q, k, v, dout are bf16 already, so
// what differs from the float64 reference is P (forward, dkv) and dS rounded to
// bf16 for the tensor-core products (2^-9 = 2e-3 relative each, averaging over
// a row's keys) and fp32 accumulation; measured 0.6e-3 to 2.4e-3 (out) and
// 1.1e-3 to 3.4e-3 (grads), lse within 2e-6. A wrong mask, a skipped tile or a
// dropped rescale is O(1) (mutations tried: 1e1 to 1e6).
const attnTCTolOut, attnTCTolGrad = 1e-2, 1.5e-2

// TestAttentionTCEmulated runs kernels.cu's tensor-core attention (forward,
// then D, dq, dk/dv on the forward's out and lse) on the CPU (emu.h's
// whole-tile wmma) and compares with attnRef on bf16-rounded inputs.
func TestAttentionTCEmulated(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	type inputs struct{ q, k, v, dout []float32 }
	ins := make([]inputs, len(attnTCCases))
	var buf bytes.Buffer
	le := binary.LittleEndian
	buf.WriteString("AT1\n")
	binary.Write(&buf, le, int32(len(attnTCCases)))
	for i, c := range attnTCCases {
		in := inputs{roundBF16(randn(r, c.T*c.NH*c.HD, c.qScale)), roundBF16(randn(r, c.T*c.KVH*c.HD, 1)),
			roundBF16(randn(r, c.T*c.KVH*c.HD, 1)), roundBF16(randn(r, c.T*c.NH*c.HD, 1))}
		ins[i] = in
		seg := c.seg()
		hasSeg := int32(0)
		if seg != nil {
			hasSeg = 1
		}
		for _, x := range []any{int32(c.T), int32(c.NH), int32(c.KVH), int32(c.HD), int32(c.window), hasSeg, seg, in.q, in.k, in.v, in.dout} {
			binary.Write(&buf, le, x)
		}
	}
	raw := runEmulated(t, "attn_tc_check", "2", buf.Bytes())
	rd := bytes.NewReader(raw)
	for i, c := range attnTCCases {
		qd, kd := c.T*c.NH*c.HD, c.T*c.KVH*c.HD
		out, lse, dq, dk, dv := make([]float32, qd), make([]float32, c.T*c.NH), make([]float32, qd), make([]float32, kd), make([]float32, kd)
		for _, x := range [][]float32{out, lse, dq, dk, dv} {
			if err := binary.Read(rd, le, x); err != nil {
				t.Fatalf("attn_tc_check output: %v", err)
			}
		}
		in := ins[i]
		wOut, wLse, wDq, wDk, wDv := attnRef(c, c.seg(), in.q, in.k, in.v, in.dout)
		// lse: absolute error (it is a log), relative to 1.
		var lseErr float64
		for j, w := range wLse {
			lseErr = max(lseErr, math.Abs(float64(lse[j])-w))
			if math.IsNaN(float64(lse[j])) {
				lseErr = math.Inf(1)
			}
		}
		errs := []struct {
			name string
			e    float64
			tol  float64
		}{{"out", relErr(out, wOut), attnTCTolOut}, {"lse", lseErr, 1e-4}, {"dq", relErr(dq, wDq), attnTCTolGrad},
			{"dk", relErr(dk, wDk), attnTCTolGrad}, {"dv", relErr(dv, wDv), attnTCTolGrad}}
		line := c.String() + ":"
		for _, e := range errs {
			line += fmt.Sprintf(" %s %.2e", e.name, e.e)
			if !(e.e <= e.tol) {
				t.Errorf("%s: %s rel err %.3e > %.1e", c, e.name, e.e, e.tol)
			}
		}
		t.Log(line)
	}
	if rd.Len() != 0 {
		t.Fatalf("attn_tc_check output: %d bytes left", rd.Len())
	}
}
