//go:build !amd64 || noasm

package cpu

import "github.com/tunellm/tune/kernels"

// dequantizer returns kernels/qblock's dequantizer of dt.
func dequantizer(dt kernels.DType) func(dst []float32, src []byte) { return dt.Format().Dequantize }
