package wq

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/tunellm/tune/model/safetensors"
)

// Layouts: how a QTensor is stored in a safetensors checkpoint.
const (
	// LayoutGPTQ is AutoGPTQ/GPTQModel's QuantLinear (checkpoint_format
	// "gptq", v1), per linear <prefix>:
	//
	//	qweight int32 [Cols*Bits/32, Rows]  codes packed along the input dim:
	//	        qweight[i,o] bits [Bits*k, Bits*(k+1)) = Q[o, i*PF+k], PF = 32/Bits
	//	qzeros  int32 [G, Rows*Bits/32]     zero-1 packed the same way along the output dim
	//	scales  fp16  [G, Rows]
	//	g_idx   int32 [Cols]                group of each input column
	//
	// and dequantizes w[o,c] = scales[g,o] * (q[c,o] - (qzeros[g,o] + 1)),
	// g = g_idx[c] (vLLM csrc/quantization/gptq q_gemm.cu "zeros + 1";
	// GPTQModel nn_modules/qlinear dequantize_weight). "gptq_v2" stores the
	// zero point itself; we read both and write v1, the one every loader reads.
	LayoutGPTQ = "gptq"
	// LayoutCompressed is compressed-tensors' "pack-quantized" format
	// (llm-compressor's output; vLLM's CompressedTensorsWNA16), per linear
	// <prefix>:
	//
	//	weight_packed     int32 [Rows, ceil(Cols/PF)]  codes q+2^(Bits-1) of the signed
	//	                  codes, packed along the input dim (pack_to_int32, packed_dim=1)
	//	weight_scale      fp16  [Rows, G]
	//	weight_zero_point int32 [ceil(Rows/PF), G]     asymmetric only, packed along dim 0
	//	weight_shape      int64 [2]                    [Rows, Cols]
	//	weight_g_idx      int32 [Cols]                 act-order only
	//
	// and dequantizes w = scale * (q_signed - zp_signed): with our unsigned
	// codes and zero points (both offset by 2^(Bits-1)) that is scale*(Q-Z).
	LayoutCompressed = "compressed-tensors"
)

// packFactor is the codes per int32.
func packFactor(bits int) int { return 32 / bits }

// CheckLayout says whether layout can store a [rows, cols] matrix with s.
func CheckLayout(layout string, s Scheme, rows, cols int) error {
	if err := s.Check(cols); err != nil {
		return err
	}
	pf := packFactor(s.Bits)
	switch layout {
	case LayoutGPTQ:
		if cols%pf != 0 || rows%pf != 0 {
			return fmt.Errorf("wq: gptq layout packs %d codes per int32: shape [%d %d] needs both dims a multiple of %d", pf, rows, cols, pf)
		}
		if !s.Sym && !s.V1Zeros {
			return fmt.Errorf("wq: gptq layout stores asymmetric zero points minus one: quantize with Scheme.V1Zeros")
		}
	case LayoutCompressed:
	default:
		return fmt.Errorf("wq: layout %q, want %s or %s", layout, LayoutGPTQ, LayoutCompressed)
	}
	return nil
}

func i32Tensor(name string, shape []int, v []uint32) safetensors.Tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
	return safetensors.Tensor{Name: name, DType: safetensors.I32, Shape: shape, Data: b}
}

func f16Tensor(name string, shape []int, v []float32) safetensors.Tensor {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], safetensors.Float32ToF16(x))
	}
	return safetensors.Tensor{Name: name, DType: safetensors.F16, Shape: shape, Data: b}
}

// Prefix is a weight's module name: "model.layers.0.mlp.up_proj.weight" ->
// "model.layers.0.mlp.up_proj".
func Prefix(weightName string) string { return strings.TrimSuffix(weightName, ".weight") }

