package cuda

import (
	"fmt"
	"runtime"
)

// Data-parallel training with the gradients summed on the GPUs. Each rank
// runs its own device pass; after a step's backwards every rank hands its
// LoRA grad slab (p.G, nParams fp32) to sum, an all-reduce in device
// memory (NCCL's ncclAllReduce, in place, on the legacy default stream the
// pass computes on), and the optimizer step that follows (Step: norm,
// clip, AdamW) runs on the summed slab exactly as in one process. Nothing
// of the slab crosses PCIe: losses and token counts stay on the host
// group, which also bootstraps NCCL (package dist). Package cuda does not
// import dist: sum is dist.NCCL.AllReduceF32's method value, or a test's
// stand-in.

// AllReduceGrads replaces the pass's LoRA gradients by their sum over the
// ranks: sum(p.G, p.G, nParams, 0) with the backend held and its context
// current, then a synchronisation, so that a failure of the collective is
// reported here and not by the next kernel. Every rank calls it once per
// step, after its last Backward. The pass must run its optimizer on the
// device (DeviceOptimizer): host-synchronised, the grads were copied to
// the host before the sum and would disagree with it.
func (p *LoRAPass) AllReduceGrads(sum func(send, recv uint64, count int, stream uint64) error) (err error) {
	if p.hostSync {
		return fmt.Errorf("cuda: device pass: gradient all-reduce on the device with the optimizer on the host (call DeviceOptimizer first)")
	}
	if sum == nil {
		return fmt.Errorf("cuda: device pass: gradient all-reduce: no all-reduce function")
	}
	N := p.dims.nParams
	b := p.b
	defer b.enter()()
	defer catch("gradient all-reduce", &err)
	// Every rank holds the same adapter (train checks the parameter count
	// across ranks), so an empty slab is empty everywhere and skipping the
	// collective keeps the ranks in step.
	if N == 0 {
		return nil
	}
	if err := sum(p.G, p.G, N, 0); err != nil {
		return fmt.Errorf("cuda: device pass: all-reduce of the %d LoRA gradients: %w", N, err)
	}
	b.must("cuCtxSynchronize (after the gradient all-reduce)", b.d.cuCtxSynchronize())
	return nil
}

// CurrentContext makes the backend's CUDA context current on the calling
// goroutine's OS thread, locked to it, and returns the function that
// unlocks the thread: dist.NCCLOptions.Enter, for NCCL, which computes on
// the device and context current where it is called. It does not take the
// backend's lock: AllReduceGrads calls sum with the lock held, and NCCL's
// calls touch none of the backend's state. A failure to make the context
// current panics with the driver's error, as the backend's own calls do.
func (b *Backend) CurrentContext() func() {
	runtime.LockOSThread()
	if err := b.d.check("cuCtxSetCurrent", b.d.cuCtxSetCurrent(b.ctx)); err != nil {
		runtime.UnlockOSThread()
		panic(err)
	}
	return runtime.UnlockOSThread
}
