package cpu

import (
	"fmt"
	"os"
	"sync/atomic"

	"github.com/tunellm/tune/kernels"
)

// QMatMulMode selects how a matmul on a block-quantized weight (GGUF Q8_0 …
// Q6_K) treats its activations.
//
//   - QExact (the default): the weight is dequantized to fp32 and the fp32
//     activations are multiplied in fp32, so the result is "dequantize, then
//     MatMulForward in F32" (bit for bit for T > 1; qmatmul.go).
//   - QInt8: llama.cpp's CPU scheme (qint8.go): each activation row is
//     quantized once to 8-bit blocks (Q8_0 for Q8_0/Q4_0 weights, Q8_K for
//     Q4_K/Q5_K/Q6_K), and every output is a sum of exact integer dot
//     products of weight blocks × activation blocks, scaled in float32. The
//     numbers are llama.cpp's numbers (its rounding of the activations), not
//     the fp32 ones. Other block types (Q4_1, Q5_x, Q2_K, Q3_K, NF4) stay on
//     the exact path.
//
// The mode is process-wide: TUNE_QMATMUL=exact|q8 sets it at start-up, and
// SetQMatMulMode changes it (eval code sets it for a GGUF it evaluates).
type QMatMulMode int32

const (
	QExact QMatMulMode = iota
	QInt8
)

func (m QMatMulMode) String() string {
	if m == QInt8 {
		return "q8"
	}
	return "exact"
}

// ParseQMatMulMode maps "exact" and "q8" (also "int8") to a mode.
func ParseQMatMulMode(s string) (QMatMulMode, error) {
	switch s {
	case "exact", "":
		return QExact, nil
	case "q8", "int8":
		return QInt8, nil
	}
	return QExact, fmt.Errorf("quantized matmul mode %q: expected exact or q8", s)
}

var (
	qmatmulMode atomic.Int32
	qmatmulEnv  bool // TUNE_QMATMUL named a valid mode
)

func init() {
	if s := os.Getenv("TUNE_QMATMUL"); s != "" {
		m, err := ParseQMatMulMode(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "tune: TUNE_QMATMUL: %v; using exact\n", err)
		}
		qmatmulMode.Store(int32(m))
		qmatmulEnv = err == nil
	}
}

// QMatMulEnv reports the mode TUNE_QMATMUL set at start-up, and whether it
// set one: a caller that picks a mode for a file type (q8 for a GGUF, say)
// leaves the user's explicit choice alone.
func QMatMulEnv() (QMatMulMode, bool) {
	if !qmatmulEnv {
		return QExact, false
	}
	m, _ := ParseQMatMulMode(os.Getenv("TUNE_QMATMUL"))
	return m, true
}

// SetQMatMulMode sets the process-wide mode and returns the previous one.
func SetQMatMulMode(m QMatMulMode) QMatMulMode { return QMatMulMode(qmatmulMode.Swap(int32(m))) }

// GetQMatMulMode is the current mode.
func GetQMatMulMode() QMatMulMode { return QMatMulMode(qmatmulMode.Load()) }

// useInt8 reports whether a matmul on w takes the int8-activation path.
func useInt8(w kernels.Weight) bool {
	if GetQMatMulMode() != QInt8 {
		return false
	}
	switch w.DType {
	case kernels.Q8_0, kernels.Q4_0, kernels.Q4_K, kernels.Q5_K, kernels.Q6_K:
		return true
	}
	return false
}
