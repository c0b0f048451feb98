//go:build amd64 && !noasm

#include "textflag.h"

// Dequantizers of qdequant_amd64.go. Each value is one VMULPS (and for
// Q4_K one VSUBPS) of exact integers and scales, rounded as the scalar
// multiply and subtract of kernels/qblock round them (no FMA), so the
// results are bit for bit qblock's.

// func dequantQ8_0AVX(dst *float32, src *byte, nb int)
TEXT ·dequantQ8_0AVX(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ nb+16(FP), CX

loopq8:
	TESTQ        CX, CX
	JZ           doneq8
	VPBROADCASTW (SI), X0
	VCVTPH2PS    X0, Y0
	VPMOVSXBD    2(SI), Y1
	VPMOVSXBD    10(SI), Y2
	VPMOVSXBD    18(SI), Y3
	VPMOVSXBD    26(SI), Y4
	VCVTDQ2PS    Y1, Y1
	VCVTDQ2PS    Y2, Y2
	VCVTDQ2PS    Y3, Y3
	VCVTDQ2PS    Y4, Y4
	VMULPS       Y0, Y1, Y1
	VMULPS       Y0, Y2, Y2
	VMULPS       Y0, Y3, Y3
	VMULPS       Y0, Y4, Y4
	VMOVUPS      Y1, (DI)
	VMOVUPS      Y2, 32(DI)
	VMOVUPS      Y3, 64(DI)
	VMOVUPS      Y4, 96(DI)
	ADDQ         $34, SI
	ADDQ         $128, DI
	DECQ         CX
	JMP          loopq8

doneq8:
	VZEROUPPER
	RET

// func nib64AVX(dst *float32, q *byte, d1, m1, d2, m2 float32)
TEXT ·nib64AVX(SB), NOSPLIT, $0-32
	MOVQ         dst+0(FP), DI
	MOVQ         q+8(FP), SI
	VBROADCASTSS d1+16(FP), Y0
	VBROADCASTSS m1+20(FP), Y1
	VBROADCASTSS d2+24(FP), Y2
	VBROADCASTSS m2+28(FP), Y3
	MOVQ         $15, AX
	MOVQ         AX, X4
	VPBROADCASTD X4, Y4
	XORQ         CX, CX

loopnib:
	VPMOVZXBD (SI)(CX*1), Y5
	VPAND     Y4, Y5, Y6
	VPSRLD    $4, Y5, Y7
	VCVTDQ2PS Y6, Y6
	VCVTDQ2PS Y7, Y7
	VMULPS    Y0, Y6, Y6
	VSUBPS    Y1, Y6, Y6
	VMULPS    Y2, Y7, Y7
	VSUBPS    Y3, Y7, Y7
	VMOVUPS   Y6, (DI)(CX*4)
	VMOVUPS   Y7, 128(DI)(CX*4)
	ADDQ      $8, CX
	CMPQ      CX, $32
	JLT       loopnib
	VZEROUPPER
	RET

// Q6STEP does elements l..l+7 (l = off) of the four quarters of a Q6_K
// half: SI = ql, DX = qh, DI = dst, Y8..Y11 the quarters' scales, Y15 = 15,
// Y14 = 3, Y13 = 32.
#define Q6STEP(off, o0, o1, o2, o3) \
	VPMOVZXBD off(SI), Y0; \
	VPMOVZXBD off+32(SI), Y1; \
	VPMOVZXBD off(DX), Y2; \
	VPAND     Y15, Y0, Y3; \
	VPAND     Y14, Y2, Y4; \
	VPSLLD    $4, Y4, Y4; \
	VPOR      Y4, Y3, Y3; \
	VPSUBD    Y13, Y3, Y3; \
	VCVTDQ2PS Y3, Y3; \
	VMULPS    Y8, Y3, Y3; \
	VMOVUPS   Y3, o0(DI); \
	VPAND     Y15, Y1, Y3; \
	VPSRLD    $2, Y2, Y4; \
	VPAND     Y14, Y4, Y4; \
	VPSLLD    $4, Y4, Y4; \
	VPOR      Y4, Y3, Y3; \
	VPSUBD    Y13, Y3, Y3; \
	VCVTDQ2PS Y3, Y3; \
	VMULPS    Y9, Y3, Y3; \
	VMOVUPS   Y3, o1(DI); \
	VPSRLD    $4, Y0, Y3; \
	VPSRLD    $4, Y2, Y4; \
	VPAND     Y14, Y4, Y4; \
	VPSLLD    $4, Y4, Y4; \
	VPOR      Y4, Y3, Y3; \
	VPSUBD    Y13, Y3, Y3; \
	VCVTDQ2PS Y3, Y3; \
	VMULPS    Y10, Y3, Y3; \
	VMOVUPS   Y3, o2(DI); \
	VPSRLD    $4, Y1, Y3; \
	VPSRLD    $6, Y2, Y4; \
	VPAND     Y14, Y4, Y4; \
	VPSLLD    $4, Y4, Y4; \
	VPOR      Y4, Y3, Y3; \
	VPSUBD    Y13, Y3, Y3; \
	VCVTDQ2PS Y3, Y3; \
	VMULPS    Y11, Y3, Y3; \
	VMOVUPS   Y3, o3(DI)

// func q6kHalfAVX(dst *float32, ql, qh *byte, sc *float32)
TEXT ·q6kHalfAVX(SB), NOSPLIT, $0-32
	MOVQ         dst+0(FP), DI
	MOVQ         ql+8(FP), SI
	MOVQ         qh+16(FP), DX
	MOVQ         sc+24(FP), R8
	MOVQ         $15, AX
	MOVQ         AX, X15
	VPBROADCASTD X15, Y15
	MOVQ         $3, AX
	MOVQ         AX, X14
	VPBROADCASTD X14, Y14
	MOVQ         $32, AX
	MOVQ         AX, X13
	VPBROADCASTD X13, Y13
	VBROADCASTSS 0(R8), Y8
	VBROADCASTSS 8(R8), Y9
	VBROADCASTSS 16(R8), Y10
	VBROADCASTSS 24(R8), Y11
	Q6STEP(0, 0, 128, 256, 384)
	Q6STEP(8, 32, 160, 288, 416)
	VBROADCASTSS 4(R8), Y8
	VBROADCASTSS 12(R8), Y9
	VBROADCASTSS 20(R8), Y10
	VBROADCASTSS 28(R8), Y11
	Q6STEP(16, 64, 192, 320, 448)
	Q6STEP(24, 96, 224, 352, 480)
	VZEROUPPER
	RET

// func dequantQ4_0AVX(dst *float32, src *byte, nb int)
TEXT ·dequantQ4_0AVX(SB), NOSPLIT, $0-24
	MOVQ         dst+0(FP), DI
	MOVQ         src+8(FP), SI
	MOVQ         nb+16(FP), CX
	MOVQ         $15, AX
	MOVQ         AX, X15
	VPBROADCASTD X15, Y15
	MOVQ         $8, AX
	MOVQ         AX, X14
	VPBROADCASTD X14, Y14

loopq40:
	TESTQ        CX, CX
	JZ           doneq40
	VPBROADCASTW (SI), X0
	VCVTPH2PS    X0, Y0
	VPMOVZXBD    2(SI), Y1
	VPMOVZXBD    10(SI), Y2
	VPAND        Y15, Y1, Y3
	VPAND        Y15, Y2, Y4
	VPSRLD       $4, Y1, Y5
	VPSRLD       $4, Y2, Y6
	VPSUBD       Y14, Y3, Y3
	VPSUBD       Y14, Y4, Y4
	VPSUBD       Y14, Y5, Y5
	VPSUBD       Y14, Y6, Y6
	VCVTDQ2PS    Y3, Y3
	VCVTDQ2PS    Y4, Y4
	VCVTDQ2PS    Y5, Y5
	VCVTDQ2PS    Y6, Y6
	VMULPS       Y0, Y3, Y3
	VMULPS       Y0, Y4, Y4
	VMULPS       Y0, Y5, Y5
	VMULPS       Y0, Y6, Y6
	VMOVUPS      Y3, (DI)
	VMOVUPS      Y4, 32(DI)
	VMOVUPS      Y5, 64(DI)
	VMOVUPS      Y6, 96(DI)
	ADDQ         $18, SI
	ADDQ         $128, DI
	DECQ         CX
	JMP          loopq40

doneq40:
	VZEROUPPER
	RET

// func nib64hAVX(dst *float32, q, qh *byte, shift int, d1, m1, d2, m2 float32)
TEXT ·nib64hAVX(SB), NOSPLIT, $0-48
	MOVQ         dst+0(FP), DI
	MOVQ         q+8(FP), SI
	MOVQ         qh+16(FP), DX
	MOVQ         shift+24(FP), AX
	MOVQ         AX, X12
	VBROADCASTSS d1+32(FP), Y0
	VBROADCASTSS m1+36(FP), Y1
	VBROADCASTSS d2+40(FP), Y2
	VBROADCASTSS m2+44(FP), Y3
	MOVQ         $15, AX
	MOVQ         AX, X4
	VPBROADCASTD X4, Y4
	MOVQ         $1, AX
	MOVQ         AX, X13
	VPBROADCASTD X13, Y13
	XORQ         CX, CX

loopnibh:
	VPMOVZXBD (SI)(CX*1), Y5
	VPMOVZXBD (DX)(CX*1), Y8
	VPSRLD    X12, Y8, Y9
	VPAND     Y13, Y9, Y10
	VPSLLD    $4, Y10, Y10
	VPSRLD    $1, Y9, Y11
	VPAND     Y13, Y11, Y11
	VPSLLD    $4, Y11, Y11
	VPAND     Y4, Y5, Y6
	VPOR      Y10, Y6, Y6
	VPSRLD    $4, Y5, Y7
	VPOR      Y11, Y7, Y7
	VCVTDQ2PS Y6, Y6
	VCVTDQ2PS Y7, Y7
	VMULPS    Y0, Y6, Y6
	VSUBPS    Y1, Y6, Y6
	VMULPS    Y2, Y7, Y7
	VSUBPS    Y3, Y7, Y7
	VMOVUPS   Y6, (DI)(CX*4)
	VMOVUPS   Y7, 128(DI)(CX*4)
	ADDQ      $8, CX
	CMPQ      CX, $32
	JLT       loopnibh
	VZEROUPPER
	RET
