package lora

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestPyFloat compares pyFloat with Python's repr on the boundaries of its
// fixed and exponent forms.
func TestPyFloat(t *testing.T) {
	py := python(t)
	vals := []float64{0, 1, -2, 0.05, 0.1, 1e-4, 9.99e-5, 1e-5, 1.5e-7, 123456789, 1e15, 9.999999999999998e15, 1e16, 1.25e17, 1e300, -3.5e-9, 2.0 / 3}
	in, _ := json.Marshal(vals)
	out, err := exec.Command(py, "-c", "import json,sys\nprint('\\n'.join(repr(float(v)) for v in json.loads(sys.argv[1])))", string(in)).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i, v := range vals {
		got, err := pyFloat(v)
		if err != nil || got != want[i] {
			t.Errorf("pyFloat(%v) = %q (%v), Python repr %q", v, got, err, want[i])
		}
	}
}
