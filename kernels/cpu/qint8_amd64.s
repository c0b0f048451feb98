//go:build amd64 && !noasm

#include "textflag.h"

// Integer dot products of qint8.go (AVX2). Integer sums are exact in any
// order; the float32 operations are qint8.go's, in its order, without FMA,
// so the results equal the pure-Go dots bit for bit.

// ---- Q8_0 / Q4_0 weights × Q8_0 activations ----
//
// Activation row t starts at a + t*stride: C int8 levels, then at dOff the
// float32 scale of each 32-block.

// The weight block at SI into Y0 (signed levels); Y13 = 8s, Y14 = 0x0F.
#define WQ8 VMOVDQU 2(SI), Y0
#define WQ4 \
	VMOVDQU     2(SI), X0; \
	VPSRLW      $4, X0, X1; \
	VINSERTI128 $1, X1, Y0, Y0; \
	VPAND       Y14, Y0, Y0; \
	VPSUBB      Y13, Y0, Y0

// Y2 = the 8 int32 lane sums of |w| (Y1) × sign-adjusted a (Y2).
#define IDOTAVX2 \
	VPMADDUBSW Y2, Y1, Y2; \
	VPMADDWD   Y15, Y2, Y2
#define IDOTVNNI \
	VPXOR    Y4, Y4, Y4; \
	VPDPBUSD Y2, Y1, Y4; \
	VMOVDQA  Y4, Y2

// One activation row (its levels at (AX)IDX, its scale at (DX)IDX) into
// the scalar ACC: ACC = ACC + float32(Σ lanes) * (dw*da).
#define Q8ROW(IDX, ACC, IDOT) \
	VMOVDQU      (AX)IDX, Y2; \
	VPSIGNB      Y0, Y2, Y2; \
	IDOT; \
	VEXTRACTI128 $1, Y2, X4; \
	VPADDD       X4, X2, X2; \
	VPSHUFD      $0x4E, X2, X4; \
	VPADDD       X4, X2, X2; \
	VPSHUFD      $0xB1, X2, X4; \
	VPADDD       X4, X2, X2; \
	VCVTDQ2PS    X2, X2; \
	VMULSS       (DX)IDX, X12, X3; \
	VMULSS       X3, X2, X2; \
	VADDSS       X2, ACC, ACC

#define Q8CONST \
	MOVL         $0x00010001, R8; \
	MOVQ         R8, X15; \
	VPBROADCASTD X15, Y15; \
	MOVL         $0x0F0F0F0F, R8; \
	MOVQ         R8, X14; \
	VPBROADCASTD X14, Y14; \
	MOVL         $0x08080808, R8; \
	MOVQ         R8, X13; \
	VPBROADCASTD X13, Y13

// Four activation rows, weight blocks outer (the block is decoded once).
#define Q8DOT4(name, WLOAD, wstep, IDOT) \
	MOVQ   w+0(FP), SI; \
	MOVQ   nb+8(FP), R14; \
	MOVQ   a+16(FP), AX; \
	MOVQ   stride+24(FP), BX; \
	LEAQ   (BX)(BX*2), CX; \
	MOVQ   AX, DX; \
	ADDQ   dOff+32(FP), DX; \
	XORQ   R12, R12; \
	Q8CONST; \
	VXORPS Y8, Y8, Y8; \
	VXORPS Y9, Y9, Y9; \
	VXORPS Y10, Y10, Y10; \
	VXORPS Y11, Y11, Y11; \
name: \
	WLOAD; \
	VPABSB       Y0, Y1; \
	VPBROADCASTW (SI), X12; \
	VCVTPH2PS    X12, Y12; \
	Q8ROW((R12*1), X8, IDOT); \
	Q8ROW((BX*1), X9, IDOT); \
	Q8ROW((BX*2), X10, IDOT); \
	Q8ROW((CX*1), X11, IDOT); \
	ADDQ $wstep, SI; \
	ADDQ $32, AX; \
	ADDQ $4, DX; \
	DECQ R14; \
	JNZ  name; \
	MOVQ out+40(FP), DI; \
	VMOVSS X8, (DI); \
	VMOVSS X9, 4(DI); \
	VMOVSS X10, 8(DI); \
	VMOVSS X11, 12(DI); \
	VZEROUPPER; \
	RET

// One activation row.
#define Q8DOT1(name, WLOAD, wstep, IDOT) \
	MOVQ   w+0(FP), SI; \
	MOVQ   nb+8(FP), R14; \
	MOVQ   a+16(FP), AX; \
	MOVQ   AX, DX; \
	ADDQ   dOff+24(FP), DX; \
	XORQ   R12, R12; \
	Q8CONST; \
	VXORPS Y8, Y8, Y8; \
name: \
	WLOAD; \
	VPABSB       Y0, Y1; \
	VPBROADCASTW (SI), X12; \
	VCVTPH2PS    X12, Y12; \
	Q8ROW((R12*1), X8, IDOT); \
	ADDQ $wstep, SI; \
	ADDQ $32, AX; \
	ADDQ $4, DX; \
	DECQ R14; \
	JNZ  name; \
	MOVQ out+32(FP), DI; \
	VMOVSS X8, (DI); \
	VZEROUPPER; \
	RET

// func q8Dot4AVX2(w *byte, nb int, a *byte, stride, dOff int, out *float32)
TEXT ·q8Dot4AVX2(SB), NOSPLIT, $0-48
	Q8DOT4(q84a, WQ8, 34, IDOTAVX2)

// func q4Dot4AVX2(w *byte, nb int, a *byte, stride, dOff int, out *float32)
TEXT ·q4Dot4AVX2(SB), NOSPLIT, $0-48
	Q8DOT4(q44a, WQ4, 18, IDOTAVX2)

// func q8Dot4VNNI(w *byte, nb int, a *byte, stride, dOff int, out *float32)
TEXT ·q8Dot4VNNI(SB), NOSPLIT, $0-48
	Q8DOT4(q84v, WQ8, 34, IDOTVNNI)

// func q4Dot4VNNI(w *byte, nb int, a *byte, stride, dOff int, out *float32)
TEXT ·q4Dot4VNNI(SB), NOSPLIT, $0-48
	Q8DOT4(q44v, WQ4, 18, IDOTVNNI)

