package cuda

import (
	"fmt"
	"strings"
)

// Info is what Probe found on this machine.
type Info struct {
	Driver        string   // CUDA version the driver supports, "12.4"
	DriverVersion int      // the same as cuDriverGetVersion returns it, 12040
	DriverLib     string   // path of libcuda
	Devices       []Device // empty when the driver loads but sees no GPU
	Cublas        string   // cuBLAS version, "12.4.5"; "" when not found
	CublasLib     string   // path of libcublas
	CublasErr     string   // why cuBLAS was not found, when it was not
	SearchedPaths []string // the library search folders, in order
}

// Device is one GPU as the driver reports it.
type Device struct {
	Index          int
	Name           string
	TotalMem       uint64 // bytes
	FreeMem        uint64 // bytes; 0 when not measured (no context made)
	Major, Minor   int    // compute capability
	SMs            int
	ClockKHz       int
	MemClockKHz    int
	MemBusWidthBit int
}

// CC is the compute capability, "9.0".
func (d Device) CC() string { return fmt.Sprintf("%d.%d", d.Major, d.Minor) }

// Probe loads the driver and cuBLAS and describes the devices, without
// creating a context (so it is cheap and leaves the GPUs alone). The error
// says why CUDA is unusable: no libcuda.so.1, cuInit failing (no device,
// driver too old), or no cuBLAS; Info holds whatever was found before that.
func Probe() (Info, error) {
	info := Info{SearchedPaths: searchDirs(osGetenv, globFn)}
	b, berr := loadCublas()
	if berr == nil {
		info.Cublas, info.CublasLib = b.version(), b.lib.path
	} else {
		info.CublasErr = berr.Error()
	}
	d, err := loadDriver()
	if d != nil {
		info.DriverLib = d.lib.path
		var v int32
		if r := d.cuDriverGetVersion(&v); r == 0 {
			info.DriverVersion = int(v)
			info.Driver = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
		}
	}
	if err != nil {
		return info, err
	}
	var n int32
	if err := d.check("cuDeviceGetCount", d.cuDeviceGetCount(&n)); err != nil {
		return info, err
	}
	for i := int32(0); i < n; i++ {
		dev, err := d.device(int(i))
		if err != nil {
			return info, err
		}
		info.Devices = append(info.Devices, dev)
	}
	if n == 0 {
		return info, fmt.Errorf("cuda: the driver (%s, CUDA %s) sees no GPU", info.DriverLib, info.Driver)
	}
	if berr != nil {
		return info, berr
	}
	return info, nil
}

func (d *driver) device(i int) (Device, error) {
	var dev int32
	if err := d.check(fmt.Sprintf("cuDeviceGet(%d)", i), d.cuDeviceGet(&dev, int32(i))); err != nil {
		return Device{}, err
	}
	name := make([]byte, 256)
	if err := d.check("cuDeviceGetName", d.cuDeviceGetName(&name[0], int32(len(name)), dev)); err != nil {
		return Device{}, err
	}
	out := Device{Index: i, Name: strings.TrimRight(string(name), "\x00")}
	if err := d.check("cuDeviceTotalMem", d.cuDeviceTotalMem(&out.TotalMem, dev)); err != nil {
		return Device{}, err
	}
	for _, a := range []struct {
		attr int32
		dst  *int
	}{{attrComputeCapMaj, &out.Major}, {attrComputeCapMin, &out.Minor}, {attrSMCount, &out.SMs},
		{attrClockRate, &out.ClockKHz}, {attrMemClockRate, &out.MemClockKHz}, {attrMemBusWidth, &out.MemBusWidthBit}} {
		var v int32
		if err := d.check("cuDeviceGetAttribute", d.cuDeviceGetAttribute(&v, a.attr, dev)); err != nil {
			return Device{}, err
		}
		*a.dst = int(v)
	}
	return out, nil
}

// String is the multi-line report `tune env` prints.
func (in Info) String() string {
	var sb strings.Builder
	if in.DriverLib == "" {
		sb.WriteString("driver:  not found\n")
	} else {
		fmt.Fprintf(&sb, "driver:  supports CUDA %s (%s)\n", in.Driver, in.DriverLib)
	}
	if in.Cublas != "" {
		fmt.Fprintf(&sb, "cuBLAS:  %s (%s)\n", in.Cublas, in.CublasLib)
	} else {
		sb.WriteString("cuBLAS:  not found\n")
	}
	for _, d := range in.Devices {
		fmt.Fprintf(&sb, "gpu %d:   %s, %.1f GiB, compute capability %s, %d SMs\n", d.Index, d.Name, float64(d.TotalMem)/(1<<30), d.CC(), d.SMs)
	}
	return sb.String()
}