// Encode returns the tensors layout stores t as, named after t.Name's
// module. Scales are written as fp16 (they are fp16-exact by construction).
func Encode(layout string, t *QTensor) ([]safetensors.Tensor, error) {
	if err := t.Check(); err != nil {
		return nil, err
	}
	if err := CheckLayout(layout, t.Scheme, t.Rows, t.Cols); err != nil {
		return nil, fmt.Errorf("%s: %w", t.Name, err)
	}
	for i, s := range t.Scales {
		if f16(s) != s || s != s {
			return nil, fmt.Errorf("wq: %s: scale %d (%g) is not an fp16 value", t.Name, i, s)
		}
	}
	R, C, bits := t.Rows, t.Cols, t.Scheme.Bits
	G := t.Scheme.Groups(C)
	pf := packFactor(bits)
	p := Prefix(t.Name)
	switch layout {
	case LayoutGPTQ:
		for i, z := range t.Zeros {
			if z < 1 {
				return nil, fmt.Errorf("wq: %s: zero point 0 at row %d group %d cannot be stored in the gptq v1 layout (it stores zero-1)", t.Name, i/G, i%G)
			}
		}
		qw := make([]uint32, C/pf*R)
		for o := 0; o < R; o++ {
			q := t.Q[o*C : (o+1)*C]
			for c, v := range q {
				qw[(c/pf)*R+o] |= uint32(v) << (bits * (c % pf))
			}
		}
		qz := make([]uint32, G*R/pf)
		sc := make([]float32, G*R)
		for o := 0; o < R; o++ {
			for g := 0; g < G; g++ {
				qz[g*(R/pf)+o/pf] |= uint32(t.Zeros[o*G+g]-1) << (bits * (o % pf))
				sc[g*R+o] = t.Scales[o*G+g]
			}
		}
		gi := make([]uint32, C)
		for c := range gi {
			gi[c] = uint32(t.Group(c))
		}
		return []safetensors.Tensor{
			i32Tensor(p+".qweight", []int{C / pf, R}, qw),
			i32Tensor(p+".qzeros", []int{G, R / pf}, qz),
			f16Tensor(p+".scales", []int{G, R}, sc),
			i32Tensor(p+".g_idx", []int{C}, gi),
		}, nil
	case LayoutCompressed:
		P := (C + pf - 1) / pf
		wp := make([]uint32, R*P)
		for o := 0; o < R; o++ {
			for c, v := range t.Q[o*C : (o+1)*C] {
				wp[o*P+c/pf] |= uint32(v) << (bits * (c % pf))
			}
		}
		out := []safetensors.Tensor{
			i32Tensor(p+".weight_packed", []int{R, P}, wp),
			f16Tensor(p+".weight_scale", []int{R, G}, t.Scales),
		}
		shape := make([]byte, 16)
		binary.LittleEndian.PutUint64(shape, uint64(R))
		binary.LittleEndian.PutUint64(shape[8:], uint64(C))
		out = append(out, safetensors.Tensor{Name: p + ".weight_shape", DType: safetensors.I64, Shape: []int{2}, Data: shape})
		if !t.Scheme.Sym {
			PR := (R + pf - 1) / pf
			zp := make([]uint32, PR*G)
			for o := 0; o < R; o++ {
				for g := 0; g < G; g++ {
					zp[(o/pf)*G+g] |= uint32(t.Zeros[o*G+g]) << (bits * (o % pf))
				}
			}
			out = append(out, i32Tensor(p+".weight_zero_point", []int{PR, G}, zp))
		}
		if t.GIdx != nil {
			gi := make([]uint32, C)
			for c, g := range t.GIdx {
				gi[c] = uint32(g)
			}
			out = append(out, i32Tensor(p+".weight_g_idx", []int{C}, gi))
		}
		return out, nil
	}
	return nil, fmt.Errorf("wq: layout %q, want %s or %s", layout, LayoutGPTQ, LayoutCompressed)
}

// u32s reads an I32 tensor of the given shape (-1 dims are free and are
// returned).
func u32s(t safetensors.Tensor, what string, shape ...int) ([]uint32, []int, error) {
	if t.DType != safetensors.I32 {
		return nil, nil, fmt.Errorf("wq: %s: dtype %s, want I32", t.Name, t.DType)
	}
	if len(t.Shape) != len(shape) {
		return nil, nil, fmt.Errorf("wq: %s: shape %v, want %d dims (%s)", t.Name, t.Shape, len(shape), what)
	}
	n := 1
	for i, d := range shape {
		if d >= 0 && t.Shape[i] != d {
			return nil, nil, fmt.Errorf("wq: %s: shape %v, want %v (%s; -1: any)", t.Name, t.Shape, shape, what)
		}
		if t.Shape[i] < 0 || t.Shape[i] > 1<<31 {
			return nil, nil, fmt.Errorf("wq: %s: shape %v out of range", t.Name, t.Shape)
		}
		n *= t.Shape[i]
		if n > 1<<40 {
			return nil, nil, fmt.Errorf("wq: %s: shape %v too large", t.Name, t.Shape)
		}
	}
	if len(t.Data) != 4*n {
		return nil, nil, fmt.Errorf("wq: %s: %d bytes, want %d for shape %v", t.Name, len(t.Data), 4*n, t.Shape)
	}
	v := make([]uint32, n)
	for i := range v {
		v[i] = binary.LittleEndian.Uint32(t.Data[4*i:])
	}
	return v, t.Shape, nil
}

