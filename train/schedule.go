package train

import (
	"fmt"
	"math"
)

// Schedules are the learning-rate schedules Schedule understands.
var Schedules = []string{"constant", "linear", "cosine"}

// Schedule returns the learning rate of optimizer step `step` (0-based) out
// of total, for peak lr and warmup steps, as transformers'
// get_{constant,linear,cosine}_schedule_with_warmup give it with
// LambdaLR: the scheduler is stepped after each optimizer step, so step 0
// uses lambda(0), which is 0 when there is warmup.
//
//	warmup (step < warmup): step / max(1, warmup)
//	constant: 1
//	linear:   max(0, (total-step) / max(1, total-warmup))
//	cosine:   max(0, 0.5*(1 + cos(pi * progress))),  progress = (step-warmup) / max(1, total-warmup)
func Schedule(kind string, lr float64, step, warmup, total int) (float64, error) {
	if step < warmup {
		return lr * float64(step) / float64(max(1, warmup)), nil
	}
	switch kind {
	case "constant":
		return lr, nil
	case "linear":
		return lr * max(0, float64(total-step)/float64(max(1, total-warmup))), nil
	case "cosine":
		// num_cycles = 0.5: cos(pi * 2 * 0.5 * progress).
		progress := float64(step-warmup) / float64(max(1, total-warmup))
		return lr * max(0, 0.5*(1+math.Cos(math.Pi*2*0.5*progress))), nil
	}
	return 0, fmt.Errorf("train: schedule %q is not supported (supported: constant, linear, cosine)", kind)
}
