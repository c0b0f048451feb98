//go:build amd64 && !noasm

#include "textflag.h"

// expAffineAVX(dst, src *float32, a, b float32, n int): dst[i] =
// e^(a*src[i] + b) for n (a multiple of 8) elements, the operations of
// exp.go's expf in the same order, eight lanes at a time (no FMA).

#define C(off, v) DATA expconst<>+off(SB)/4, $v; DATA expconst<>+(off+4)(SB)/4, $v; DATA expconst<>+(off+8)(SB)/4, $v; DATA expconst<>+(off+12)(SB)/4, $v; DATA expconst<>+(off+16)(SB)/4, $v; DATA expconst<>+(off+20)(SB)/4, $v; DATA expconst<>+(off+24)(SB)/4, $v; DATA expconst<>+(off+28)(SB)/4, $v

C(0, 0xc2d00000)   // -104
C(32, 0x3fb8aa3b)  // log2(e)
C(64, 0x3f000000)  // 0.5
C(96, 0x3f318000)  // C1 = 0.693359375
C(128, 0xb95e8083) // C2 = -2.12194440e-4
C(160, 0x39506967) // P0
C(192, 0x3ab743ce) // P1
C(224, 0x3c088908) // P2
C(256, 0x3d2aa9c1) // P3
C(288, 0x3e2aaaaa) // P4
C(320, 0x3f000000) // P5
C(352, 0x3f800000) // 1
C(384, 0x0000007f) // 127 (int32)
C(416, 0x42b17217) // 88.72283: above it, +Inf
C(448, 0x7f800000) // +Inf
GLOBL expconst<>(SB), RODATA|NOPTR, $480

TEXT ·expAffineAVX(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	VBROADCASTSS a+16(FP), Y0
	VBROADCASTSS b+20(FP), Y1
	MOVQ n+24(FP), CX
	LEAQ expconst<>(SB), AX
	SHRQ $3, CX
	JZ   done

loop:
	VMOVUPS (SI), Y3
	VMULPS  Y0, Y3, Y3            // a*s
	VADDPS  Y1, Y3, Y3            // x = a*s + b
	VMAXPS  0(AX), Y3, Y2         // c = max(x, -104) (NaN lanes fixed below)
	VMULPS  32(AX), Y2, Y4        // c*log2e
	VADDPS  64(AX), Y4, Y4        // + 0.5
	VROUNDPS $1, Y4, Y4           // n = floor(.)
	VMULPS  96(AX), Y4, Y5        // n*C1
	VSUBPS  Y5, Y2, Y2            // r = c - n*C1
	VMULPS  128(AX), Y4, Y5       // n*C2
	VSUBPS  Y5, Y2, Y2            // r -= n*C2
	VMULPS  Y2, Y2, Y6            // z = r*r
	VMULPS  160(AX), Y2, Y7       // P0*r
	VADDPS  192(AX), Y7, Y7       // + P1
	VMULPS  Y2, Y7, Y7
	VADDPS  224(AX), Y7, Y7       // + P2
	VMULPS  Y2, Y7, Y7
	VADDPS  256(AX), Y7, Y7       // + P3
	VMULPS  Y2, Y7, Y7
	VADDPS  288(AX), Y7, Y7       // + P4
	VMULPS  Y2, Y7, Y7
	VADDPS  320(AX), Y7, Y7       // + P5
	VMULPS  Y6, Y7, Y7            // y*z
	VADDPS  Y2, Y7, Y7            // + r
	VADDPS  352(AX), Y7, Y7       // + 1
	VCVTPS2DQ Y4, Y8              // n as int32 (exact: n is integral)
	VPSRAD  $1, Y8, Y9            // n1 = n >> 1
	VPSUBD  Y9, Y8, Y10           // n2 = n - n1
	VPADDD  384(AX), Y9, Y9
	VPSLLD  $23, Y9, Y9           // 2^n1
	VPADDD  384(AX), Y10, Y10
	VPSLLD  $23, Y10, Y10         // 2^n2
	VMULPS  Y9, Y7, Y7
	VMULPS  Y10, Y7, Y7
	VCMPPS  $0x1e, 416(AX), Y3, Y11 // x > 88.72283 (ordered)
	VBLENDVPS Y11, 448(AX), Y7, Y7
	VCMPPS  $3, Y3, Y3, Y12       // x is NaN
	VBLENDVPS Y12, Y3, Y7, Y7
	VMOVUPS Y7, (DI)
	ADDQ    $32, SI
	ADDQ    $32, DI
	DECQ    CX
	JNZ     loop

done:
	VZEROUPPER
	RET
