//go:build amd64 && !noasm

#include "textflag.h"

// Reduce the 8 lanes of Y into its low scalar and store it at off(R10):
// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)). Every kernel uses this same order.
#define HSUM(Y, X, off) \
	VEXTRACTF128 $1, Y, X14; \
	VADDPS       X14, X, X; \
	VPERMILPS    $0x4E, X, X14; \
	VADDPS       X14, X, X; \
	VPERMILPS    $0xB1, X, X14; \
	VADDPS       X14, X, X; \
	VMOVSS       X, off(R10)

// func dot1x4AVX(x, w0, w1, w2, w3 *float32, n int, out *[4]float32)
TEXT ·dot1x4AVX(SB), NOSPLIT, $0-56
	MOVQ   x+0(FP), AX
	MOVQ   w0+8(FP), BX
	MOVQ   w1+16(FP), CX
	MOVQ   w2+24(FP), DX
	MOVQ   w3+32(FP), SI
	MOVQ   n+40(FP), R8
	SHLQ   $2, R8
	XORQ   R9, R9
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3

loop1x4:
	CMPQ        R9, R8
	JGE         done1x4
	VMOVUPS     (AX)(R9*1), Y8
	VFMADD231PS (BX)(R9*1), Y8, Y0
	VFMADD231PS (CX)(R9*1), Y8, Y1
	VFMADD231PS (DX)(R9*1), Y8, Y2
	VFMADD231PS (SI)(R9*1), Y8, Y3
	ADDQ        $32, R9
	JMP         loop1x4

done1x4:
	MOVQ out+48(FP), R10
	HSUM(Y0, X0, 0)
	HSUM(Y1, X1, 4)
	HSUM(Y2, X2, 8)
	HSUM(Y3, X3, 12)
	VZEROUPPER
	RET

// func bf16ToF32AVX(dst *float32, src *byte, n int)
TEXT ·bf16ToF32AVX(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX

loopbf16:
	CMPQ      CX, $8
	JLT       donebf16
	VPMOVZXWD (SI), Y0
	VPSLLD    $16, Y0, Y0
	VMOVUPS   Y0, (DI)
	ADDQ      $16, SI
	ADDQ      $32, DI
	SUBQ      $8, CX
	JMP       loopbf16

donebf16:
	VZEROUPPER
	RET

// func f16ToF32AVX(dst *float32, src *byte, n int)
TEXT ·f16ToF32AVX(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX

loopf16:
	CMPQ      CX, $8
	JLT       donef16
	VCVTPH2PS (SI), Y0
	VMOVUPS   Y0, (DI)
	ADDQ      $16, SI
	ADDQ      $32, DI
	SUBQ      $8, CX
	JMP       loopf16

donef16:
	VZEROUPPER
	RET

// func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
TEXT ·cpuid(SB), NOSPLIT, $0-24
	MOVL leaf+0(FP), AX
	MOVL sub+4(FP), CX
	CPUID
	MOVL AX, eax+8(FP)
	MOVL BX, ebx+12(FP)
	MOVL CX, ecx+16(FP)
	MOVL DX, edx+20(FP)
	RET

// func xgetbv0() (eax uint32)
TEXT ·xgetbv0(SB), NOSPLIT, $0-4
	MOVL   $0, CX
	XGETBV
	MOVL   AX, eax+0(FP)
	RET

// func axpyAVX(dst, x *float32, a float32, n int)
TEXT ·axpyAVX(SB), NOSPLIT, $0-32
	MOVQ         dst+0(FP), DI
	MOVQ         x+8(FP), SI
	VBROADCASTSS a+16(FP), Y1
	MOVQ         n+24(FP), CX

loopaxpy:
	CMPQ        CX, $8
	JLT         doneaxpy
	VMOVUPS     (DI), Y0
	VFMADD231PS (SI), Y1, Y0
	VMOVUPS     Y0, (DI)
	ADDQ        $32, SI
	ADDQ        $32, DI
	SUBQ        $8, CX
	JMP         loopaxpy

doneaxpy:
	VZEROUPPER
	RET

