package cuda

import (
	"fmt"
	"sync"
	"unsafe"
)

// driver holds the CUDA driver API entry points (libcuda.so.1), resolved at
// run time. Only the _v2 symbols that take 64-bit sizes are used.
type driver struct {
	lib *library

	cuInit                     func(flags uint32) int32
	cuDriverGetVersion         func(v *int32) int32
	cuDeviceGetCount           func(n *int32) int32
	cuDeviceGet                func(dev *int32, ordinal int32) int32
	cuDeviceGetName            func(name *byte, n int32, dev int32) int32
	cuDeviceTotalMem           func(bytes *uint64, dev int32) int32
	cuDeviceGetAttribute       func(v *int32, attr int32, dev int32) int32
	cuDevicePrimaryCtxRetain   func(ctx *uintptr, dev int32) int32
	cuCtxSetCurrent            func(ctx uintptr) int32
	cuCtxSynchronize           func() int32
	cuMemGetInfo               func(free, total *uint64) int32
	cuMemAlloc                 func(dptr *uint64, size uint64) int32
	cuMemFree                  func(dptr uint64) int32
	cuMemcpyHtoD               func(dst uint64, src unsafe.Pointer, n uint64) int32
	cuMemcpyDtoH               func(dst unsafe.Pointer, src uint64, n uint64) int32
	cuMemcpyDtoD               func(dst, src uint64, n uint64) int32
	cuMemsetD8                 func(dst uint64, v uint8, n uint64) int32
	cuModuleLoadData           func(mod *uintptr, image unsafe.Pointer) int32
	cuModuleGetFunction        func(fn *uintptr, mod uintptr, name *byte) int32
	cuLaunchKernel             func(fn uintptr, gx, gy, gz, bx, by, bz, smem uint32, stream uintptr, params unsafe.Pointer, extra unsafe.Pointer) int32
	cuEventCreate              func(ev *uintptr, flags uint32) int32
	cuEventRecord              func(ev uintptr, stream uintptr) int32
	cuEventSynchronize         func(ev uintptr) int32
	cuEventElapsedTime         func(ms *float32, start, end uintptr) int32
	cuEventDestroy             func(ev uintptr) int32
	cuGetErrorName             func(code int32, s **byte) int32
	cuGetErrorString           func(code int32, s **byte) int32
	cuDevicePrimaryCtxGetState func(dev int32, flags *uint32, active *int32) int32
}

// Driver attribute ids (cuda.h CUdevice_attribute).
const (
	attrClockRate      = 13
	attrSMCount        = 16
	attrMemClockRate   = 36
	attrMemBusWidth    = 37
	attrComputeCapMaj  = 75
	attrComputeCapMin  = 76
	errNoDevice        = 100
	errInsufficientDrv = 35
	errOutOfMemory     = 2
)

var (
	drvOnce sync.Once
	drv     *driver
	drvErr  error
)

// loadDriver dlopens libcuda.so.1 and calls cuInit once per process. When
// the library loads but cuInit fails (no GPU, driver too old), the driver is
// returned with the error, so its version can still be reported.
func loadDriver() (*driver, error) {
	drvOnce.Do(func() {
		lib, err := openLibrary([]string{"libcuda.so.1", "libcuda.so"})
		if err != nil {
			drvErr = fmt.Errorf("cuda: no NVIDIA driver: %v", err)
			return
		}
		d := &driver{lib: lib}
		if err := lib.bind(map[string]any{
			"cuInit":                     &d.cuInit,
			"cuDriverGetVersion":         &d.cuDriverGetVersion,
			"cuDeviceGetCount":           &d.cuDeviceGetCount,
			"cuDeviceGet":                &d.cuDeviceGet,
			"cuDeviceGetName":            &d.cuDeviceGetName,
			"cuDeviceTotalMem_v2":        &d.cuDeviceTotalMem,
			"cuDeviceGetAttribute":       &d.cuDeviceGetAttribute,
			"cuDevicePrimaryCtxRetain":   &d.cuDevicePrimaryCtxRetain,
			"cuDevicePrimaryCtxGetState": &d.cuDevicePrimaryCtxGetState,
			"cuCtxSetCurrent":            &d.cuCtxSetCurrent,
			"cuCtxSynchronize":           &d.cuCtxSynchronize,
			"cuMemGetInfo_v2":            &d.cuMemGetInfo,
			"cuMemAlloc_v2":              &d.cuMemAlloc,
			"cuMemFree_v2":               &d.cuMemFree,
			"cuMemcpyHtoD_v2":            &d.cuMemcpyHtoD,
			"cuMemcpyDtoH_v2":            &d.cuMemcpyDtoH,
			"cuMemcpyDtoD_v2":            &d.cuMemcpyDtoD,
			"cuMemsetD8_v2":              &d.cuMemsetD8,
			"cuModuleLoadData":           &d.cuModuleLoadData,
			"cuModuleGetFunction":        &d.cuModuleGetFunction,
			"cuLaunchKernel":             &d.cuLaunchKernel,
			"cuEventCreate":              &d.cuEventCreate,
			"cuEventRecord":              &d.cuEventRecord,
			"cuEventSynchronize":         &d.cuEventSynchronize,
			"cuEventElapsedTime":         &d.cuEventElapsedTime,
			"cuEventDestroy_v2":          &d.cuEventDestroy,
			"cuGetErrorName":             &d.cuGetErrorName,
			"cuGetErrorString":           &d.cuGetErrorString,
		}); err != nil {
			drvErr = fmt.Errorf("cuda: %v", err)
			return
		}
		drv = d
		if r := d.cuInit(0); r != 0 {
			drvErr = fmt.Errorf("cuda: cuInit: %s", d.errString(r))
			if r == errInsufficientDrv {
				drvErr = fmt.Errorf("cuda: cuInit: %s: the NVIDIA driver (%s) is older than this CUDA runtime needs; update the driver", d.errString(r), lib.path)
			}
			return
		}
	})
	return drv, drvErr
}

// errString names a CUresult: "CUDA_ERROR_OUT_OF_MEMORY (out of memory)".
func (d *driver) errString(r int32) string {
	var name, desc *byte
	if d.cuGetErrorName == nil || d.cuGetErrorName(r, &name) != 0 {
		return fmt.Sprintf("CUresult %d", r)
	}
	s := cString(name)
	if d.cuGetErrorString(r, &desc) == 0 {
		s += " (" + cString(desc) + ")"
	}
	return s
}

// check turns a CUresult into an error naming the call.
func (d *driver) check(call string, r int32) error {
	if r == 0 {
		return nil
	}
	return fmt.Errorf("cuda: %s: %s", call, d.errString(r))
}

// cString copies a NUL-terminated C string.
func cString(p *byte) string {
	if p == nil {
		return ""
	}
	var b []byte
	for q := unsafe.Pointer(p); ; q = unsafe.Add(q, 1) {
		c := *(*byte)(q)
		if c == 0 {
			break
		}
		b = append(b, c)
	}
	return string(b)
}
