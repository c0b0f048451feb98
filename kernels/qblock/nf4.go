package qblock

import (
	"encoding/binary"
	"math"
)

// NF4 is bitsandbytes' 4-bit NormalFloat (QLoRA, Dettmers et al. 2023) as
// quantize_4bit(quant_type="nf4", blocksize=64, compress_statistics=True)
// defines it:
//
//   - the flattened tensor is cut into blocks of 64; absmax[b] = max|x| of
//     block b; each x becomes the index of the NF4 value nearest to
//     x*(1/absmax) by bitsandbytes' decision tree (dQuantizeNF4: strict ">"
//     against the float32 midpoints, so a tie goes to the lower value);
//     element 2j of a block is the high nibble of byte j, 2j+1 the low one;
//   - double quantization: offset = mean(absmax); absmax-offset is quantized
//     in groups of 256 blocks with bitsandbytes' 8-bit dynamic map
//     (create_dynamic_map(signed=True), dQuantize's binary search with
//     midpoint rounding) and a float32 absmax2 per group; the absmax used to
//     dequantize is DynamicMap[q]*absmax2 + offset, in float32;
//   - dequantize: x = NF4Values[q] * absmax.
//
// In-memory block (NF4Bytes = 36 bytes per 64 elements, 4.5 bits/weight):
// the float32 absmax the dequantizer multiplies by (the double-quantized
// value, decoded once at load), little-endian, then the 32 bytes of
// nibbles. The values a matmul sees are therefore exactly bitsandbytes'
// dequantize_4bit output; only the storage of the absmax (4 bytes instead
// of bitsandbytes' 1 byte + 4/256) differs. NF4State keeps the bitsandbytes
// state (uint8 absmax codes, absmax2, offset) for comparison and export.
const NF4Elems, NF4Bytes = 64, 4 + 32

// NF4Format is the NF4 row of the format table. It is not in Formats (it
// has no GGUF type id).
var NF4Format = Format{Name: "NF4", GGUFType: 0, BlockElems: NF4Elems, BlockBytes: NF4Bytes, Dequantize: DequantizeNF4}

// NF4Values are the 16 NF4 levels (bitsandbytes dDequantizeNF4 /
// get_4bit_type("nf4")).
var NF4Values = [16]float32{
	-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
	-0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
	0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
	0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
}

// NF4Index is dQuantizeNF4: the level of a normalized value (thresholds are
// bitsandbytes' float32 literals; NaN maps to 0, as every comparison fails).
func NF4Index(x float32) uint8 {
	if x > 0.03979014977812767 {
		if x > 0.3893125355243683 {
			if x > 0.6427869200706482 {
				if x > 0.8614784181118011 {
					return 15
				}
				return 14
			}
			if x > 0.5016634166240692 {
				return 13
			}
			return 12
		}
		if x > 0.2035212516784668 {
			if x > 0.2920137718319893 {
				return 11
			}
			return 10
		}
		if x > 0.1202552504837513 {
			return 9
		}
		return 8
	}
	if x > -0.33967943489551544 {
		if x > -0.13791173323988914 {
			if x > -0.045525018125772476 {
				return 7
			}
			return 6
		}
		if x > -0.23460740596055984 {
			return 5
		}
		return 4
	}
	if x > -0.6106329262256622 {
		if x > -0.4599952697753906 {
			return 3
		}
		return 2
	}
	if x > -0.8480964004993439 {
		return 1
	}
	return 0
}

// nf4Pairs maps a packed byte to its two levels (high nibble first).
var nf4Pairs = func() (t [256][2]float32) {
	for b := range t {
		t[b] = [2]float32{NF4Values[b>>4], NF4Values[b&15]}
	}
	return
}()

