// dora_check.cpp: runs the DoRA kernels (kernels/cuda/dora.cu, included by
// kernels.cu) on the CPU (emu.h) over the inputs in the cases file and
// writes their outputs, which the Go test kernels/cuda TestDoRAKernelsEmulated
// (which also writes the cases, compiles and runs this) compares bit for bit
// with the fake device's Go versions, the ones every CI test of the device
// pass's DoRA runs on.
//
// Cases file (little-endian): "DR1\n", then i32 rows, i32 C, i32 T, i32 OC,
// f32 in[rows*C], f32 mag[OC], f32 norm[OC], f32 out[T*OC], f32 base[T*OC],
// f32 y[T*OC], f32 bias[OC], f32 g[T*OC], f32 dmag[OC], f32 s.
// Output file: f32 rownorm[rows], f32 mn[OC], f32 fwd_base[T*OC],
// f32 fwd_bias[T*OC], f32 fwd_nobias[T*OC], f32 dmag[OC], f32 cs0[T*OC],
// f32 cs1[T*OC].
//
//   go test ./kernels/cuda -run TestDoRAKernelsEmulated -v
#define TUNE_EMULATE 1
#include "emu.h"
#include "../../../kernels/cuda/kernels.cu"

#include "emu_io.h"

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: dora_check CASES OUT\n");
        return 2;
    }
    reader r = open_cases(argv[1], "DR1\n");
    int rows = r.one<int>(), C = r.one<int>(), T = r.one<int>(), OC = r.one<int>();
    auto x = r.get<float>((size_t)rows * C);
    auto mag = r.get<float>(OC), norm = r.get<float>(OC);
    auto out = r.get<float>((size_t)T * OC), base = r.get<float>((size_t)T * OC), y = r.get<float>((size_t)T * OC);
    auto bias = r.get<float>(OC);
    auto g = r.get<float>((size_t)T * OC);
    auto dmag = r.get<float>(OC);
    float s = r.one<float>();
    int n = T * OC;

    std::vector<float> rn(rows), mn(OC);
    emu_launch((rows + 7) / 8, 256, [&] { dora_row_norm(rn.data(), x.data(), rows, C); });
    emu_launch((OC + 255) / 256, 256, [&] { dora_mn(mn.data(), mag.data(), norm.data(), OC); });
    auto f1 = out, f2 = out, f3 = out;
    emu_launch((n + 255) / 256, 256, [&] { dora_fwd(f1.data(), base.data(), y.data(), mn.data(), bias.data(), s, T, OC); });
    emu_launch((n + 255) / 256, 256, [&] { dora_fwd(f2.data(), nullptr, y.data(), mn.data(), bias.data(), s, T, OC); });
    emu_launch((n + 255) / 256, 256, [&] { dora_fwd(f3.data(), nullptr, y.data(), mn.data(), nullptr, s, T, OC); });
    emu_launch((OC + 255) / 256, 256, [&] { dora_dmag(dmag.data(), g.data(), base.data(), y.data(), norm.data(), s, T, OC); });
    std::vector<float> c0(n), c1(n);
    emu_launch((n + 255) / 256, 256, [&] { dora_colscale(c0.data(), g.data(), mn.data(), 0, n, OC); });
    emu_launch((n + 255) / 256, 256, [&] { dora_colscale(c1.data(), g.data(), mn.data(), 1, n, OC); });

    std::ofstream o(argv[2], std::ios::binary);
    put(o, rn);
    put(o, mn);
    put(o, f1);
    put(o, f2);
    put(o, f3);
    put(o, dmag);
    put(o, c0);
    put(o, c1);
    std::printf("dora kernels: ran 5 kernels\n");
    return 0;
}
