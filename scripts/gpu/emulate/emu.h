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