// func q8Dot1AVX2(w *byte, nb int, a *byte, dOff int, out *float32)
TEXT ·q8Dot1AVX2(SB), NOSPLIT, $0-40
	Q8DOT1(q81a, WQ8, 34, IDOTAVX2)

// func q4Dot1AVX2(w *byte, nb int, a *byte, dOff int, out *float32)
TEXT ·q4Dot1AVX2(SB), NOSPLIT, $0-40
	Q8DOT1(q41a, WQ4, 18, IDOTAVX2)

// func q8Dot1VNNI(w *byte, nb int, a *byte, dOff int, out *float32)
TEXT ·q8Dot1VNNI(SB), NOSPLIT, $0-40
	Q8DOT1(q81v, WQ8, 34, IDOTVNNI)

// func q4Dot1VNNI(w *byte, nb int, a *byte, dOff int, out *float32)
TEXT ·q4Dot1VNNI(SB), NOSPLIT, $0-40
	Q8DOT1(q41v, WQ4, 18, IDOTVNNI)

// ---- K-quant levels × Q8_K activations ----
//
// Activation row t starts at a + t*stride: C int8 levels, at dOff the
// float32 scale of each super-block, at bsOff the 16 int16 bsums of each.

// Integer sum of the 8 lanes of Y into the low lane of X (X5 scratch).
#define IHSUM8(Y, X) \
	VEXTRACTI128 $1, Y, X5; \
	VPADDD       X5, X, X; \
	VPSHUFD      $0x4E, X, X5; \
	VPADDD       X5, X, X; \
	VPSHUFD      $0xB1, X, X5; \
	VPADDD       X5, X, X

// The scale vector of 32-element group j into Y1: Q4_K/Q5_K one scale,
// Q6_K scales 2j (first 16 elements) and 2j+1.
#define SCALE32(j) VPBROADCASTW (2*j)(R8), Y1
#define SCALE16(j) \
	VPBROADCASTW (4*j)(R8), X1; \
	VPBROADCASTW (4*j+2)(R8), X2; \
	VINSERTI128  $1, X2, Y1, Y1

#define KROW(j, IDX, T, ACC) \
	VPMADDUBSW (32*j)(AX)IDX, Y0, T; \
	VPMADDWD   Y1, T, T; \
	VPADDD     T, ACC, ACC

#define KGROUP4(j, SCALE) \
	VMOVDQU (32*j)(SI), Y0; \
	SCALE(j); \
	KROW(j, (R12*1), Y2, Y8); \
	KROW(j, (BX*1), Y3, Y9); \
	KROW(j, (BX*2), Y4, Y10); \
	KROW(j, (CX*1), Y7, Y11)

// Q4_K/Q5_K tail of row IDX: F = F + isum*(d*da) - imin*(dmin*da).
#define KTAIL(IDX, ACC, ACCX, F) \
	VPMADDWD  (R13)IDX, Y6, Y7; \
	IHSUM8(ACC, ACCX); \
	IHSUM8(Y7, X7); \
	VCVTDQ2PS ACCX, ACCX; \
	VCVTDQ2PS X7, X7; \
	VPBROADCASTW (R10), X3; \
	VCVTPH2PS X3, X3; \
	VMULSS    (DX)IDX, X3, X3; \
	VPBROADCASTW 2(R10), X4; \
	VCVTPH2PS X4, X4; \
	VMULSS    (DX)IDX, X4, X4; \
	VMULSS    X3, ACCX, ACCX; \
	VMULSS    X4, X7, X7; \
	VADDSS    ACCX, F, F; \
	VSUBSS    X7, F, F

// Q6_K tail: F = F + (isum - Σ 32 sc bsums)*(d*da).
#define KTAIL6(IDX, ACC, ACCX, F) \
	VPMADDWD  (R13)IDX, Y6, Y7; \
	VPSUBD    Y7, ACC, ACC; \
	IHSUM8(ACC, ACCX); \
	VCVTDQ2PS ACCX, ACCX; \
	VPBROADCASTW 208(R10), X3; \
	VCVTPH2PS X3, X3; \
	VMULSS    (DX)IDX, X3, X3; \
	VMULSS    X3, ACCX, ACCX; \
	VADDSS    ACCX, F, F

#define KSUPER4(SCALE, TAIL) \
	VPXOR Y8, Y8, Y8; \
	VPXOR Y9, Y9, Y9; \
	VPXOR Y10, Y10, Y10; \
	VPXOR Y11, Y11, Y11; \
	KGROUP4(0, SCALE); \
	KGROUP4(1, SCALE); \
	KGROUP4(2, SCALE); \
	KGROUP4(3, SCALE); \
	KGROUP4(4, SCALE); \
	KGROUP4(5, SCALE); \
	KGROUP4(6, SCALE); \
	KGROUP4(7, SCALE); \
	VMOVDQU (R9), Y6; \
	TAIL((R12*1), Y8, X8, X12); \
	TAIL((BX*1), Y9, X9, X13); \
	TAIL((BX*2), Y10, X10, X14); \
	TAIL((CX*1), Y11, X11, X15)

// func kDot4AVX2(lev *byte, nsb int, sc, mv *int16, w *byte, wstep int, a *byte, stride, dOff, bsOff int, out *float32, six int)
//
// out[t] for t < 4 = the K-quant row (levels lev, 256 per super-block; per
// super-block 16 int16 scales sc, 16 int16 bsum weights mv; the halves d and
// dmin read from the row's blocks at w, wstep bytes apart) · activation row
// t. six: Q6_K (mins folded into the integer).
TEXT ·kDot4AVX2(SB), NOSPLIT, $0-96
	MOVQ   lev+0(FP), SI
	MOVQ   nsb+8(FP), R14
	MOVQ   sc+16(FP), R8
	MOVQ   mv+24(FP), R9
	MOVQ   w+32(FP), R10
	MOVQ   wstep+40(FP), R11
	MOVQ   a+48(FP), AX
	MOVQ   stride+56(FP), BX
	LEAQ   (BX)(BX*2), CX
	MOVQ   AX, DX
	ADDQ   dOff+64(FP), DX
	MOVQ   AX, R13
	ADDQ   bsOff+72(FP), R13
	XORQ   R12, R12
	VXORPS X12, X12, X12
	VXORPS X13, X13, X13
	VXORPS X14, X14, X14
	VXORPS X15, X15, X15
	CMPQ   six+88(FP), $0
	JNE    k46

