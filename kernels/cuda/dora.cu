// dora.cu: the DoRA kernels of the device-resident LoRA pass (devpass.go's
// dora*.go), included at the end of kernels.cu (one PTX module). Each is
// lora/dora.go's loop on the device, float for float in the same order
// (PTX built with --fmad=false), so the fake device's Go versions
// (fakedev_test.go) and the CPU's DoRA agree with them bit for bit on equal
// inputs; scripts/gpu/emulate/dora_check.cpp checks that on the CPU.

// dora_row_norm: out[r] = sqrt(sum_c in[r,c]^2), the sum in double (as
// ensureNorm), one warp per row: lane l sums c = l, l+32, ..., then a
// butterfly over the lanes.
extern "C" __global__ void dora_row_norm(float* out, const float* in, int rows, int C) {
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= rows) return;  // the whole warp: one row per warp
    const float* x = in + (long long)row * C;
    double s = 0;
    for (int c = lane; c < C; c += WARP) {
        double v = (double)x[c];
        s += v * v;
    }
    for (int o = WARP / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) out[row] = (float)sqrt(s);
}

// dora_mn: mn[j] = mag[j] / norm[j].
extern "C" __global__ void dora_mn(float* mn, const float* mag, const float* norm, int n) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) mn[j] = mag[j] / norm[j];
}

// dora_fwd: out[t,j] += (mn[j] - 1)·base[t,j] + mn[j]·y[t,j]·s, y = u·Bᵀ
// unscaled. base == NULL: base = out - bias (PEFT's result - bias, the
// no-dropout case; bias may be NULL).
extern "C" __global__ void dora_fwd(float* out, const float* base, const float* y, const float* mn, const float* bias, float s,
                                    int T, int OC) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)T * OC) return;
    int j = (int)(i % OC);
    float b;
    if (base) b = base[i];
    else b = bias ? out[i] - bias[j] : out[i];
    float m = mn[j];
    out[i] += (m - 1.f) * b + m * y[i] * s;
}

// dora_dmag: dmag[j] += (sum_t g[t,j]·(base[t,j] + y[t,j]·s)) / norm[j], the
// sum serial over t in float (one thread per column; neighbours read
// neighbouring addresses).
extern "C" __global__ void dora_dmag(float* dmag, const float* g, const float* base, const float* y, const float* norm, float s,
                                     int T, int OC) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= OC) return;
    float acc = 0.f;
    for (int t = 0; t < T; t++) {
        long long i = (long long)t * OC + j;
        acc += g[i] * (base[i] + y[i] * s);
    }
    dmag[j] += acc / norm[j];
}

// dora_colscale: dst[t,j] = (mn[j] - minus1)·g[t,j] (minus1 0: the low-rank
// branch's dout; 1: the base input grad's extra (mn - 1)·g).
extern "C" __global__ void dora_colscale(float* dst, const float* g, const float* mn, int minus1, long long n, int OC) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float m = mn[i % OC];
    if (minus1) m = m - 1.f;
    dst[i] = m * g[i];
}
