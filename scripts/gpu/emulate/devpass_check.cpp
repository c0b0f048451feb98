// devpass_check.cpp: runs the kernels of the "// ---- device-resident pass"
// section of kernels/cuda/kernels.cu on the CPU (emu.h) over the inputs in
// the cases file and writes their outputs, which the Go test
// kernels/cuda TestDevicePassKernelsEmulated (which also writes the cases,
// compiles and runs this) compares with the fake device's Go versions of
// the same kernels, the ones every CI test of the device pass runs on.
//
// Cases file (little-endian): "DP1\n", then
//   gather/scatter: f32 in[10*7], i32 idx[4]
//   scale: f32 x[1000], f32 s
//   sum: f64 v[333]
//   sumsq: f32 x[5000]
//   dropout: f32 in[3000], u64 key, u64 thresh, f32 scale, f32 din[3000]
// Output file: f32 gather[4*7], f32 scatter[10*7], f32 scale[1000],
// f64 sum, f64 sumsq parts[8], f32 dropout[3000], f32 dropout_add[3000].
//
//   go test ./kernels/cuda -run TestDevicePassKernelsEmulated -v
#define TUNE_EMULATE 1
#include "emu.h"
#include "../../../kernels/cuda/kernels.cu"

#include "emu_io.h"

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: devpass_check CASES OUT\n");
        return 2;
    }
    reader r = open_cases(argv[1], "DP1\n");
    const int rows = 10, W = 7, n = 4;
    auto g_in = r.get<float>(rows * W);
    auto idx = r.get<int>(n);
    auto sc_x = r.get<float>(1000);
    float s = r.one<float>();
    auto sv = r.get<double>(333);
    auto sq = r.get<float>(5000);
    auto d_in = r.get<float>(3000);
    auto key = r.one<unsigned long long>();
    auto th = r.one<unsigned long long>();
    float dscale = r.one<float>();
    auto din = r.get<float>(3000);

    std::vector<float> gather(n * W), scatter(rows * W, 0.f), scaled(1000), drop(3000);
    emu_launch(n, 64, [&] { gather_rows(gather.data(), g_in.data(), idx.data(), n, W); });
    emu_launch(n, 64, [&] { scatter_rows(scatter.data(), gather.data(), idx.data(), n, W); });
    emu_launch(4, 256, [&] { scale_f32(scaled.data(), sc_x.data(), s, 1000); });
    std::vector<double> sum(1), parts(8);
    emu_launch(1, 32, [&] { sum_f64(sum.data(), sv.data(), 333); });
    emu_launch(8, 256, [&] { sumsq_f64(parts.data(), sq.data(), 5000); });
    emu_launch(12, 256, [&] { lora_dropout(drop.data(), d_in.data(), key, th, dscale, 3000); });
    emu_launch(12, 256, [&] { lora_dropout_add(din.data(), d_in.data(), key, th, dscale, 3000); });

    std::ofstream o(argv[2], std::ios::binary);
    put(o, gather);
    put(o, scatter);
    put(o, scaled);
    put(o, sum);
    put(o, parts);
    put(o, drop);
    put(o, din);
    std::printf("devpass kernels: ran 7 kernels\n");
    return 0;
}