k44:
	KSUPER4(SCALE32, KTAIL)
	ADDQ $256, SI
	ADDQ $32, R8
	ADDQ $32, R9
	ADDQ R11, R10
	ADDQ $256, AX
	ADDQ $4, DX
	ADDQ $32, R13
	DECQ R14
	JNZ  k44
	JMP  k4out

k46:
	KSUPER4(SCALE16, KTAIL6)
	ADDQ $256, SI
	ADDQ $32, R8
	ADDQ $32, R9
	ADDQ R11, R10
	ADDQ $256, AX
	ADDQ $4, DX
	ADDQ $32, R13
	DECQ R14
	JNZ  k46

k4out:
	MOVQ   out+80(FP), DI
	VMOVSS X12, (DI)
	VMOVSS X13, 4(DI)
	VMOVSS X14, 8(DI)
	VMOVSS X15, 12(DI)
	VZEROUPPER
	RET

#define KGROUP1(j, SCALE, ACC) \
	VMOVDQU (32*j)(SI), Y0; \
	SCALE(j); \
	KROW(j, (R12*1), Y2, ACC)

#define KSUPER1(SCALE, TAIL) \
	VPXOR Y8, Y8, Y8; \
	VPXOR Y9, Y9, Y9; \
	KGROUP1(0, SCALE, Y8); \
	KGROUP1(1, SCALE, Y9); \
	KGROUP1(2, SCALE, Y8); \
	KGROUP1(3, SCALE, Y9); \
	KGROUP1(4, SCALE, Y8); \
	KGROUP1(5, SCALE, Y9); \
	KGROUP1(6, SCALE, Y8); \
	KGROUP1(7, SCALE, Y9); \
	VPADDD  Y9, Y8, Y8; \
	VMOVDQU (R9), Y6; \
	TAIL((R12*1), Y8, X8, X12)

// func kDot1AVX2(lev *byte, nsb int, sc, mv *int16, w *byte, wstep int, a *byte, dOff, bsOff int, out *float32, six int)
//
// kDot4AVX2 for one activation row.
TEXT ·kDot1AVX2(SB), NOSPLIT, $0-88
	MOVQ   lev+0(FP), SI
	MOVQ   nsb+8(FP), R14
	MOVQ   sc+16(FP), R8
	MOVQ   mv+24(FP), R9
	MOVQ   w+32(FP), R10
	MOVQ   wstep+40(FP), R11
	MOVQ   a+48(FP), AX
	MOVQ   AX, DX
	ADDQ   dOff+56(FP), DX
	MOVQ   AX, R13
	ADDQ   bsOff+64(FP), R13
	XORQ   R12, R12
	VXORPS X12, X12, X12
	CMPQ   six+80(FP), $0
	JNE    k16

k14:
	KSUPER1(SCALE32, KTAIL)
	ADDQ $256, SI
	ADDQ $32, R8
	ADDQ $32, R9
	ADDQ R11, R10
	ADDQ $256, AX
	ADDQ $4, DX
	ADDQ $32, R13
	DECQ R14
	JNZ  k14
	JMP  k1out

k16:
	KSUPER1(SCALE16, KTAIL6)
	ADDQ $256, SI
	ADDQ $32, R8
	ADDQ $32, R9
	ADDQ R11, R10
	ADDQ $256, AX
	ADDQ $4, DX
	ADDQ $32, R13
	DECQ R14
	JNZ  k16

k1out:
	MOVQ   out+72(FP), DI
	VMOVSS X12, (DI)
	VZEROUPPER
	RET

// func unpackQ4KAVX2(dst, src *byte, nsb int)
// dst[256i+64c+l] = src[i][16+32c+l]&15, dst[256i+64c+32+l] = >>4.
TEXT ·unpackQ4KAVX2(SB), NOSPLIT, $0-24
	MOVQ         dst+0(FP), DI
	MOVQ         src+8(FP), SI
	MOVQ         nsb+16(FP), CX
	MOVL         $0x0F0F0F0F, R8
	MOVQ         R8, X14
	VPBROADCASTD X14, Y14

u4loop:
	TESTQ CX, CX
	JZ    u4done
#define U4(c) \
	VMOVDQU (16+32*c)(SI), Y0; \
	VPAND   Y14, Y0, Y1; \
	VPSRLW  $4, Y0, Y0; \
	VPAND   Y14, Y0, Y0; \
	VMOVDQU Y1, (64*c)(DI); \
	VMOVDQU Y0, (64*c+32)(DI)
	U4(0)
	U4(1)
	U4(2)
	U4(3)
	ADDQ $144, SI
	ADDQ $256, DI
	DECQ CX
	JMP  u4loop

u4done:
	VZEROUPPER
	RET

// func unpackQ5KAVX2(dst, src *byte, nsb int)
// As unpackQ4KAVX2 with bit j of qh[l] (src[i][16+l]) as bit 4 of group j.
TEXT ·unpackQ5KAVX2(SB), NOSPLIT, $0-24
	MOVQ         dst+0(FP), DI
	MOVQ         src+8(FP), SI
	MOVQ         nsb+16(FP), CX
	MOVL         $0x0F0F0F0F, R8
	MOVQ         R8, X14
	VPBROADCASTD X14, Y14
	MOVL         $0x01010101, R8
	MOVQ         R8, X13
	VPBROADCASTD X13, Y13

u5loop:
	TESTQ   CX, CX
	JZ      u5done
	VMOVDQU 16(SI), Y5
#define U5(c, s0, s1) \
	VMOVDQU (48+32*c)(SI), Y0; \
	VPAND   Y14, Y0, Y1; \
	VPSRLW  $4, Y0, Y0; \
	VPAND   Y14, Y0, Y0; \
	VPSRLW  $s0, Y5, Y2; \
	VPAND   Y13, Y2, Y2; \
	VPSLLW  $4, Y2, Y2; \
	VPOR    Y2, Y1, Y1; \
	VPSRLW  $s1, Y5, Y2; \
	VPAND   Y13, Y2, Y2; \
	VPSLLW  $4, Y2, Y2; \
	VPOR    Y2, Y0, Y0; \
	VMOVDQU Y1, (64*c)(DI); \
	VMOVDQU Y0, (64*c+32)(DI)
	U5(0, 0, 1)
	U5(1, 2, 3)
	U5(2, 4, 5)
	U5(3, 6, 7)
	ADDQ $176, SI
	ADDQ $256, DI
	DECQ CX
	JMP  u5loop

