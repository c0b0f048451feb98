package cuda

import (
	"fmt"
	"slices"
	"unsafe"

	"github.com/tunellm/tune/lora"
)

// DoRA in the device pass: lora/dora.go's DoraLinear on device buffers, in
// the same order, with the kernels of dora.cu (bit for bit the Go loops on
// equal inputs: scripts/gpu/emulate/dora_check.cpp).
//
//	n    = ‖W + s·B·A‖ per output row (no gradient), recomputed when the
//	       parameters changed (an optimizer step, an upload): W's rows a tile
//	       at a time in fp32 (copied, converted from bf16, or dequantized),
//	       plus s·B·A by one GEMM per tile, then a row norm in double
//	mn   = m / n
//	out  = x·Wᵀ + bias (the model's linear) → out += (mn − 1)·base + mn·s·u·Bᵀ,
//	       base = out − bias without dropout, xd·Wᵀ with
//	dm  += Σ_t g·(base + s·u·Bᵀ) / n; the low-rank branch's dout is mn·g;
//	din += mask ⊙ ((mn − 1)·g)·W besides the model's g·W
//
// As on the CPU, backward recomputes base (one more base GEMM per module)
// instead of keeping [T,OC] per module.

// doraKernels are dora.cu's entry points.
var doraKernels = []string{"dora_row_norm", "dora_mn", "dora_fwd", "dora_dmag", "dora_colscale"}

func init() { kernelNames = append(kernelNames, doraKernels...) }

// doraTileBytes bounds the fp32 tile of W rows the norm is computed on.
const doraTileBytes = 64 << 20

// doraRows is the rows of the norm tile for modules of at most maxOut rows
// and maxIn columns.
func doraRows(maxOut, maxIn int) int {
	return max(1, min(maxOut, doraTileBytes/(4*max(maxIn, 1))))
}

// doraNorms recomputes n and mn of every DoRA module from the device's
// parameters.
func (p *LoRAPass) doraNorms() {
	b := p.b
	for i := range p.mods {
		md := &p.mods[i]
		if !md.dora {
			continue
		}
		w := p.lw[md.layer][md.m]
		R, IC, OC := md.r, md.in, md.out
		for r0 := 0; r0 < OC; r0 += p.dims.normRows {
			rows := min(p.dims.normRows, OC-r0)
			switch {
			case w.q != nil:
				b.dequantRows(p.normTile, w.ptr, *w.q, r0, r0+rows, false)
			case w.f32 != 0:
				b.must("cuMemcpyDtoD", b.d.cuMemcpyDtoD(p.normTile, w.f32+uint64(r0*IC)*4, uint64(rows*IC)*4))
			case p.dims.bf16:
				p.ew("bf16_to_f32", rows*IC, p.normTile, w.ptr+uint64(r0*IC)*2, int64(rows*IC))
			default:
				b.must("cuMemcpyDtoD", b.d.cuMemcpyDtoD(p.normTile, w.ptr+uint64(r0*IC)*4, uint64(rows*IC)*4))
			}
			// tile (col-major IC×rows) += A (IC×R) · (s·B[r0:r0+rows])ᵀ (R×rows)
			p.ew("scale_f32", rows*R, p.sB, md.b+uint64(r0*R)*4, md.s, int64(rows*R))
			b.gemm("dora norm", opN, opN, IC, rows, R, md.a, IC, p.sB, R, 1, p.normTile, IC, dtR32F)
			b.launch("dora_row_norm", blocks(rows, attnWarps), attnWarps*32, md.norm+uint64(r0)*4, p.normTile, rows, IC)
		}
		p.ew("dora_mn", OC, md.mn, md.mag, md.norm, OC)
	}
	p.normsDirty = false
}

