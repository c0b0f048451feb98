// attn_tc_check.cpp: runs the tensor-core attention kernels of kernels/cuda/kernels.cu
// ("// ---- tensor-core attention") on the CPU (emu.h, with its whole-tile nvcuda::wmma)
// over the cases in the cases file and writes their outputs; the Go test
// kernels/cuda TestAttentionTCEmulated writes the cases, compiles and runs this, and
// compares the outputs with a float64 attention written in the test.
//
// Cases file (little-endian): "AT1\n", i32 n, then n cases of
//   i32 T, NH, KVH, HD, window, hasSeg; i32 seg[T] (when hasSeg);
//   f32 q[T*NH*HD], k[T*KVH*HD], v[T*KVH*HD], dout[T*NH*HD]
// Output file, per case: f32 out[T*NH*HD], lse[T*NH], dq[T*NH*HD], dk[T*KVH*HD], dv[T*KVH*HD].
// The backward runs on the forward's out and lse, as the device pass does.
//
//   go test ./kernels/cuda -run TestAttentionTCEmulated -v
#define TUNE_EMULATE 1
#include "emu.h"
#include "../../../kernels/cuda/kernels.cu"

#include "emu_io.h"

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: attn_tc_check CASES OUT\n");
        return 2;
    }
    reader r = open_cases(argv[1], "AT1\n");
    int n = r.one<int>();
    std::ofstream o(argv[2], std::ios::binary);
    for (int c = 0; c < n; c++) {
        int T = r.one<int>(), NH = r.one<int>(), KVH = r.one<int>(), HD = r.one<int>(), window = r.one<int>(), hasSeg = r.one<int>();
        auto seg = r.get<int>(hasSeg ? T : 0);
        // Odd cases put the inputs 4 bytes off 16-byte alignment: the kernels' scalar
        // load path (even cases: float4).
        int off = c % 2;
        auto get = [&](size_t n) {
            auto x = r.get<float>(n);
            x.insert(x.begin(), off, 0.f);
            return x;
        };
        auto qb = get((size_t)T * NH * HD), kb = get((size_t)T * KVH * HD), vb = get((size_t)T * KVH * HD), db = get((size_t)T * NH * HD);
        const float *q = qb.data() + off, *k = kb.data() + off, *v = vb.data() + off, *dout = db.data() + off;
        const int* sp = hasSeg ? seg.data() : nullptr;
        float scale = 1.f / std::sqrt((float)HD);
        std::vector<float> out((size_t)T * NH * HD), lse((size_t)T * NH), dsum((size_t)T * NH), dq(out.size()), dk((size_t)T * KVH * HD), dv((size_t)T * KVH * HD);
        unsigned nt = (T + 63) / 64;
        emu_launch(nt * NH, 128, [&] { attention_fwd_tc(out.data(), lse.data(), q, k, v, sp, T, NH, KVH, HD, window, scale); });
        emu_launch((T * NH + 3) / 4, 128, [&] { attention_bwd_tc_pre(dsum.data(), dout, out.data(), T * NH, HD); });
        emu_launch(nt * NH, 128, [&] {
            attention_bwd_tc_dq(dq.data(), lse.data(), dsum.data(), dout, q, k, v, sp, T, NH, KVH, HD, window, scale);
        });
        emu_launch(nt * KVH, 128, [&] {
            attention_bwd_tc_dkv(dk.data(), dv.data(), lse.data(), dsum.data(), dout, q, k, v, sp, T, NH, KVH, HD,
                                 window, scale);
        });
        put(o, out);
        put(o, lse);
        put(o, dq);
        put(o, dk);
        put(o, dv);
        std::printf("case %d: T %d NH %d KVH %d HD %d window %d seg %d\n", c, T, NH, KVH, HD, window, hasSeg);
    }
    return 0;
}
