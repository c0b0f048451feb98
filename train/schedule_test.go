package train

import (
	"math"
	"testing"
)

// Values computed by hand from transformers' lr_lambda functions
// (optimization.py) with lr = 1, warmup 2, total 10.
func TestSchedule(t *testing.T) {
	cosine := func(step int) float64 { // 0.5*(1+cos(pi*(step-2)/8))
		return 0.5 * (1 + math.Cos(math.Pi*float64(step-2)/8))
	}
	tests := []struct {
		kind string
		step int
		want float64
	}{
		{"constant", 0, 0}, {"constant", 1, 0.5}, {"constant", 2, 1}, {"constant", 9, 1},
		{"linear", 0, 0}, {"linear", 1, 0.5}, {"linear", 2, 1}, {"linear", 3, 7.0 / 8}, {"linear", 6, 0.5}, {"linear", 9, 1.0 / 8}, {"linear", 10, 0}, {"linear", 12, 0},
		{"cosine", 0, 0}, {"cosine", 1, 0.5}, {"cosine", 2, 1}, {"cosine", 4, 0.5 * (1 + math.Sqrt2/2)}, {"cosine", 6, 0.5}, {"cosine", 10, 0},
		{"cosine", 5, cosine(5)},
	}
	for _, tt := range tests {
		got, err := Schedule(tt.kind, 1, tt.step, 2, 10)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(got-tt.want) > 1e-15 {
			t.Errorf("%s step %d: %v, want %v", tt.kind, tt.step, got, tt.want)
		}
	}
	// No warmup: step 0 has the peak lr.
	if got, _ := Schedule("cosine", 2e-4, 0, 0, 100); got != 2e-4 {
		t.Errorf("cosine step 0 without warmup: %v", got)
	}
	if _, err := Schedule("step", 1, 0, 0, 1); err == nil {
		t.Error("unknown schedule accepted")
	}
}

func TestPlan(t *testing.T) {
	tests := []struct{ seqs, bs, ga, epochs, maxSteps, perEpoch, total int }{
		{10, 2, 1, 3, 0, 5, 15},
		{10, 3, 2, 1, 0, 2, 2}, // 4 batches, 2 steps
		{10, 3, 3, 2, 0, 2, 4}, // 4 batches: a full step and a 1-batch step
		{10, 2, 1, 3, 7, 5, 7},
	}
	for _, tt := range tests {
		pe, tot := Plan(tt.seqs, tt.bs, tt.ga, tt.epochs, tt.maxSteps)
		if pe != tt.perEpoch || tot != tt.total {
			t.Errorf("Plan%v = %d, %d", tt, pe, tot)
		}
	}
}