u5done:
	VZEROUPPER
	RET

// func unpackQ6KAVX2(dst, src *byte, nsb int)
// dst[256i+e] = q6Level(src[i], e).
TEXT ·unpackQ6KAVX2(SB), NOSPLIT, $0-24
	MOVQ         dst+0(FP), DI
	MOVQ         src+8(FP), SI
	MOVQ         nsb+16(FP), CX
	MOVL         $0x0F0F0F0F, R8
	MOVQ         R8, X14
	VPBROADCASTD X14, Y14
	MOVL         $0x03030303, R8
	MOVQ         R8, X13
	VPBROADCASTD X13, Y13

u6loop:
	TESTQ CX, CX
	JZ    u6done
#define U6(h) \
	VMOVDQU (64*h)(SI), Y0; \
	VMOVDQU (64*h+32)(SI), Y1; \
	VMOVDQU (128+32*h)(SI), Y2; \
	VPAND   Y14, Y0, Y3; \
	VPAND   Y13, Y2, Y4; \
	VPSLLW  $4, Y4, Y4; \
	VPOR    Y4, Y3, Y3; \
	VMOVDQU Y3, (128*h)(DI); \
	VPAND   Y14, Y1, Y3; \
	VPSRLW  $2, Y2, Y4; \
	VPAND   Y13, Y4, Y4; \
	VPSLLW  $4, Y4, Y4; \
	VPOR    Y4, Y3, Y3; \
	VMOVDQU Y3, (128*h+32)(DI); \
	VPSRLW  $4, Y0, Y3; \
	VPAND   Y14, Y3, Y3; \
	VPSRLW  $4, Y2, Y4; \
	VPAND   Y13, Y4, Y4; \
	VPSLLW  $4, Y4, Y4; \
	VPOR    Y4, Y3, Y3; \
	VMOVDQU Y3, (128*h+64)(DI); \
	VPSRLW  $4, Y1, Y3; \
	VPAND   Y14, Y3, Y3; \
	VPSRLW  $6, Y2, Y4; \
	VPAND   Y13, Y4, Y4; \
	VPSLLW  $4, Y4, Y4; \
	VPOR    Y4, Y3, Y3; \
	VMOVDQU Y3, (128*h+96)(DI)
	U6(0)
	U6(1)
	ADDQ $210, SI
	ADDQ $256, DI
	DECQ CX
	JMP  u6loop

u6done:
	VZEROUPPER
	RET

// ---- Eight K-quant weight rows × four activation rows (AVX-512 VNNI) ----
//
// The levels of 8 weight rows are interleaved in 4-byte chunks (ilev: per
// 4-element chunk k, rows 0..7 × 4 bytes), so one vpdpbusd of a chunk
// register with 4 broadcast activation bytes adds each row's 4 products to
// its own int32 lane: lanes are weight rows, and each lane computes exactly
// qint8.go's per-row integers and float32 combine.

// Sixteen-element unit: lanes += Σ_k lev·a over 4 chunks, times the unit's
// per-row scales (scv), for activation row IDX.
#define K8UNIT(IDX, ISUM) \
	VPXORD          Y12, Y12, Y12; \
	VPDPBUSD.BCST   (AX)IDX, Y0, Y12; \
	VPDPBUSD.BCST   4(AX)IDX, Y1, Y12; \
	VPDPBUSD.BCST   8(AX)IDX, Y2, Y12; \
	VPDPBUSD.BCST   12(AX)IDX, Y3, Y12; \
	VPMULLD         (R8), Y12, Y12; \
	VPADDD          Y12, ISUM, ISUM

// A 32-element sub-block (two units, one scale: scv of the first unit).
#define K8UNIT32(IDX, ISUM) \
	VPXORD          Y12, Y12, Y12; \
	VPDPBUSD.BCST   (AX)IDX, Y0, Y12; \
	VPDPBUSD.BCST   4(AX)IDX, Y1, Y12; \
	VPDPBUSD.BCST   8(AX)IDX, Y2, Y12; \
	VPDPBUSD.BCST   12(AX)IDX, Y3, Y12; \
	VPDPBUSD.BCST   16(AX)IDX, Y4, Y12; \
	VPDPBUSD.BCST   20(AX)IDX, Y5, Y12; \
	VPDPBUSD.BCST   24(AX)IDX, Y6, Y12; \
	VPDPBUSD.BCST   28(AX)IDX, Y7, Y12; \
	VPMULLD         (R8), Y12, Y12; \
	VPADDD          Y12, ISUM, ISUM

#define K8PAIR(IDX, IMIN) \
	VPBROADCASTD (R13)IDX, Y13; \
	VPMADDWD     (R9), Y13, Y13; \
	VPADDD       Y13, IMIN, IMIN

// Q4_K/Q5_K: F = F + isum*(d*da) - imin*(dmin*da), lanes = rows.
#define K8TAIL(IDX, ISUM, IMIN, F) \
	VCVTDQ2PS     ISUM, ISUM; \
	VCVTDQ2PS     IMIN, IMIN; \
	VMULPS.BCST   (DX)IDX, Y14, Y13; \
	VMULPS        Y13, ISUM, ISUM; \
	VMULPS.BCST   (DX)IDX, Y15, Y13; \
	VMULPS        Y13, IMIN, IMIN; \
	VADDPS        ISUM, F, F; \
	VSUBPS        IMIN, F, F

// Q6_K: F = F + (isum - imin)*(d*da).
#define K8TAIL6(IDX, ISUM, IMIN, F) \
	VPSUBD        IMIN, ISUM, ISUM; \
	VCVTDQ2PS     ISUM, ISUM; \
	VMULPS.BCST   (DX)IDX, Y14, Y13; \
	VMULPS        Y13, ISUM, ISUM; \
	VADDPS        ISUM, F, F