// DequantizeNF4 expands len(dst)/64 NF4 blocks (the 36-byte layout above):
// x = NF4Values[q] * absmax, one float32 product each.
func DequantizeNF4(dst []float32, src []byte) {
	for i := 0; i < len(dst)/NF4Elems; i++ {
		b := src[i*NF4Bytes : (i+1)*NF4Bytes]
		a := math.Float32frombits(binary.LittleEndian.Uint32(b))
		d := dst[i*NF4Elems : (i+1)*NF4Elems]
		for j, q := range b[4:NF4Bytes] {
			p := &nf4Pairs[q]
			d[2*j] = p[0] * a
			d[2*j+1] = p[1] * a
		}
	}
}

// DynamicMap is bitsandbytes' create_dynamic_map(signed=True,
// max_exponent_bits=7, total_bits=8), the 8-bit code of quantize_blockwise,
// sorted ascending: 7 decades 10^(i-6), each with 2^i means of
// torch.linspace(0.1, 1, 2^i+1), both signs, plus 0 and 1. The float32
// values are torch's (its vectorized linspace rounds differently from a
// scalar loop), written out as bit patterns by testdata/gen/nf4_reference.py's
// create_dynamic_map.
var DynamicMap = func() [256]float32 {
	var t [256]float32
	for i, b := range dynamicMapBits {
		t[i] = math.Float32frombits(b)
	}
	return t
}()

var dynamicMapBits = [256]uint32{
	0xbf7e3333, 0xbf7a9999, 0xbf770000, 0xbf736666, 0xbf6fcccc, 0xbf6c3333, 0xbf68999a, 0xbf650000,
	0xbf616666, 0xbf5dcccc, 0xbf5a3333, 0xbf569999, 0xbf530000, 0xbf4f6666, 0xbf4bcccc, 0xbf483333,
	0xbf44999a, 0xbf410000, 0xbf3d6667, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6667,
	0xbf27cccd, 0xbf243333, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
	0xbf0b0000, 0xbf076666, 0xbf03cccd, 0xbf003333, 0xbef93334, 0xbef20000, 0xbeeacccc, 0xbee3999a,
	0xbedc6666, 0xbed53332, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13332, 0xbeaa0000,
	0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d999a, 0xbe6f3334, 0xbe60cccd,
	0xbe526666, 0xbe440000, 0xbe359999, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
	0xbdc9eb85, 0xbdc428f5, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c28, 0xbda1999a,
	0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147a, 0xbd728f5d, 0xbd670a3d,
	0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae147,
	0xbcfeb852, 0xbce7ae13, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5c, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
	0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
	0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
	0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
	0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
	0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
	0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
	0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
	0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
	0x3c68f5c3, 0x3c8b851f, 0x3ca28f5c, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae13, 0x3cfeb852, 0x3d0ae147,
	0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
	0x3d728f5d, 0x3d7e147a, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
	0x3da75c28, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f5, 0x3dc9eb85, 0x3ddb3334,
	0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e359999, 0x3e440000, 0x3e526666, 0x3e60cccd,
	0x3e6f3334, 0x3e7d999a, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
	0x3eb13332, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53332, 0x3edc6666, 0x3ee3999a,
	0x3eeacccc, 0x3ef20000, 0x3ef93334, 0x3f003333, 0x3f03cccd, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
	0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243333, 0x3f27cccd, 0x3f2b6667,
	0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6667, 0x3f410000, 0x3f44999a, 0x3f483333,
	0x3f4bcccc, 0x3f4f6666, 0x3f530000, 0x3f569999, 0x3f5a3333, 0x3f5dcccc, 0x3f616666, 0x3f650000,
	0x3f68999a, 0x3f6c3333, 0x3f6fcccc, 0x3f736666, 0x3f770000, 0x3f7a9999, 0x3f7e3333, 0x3f800000,
}

