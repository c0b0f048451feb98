package kernels

import "testing"

func TestOpNames(t *testing.T) {
	if len(opNames) != int(OpCount) {
		t.Fatalf("opNames has %d entries, OpCount is %d", len(opNames), OpCount)
	}
	seen := map[string]Op{}
	for _, op := range Ops() {
		name := opNames[op]
		if name == "" {
			t.Errorf("Op(%d) has no name", int(op))
			continue
		}
		if prev, dup := seen[name]; dup {
			t.Errorf("ops %d and %d share the name %q", int(prev), int(op), name)
		}
		seen[name] = op
		if op.String() != name {
			t.Errorf("Op(%d).String() = %q, want %q", int(op), op.String(), name)
		}
	}
	if got := Op(-1).String(); got != "Op(-1)" {
		t.Errorf("Op(-1).String() = %q", got)
	}
}

func TestWeightCheck(t *testing.T) {
	tests := []struct {
		w      Weight
		wantOK bool
	}{
		{Weight{DType: BF16, Data: make([]byte, 12), Rows: 2, Cols: 3}, true},
		{Weight{DType: F32, Data: make([]byte, 12), Rows: 2, Cols: 3}, false},
		{Weight{DType: DType(9), Data: nil, Rows: 0, Cols: 0}, false},
	}
	for _, tt := range tests {
		if err := tt.w.Check(); (err == nil) != tt.wantOK {
			t.Errorf("Check(%v [%d %d], %d bytes) = %v, want ok=%v", tt.w.DType, tt.w.Rows, tt.w.Cols, len(tt.w.Data), err, tt.wantOK)
		}
	}
}

func TestGetUnknown(t *testing.T) {
	if _, err := Get("nope"); err == nil {
		t.Fatal("Get(nope) succeeded")
	}
}