// func kDot8x4VNNI(ilev *byte, nsb int, scv, mnv *int32, dv, dmv *float32, a *byte, stride, dOff, pOff, npairs int, out *float32, six int)
//
// out[8t+r] for t < 4, r < 8: weight row r (ilev; per super-block 16
// per-unit scale vectors scv, npairs min-pair vectors mnv, d and dmin vectors
// dv, dmv) · activation row t (a + t*stride; scale at dOff, the int16 sums
// the min pairs weigh at pOff, 4*npairs bytes per super-block).
TEXT ·kDot8x4VNNI(SB), NOSPLIT, $0-104
	MOVQ   ilev+0(FP), SI
	MOVQ   nsb+8(FP), R14
	MOVQ   scv+16(FP), R8
	MOVQ   mnv+24(FP), R9
	MOVQ   dv+32(FP), R10
	MOVQ   dmv+40(FP), R11
	MOVQ   a+48(FP), AX
	MOVQ   stride+56(FP), BX
	LEAQ   (BX)(BX*2), CX
	MOVQ   AX, DX
	ADDQ   dOff+64(FP), DX
	MOVQ   AX, R13
	ADDQ   pOff+72(FP), R13
	XORQ   DI, DI
	VPXORD Y16, Y16, Y16
	VPXORD Y17, Y17, Y17
	VPXORD Y18, Y18, Y18
	VPXORD Y19, Y19, Y19

k8sb:
	VPXORD Y8, Y8, Y8
	VPXORD Y9, Y9, Y9
	VPXORD Y10, Y10, Y10
	VPXORD Y11, Y11, Y11
	MOVQ   $16, R12
	CMPQ   six+96(FP), $0
	JNE    k8unit
	MOVQ   $8, R12

k8unit32:
	// Q4_K/Q5_K: the two 16-element units of a sub-block share its scale
	VMOVDQU (SI), Y0
	VMOVDQU 32(SI), Y1
	VMOVDQU 64(SI), Y2
	VMOVDQU 96(SI), Y3
	VMOVDQU 128(SI), Y4
	VMOVDQU 160(SI), Y5
	VMOVDQU 192(SI), Y6
	VMOVDQU 224(SI), Y7
	K8UNIT32((DI*1), Y8)
	K8UNIT32((BX*1), Y9)
	K8UNIT32((BX*2), Y10)
	K8UNIT32((CX*1), Y11)
	ADDQ    $256, SI
	ADDQ    $64, R8
	ADDQ    $32, AX
	DECQ    R12
	JNZ     k8unit32
	JMP     k8mins

k8unit:
	VMOVDQU (SI), Y0
	VMOVDQU 32(SI), Y1
	VMOVDQU 64(SI), Y2
	VMOVDQU 96(SI), Y3
	K8UNIT((DI*1), Y8)
	K8UNIT((BX*1), Y9)
	K8UNIT((BX*2), Y10)
	K8UNIT((CX*1), Y11)
	ADDQ    $128, SI
	ADDQ    $32, R8
	ADDQ    $16, AX
	DECQ    R12
	JNZ     k8unit

k8mins:
	VPXORD Y20, Y20, Y20
	VPXORD Y21, Y21, Y21
	VPXORD Y22, Y22, Y22
	VPXORD Y23, Y23, Y23
	MOVQ   npairs+80(FP), R12

k8pair:
	K8PAIR((DI*1), Y20)
	K8PAIR((BX*1), Y21)
	K8PAIR((BX*2), Y22)
	K8PAIR((CX*1), Y23)
	ADDQ $4, R13
	ADDQ $32, R9
	DECQ R12
	JNZ  k8pair

	VMOVUPS (R10), Y14
	VMOVUPS (R11), Y15
	CMPQ    six+96(FP), $0
	JNE     k8six
	K8TAIL((DI*1), Y8, Y20, Y16)
	K8TAIL((BX*1), Y9, Y21, Y17)
	K8TAIL((BX*2), Y10, Y22, Y18)
	K8TAIL((CX*1), Y11, Y23, Y19)
	JMP     k8next

k8six:
	K8TAIL6((DI*1), Y8, Y20, Y16)
	K8TAIL6((BX*1), Y9, Y21, Y17)
	K8TAIL6((BX*2), Y10, Y22, Y18)
	K8TAIL6((CX*1), Y11, Y23, Y19)

k8next:
	ADDQ $32, R10
	ADDQ $32, R11
	ADDQ $4, DX
	DECQ R14
	JNZ  k8sb

	MOVQ    out+88(FP), DI
	VMOVUPS Y16, (DI)
	VMOVUPS Y17, 32(DI)
	VMOVUPS Y18, 64(DI)
	VMOVUPS Y19, 96(DI)
	VZEROUPPER
	RET

// ---- Eight Q8_0/Q4_0 weight rows × four activation rows (AVX-512 VNNI) ----
//
// ilev holds the rows' levels made unsigned (Q8_0: w+128; Q4_0: q = w+8),
// interleaved in 4-byte chunks as for the K-quants; the activation row's
// correction (-128 or -8 times the block's sum of levels, at nOff) starts
// each block's integer lanes, so they end as the exact Σ w·a of each row.

#define Q8X8ROW(IDX, F) \
	VPBROADCASTD  (R13)IDX, Y12; \
	VPDPBUSD.BCST (AX)IDX, Y0, Y12; \
	VPDPBUSD.BCST 4(AX)IDX, Y1, Y12; \
	VPDPBUSD.BCST 8(AX)IDX, Y2, Y12; \
	VPDPBUSD.BCST 12(AX)IDX, Y3, Y12; \
	VPDPBUSD.BCST 16(AX)IDX, Y4, Y12; \
	VPDPBUSD.BCST 20(AX)IDX, Y5, Y12; \
	VPDPBUSD.BCST 24(AX)IDX, Y6, Y12; \
	VPDPBUSD.BCST 28(AX)IDX, Y7, Y12; \
	VCVTDQ2PS     Y12, Y12; \
	VMULPS.BCST   (DX)IDX, Y14, Y13; \
	VMULPS        Y13, Y12, Y12; \
	VADDPS        Y12, F, F

