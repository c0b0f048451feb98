package quantize

import (
	"math"

	"github.com/tunellm/tune/model/safetensors"
)

// Shared helpers of the quantizers, mirroring ggml/src/ggml-quants.c.
//
// Bit-exactness with llama.cpp (gcc, x86-64 baseline, as its ggml-base is
// built) needs three disciplines, kept throughout this package:
//   - every intermediate is float32 and evaluated in C's order: C's float
//     expressions never promote to double here (FLT_EVAL_METHOD 0), and
//     int operands convert to float at the operator that meets them;
//   - every product feeding an addition is wrapped in float32(...): Go may
//     fuse x*y+z into an FMA on arm64 (and amd64 with GOAMD64=v3), which
//     ggml-base never does on x86-64, and an explicit conversion forbids it;
//   - C's MIN/MAX macros and its narrowing integer conversions are spelled
//     out (cmax, cmin, uint8(int) wrap-around, cvtt32) instead of Go's
//     built-ins, whose NaN and overflow behaviour differ.

// qkK is QK_K, the super-block size of the K-quants.
const qkK = 256

// groupMaxEps is GROUP_MAX_EPS: a group whose largest |x| is below it is
// treated as all zeros.
const groupMaxEps = 1e-15

// nearestInt is ggml's nearest_int: adding 1.5*2^23 leaves round(x) (ties to
// even) in the low mantissa bits. llama.cpp only asserts |x| <= 4194303 in
// debug builds; outside that range this returns the same garbage it does.
func nearestInt(x float32) int {
	v := float32(x) + 12582912
	return int(math.Float32bits(v)&0x007fffff) - 0x00400000
}

// cvtt32 converts like x86's cvttss2si: truncation toward zero, and the
// "integer indefinite" 0x80000000 for NaN and out-of-range values. C leaves
// those undefined; gcc on x86-64 yields this, and Go's own conversion is
// platform-dependent there.
func cvtt32(f float32) int32 {
	if f != f || f >= 2147483648 || f < -2147483648 {
		return math.MinInt32
	}
	return int32(f)
}

// cmax and cmin are C's MAX(a,b) ((a) > (b) ? (a) : (b)) and MIN for float.
func cmax(a, b float32) float32 {
	if a > b {
		return a
	}
	return b
}

// roundf rounds half away from zero, as C's roundf.
func roundf(x float32) float32 { return float32(math.Round(float64(x))) }

