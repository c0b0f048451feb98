package cpu

import (
	"os"
	"testing"
)

// TestMain starts every test from the exact paths whatever TUNE_COMPUTE or
// TUNE_QMATMUL say: the tests that want the bf16 or 8-bit paths select them.
func TestMain(m *testing.M) {
	SetComputeBF16(false)
	SetQMatMulMode(QExact)
	os.Exit(m.Run())
}