// func q8Dot8x4VNNI(ilev *byte, nb int, dv *float32, a *byte, stride, dOff, nOff int, out *float32)
//
// out[8t+r] for t < 4, r < 8: weight row r (ilev, per-block scales dv[8b+r])
// · activation row t (a + t*stride; scales at dOff, corrections at nOff).
TEXT ·q8Dot8x4VNNI(SB), NOSPLIT, $0-64
	MOVQ   ilev+0(FP), SI
	MOVQ   nb+8(FP), R14
	MOVQ   dv+16(FP), R10
	MOVQ   a+24(FP), AX
	MOVQ   stride+32(FP), BX
	LEAQ   (BX)(BX*2), CX
	MOVQ   AX, DX
	ADDQ   dOff+40(FP), DX
	MOVQ   AX, R13
	ADDQ   nOff+48(FP), R13
	XORQ   DI, DI
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11

q8x8blk:
	VMOVDQU (SI), Y0
	VMOVDQU 32(SI), Y1
	VMOVDQU 64(SI), Y2
	VMOVDQU 96(SI), Y3
	VMOVDQU 128(SI), Y4
	VMOVDQU 160(SI), Y5
	VMOVDQU 192(SI), Y6
	VMOVDQU 224(SI), Y7
	VMOVUPS (R10), Y14
	Q8X8ROW((DI*1), Y8)
	Q8X8ROW((BX*1), Y9)
	Q8X8ROW((BX*2), Y10)
	Q8X8ROW((CX*1), Y11)
	ADDQ    $256, SI
	ADDQ    $32, R10
	ADDQ    $32, AX
	ADDQ    $4, DX
	ADDQ    $4, R13
	DECQ    R14
	JNZ     q8x8blk

	MOVQ    out+56(FP), DI
	VMOVUPS Y8, (DI)
	VMOVUPS Y9, 32(DI)
	VMOVUPS Y10, 64(DI)
	VMOVUPS Y11, 96(DI)
	VZEROUPPER
	RET

// func kScalesQ4KAVX2(src *byte, bstep, nsb int, sc, mv *int16)
//
// kRow.prep for Q4_K/Q5_K: the 12-byte scales field at src+4 of each
// super-block (bstep bytes apart) becomes sc[16i..16i+7] (scales),
// sc[16i+8..16i+15] (mins) and mv[16i+2j] = mv[16i+2j+1] = min j: bytes of
// the four words u0 = q[0:4]&0x3f.., u1 = q[8:12]&0x0f.. | (q[0:4]>>6&3)<<4,
// u2 = q[4:8]&0x3f.., u3 = q[8:12]>>4&0x0f.. | (q[4:8]>>6&3)<<4.
TEXT ·kScalesQ4KAVX2(SB), NOSPLIT, $0-40
	MOVQ src+0(FP), SI
	MOVQ bstep+8(FP), R11
	MOVQ nsb+16(FP), CX
	MOVQ sc+24(FP), DI
	MOVQ mv+32(FP), R9

ksq4:
	MOVL 4(SI), AX               // u0 = q[0:4]
	MOVL 8(SI), BX               // q[4:8]
	MOVL 12(SI), DX              // q[8:12]
	// u1 = (q8 & 0x0f0f0f0f) | ((q0 >> 6) & 0x03030303) << 4
	MOVL DX, R8
	ANDL $0x0f0f0f0f, R8
	MOVL AX, R10
	SHRL $6, R10
	ANDL $0x03030303, R10
	SHLL $4, R10
	ORL  R10, R8
	// u3 = ((q8 >> 4) & 0x0f0f0f0f) | ((q4 >> 6) & 0x03030303) << 4
	SHRL $4, DX
	ANDL $0x0f0f0f0f, DX
	MOVL BX, R10
	SHRL $6, R10
	ANDL $0x03030303, R10
	SHLL $4, R10
	ORL  R10, DX
	ANDL $0x3f3f3f3f, AX         // u0
	ANDL $0x3f3f3f3f, BX         // u2
	// scales: u0 | u1<<32; mins: u2 | u3<<32
	SHLQ $32, R8
	ORQ  R8, AX
	SHLQ $32, DX
	ORQ  DX, BX
	MOVQ AX, X0
	MOVQ BX, X1
	VPMOVZXBW X0, X0
	VPMOVZXBW X1, X1
	VMOVDQU   X0, (DI)
	VMOVDQU   X1, 16(DI)
	VPUNPCKLWD X1, X1, X2
	VPUNPCKHWD X1, X1, X3
	VMOVDQU   X2, (R9)
	VMOVDQU   X3, 16(R9)
	ADDQ R11, SI
	ADDQ $32, DI
	ADDQ $32, R9
	DECQ CX
	JNZ  ksq4
	RET

// func kScalesQ6KAVX2(src *byte, bstep, nsb int, sc, mv *int16)
//
// kRow.prep for Q6_K: sc = the 16 int8 scales at src+192, mv = 32*sc.
TEXT ·kScalesQ6KAVX2(SB), NOSPLIT, $0-40
	MOVQ src+0(FP), SI
	MOVQ bstep+8(FP), R11
	MOVQ nsb+16(FP), CX
	MOVQ sc+24(FP), DI
	MOVQ mv+32(FP), R9

ksq6:
	VPMOVSXBW 192(SI), Y0
	VMOVDQU   Y0, (DI)
	VPSLLW    $5, Y0, Y0
	VMOVDQU   Y0, (R9)
	ADDQ R11, SI
	ADDQ $32, DI
	ADDQ $32, R9
	DECQ CX
	JNZ  ksq6
	VZEROUPPER
	RET

// ---- Activation quantizers (q8act.go) ----

DATA q8perm<>+0(SB)/4, $0
DATA q8perm<>+4(SB)/4, $4
DATA q8perm<>+8(SB)/4, $1
DATA q8perm<>+12(SB)/4, $5
DATA q8perm<>+16(SB)/4, $2
DATA q8perm<>+20(SB)/4, $6
DATA q8perm<>+24(SB)/4, $3
DATA q8perm<>+28(SB)/4, $7
GLOBL q8perm<>(SB), RODATA|NOPTR, $32

// Y0..Y3 (32 int32) to 32 saturated int8 in element order, into Y0.
#define PACK32 \
	VPACKSSDW Y1, Y0, Y0; \
	VPACKSSDW Y3, Y2, Y2; \
	VPACKSSWB Y2, Y0, Y0; \
	VPERMD    Y0, Y15, Y0

