//go:build amd64 && !noasm

package cpu

// gemmISAs lists the micro-kernel sets this CPU can run, best last.
func gemmISAs() []int {
	best := gemmISA
	var l []int
	for isa := isaGo; isa <= best; isa++ {
		l = append(l, isa)
	}
	return l
}

// setGemmISA switches the micro-kernels and returns the undo.
func setGemmISA(isa int) func() {
	old := gemmISA
	gemmISA = isa
	return func() { gemmISA = old }
}