// dynIndex is bitsandbytes' dQuantize<0> on the sorted code: a 7-step binary
// search from pivot 127, then the nearer neighbour by float32 midpoint.
func dynIndex(code *[256]float32, x float32) uint8 {
	pivot, upperPivot, lowerPivot := 127, 255, 0
	lower, upper := float32(-1), float32(1)
	val := code[pivot]
	for i := 64; i > 0; i >>= 1 {
		if x > val {
			lowerPivot, lower = pivot, val
			pivot += i
		} else {
			upperPivot, upper = pivot, val
			pivot -= i
		}
		val = code[pivot]
	}
	if upperPivot == 255 {
		upper = code[upperPivot]
	}
	if lowerPivot == 0 {
		lower = code[lowerPivot]
	}
	if x > val {
		if x > float32(float32(upper+val)*0.5) {
			return uint8(upperPivot)
		}
		return uint8(pivot)
	}
	if x < float32(float32(lower+val)*0.5) {
		return uint8(lowerPivot)
	}
	return uint8(pivot)
}

// NF4State is bitsandbytes' quantize_4bit state for one flattened tensor.
type NF4State struct {
	N       int       // elements (a multiple of 64)
	Codes   []byte    // [N/2] packed nibbles, high nibble first
	Absmax  []float32 // [N/64] the blocks' absmax before double quantization
	QAbsmax []uint8   // [N/64] double-quantized absmax codes (nil without double quant)
	Absmax2 []float32 // [ceil(N/64/256)] the groups' absmax
	Offset  float32   // mean of Absmax
}

// NF4DoubleBlock is the block (in 64-element blocks) of the double
// quantization of the absmax.
const NF4DoubleBlock = 256

// QuantizeNF4 quantizes x (len a multiple of 64) as bitsandbytes does; with
// double, the absmax are double-quantized. The mean is summed in float64 and
// rounded to float32 (torch's float32 reduction may differ in the last bit
// on long tensors).
func QuantizeNF4(x []float32, double bool) NF4State {
	nb := len(x) / NF4Elems
	s := NF4State{N: nb * NF4Elems, Codes: make([]byte, nb*NF4Elems/2), Absmax: make([]float32, nb)}
	for b := 0; b < nb; b++ {
		blk := x[b*NF4Elems : (b+1)*NF4Elems]
		var am float32
		for _, v := range blk {
			am = max(am, float32(math.Abs(float64(v))))
		}
		s.Absmax[b] = am
		inv := 1 / am
		for j := 0; j < NF4Elems/2; j++ {
			s.Codes[b*NF4Elems/2+j] = NF4Index(blk[2*j]*inv)<<4 | NF4Index(blk[2*j+1]*inv)
		}
	}
	if !double || nb == 0 {
		return s
	}
	var sum float64
	for _, a := range s.Absmax {
		sum += float64(a)
	}
	s.Offset = float32(sum / float64(nb))
	ng := (nb + NF4DoubleBlock - 1) / NF4DoubleBlock
	s.QAbsmax = make([]uint8, nb)
	s.Absmax2 = make([]float32, ng)
	code := &DynamicMap
	for g := 0; g < ng; g++ {
		lo, hi := g*NF4DoubleBlock, min((g+1)*NF4DoubleBlock, nb)
		var am float32
		for _, a := range s.Absmax[lo:hi] {
			am = max(am, float32(math.Abs(float64(a-s.Offset))))
		}
		s.Absmax2[g] = am
		inv := 1 / am
		for b := lo; b < hi; b++ {
			s.QAbsmax[b] = dynIndex(code, float32(s.Absmax[b]-s.Offset)*inv)
		}
	}
	return s
}

// BlockScale is the absmax that dequantizes block b: the double-quantized
// DynamicMap[q]*absmax2 + offset, or the plain absmax.
func (s *NF4State) BlockScale(b int) float32 {
	if s.QAbsmax == nil {
		return s.Absmax[b]
	}
	return float32(DynamicMap[s.QAbsmax[b]]*s.Absmax2[b/NF4DoubleBlock]) + s.Offset
}

// AppendBlocks appends the state's blocks in the in-memory NF4 layout.
func (s *NF4State) AppendBlocks(dst []byte) []byte {
	for b := 0; b < s.N/NF4Elems; b++ {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(s.BlockScale(b)))
		dst = append(dst, s.Codes[b*NF4Elems/2:(b+1)*NF4Elems/2]...)
	}
	return dst
}
