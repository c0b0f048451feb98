//go:build !amd64 || noasm

package cpu

func gemmISAs() []int { return []int{isaGo} }

func setGemmISA(isa int) func() { return func() {} }
