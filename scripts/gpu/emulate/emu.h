// emu.h: just enough of CUDA to run kernels/cuda/kernels.cu on the CPU, for
// checking the kernels' indexing, reductions and online softmax where there
// is no GPU. One OS thread per CUDA thread, blocks one after another (so
// __shared__ can be a plain static), std::barrier for __syncthreads and for
// warp shuffles. Slow and only as exact as the host's libm: a logic check,
// not a substitute for running on a device.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

struct emu_dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct emu_warp {
    std::unique_ptr<std::barrier<>> bar;
    uint64_t slot[32];
};
inline std::barrier<>* emu_block_barrier;
inline std::vector<emu_warp>* emu_warps;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int o) {
    static_assert(sizeof(T) <= 8);
    emu_warp& w = (*emu_warps)[threadIdx.x / 32];
    int lane = threadIdx.x % 32;
    w.bar->arrive_and_wait();  // everyone has read the previous exchange
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    w.slot[lane] = u;
    w.bar->arrive_and_wait();
    T r;
    uint64_t ru = w.slot[lane ^ o];
    std::memcpy(&r, &ru, sizeof(T));
    return r;
}

inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
struct float4 {
    float x, y, z, w;
};
struct __half {
    unsigned short bits;
};
inline __half __ushort_as_half(unsigned short b) { return __half{b}; }
inline float __half2float(__half h) {
    unsigned s = (h.bits >> 15) & 1, e = (h.bits >> 10) & 31, m = h.bits & 1023;
    float v;
    if (e == 0) v = std::ldexp((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = std::ldexp((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}

// emu_launch runs body() as grid blocks of block threads: block OS threads
// live for the whole grid and step through the blocks together (a block
// ends when all its threads have returned, so __shared__ statics are never
// shared by two blocks).
template <class F>
void emu_launch(unsigned grid, unsigned block, F body) {
    blockDim = {block, 1, 1};
    gridDim = {grid, 1, 1};
    std::barrier<> bar(block), end(block);
    emu_block_barrier = &bar;
    std::vector<emu_warp> warps((block + 31) / 32);
    for (unsigned w = 0; w < warps.size(); w++) warps[w].bar = std::make_unique<std::barrier<>>(std::min(32u, block - 32 * w));
    emu_warps = &warps;
    std::vector<std::thread> th;
    th.reserve(block);
    for (unsigned t = 0; t < block; t++)
        th.emplace_back([&, t] {
            for (unsigned b = 0; b < grid; b++) {
                threadIdx = {t, 0, 0};
                blockIdx = {b, 0, 0};
                body();
                end.arrive_and_wait();
            }
        });
    for (auto& x : th) x.join();
}

// ---- warp votes, bf16 and nvcuda::wmma (for the tensor-core attention) -------------

#define __align__(n) __attribute__((aligned(n)))
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

inline void __syncwarp(unsigned = 0xffffffff) { (*emu_warps)[threadIdx.x / 32].bar->arrive_and_wait(); }

inline bool __any_sync(unsigned, bool p) {
    emu_warp& w = (*emu_warps)[threadIdx.x / 32];
    int lane = threadIdx.x % 32, n = (int)std::min(32u, blockDim.x - threadIdx.x / 32 * 32);
    w.bar->arrive_and_wait();
    w.slot[lane] = p;
    w.bar->arrive_and_wait();
    bool any = false;
    for (int i = 0; i < n; i++) any = any || w.slot[i];
    return any;
}

// __nv_bfloat16: the bits; conversion from float rounds to nearest even (NaN
// stays NaN), as cuda_bf16.h's __float2bfloat16.
struct __nv_bfloat16 {
    unsigned short bits;
};
inline __nv_bfloat16 __float2bfloat16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(unsigned short)((u >> 16) | 0x40)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(unsigned short)(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((unsigned)h.bits << 16); }

// nvcuda::wmma, m16n16k16 only. The real fragment layout across a warp's lanes is
// opaque; the API is collective and every lane of the warp sees the same matrix.
// So here each thread's fragment holds the whole 16x16 tile (x[i*16+j] = element
// (i, j), whatever the layout), load/mma/store run per thread (all lanes store the
// same values), and nothing synchronizes: a kernel must __syncwarp between lanes'
// shared-memory writes and a fragment load, as on the device. mma_sync
// accumulates a*b (products of bf16 are exact in float) in float, k ascending.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "emu.h: wmma m16n16k16 only");
    float x[256];
};

template <class Use, class T, class L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& a, float v) {
    for (float& e : a.x) e = v;
}

inline float emu_elem(const __nv_bfloat16& h) { return __bfloat162float(h); }
inline float emu_elem(const float& f) { return f; }

// Operand fragments: element (i, j) at p[i*ldm + j] (row_major) or p[i + j*ldm].
template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& a, const T* p, unsigned ldm) {
    static_assert(!std::is_same_v<Use, accumulator>, "emu.h: an accumulator load needs a layout");
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) a.x[i * 16 + j] = emu_elem(std::is_same_v<L, row_major> ? p[i * ldm + j] : p[i + j * ldm]);
}

template <class T>
void load_matrix_sync(fragment<accumulator, 16, 16, 16, T, void>& a, const float* p, unsigned ldm, layout_t l) {
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) a.x[i * 16 + j] = l == mem_row_major ? p[i * ldm + j] : p[i + j * ldm];
}

template <class T>
void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, T, void>& a, unsigned ldm, layout_t l) {
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) (l == mem_row_major ? p[i * ldm + j] : p[i + j * ldm]) = a.x[i * 16 + j];
}

template <class TA, class LA, class TB, class LB, class TC>
void mma_sync(fragment<accumulator, 16, 16, 16, TC, void>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, TC, void>& c) {
    float r[256];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s = c.x[i * 16 + j];
            for (int k = 0; k < 16; k++) s += a.x[i * 16 + k] * b.x[k * 16 + j];
            r[i * 16 + j] = s;
        }
    std::memcpy(d.x, r, sizeof r);
}
}  // namespace wmma
}  // namespace nvcuda