// func quantQ8_0AVX2(qs *int8, d *float32, n128, n8 *int32, x *float32, nb int)
//
// quantQ8_0Row and the block sums for nb blocks: amax = max|x|, d = the
// half of amax/127 (vcvtps2ph, nearest even) widened back, q = the
// nearest-even int of x*(127/amax) (0 when amax = 0), saturated to int8;
// n128 = -128*Σq, n8 = -8*Σq.
TEXT ·quantQ8_0AVX2(SB), NOSPLIT, $0-48
	MOVQ         qs+0(FP), DI
	MOVQ         d+8(FP), R8
	MOVQ         n128+16(FP), R9
	MOVQ         n8+24(FP), R10
	MOVQ         x+32(FP), SI
	MOVQ         nb+40(FP), CX
	MOVL         $0x7fffffff, AX
	MOVQ         AX, X14
	VPBROADCASTD X14, Y14            // |.| mask
	VMOVDQU      q8perm<>(SB), Y15
	MOVL         $0x01010101, AX
	MOVQ         AX, X13
	VPBROADCASTD X13, Y13            // u8 ones
	MOVL         $0x00010001, AX
	MOVQ         AX, X12
	VPBROADCASTD X12, Y12            // i16 ones
	MOVL         $127, AX
	VCVTSI2SSL   AX, X11, X11        // 127.0

q80blk:
	VMOVUPS (SI), Y4
	VMOVUPS 32(SI), Y5
	VMOVUPS 64(SI), Y6
	VMOVUPS 96(SI), Y7
	// amax of the non-NaN |x| (vmaxps returns its second source when
	// either is NaN: the running maximum, starting at 0)
	VXORPS  Y0, Y0, Y0
	VANDPS  Y14, Y4, Y1
	VMAXPS  Y0, Y1, Y0
	VANDPS  Y14, Y5, Y1
	VMAXPS  Y0, Y1, Y0
	VANDPS  Y14, Y6, Y1
	VMAXPS  Y0, Y1, Y0
	VANDPS  Y14, Y7, Y1
	VMAXPS  Y0, Y1, Y0
	VEXTRACTF128 $1, Y0, X1
	VMAXPS  X1, X0, X0
	VPERMILPS $0x4E, X0, X1
	VMAXPS  X1, X0, X0
	VPERMILPS $0xB1, X0, X1
	VMAXPS  X1, X0, X0               // amax
	VDIVSS  X11, X0, X1              // amax/127
	VCVTPS2PH $0, X1, X1
	VCVTPH2PS X1, X1
	VMOVSS  X1, (R8)
	VDIVSS  X0, X11, X2              // 127/amax
	VXORPS  X3, X3, X3
	VCMPSS  $4, X3, X0, X3           // amax != 0
	VANDPS  X3, X2, X2
	VBROADCASTSS X2, Y2
	VMULPS  Y2, Y4, Y4
	VMULPS  Y2, Y5, Y5
	VMULPS  Y2, Y6, Y6
	VMULPS  Y2, Y7, Y7
	VCVTPS2DQ Y4, Y0
	VCVTPS2DQ Y5, Y1
	VCVTPS2DQ Y6, Y2
	VCVTPS2DQ Y7, Y3
	PACK32
	VMOVDQU Y0, (DI)
	VPMADDUBSW Y0, Y13, Y0
	VPMADDWD   Y12, Y0, Y0
	VEXTRACTI128 $1, Y0, X1
	VPADDD  X1, X0, X0
	VPSHUFD $0x4E, X0, X1
	VPADDD  X1, X0, X0
	VPSHUFD $0xB1, X0, X1
	VPADDD  X1, X0, X0
	VMOVD   X0, AX
	MOVL    AX, BX
	IMULL   $-128, AX
	MOVL    AX, (R9)
	IMULL   $-8, BX
	MOVL    BX, (R10)
	ADDQ    $128, SI
	ADDQ    $32, DI
	ADDQ    $4, R8
	ADDQ    $4, R9
	ADDQ    $4, R10
	DECQ    CX
	JNZ     q80blk
	VZEROUPPER
	RET

// func quantQ8_KAVX2(qs *int8, d *float32, bs, bp *int16, x *float32, nsb int)
//
// quantQ8_KRow for nsb super-blocks: max = the first element of largest
// magnitude, iscale = -127/max, q = min(127, nearest-even(iscale*x))
// saturated to int8, d = 1/iscale; zeros for a zero block; bs = sums of 16,
// bp = sums of 32.
TEXT ·quantQ8_KAVX2(SB), NOSPLIT, $0-48
	MOVQ         qs+0(FP), DI
	MOVQ         d+8(FP), R8
	MOVQ         bs+16(FP), R9
	MOVQ         bp+24(FP), R10
	MOVQ         x+32(FP), SI
	MOVQ         nsb+40(FP), CX
	MOVL         $0x7fffffff, AX
	MOVQ         AX, X14
	VPBROADCASTD X14, Y14
	VMOVDQU      q8perm<>(SB), Y15
	MOVL         $0x01010101, AX
	MOVQ         AX, X13
	VPBROADCASTD X13, Y13
	MOVL         $0x00010001, AX
	MOVQ         AX, X12
	VPBROADCASTD X12, Y12
	MOVL         $-127, AX
	VCVTSI2SSL   AX, X11, X11        // -127.0
	MOVL         $127, AX
	MOVQ         AX, X10
	VPBROADCASTD X10, Y10            // int32 127
	MOVL         $1, AX
	VCVTSI2SSL   AX, X9, X9          // 1.0

q8ksb:
	// amax over the 256 elements
	VXORPS Y0, Y0, Y0
	XORQ   R11, R11

q8kmax:
	VANDPS (SI)(R11*1), Y14, Y1
	VMAXPS Y0, Y1, Y0
	ADDQ   $32, R11
	CMPQ   R11, $1024
	JLT    q8kmax
	VEXTRACTF128 $1, Y0, X1
	VMAXPS  X1, X0, X0
	VPERMILPS $0x4E, X0, X1
	VMAXPS  X1, X0, X0
	VPERMILPS $0xB1, X0, X1
	VMAXPS  X1, X0, X0               // amax
	VXORPS  X1, X1, X1
	VUCOMISS X1, X0
	JNE     q8knz
	JP      q8knz
	// zero block
	MOVL    $0, (R8)
	VPXOR   Y1, Y1, Y1
	XORQ    R11, R11

