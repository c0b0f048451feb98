// dequant_check.cpp: runs the dequant_* kernels of kernels/cuda/kernels.cu
// (its "// ---- dequant" section, extracted to the file named by DQ_SRC) on
// the CPU (emu.h) over random blocks, and compares every output bit with
// kernels/qblock's Go dequantizers. The cases file (written by the Go test
// kernels/cuda TestDequantEmulated, which also compiles and runs this) is
//
//   "DQ1\n", u32 cases, then per case: u32 len + name, u32 len + kernel,
//   i32 E (block width for dequant_int4/int8), i64 n elements, i64 bytes,
//   the raw blocks, n u32 fp32 bit patterns, n u16 bf16 bit patterns
//
// all little-endian. Prints one line per case and kernel mode; exit 1 on
// any mismatch (two NaNs match: a GPU canonicalizes NaN payloads).
//
//   go test ./kernels/cuda -run TestDequantEmulated -v    (does all of it)
#define TUNE_EMULATE 1
#include "emu.h"
#include DQ_SRC

#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

static const unsigned ewThreads = 256;

struct reader {
    std::vector<unsigned char> b;
    size_t at = 0;
    template <class T>
    T get() {
        T v;
        if (at + sizeof(T) > b.size()) throw std::runtime_error("short cases file");
        std::memcpy(&v, &b[at], sizeof(T));
        at += sizeof(T);
        return v;
    }
    std::string str() {
        uint32_t n = get<uint32_t>();
        if (at + n > b.size()) throw std::runtime_error("short cases file");
        std::string s((const char*)&b[at], n);
        at += n;
        return s;
    }
    const unsigned char* bytes(size_t n) {
        if (at + n > b.size()) throw std::runtime_error("short cases file");
        const unsigned char* p = &b[at];
        at += n;
        return p;
    }
};

static bool run(const std::string& k, void* out, const unsigned char* src, long long n, int bf16, int E) {
    unsigned g = (unsigned)((n + ewThreads - 1) / ewThreads);
#define DQ4(name) \
    if (k == #name) return emu_launch(g, ewThreads, [&] { name(out, src, n, bf16); }), true;
    DQ4(dequant_q4_0) DQ4(dequant_q4_1) DQ4(dequant_q5_0) DQ4(dequant_q5_1) DQ4(dequant_q8_0)
    DQ4(dequant_q2_k) DQ4(dequant_q3_k) DQ4(dequant_q4_k) DQ4(dequant_q5_k) DQ4(dequant_q6_k) DQ4(dequant_nf4)
    if (k == "dequant_int4") return emu_launch(g, ewThreads, [&] { dequant_int4(out, src, n, bf16, E); }), true;
    if (k == "dequant_int8") return emu_launch(g, ewThreads, [&] { dequant_int8(out, src, n, bf16, E); }), true;
    return false;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: dequant_check CASES\n");
        return 2;
    }
    std::ifstream f(argv[1], std::ios::binary);
    reader r{std::vector<unsigned char>((std::istreambuf_iterator<char>(f)), {})};
    if (r.b.size() < 4 || std::memcmp(r.b.data(), "DQ1\n", 4) != 0) {
        std::fprintf(stderr, "%s: not a DQ1 cases file\n", argv[1]);
        return 2;
    }
    r.at = 4;
    int bad = 0;
    uint32_t cases = r.get<uint32_t>();
    for (uint32_t c = 0; c < cases; c++) {
        std::string name = r.str(), kernel = r.str();
        int E = r.get<int32_t>();
        long long n = r.get<int64_t>(), nb = r.get<int64_t>();
        const unsigned char* raw = r.bytes(nb);
        std::vector<uint32_t> want32(n);
        std::vector<uint16_t> want16(n);
        std::memcpy(want32.data(), r.bytes(4 * n), 4 * n);
        std::memcpy(want16.data(), r.bytes(2 * n), 2 * n);
        for (int bf16 = 0; bf16 < 2; bf16++) {
            std::vector<uint32_t> got32(n, 0xdeadbeef);
            std::vector<uint16_t> got16(n, 0xdead);
            void* out = bf16 ? (void*)got16.data() : (void*)got32.data();
            if (!run(kernel, out, raw, n, bf16, E)) {
                std::fprintf(stderr, "%s: unknown kernel %s\n", name.c_str(), kernel.c_str());
                return 2;
            }
            long long mism = 0, first = -1, nans = 0;
            for (long long i = 0; i < n; i++) {
                bool nanG, nanW, eq;
                if (bf16) {
                    nanG = (got16[i] & 0x7fff) > 0x7f80, nanW = (want16[i] & 0x7fff) > 0x7f80, eq = got16[i] == want16[i];
                } else {
                    nanG = (got32[i] & 0x7fffffff) > 0x7f800000, nanW = (want32[i] & 0x7fffffff) > 0x7f800000, eq = got32[i] == want32[i];
                }
                nans += nanW;
                if (!eq && !(nanG && nanW)) {
                    if (first < 0) first = i;
                    mism++;
                }
            }
            std::printf("%-10s %-14s %-5s %7lld elements %5lld NaN: ", name.c_str(), kernel.c_str(), bf16 ? "bf16" : "fp32", n, nans);
            if (mism == 0) {
                std::printf("bit-exact\n");
                continue;
            }
            bad++;
            if (bf16)
                std::printf("%lld MISMATCHES, first at %lld: got %04x want %04x\n", mism, first, got16[first], want16[first]);
            else
                std::printf("%lld MISMATCHES, first at %lld: got %08x want %08x\n", mism, first, got32[first], want32[first]);
        }
    }
    return bad ? 1 : 0;
}
