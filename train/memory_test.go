package train

import (
	"strings"
	"testing"
)

func TestMemoryCheck(t *testing.T) {
	m := EstimateMemory(100<<30, 3<<30, 1<<28) // trainable: 4 float32 a parameter = 4 GiB
	if m.Trainable != 4<<30 || m.Total != 107<<30 {
		t.Fatalf("estimate %+v", m)
	}
	if err := m.Check(8 << 30); err != nil {
		t.Errorf("7 GiB needed, 8 available: %v", err)
	}
	err := m.Check(6 << 30)
	if err == nil {
		t.Fatal("7 GiB needed, 6 available: no error")
	}
	for _, want := range []string{"7.00 GiB", "activations 3.00 GiB", "4.00 GiB", "6.00 GiB is available", "train.max_seq_len"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, ok := AvailableMemory(); !ok {
		t.Log("no /proc/meminfo here")
	}
}

// TestMemoryQuantizedBase: with a quantized base the mapped dense linears
// leave Weights, the quantized copy counts in Total and in Check.
func TestMemoryQuantizedBase(t *testing.T) {
	m := EstimateMemory(1000, 300, 10).WithQuantizedBase("nf4", 800, 225)
	if m.Weights != 200 || m.BaseQuantized != 225 || m.BaseDense != 800 || m.BaseQuant != "nf4" || m.Total != 200+225+300+160 {
		t.Fatalf("%+v", m)
	}
	if err := m.Check(685); err != nil {
		t.Fatalf("685 bytes suffice: %v", err)
	}
	if err := m.Check(684); err == nil || !strings.Contains(err.Error(), "nf4 base") {
		t.Fatalf("684 bytes: %v", err)
	}
}