// floats reads a float tensor (F16, BF16 or F32) of exactly shape.
func floats(t safetensors.Tensor, shape ...int) ([]float32, error) {
	switch t.DType {
	case safetensors.F16, safetensors.BF16, safetensors.F32:
	default:
		return nil, fmt.Errorf("wq: %s: dtype %s, want F16, BF16 or F32", t.Name, t.DType)
	}
	if fmt.Sprint(t.Shape) != fmt.Sprint(shape) {
		return nil, fmt.Errorf("wq: %s: shape %v, want %v", t.Name, t.Shape, shape)
	}
	n := 1
	for _, d := range shape {
		n *= d
	}
	if len(t.Data) != n*t.DType.Size() {
		return nil, fmt.Errorf("wq: %s: %d bytes, want %d", t.Name, len(t.Data), n*t.DType.Size())
	}
	v := make([]float32, n)
	if err := safetensors.ToFloat32(v, t.Data, t.DType); err != nil {
		return nil, fmt.Errorf("wq: %s: %w", t.Name, err)
	}
	for i, x := range v {
		if x != x || x > 65504 || x < -65504 {
			return nil, fmt.Errorf("wq: %s: scale %d is %g", t.Name, i, x)
		}
	}
	return v, nil
}

// gidx reads a g_idx tensor and returns nil when it is the default c/GroupSize.
func gidx(t *safetensors.Tensor, s Scheme, cols int) ([]int32, error) {
	if t == nil {
		return nil, nil
	}
	v, _, err := u32s(*t, "input columns", cols)
	if err != nil {
		return nil, err
	}
	G := s.Groups(cols)
	trivial := true
	out := make([]int32, cols)
	for c, g := range v {
		if int32(g) < 0 || int(g) >= G {
			return nil, fmt.Errorf("wq: %s: g_idx[%d] = %d outside [0,%d)", t.Name, c, int32(g), G)
		}
		out[c] = int32(g)
		want := 0
		if s.GroupSize > 0 {
			want = c / s.GroupSize
		}
		trivial = trivial && int(g) == want
	}
	if trivial {
		return nil, nil
	}
	return out, nil
}

// DecodeGPTQ reads one linear stored in the GPTQ layout back into a QTensor
// named <prefix>.weight. v2 is checkpoint_format "gptq_v2" (zero points stored
// as they are, not minus one). gIdx may be nil (the default grouping).
func DecodeGPTQ(prefix string, s Scheme, v2 bool, qweight, qzeros, scales safetensors.Tensor, gIdx *safetensors.Tensor) (*QTensor, error) {
	if s.Bits != 4 && s.Bits != 8 {
		return nil, fmt.Errorf("wq: %s: bits %d, want 4 or 8", prefix, s.Bits)
	}
	pf := packFactor(s.Bits)
	qw, sh, err := u32s(qweight, "[in*bits/32, out]", -1, -1)
	if err != nil {
		return nil, err
	}
	C, R := sh[0]*pf, sh[1]
	if err := s.Check(C); err != nil {
		return nil, fmt.Errorf("wq: %s: %w", prefix, err)
	}
	if R%pf != 0 {
		return nil, fmt.Errorf("wq: %s: %d output features are not a multiple of %d", prefix, R, pf)
	}
	G := s.Groups(C)
	qz, _, err := u32s(qzeros, "[groups, out*bits/32]", G, R/pf)
	if err != nil {
		return nil, err
	}
	sc, err := floats(scales, G, R)
	if err != nil {
		return nil, err
	}
	t := &QTensor{Name: prefix + ".weight", Rows: R, Cols: C, Scheme: s,
		Q: make([]uint8, R*C), Scales: make([]float32, R*G), Zeros: make([]uint8, R*G)}
	mask := uint32(s.MaxQ())
	for i := 0; i < C/pf; i++ {
		for o := 0; o < R; o++ {
			w := qw[i*R+o]
			for k := 0; k < pf; k++ {
				t.Q[o*C+i*pf+k] = uint8(w >> (s.Bits * k) & mask)
			}
		}
	}
	add := uint32(1)
	if v2 {
		add = 0
	}
	for g := 0; g < G; g++ {
		for o := 0; o < R; o++ {
			z := qz[g*(R/pf)+o/pf]>>(s.Bits*(o%pf))&mask + add
			if z > mask {
				return nil, fmt.Errorf("wq: %s: qzeros[%d] for output %d stores %d: zero point %d exceeds %d", qzeros.Name, g, o, z-add, z, mask)
			}
			if s.Sym && z != mask/2+1 {
				return nil, fmt.Errorf("wq: %s: symmetric checkpoint has zero point %d at group %d output %d, want %d", qzeros.Name, z, g, o, mask/2+1)
			}
			t.Zeros[o*G+g] = uint8(z)
			t.Scales[o*G+g] = sc[g*R+o]
		}
	}
	if t.GIdx, err = gidx(gIdx, s, C); err != nil {
		return nil, err
	}
	return t, nil
}

