package model

import "github.com/tunellm/tune/kernels"

// Adapter adds trainable low-rank deltas to the frozen linear layers (package
// lora implements it); the model only calls it through this hook, after each
// base projection in a training Pass.
//
// module is the PEFT module name: "q_proj", "k_proj", "v_proj", "o_proj"
// (self_attn) and "gate_proj", "up_proj", "down_proj" (mlp); AdapterModules
// lists them in the order a layer runs them.
//
// Calls for one Pass arrive in layer order in Forward and in reverse in
// Backward, each Backward after the Forward of the same (layer, module) and
// with the same in. With TrainOptions.Checkpointing, Pass.Backward calls
// Forward (train true) again for each layer's modules just before that layer's
// Backward calls, to rebuild the activations; the adapter must then produce
// the same output as in the step's first Forward (for dropout: the same mask,
// e.g. drawn from a seed that only advances between steps). For down_proj the
// replayed out holds zeros instead of the base output, whose value the
// backward does not need.
type Adapter interface {
	// Has reports whether (layer, module) carries an adapter. A Pass asks once,
	// in NewPass.
	Has(layer int, module string) bool
	// Forward adds the adapter's output to out[T,OC] for input in[T,C] (out
	// already holds the base x·Wᵀ(+b)). train is true in a training forward
	// (dropout active, state saved for Backward).
	Forward(layer int, module string, out, in []float32, T int, train bool)
	// Backward accumulates the adapter's parameter gradients (+=) and adds its
	// contribution to din[T,C] (+=), given dout[T,OC] and the same in[T,C] as
	// Forward.
	Backward(layer int, module string, din, dout, in []float32, T int)
}

// AdapterModules are the linear layers an Adapter can attach to, in the order
// a decoder layer runs them.
var AdapterModules = [...]string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// Indexes into AdapterModules.
const (
	modQ = iota
	modK
	modV
	modO
	modGate
	modUp
	modDown
	numModules
)

// BaseAware is an optional interface of an Adapter whose delta depends on the
// frozen projection itself and not only on its input: DoRA (PEFT
// use_dora) rescales each output row by m/‖W + s·B·A‖ and so needs W for the
// norm, x·Wᵀ on its own (dropped-out) input, and dout·W for the input grad.
// Rather than widening Forward/Backward for every adapter, NewPass and
// SetAdapter call BindBase once per adapted (layer, module), before any
// Forward, with the weight [OC,C] and bias [OC] (nil when none) the projection
// computes with and the backend that runs it. The views are read-only and
// stay valid while the model is open.
type BaseAware interface {
	BindBase(layer int, module string, be kernels.Backend, w kernels.Weight, bias []float32)
}

// bindBase hands the adapter the projections it covers when it asks for them.
func bindBase(a Adapter, be kernels.Backend, layers []layer, has [][numModules]bool) {
	ba, ok := a.(BaseAware)
	if !ok {
		return
	}
	for l := range layers {
		L := &layers[l]
		ws := [numModules]kernels.Weight{L.q, L.k, L.v, L.o, L.gate, L.up, L.down}
		bs := [numModules][]float32{L.qBias, L.kBias, L.vBias, L.oBias, L.gateBias, L.upBias, L.downBias}
		for i := range ws {
			if has[l][i] {
				ba.BindBase(l, AdapterModules[i], be, ws[i], bs[i])
			}
		}
	}
}