func fabsf(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// sqrtf is correctly rounded: the float64 root of a float32 rounds to the
// same float32 as sqrtss.
func sqrtf(x float32) float32 { return float32(math.Sqrt(float64(x))) }

// fp16 is GGML_FP32_TO_FP16 (round to nearest even) and fp32 its inverse.
func fp16(f float32) uint16 { return safetensors.Float32ToF16(f) }
func fp32(h uint16) float32 { return safetensors.F16ToFloat32(h) }

func putF16(b []byte, f float32) {
	h := fp16(f)
	b[0], b[1] = byte(h), byte(h>>8)
}

func getF16(b []byte) float32 { return fp32(uint16(b[0]) | uint16(b[1])<<8) }

func clampInt(l, lo, hi int) int { return max(lo, min(hi, l)) }

// makeQxQuants is make_qx_quants for rmseType 1 (the only one K-quants use):
// symmetric levels L in [0, 2*nmax) around nmax, scale searched over 19
// candidate inverse scales, weights qw or x*x. Returns the scale.
func makeQxQuants(n, nmax int, x []float32, L []int8, qw []float32) float32 {
	var maxv, amax float32
	for i := 0; i < n; i++ {
		ax := fabsf(x[i])
		if ax > amax {
			amax = ax
			maxv = x[i]
		}
	}
	if amax < groupMaxEps {
		for i := 0; i < n; i++ {
			L[i] = 0
		}
		return 0
	}
	weight := func(i int) float32 {
		if qw != nil {
			return qw[i]
		}
		return float32(x[i] * x[i])
	}
	fn := float32(nmax)
	iscale := float32(-fn) / maxv
	var sumlx, suml2 float32
	for i := 0; i < n; i++ {
		l := clampInt(nearestInt(float32(iscale*x[i])), -nmax, nmax-1)
		L[i] = int8(l + nmax)
		w := weight(i)
		fl := float32(l)
		sumlx += float32(float32(w*x[i]) * fl)
		suml2 += float32(float32(w*fl) * fl)
	}
	var scale float32
	if suml2 != 0 {
		scale = sumlx / suml2
	}
	best := float32(scale * sumlx)
	for is := -9; is <= 9; is++ {
		if is == 0 {
			continue
		}
		iscale = -(fn + float32(0.1*float32(is))) / maxv
		sumlx, suml2 = 0, 0
		for i := 0; i < n; i++ {
			l := clampInt(nearestInt(float32(iscale*x[i])), -nmax, nmax-1)
			w := weight(i)
			fl := float32(l)
			sumlx += float32(float32(w*x[i]) * fl)
			suml2 += float32(float32(w*fl) * fl)
		}
		if suml2 > 0 && float32(sumlx*sumlx) > float32(best*suml2) {
			for i := 0; i < n; i++ {
				l := nearestInt(float32(iscale * x[i]))
				L[i] = int8(nmax + clampInt(l, -nmax, nmax-1))
			}
			scale = sumlx / suml2
			best = float32(scale * sumlx)
		}
	}
	return scale
}

// makeQ3Quants is make_q3_quants with do_rmse: levels in [0, 2*nmax), then
// up to five passes of coordinate descent on the x*x-weighted error.
func makeQ3Quants(n, nmax int, x []float32, L []int8) float32 {
	var maxv, amax float32
	for i := 0; i < n; i++ {
		ax := fabsf(x[i])
		if ax > amax {
			amax = ax
			maxv = x[i]
		}
	}
	if amax < groupMaxEps {
		for i := 0; i < n; i++ {
			L[i] = 0
		}
		return 0
	}
	iscale := float32(-float32(nmax)) / maxv
	var sumlx, suml2 float32
	for i := 0; i < n; i++ {
		l := clampInt(nearestInt(float32(iscale*x[i])), -nmax, nmax-1)
		L[i] = int8(l)
		w := float32(x[i] * x[i])
		fl := float32(l)
		sumlx += float32(float32(w*x[i]) * fl)
		suml2 += float32(float32(w*fl) * fl)
	}
	for itry := 0; itry < 5; itry++ {
		changed := 0
		for i := 0; i < n; i++ {
			w := float32(x[i] * x[i])
			li := float32(L[i])
			slx := sumlx - float32(float32(w*x[i])*li)
			if slx > 0 {
				sl2 := suml2 - float32(float32(w*li)*li)
				newL := clampInt(nearestInt(float32(x[i]*sl2)/slx), -nmax, nmax-1)
				if newL != int(L[i]) {
					fl := float32(newL)
					slx += float32(float32(w*x[i]) * fl)
					sl2 += float32(float32(w*fl) * fl)
					if sl2 > 0 && float32(float32(slx*slx)*suml2) > float32(float32(sumlx*sumlx)*sl2) {
						L[i] = int8(newL)
						sumlx, suml2 = slx, sl2
						changed++
					}
				}
			}
		}
		if changed == 0 {
			break
		}
	}
	for i := 0; i < n; i++ {
		L[i] += int8(nmax)
	}
	if suml2 > 0 {
		return sumlx / suml2
	}
	return 0
}

// makeQkx2Quants is make_qkx2_quants: asymmetric levels L in [0, nmax] with
// a min (returned negated in *theMin, so x ≈ scale*L - theMin), the scale
// and min refit by weighted least squares over nstep+1 candidate scales.
// useMAD selects absolute instead of squared error.
func makeQkx2Quants(n, nmax int, x, weights []float32, L []uint8, theMin *float32, Laux []uint8,
	rmin, rdelta float32, nstep int, useMAD bool) float32 {
	return makeQkxQuants(n, nmax, x, weights, L, theMin, Laux, rmin, rdelta, nstep, useMAD, false)
}

// makeQkx3Quants is make_qkx3_quants (weights always given here): as
// makeQkx2Quants but an all-equal group is detected with max <= min.
func makeQkx3Quants(n, nmax int, x, weights []float32, L []uint8, theMin *float32, Laux []uint8,
	rmin, rdelta float32, nstep int, useMAD bool) float32 {
	return makeQkxQuants(n, nmax, x, weights, L, theMin, Laux, rmin, rdelta, nstep, useMAD, true)
}

func makeQkxQuants(n, nmax int, x, weights []float32, L []uint8, theMin *float32, Laux []uint8,
	rmin, rdelta float32, nstep int, useMAD, v3 bool) float32 {
	minv, maxv := x[0], x[0]
	sumW := weights[0]
	sumX := float32(sumW * x[0])
	for i := 1; i < n; i++ {
		if x[i] < minv {
			minv = x[i]
		}
		if x[i] > maxv {
			maxv = x[i]
		}
		w := weights[i]
		sumW += w
		sumX += float32(w * x[i])
	}
	if minv > 0 {
		minv = 0
	}
	if (!v3 && maxv == minv) || (v3 && maxv <= minv) {
		for i := 0; i < n; i++ {
			L[i] = 0
		}
		*theMin = -minv
		return 0
	}
	fn := float32(nmax)
	iscale := fn / (maxv - minv)
	scale := 1 / iscale
	errOf := func(diff float32) float32 {
		if useMAD {
			return fabsf(diff)
		}
		return float32(diff * diff)
	}
	var bestErr float32
	for i := 0; i < n; i++ {
		l := nearestInt(float32(iscale * (x[i] - minv)))
		L[i] = uint8(clampInt(l, 0, nmax))
		diff := float32(float32(scale*float32(L[i]))+minv) - x[i]
		bestErr += float32(weights[i] * errOf(diff))
	}
	if nstep < 1 {
		*theMin = -minv
		return scale
	}
	for is := 0; is <= nstep; is++ {
		iscale = (float32(rmin+float32(rdelta*float32(is))) + fn) / (maxv - minv)
		var sumL, sumL2, sumXL float32
		for i := 0; i < n; i++ {
			l := clampInt(nearestInt(float32(iscale*(x[i]-minv))), 0, nmax)
			Laux[i] = uint8(l)
			w := weights[i]
			fl := float32(l)
			sumL += float32(w * fl)
			sumL2 += float32(float32(w*fl) * fl)
			sumXL += float32(float32(w*fl) * x[i])
		}
		D := float32(sumW*sumL2) - float32(sumL*sumL)
		if D > 0 {
			thisScale := (float32(sumW*sumXL) - float32(sumX*sumL)) / D
			thisMin := (float32(sumL2*sumX) - float32(sumL*sumXL)) / D
			if thisMin > 0 {
				thisMin = 0
				thisScale = sumXL / sumL2
			}
			var cur float32
			for i := 0; i < n; i++ {
				diff := float32(float32(thisScale*float32(Laux[i]))+thisMin) - x[i]
				cur += float32(weights[i] * errOf(diff))
			}
			if cur < bestErr {
				copy(L[:n], Laux[:n])
				bestErr = cur
				scale = thisScale
				minv = thisMin
			}
		}
	}
	*theMin = -minv
	return scale
}

// makeQpQuants is make_qp_quants: non-negative levels in [0, nmax] for the
// super-block's scales or mins, weighted by quantWeights. L is uint8 as in C,
// so a negative level wraps exactly as llama.cpp's does.
func makeQpQuants(n, nmax int, x []float32, L []uint8, quantWeights []float32) float32 {
	var maxv float32
	for i := 0; i < n; i++ {
		maxv = cmax(maxv, x[i])
	}
	if maxv < groupMaxEps {
		for i := 0; i < n; i++ {
			L[i] = 0
		}
		return 0
	}
	fn := float32(nmax)
	iscale := fn / maxv
	for i := 0; i < n; i++ {
		L[i] = uint8(nearestInt(float32(iscale * x[i])))
	}
	scale := 1 / iscale
	var bestMSE float32
	for i := 0; i < n; i++ {
		diff := x[i] - float32(scale*float32(L[i]))
		bestMSE += float32(float32(quantWeights[i]*diff) * diff)
	}
	for is := -4; is <= 4; is++ {
		if is == 0 {
			continue
		}
		iscaleIs := float32(float32(0.1*float32(is))+fn) / maxv
		scaleIs := 1 / iscaleIs
		var mse float32
		for i := 0; i < n; i++ {
			l := min(nmax, nearestInt(float32(iscaleIs*x[i])))
			diff := x[i] - float32(scaleIs*float32(l))
			mse += float32(float32(quantWeights[i]*diff) * diff)
		}
		if mse < bestMSE {
			bestMSE = mse
			iscale = iscaleIs
		}
	}
	var sumlx, suml2 float32
	for i := 0; i < n; i++ {
		l := min(nmax, nearestInt(float32(iscale*x[i])))
		L[i] = uint8(l)
		w := quantWeights[i]
		fl := float32(l)
		sumlx += float32(float32(w*x[i]) * fl)
		suml2 += float32(float32(w*fl) * fl)
	}
	for itry := 0; itry < 5; itry++ {
		changed := 0
		for i := 0; i < n; i++ {
			w := quantWeights[i]
			li := float32(L[i])
			slx := sumlx - float32(float32(w*x[i])*li)
			sl2 := suml2 - float32(float32(w*li)*li)
			if slx > 0 && sl2 > 0 {
				newL := min(nmax, nearestInt(float32(x[i]*sl2)/slx))
				if newL != int(L[i]) {
					fl := float32(newL)
					slx += float32(float32(w*x[i]) * fl)
					sl2 += float32(float32(w*fl) * fl)
					if float32(float32(slx*slx)*suml2) > float32(float32(sumlx*sumlx)*sl2) {
						L[i] = uint8(newL)
						sumlx, suml2 = slx, sl2
						changed++
					}
				}
			}
		}
		if changed == 0 {
			break
		}
	}
	if suml2 > 0 {
		return sumlx / suml2
	}
	return 0
}

// getScaleMinK4 is get_scale_min_k4: the j-th 6-bit scale and min of a
// Q4_K/Q5_K 12-byte scales field.
func getScaleMinK4(j int, q []byte) (d, m uint8) {
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return q[j+4]&0xF | (q[j-4]>>6)<<4, q[j+4]>>4 | (q[j]>>6)<<4
}

// putScaleMinK4 packs eight 6-bit scales and mins into the 12-byte field
// (the inverse of getScaleMinK4, written in llama.cpp's order).
func putScaleMinK4(q []byte, ls, lm []uint8) {
	for j := 0; j < 8; j++ {
		if j < 4 {
			q[j] = ls[j]
			q[j+4] = lm[j]
		} else {
			q[j+4] = ls[j]&0xF | (lm[j]&0xF)<<4
			q[j-4] |= (ls[j] >> 4) << 6
			q[j] |= (lm[j] >> 4) << 6
		}
	}
}