// DecodeCompressed reads one linear stored in compressed-tensors'
// pack-quantized layout. zeroPoint is required when !s.Sym; gIdx may be nil.
func DecodeCompressed(prefix string, s Scheme, packed, scale, shape safetensors.Tensor, zeroPoint, gIdx *safetensors.Tensor) (*QTensor, error) {
	if s.Bits != 4 && s.Bits != 8 {
		return nil, fmt.Errorf("wq: %s: bits %d, want 4 or 8", prefix, s.Bits)
	}
	pf := packFactor(s.Bits)
	if (shape.DType != safetensors.I64 && shape.DType != safetensors.I32) || len(shape.Shape) != 1 || shape.Shape[0] != 2 ||
		len(shape.Data) != 2*shape.DType.Size() {
		return nil, fmt.Errorf("wq: %s: dtype %s shape %v, want I64 or I32 [2]", shape.Name, shape.DType, shape.Shape)
	}
	var R, C int64
	if shape.DType == safetensors.I64 {
		R, C = int64(binary.LittleEndian.Uint64(shape.Data)), int64(binary.LittleEndian.Uint64(shape.Data[8:]))
	} else {
		R, C = int64(int32(binary.LittleEndian.Uint32(shape.Data))), int64(int32(binary.LittleEndian.Uint32(shape.Data[4:])))
	}
	if R <= 0 || C <= 0 || R > 1<<24 || C > 1<<24 {
		return nil, fmt.Errorf("wq: %s: weight shape [%d %d] out of range", shape.Name, R, C)
	}
	rows, cols := int(R), int(C)
	if err := s.Check(cols); err != nil {
		return nil, fmt.Errorf("wq: %s: %w", prefix, err)
	}
	P := (cols + pf - 1) / pf
	wp, _, err := u32s(packed, "[out, ceil(in*bits/32)]", rows, P)
	if err != nil {
		return nil, err
	}
	G := s.Groups(cols)
	sc, err := floats(scale, rows, G)
	if err != nil {
		return nil, err
	}
	t := &QTensor{Name: prefix + ".weight", Rows: rows, Cols: cols, Scheme: s,
		Q: make([]uint8, rows*cols), Scales: sc, Zeros: make([]uint8, rows*G)}
	mask := uint32(s.MaxQ())
	for o := 0; o < rows; o++ {
		for c := 0; c < cols; c++ {
			t.Q[o*cols+c] = uint8(wp[o*P+c/pf] >> (s.Bits * (c % pf)) & mask)
		}
	}
	if s.Sym {
		for i := range t.Zeros {
			t.Zeros[i] = uint8(mask/2 + 1)
		}
	} else {
		if zeroPoint == nil {
			return nil, fmt.Errorf("wq: %s: asymmetric scheme without weight_zero_point", prefix)
		}
		PR := (rows + pf - 1) / pf
		zp, _, err := u32s(*zeroPoint, "[ceil(out*bits/32), groups]", PR, G)
		if err != nil {
			return nil, err
		}
		for o := 0; o < rows; o++ {
			for g := 0; g < G; g++ {
				t.Zeros[o*G+g] = uint8(zp[(o/pf)*G+g] >> (s.Bits * (o % pf)) & mask)
			}
		}
	}
	if t.GIdx, err = gidx(gIdx, s, cols); err != nil {
		return nil, err
	}
	return t, nil
}