q8kzero:
	VMOVDQU Y1, (DI)(R11*1)
	ADDQ    $32, R11
	CMPQ    R11, $256
	JLT     q8kzero
	VMOVDQU Y1, (R9)
	VMOVDQU X1, (R10)
	JMP     q8knext

q8knz:
	// the first element with |x| == amax
	VBROADCASTSS X0, Y0
	XORQ    R11, R11

q8kfind:
	VANDPS   (SI)(R11*1), Y14, Y1
	VCMPPS   $0, Y0, Y1, Y1
	VMOVMSKPS Y1, AX
	TESTL    AX, AX
	JNZ      q8kfound
	ADDQ     $32, R11
	JMP      q8kfind

q8kfound:
	BSFL    AX, AX
	LEAQ    (R11)(AX*4), R11
	VMOVSS  (SI)(R11*1), X0          // max
	VDIVSS  X0, X11, X2              // iscale = -127/max
	VDIVSS  X2, X9, X3               // d = 1/iscale
	VMOVSS  X3, (R8)
	VBROADCASTSS X2, Y8
	XORQ    R11, R11
	XORQ    BX, BX

q8kq:
	VMULPS  (SI)(R11*4), Y8, Y0
	VMULPS  32(SI)(R11*4), Y8, Y1
	VMULPS  64(SI)(R11*4), Y8, Y2
	VMULPS  96(SI)(R11*4), Y8, Y3
	VCVTPS2DQ Y0, Y0
	VCVTPS2DQ Y1, Y1
	VCVTPS2DQ Y2, Y2
	VCVTPS2DQ Y3, Y3
	VPMINSD Y10, Y0, Y0
	VPMINSD Y10, Y1, Y1
	VPMINSD Y10, Y2, Y2
	VPMINSD Y10, Y3, Y3
	PACK32
	VMOVDQU Y0, (DI)(R11*1)
	VPMADDUBSW Y0, Y13, Y0
	VPMADDWD   Y12, Y0, Y0
	VPHADDD    Y0, Y0, Y0
	VPHADDD    Y0, Y0, Y0            // lane 0: Σ of elements 0..15, lane 4: 16..31
	VMOVD      X0, AX
	VEXTRACTI128 $1, Y0, X1
	VMOVD      X1, DX
	MOVW       AX, (R9)(BX*4)
	MOVW       DX, 2(R9)(BX*4)
	ADDL       DX, AX
	MOVW       AX, (R10)(BX*2)
	INCQ       BX
	ADDQ       $32, R11
	CMPQ       R11, $256
	JLT        q8kq

q8knext:
	ADDQ $1024, SI
	ADDQ $256, DI
	ADDQ $4, R8
	ADDQ $32, R9
	ADDQ $16, R10
	DECQ CX
	JNZ  q8ksb
	VZEROUPPER
	RET


// func interleave8AVX2(dst, src *byte, C int)
//
// dst[32k+4r .. 32k+4r+3] = src[r*C+4k .. r*C+4k+3] for r < 8, k < C/4
// (C a multiple of 32): eight rows of levels interleaved in 4-byte chunks,
// an 8×8 dword transpose per 32 columns.
TEXT ·interleave8AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ C+16(FP), R8
	LEAQ (R8)(R8*2), R9          // 3C
	LEAQ (SI)(R8*4), R10         // row 4
	XORQ CX, CX

il8loop:
	VMOVDQU (SI)(CX*1), Y0
	LEAQ    (SI)(R8*1), AX
	VMOVDQU (AX)(CX*1), Y1
	LEAQ    (SI)(R8*2), AX
	VMOVDQU (AX)(CX*1), Y2
	LEAQ    (SI)(R9*1), AX
	VMOVDQU (AX)(CX*1), Y3
	VMOVDQU (R10)(CX*1), Y4
	LEAQ    (R10)(R8*1), AX
	VMOVDQU (AX)(CX*1), Y5
	LEAQ    (R10)(R8*2), AX
	VMOVDQU (AX)(CX*1), Y6
	LEAQ    (R10)(R9*1), AX
	VMOVDQU (AX)(CX*1), Y7
	VPUNPCKLDQ Y1, Y0, Y8
	VPUNPCKHDQ Y1, Y0, Y9
	VPUNPCKLDQ Y3, Y2, Y10
	VPUNPCKHDQ Y3, Y2, Y11
	VPUNPCKLDQ Y5, Y4, Y12
	VPUNPCKHDQ Y5, Y4, Y13
	VPUNPCKLDQ Y7, Y6, Y14
	VPUNPCKHDQ Y7, Y6, Y15
	VPUNPCKLQDQ Y10, Y8, Y0
	VPUNPCKHQDQ Y10, Y8, Y1
	VPUNPCKLQDQ Y11, Y9, Y2
	VPUNPCKHQDQ Y11, Y9, Y3
	VPUNPCKLQDQ Y14, Y12, Y4
	VPUNPCKHQDQ Y14, Y12, Y5
	VPUNPCKLQDQ Y15, Y13, Y6
	VPUNPCKHQDQ Y15, Y13, Y7
	VPERM2I128 $0x20, Y4, Y0, Y8
	VPERM2I128 $0x20, Y5, Y1, Y9
	VPERM2I128 $0x20, Y6, Y2, Y10
	VPERM2I128 $0x20, Y7, Y3, Y11
	VPERM2I128 $0x31, Y4, Y0, Y12
	VPERM2I128 $0x31, Y5, Y1, Y13
	VPERM2I128 $0x31, Y6, Y2, Y14
	VPERM2I128 $0x31, Y7, Y3, Y15
	VMOVDQU Y8, (DI)
	VMOVDQU Y9, 32(DI)
	VMOVDQU Y10, 64(DI)
	VMOVDQU Y11, 96(DI)
	VMOVDQU Y12, 128(DI)
	VMOVDQU Y13, 160(DI)
	VMOVDQU Y14, 192(DI)
	VMOVDQU Y15, 224(DI)
	ADDQ $256, DI
	ADDQ $32, CX
	CMPQ CX, R8
	JLT  il8loop
	VZEROUPPER
	RET
