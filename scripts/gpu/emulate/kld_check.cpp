// kld_check.cpp: runs kld_rows (kernels/cuda/kld.cu, included by
// kernels.cu) on the CPU (emu.h) over the logits in the cases file and
// writes its stats, which the Go test kernels/cuda TestKLDKernelEmulated
// (which also writes the cases, compiles and runs this) compares with the
// fake device's Go version (serial float64 sums, as eval.KLDAcc.Add): to
// 1e-12 relative (block reductions sum in another order), argmax exactly.
//
// Cases file (little-endian): "KL1\n", i32 N, i32 V, f32 lb[N*V],
// f32 lq[N*V], i32 targets[N]. Output: f64 stats[4*N].
//
//   go test ./kernels/cuda -run TestKLDKernelEmulated -v
#define TUNE_EMULATE 1
#include "emu.h"
#include "../../../kernels/cuda/kernels.cu"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <vector>

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: kld_check CASES OUT\n");
        return 2;
    }
    std::ifstream in(argv[1], std::ios::binary);
    std::vector<unsigned char> b((std::istreambuf_iterator<char>(in)), {});
    if (b.size() < 12 || std::memcmp(b.data(), "KL1\n", 4) != 0) throw std::runtime_error("not a KL1 cases file");
    int N, V;
    std::memcpy(&N, &b[4], 4);
    std::memcpy(&V, &b[8], 4);
    size_t need = 12 + (size_t)N * V * 8 + (size_t)N * 4;
    if (b.size() != need) throw std::runtime_error("cases file size");
    std::vector<float> lb((size_t)N * V), lq((size_t)N * V);
    std::vector<int> tg(N);
    std::memcpy(lb.data(), &b[12], lb.size() * 4);
    std::memcpy(lq.data(), &b[12 + lb.size() * 4], lq.size() * 4);
    std::memcpy(tg.data(), &b[12 + lb.size() * 8], tg.size() * 4);
    std::vector<double> st(4 * (size_t)N);
    emu_launch(N, 256, [&] { kld_rows(st.data(), lb.data(), lq.data(), tg.data(), N, V); });
    std::ofstream o(argv[2], std::ios::binary);
    o.write((const char*)st.data(), st.size() * 8);
    std::printf("kld_rows: %d rows of %d\n", N, V);
    return 0;
}