// doraInitMagnitudes sets every DoRA magnitude that is still all zero (a
// new adapter) to n, on the device and in the adapter's host slab, as
// lora.Adapter.BindBase does on the CPU (the device pass binds no host
// model.Pass).
func (p *LoRAPass) doraInitMagnitudes() {
	host := p.ad.Params()
	var fresh []*devModule
	for i := range p.mods {
		md := &p.mods[i]
		if md.dora && !slices.ContainsFunc(host[md.magOff:md.magOff+md.out], func(v float32) bool { return v != 0 }) {
			fresh = append(fresh, md)
		}
	}
	if len(fresh) == 0 {
		return
	}
	p.doraNorms()
	b := p.b
	for _, md := range fresh {
		b.must("cuMemcpyDtoD", b.d.cuMemcpyDtoD(md.mag, md.norm, uint64(md.out)*4))
		b.must("cuMemcpyDtoH", b.d.cuMemcpyDtoH(unsafe.Pointer(&host[md.magOff]), md.mag, uint64(md.out)*4))
	}
	p.shadow = append(p.shadow[:0], host...)
	p.normsDirty = true // mn = m/n with the new m
}

// doraForward: the DoRA part of a linear whose out already holds x·Wᵀ + bias.
func (p *LoRAPass) doraForward(l int, md *devModule, out, in uint64, T int) {
	b := p.b
	R, IC, OC := md.r, md.in, md.out
	p.loraForward(md, 0, in, T, false) // u = dropout(x)·Aᵀ; p.xd holds dropout(x)
	base := uint64(0)
	if md.drop {
		base = p.doraBase
		p.baseGEMM("dora base", base, p.xd, p.lw[l][md.m], T, OC, IC)
	}
	b.gemm("dora y", opT, opN, OC, T, R, md.b, R, md.u, R, 0, p.doraY, OC, dtR32F)
	p.ew("dora_fwd", T*OC, out, base, p.doraY, md.mn, p.lbias[l][md.m], md.s, T, OC)
}

// doraBackward is lora/dora.go's doraBackward: dm, the low-rank grads and
// the extra input grad; the model's own g·W is linearBackward's.
func (p *LoRAPass) doraBackward(l int, md *devModule, din, dout, in uint64, T int) {
	b := p.b
	R, IC, OC := md.r, md.in, md.out
	w := p.lw[l][md.m]
	x := in
	_, _, th, sc := p.dropout(md, true)
	if md.drop {
		p.ew("lora_dropout", T*IC, p.xd, in, md.key, th, sc, int64(T*IC))
		x = p.xd
	}
	p.baseGEMM("dora base", p.doraBase, x, w, T, OC, IC)
	b.gemm("dora y", opT, opN, OC, T, R, md.b, R, md.u, R, 0, p.doraY, OC, dtR32F)
	p.ew("dora_dmag", OC, md.dmag, dout, p.doraBase, p.doraY, md.norm, md.s, T, OC)
	p.ew("dora_colscale", T*OC, p.doraY, dout, md.mn, 0, int64(T*OC), OC)
	p.loraBackward(md, din, p.doraY, in, T)
	p.ew("dora_colscale", T*OC, p.doraBase, dout, md.mn, 1, int64(T*OC), OC)
	if !md.drop {
		p.baseGEMMBack("dora din", din, p.doraBase, w, T, OC, IC)
		return
	}
	p.memset(p.dx, T*IC)
	p.baseGEMMBack("dora din", p.dx, p.doraBase, w, T, OC, IC)
	p.ew("lora_dropout_add", T*IC, din, p.dx, md.key, th, sc, int64(T*IC))
}

// doraModule maps a DoRA module's magnitude into the slabs and gives it
// its n and m/n vectors (pass-owned).
func (p *LoRAPass) doraModule(md *devModule) error {
	if dt := p.dec.layers[md.layer].w[md.m].DType; dt.Quantized() {
		// As recipes and lora/dora.go: the CPU's DoRA reads dense rows.
		return fmt.Errorf("cuda: device pass: layer %d %s: DoRA on a %v base: DoRA reads the base weight rows, supported on a bf16/f16/f32 base only",
			md.layer, lora.Modules[md.m], dt)
	}
	md.mag, md.dmag = p.P+uint64(md.magOff)*4, p.G+uint64(md.magOff)*4
	var err error
	if md.norm, err = p.own(uint64(md.out) * 4); err != nil {
		return err
	}
	if md.mn, err = p.own(uint64(md.out) * 4); err != nil {
		return err
	}
	return nil
}
