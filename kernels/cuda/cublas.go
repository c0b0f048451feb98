package cuda

import (
	"fmt"
	"sync"
	"unsafe"
)

// cublas holds the cuBLAS entry points used: GemmEx covers fp32 and bf16
// inputs with fp32 accumulation (CUBLAS_COMPUTE_32F).
type cublas struct {
	lib, lt *library

	create      func(h *uintptr) int32
	destroy     func(h uintptr) int32
	getProperty func(typ int32, v *int32) int32
	setStream   func(h uintptr, stream uintptr) int32
	setMathMode func(h uintptr, mode int32) int32
	gemmEx      func(h uintptr, transa, transb int32, m, n, k int32, alpha unsafe.Pointer, A uint64, Atype int32, lda int32,
		B uint64, Btype int32, ldb int32, beta unsafe.Pointer, C uint64, Ctype int32, ldc int32, compute int32, algo int32) int32
}

// cuBLAS / CUDA enum values (cublas_api.h, library_types.h).
const (
	opN            = 0
	opT            = 1
	dtR32F         = 0
	dtR16F         = 2
	dtR16BF        = 14
	compute32F     = 68
	gemmDefault    = -1
	mathDefault    = 0
	mathPedantic   = 2 // CUBLAS_PEDANTIC_MATH: no TF32, no reduced-precision reductions
	propMajor      = 0
	propMinor      = 1
	propPatchLevel = 2
)

// cublasMajors are the cuBLAS sonames tried, newest first.
var cublasMajors = []string{"13", "12", "11"}

var (
	blasOnce sync.Once
	blas     *cublas
	blasErr  error
)

// loadCublas dlopens libcublasLt then libcublas of the same major version
// (cuBLAS needs its Lt library; loading it first from the same folder makes
// that work even where the folder is not on the loader's path).
func loadCublas() (*cublas, error) {
	blasOnce.Do(func() {
		var tried []string
		for _, m := range cublasMajors {
			lt, err := openLibrary([]string{"libcublasLt.so." + m})
			if err != nil {
				tried = append(tried, "libcublasLt.so."+m)
				continue
			}
			lib, err := openLibrary([]string{"libcublas.so." + m})
			if err != nil {
				tried = append(tried, "libcublas.so."+m)
				continue
			}
			b := &cublas{lib: lib, lt: lt}
			if err := lib.bind(map[string]any{
				"cublasCreate_v2":    &b.create,
				"cublasDestroy_v2":   &b.destroy,
				"cublasGetProperty":  &b.getProperty,
				"cublasSetStream_v2": &b.setStream,
				"cublasSetMathMode":  &b.setMathMode,
				"cublasGemmEx":       &b.gemmEx,
			}); err != nil {
				blasErr = fmt.Errorf("cuda: %v", err)
				return
			}
			blas = b
			return
		}
		blasErr = fmt.Errorf("cuda: cuBLAS not found (tried %v in %v; set TUNE_CUDA_LIB_DIR or pip install nvidia-cublas-cu12)",
			tried, searchDirs(osGetenv, globFn))
	})
	return blas, blasErr
}

// version is "12.4.5".
func (b *cublas) version() string {
	var ma, mi, pa int32
	if b.getProperty(propMajor, &ma) != 0 || b.getProperty(propMinor, &mi) != 0 || b.getProperty(propPatchLevel, &pa) != 0 {
		return "unknown"
	}
	return fmt.Sprintf("%d.%d.%d", ma, mi, pa)
}

func blasCheck(call string, r int32) error {
	if r == 0 {
		return nil
	}
	names := map[int32]string{1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
		8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
		14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"}
	n, ok := names[r]
	if !ok {
		n = fmt.Sprintf("cublasStatus %d", r)
	}
	return fmt.Errorf("cuda: %s: %s", call, n)
}
