// CUDA kernels of the tune op set (see kernels/backend.go for each op's
// definition). Compiled to PTX for compute_80 by `make kernels` (nvcc -ptx);
// the PTX is committed as kernels.ptx and embedded, and the driver JITs it for
// the GPU it runs on (sm_80, sm_90, ...). No C++ runtime, no headers beyond
// what nvcc implies: every kernel is extern "C" so its PTX name is stable.
//
// Straightforward first: one block per row for reductions, one warp per
// (query row, head) for attention with an online softmax (flash-decoding
// style: no T x T matrix), one thread per column where a reduction over rows
// must run in ascending order to match the CPU backend bit for bit.
//
// Shapes follow kernels/backend.go: T rows, C width, NH query heads, KVH
// key/value heads, HD head dim. Token ids and segment starts are int32 here
// (the Go side converts).

#ifndef TUNE_EMULATE  // scripts/gpu/emulate runs this file on the CPU
#include <cuda_fp16.h>
#endif

#define WARP 32
#define MAX_HD 256
#define HD_PER_LANE (MAX_HD / WARP)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// block_sum_d reduces a double over the block (blockDim.x a multiple of 32,
// at most 1024). Every thread gets the total.
__device__ double block_sum_d(double v) {
    __shared__ double part[32];
    int lane = threadIdx.x % WARP, w = threadIdx.x / WARP, nw = blockDim.x / WARP;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) part[w] = v;
    __syncthreads();
    double t = 0;
    for (int i = 0; i < nw; i++) t += part[i];
    return t;
}

__device__ float block_max(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x % WARP, w = threadIdx.x / WARP, nw = blockDim.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[w] = v;
    __syncthreads();
    float t = -INFINITY;
    for (int i = 0; i < nw; i++) t = fmaxf(t, part[i]);
    return t;
}

// ---- embedding ----------------------------------------------------------

// out[t,:] = table[tokens[t],:]; grid T, block any.
extern "C" __global__ void embedding_fwd(float* out, const int* tokens, const float* table, int T, int C) {
    int t = blockIdx.x;
    if (t >= T) return;
    const float* row = table + (long long)tokens[t] * C;
    float* o = out + (long long)t * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = row[c];
}

// embedding_fwd from a bf16 table (a BF16 checkpoint's, as stored: half
// the device memory of an fp32 copy); widening bf16 to fp32 is exact.
extern "C" __global__ void embedding_fwd_bf16(float* out, const int* tokens, const unsigned short* table, int T, int C) {
    int t = blockIdx.x;
    if (t >= T) return;
    const unsigned short* row = table + (long long)tokens[t] * C;
    float* o = out + (long long)t * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = __uint_as_float((unsigned int)row[c] << 16);
}

// dtable[tokens[t],c] += dout[t,c] in ascending t: one thread per column, so
// no two threads touch the same element and the order matches the CPU.
extern "C" __global__ void embedding_bwd(float* dtable, const float* dout, const int* tokens, int T, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int t = 0; t < T; t++) dtable[(long long)tokens[t] * C + c] += dout[(long long)t * C + c];
}

// ---- RMSNorm -------------------------------------------------------------

// rstd of row x as the CPU computes it: sum of squares in double, mean and
// +eps in float, rsqrt in double rounded to float.
__device__ float row_rstd(const float* x, int C, float eps) {
    double ss = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += (double)x[c] * (double)x[c];
    ss = block_sum_d(ss);
    float mean = (float)(ss / (double)C);
    return (float)(1.0 / sqrt((double)(mean + eps)));
}

// out = w * (x * rstd); grid N, block 256. out may alias in.
extern "C" __global__ void rmsnorm_fwd(float* out, const float* in, const float* w, float eps, int N, int C) {
    int n = blockIdx.x;
    if (n >= N) return;
    const float* x = in + (long long)n * C;
    float inv = row_rstd(x, C, eps);
    float* o = out + (long long)n * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = w[c] * (x[c] * inv);
}

// din += rstd*w*dy - x*rstd³/C*sum(w*dy*x); rstd[n] saved for the dw pass.
extern "C" __global__ void rmsnorm_bwd_din(float* din, float* rstd, const float* dout, const float* in, const float* w, float eps, int N, int C) {
    int n = blockIdx.x;
    if (n >= N) return;
    const float* x = in + (long long)n * C;
    const float* dy = dout + (long long)n * C;
    float inv = row_rstd(x, C, eps);
    double dot = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += (double)w[c] * (double)dy[c] * (double)x[c];
    dot = block_sum_d(dot);
    float k = (float)(dot * (double)inv * (double)inv * (double)inv / (double)C);
    float* dx = din + (long long)n * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dx[c] += inv * w[c] * dy[c] - k * x[c];
    if (threadIdx.x == 0) rstd[n] = inv;
}

// dw[c] += sum_n dout*x*rstd, ascending n, one thread per column.
extern "C" __global__ void rmsnorm_bwd_dw(float* dw, const float* rstd, const float* dout, const float* in, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0;
    for (int n = 0; n < N; n++) s += dout[(long long)n * C + c] * in[(long long)n * C + c] * rstd[n];
    dw[c] += s;
}

// ---- RoPE ----------------------------------------------------------------

// Rotate-half RoPE in place; dir = +1 forward, -1 backward (inverse
// rotation). grid T*NH, block HD/2 (or fewer, strided).
extern "C" __global__ void rope(float* x, const float* cosb, const float* sinb, int T, int NH, int HD, int dir) {
    int th = blockIdx.x;
    if (th >= T * NH) return;
    int t = th / NH, half = HD / 2;
    float* h = x + (long long)th * HD;
    const float* cs = cosb + (long long)t * half;
    const float* sn = sinb + (long long)t * half;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float a = h[i], b = h[i + half], c = cs[i], s = sn[i];
        if (dir > 0) {
            h[i] = a * c - b * s;
            h[i + half] = b * c + a * s;
        } else {
            h[i] = a * c + b * s;
            h[i + half] = b * c - a * s;
        }
    }
}

// ---- attention -------------------------------------------------------------

// Lowest key query t (position p = pos0+t) may see.
__device__ __forceinline__ int key_lo(const int* segStart, int t, int p, int window) {
    int lo = segStart ? segStart[t] : 0;
    if (window > 0 && p - window + 1 > lo) lo = p - window + 1;
    return lo;
}

// One warp per (t, h), several warps per block. Lane l holds output dims
// l, l+32, ... (HD <= 256). Keys are visited in order with an online softmax
// (running max m, running sum l); no score matrix is stored.
// segStart == NULL: cache form (keys 0..pos0+t); else packed (pos0 = 0).
extern "C" __global__ void attention_fwd(float* out, const float* q, const float* k, const float* v, const int* segStart,
                                         int pos0, int T, int NH, int KVH, int HD, int window, float scale) {
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= T * NH) return;
    int t = row / NH, h = row % NH, g = h / (NH / KVH), kvd = KVH * HD;
    int p = pos0 + t;
    int lo = key_lo(segStart, t, p, window);
    const float* qr = q + (long long)row * HD;
    float qv[HD_PER_LANE], acc[HD_PER_LANE];
    for (int j = 0; j < HD_PER_LANE; j++) {
        int d = lane + j * WARP;
        qv[j] = d < HD ? qr[d] : 0.f;
        acc[j] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int s = lo; s <= p; s++) {
        const float* kr = k + (long long)s * kvd + g * HD;
        float dot = 0.f;
        for (int j = 0; j < HD_PER_LANE; j++) {
            int d = lane + j * WARP;
            if (d < HD) dot += qv[j] * kr[d];
        }
        float sc = warp_sum(dot) * scale;
        float mn = fmaxf(m, sc);
        float corr = expf(m - mn), e = expf(sc - mn);
        l = l * corr + e;
        const float* vr = v + (long long)s * kvd + g * HD;
        for (int j = 0; j < HD_PER_LANE; j++) {
            int d = lane + j * WARP;
            if (d < HD) acc[j] = acc[j] * corr + e * vr[d];
        }
        m = mn;
    }
    float inv = 1.f / l;
    float* o = out + (long long)row * HD;
    for (int j = 0; j < HD_PER_LANE; j++) {
        int d = lane + j * WARP;
        if (d < HD) o[d] = acc[j] * inv;
    }
}

// Backward pass 1, one warp per (t, h): lse[t,h] = log-sum-exp of the scaled
// scores; D[t,h] = sum_s P[t,s] (dout[t]·v[s]); dq[t] = scale * sum_s
// P[t,s] (dout[t]·v[s] - D) k[s]. Packed form only.
extern "C" __global__ void attention_bwd_q(float* dq, float* lse, float* dsum, const float* dout, const float* q, const float* k,
                                           const float* v, const int* segStart, int T, int NH, int KVH, int HD, int window, float scale) {
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= T * NH) return;
    int t = row / NH, h = row % NH, g = h / (NH / KVH), kvd = KVH * HD;
    int lo = key_lo(segStart, t, t, window);
    const float* qr = q + (long long)row * HD;
    const float* dor = dout + (long long)row * HD;
    float qv[HD_PER_LANE], dov[HD_PER_LANE], acc[HD_PER_LANE];
    for (int j = 0; j < HD_PER_LANE; j++) {
        int d = lane + j * WARP;
        qv[j] = d < HD ? qr[d] : 0.f;
        dov[j] = d < HD ? dor[d] : 0.f;
        acc[j] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int s = lo; s <= t; s++) {
        const float* kr = k + (long long)s * kvd + g * HD;
        float dot = 0.f;
        for (int j = 0; j < HD_PER_LANE; j++) {
            int d = lane + j * WARP;
            if (d < HD) dot += qv[j] * kr[d];
        }
        float sc = warp_sum(dot) * scale;
        float mn = fmaxf(m, sc);
        l = l * expf(m - mn) + expf(sc - mn);
        m = mn;
    }
    float L = m + logf(l);
    double D = 0;
    for (int s = lo; s <= t; s++) {
        const float* kr = k + (long long)s * kvd + g * HD;
        const float* vr = v + (long long)s * kvd + g * HD;
        float dot = 0.f, dp = 0.f;
        for (int j = 0; j < HD_PER_LANE; j++) {
            int d = lane + j * WARP;
            if (d < HD) {
                dot += qv[j] * kr[d];
                dp += dov[j] * vr[d];
            }
        }
        float P = expf(warp_sum(dot) * scale - L);
        D += (double)P * (double)warp_sum(dp);
    }
    float Df = (float)D;
    for (int s = lo; s <= t; s++) {
        const float* kr = k + (long long)s * kvd + g * HD;
        const float* vr = v + (long long)s * kvd + g * HD;
        float dot = 0.f, dp = 0.f;
        for (int j = 0; j < HD_PER_LANE; j++) {
            int d = lane + j * WARP;
            if (d < HD) {
                dot += qv[j] * kr[d];
                dp += dov[j] * vr[d];
            }
        }
        float P = expf(warp_sum(dot) * scale - L);
        float dS = P * (warp_sum(dp) - Df) * scale;
        for (int j = 0; j < HD_PER_LANE; j++) {
            int d = lane + j * WARP;
            if (d < HD) acc[j] += dS * kr[d];
        }
    }
    float* o = dq + (long long)row * HD;
    for (int j = 0; j < HD_PER_LANE; j++) {
        int d = lane + j * WARP;
        if (d < HD) o[d] = acc[j];
    }
    if (lane == 0) {
        lse[row] = L;
        dsum[row] = Df;
    }
}

// Backward pass 2, one warp per (key row s, kv head g): over every query
// head h of group g and every query t that sees s,
// dv[s] = sum P dout[t]; dk[s] = scale * sum P (dout[t]·v[s] - D) q[t].
// Each dk/dv row belongs to one warp: no atomics, deterministic.
extern "C" __global__ void attention_bwd_kv(float* dk, float* dv, const float* lse, const float* dsum, const float* dout,
                                            const float* q, const float* k, const float* v, const int* segStart,
                                            int T, int NH, int KVH, int HD, int window, float scale) {
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= T * KVH) return;
    int s = row / KVH, g = row % KVH, grp = NH / KVH, kvd = KVH * HD;
    const float* kr = k + (long long)s * kvd + g * HD;
    const float* vr = v + (long long)s * kvd + g * HD;
    float kv[HD_PER_LANE], vv[HD_PER_LANE], ak[HD_PER_LANE], av[HD_PER_LANE];
    for (int j = 0; j < HD_PER_LANE; j++) {
        int d = lane + j * WARP;
        kv[j] = d < HD ? kr[d] : 0.f;
        vv[j] = d < HD ? vr[d] : 0.f;
        ak[j] = 0.f;
        av[j] = 0.f;
    }
    int thi = T - 1;
    if (window > 0 && s + window - 1 < thi) thi = s + window - 1;
    for (int t = s; t <= thi; t++) {
        if (segStart[t] > s) continue;
        for (int h = g * grp; h < (g + 1) * grp; h++) {
            int qrow = t * NH + h;
            const float* qr = q + (long long)qrow * HD;
            const float* dor = dout + (long long)qrow * HD;
            float dot = 0.f, dp = 0.f;
            for (int j = 0; j < HD_PER_LANE; j++) {
                int d = lane + j * WARP;
                if (d < HD) {
                    dot += qr[d] * kv[j];
                    dp += dor[d] * vv[j];
                }
            }
            float P = expf(warp_sum(dot) * scale - lse[qrow]);
            float dS = P * (warp_sum(dp) - dsum[qrow]) * scale;
            for (int j = 0; j < HD_PER_LANE; j++) {
                int d = lane + j * WARP;
                if (d < HD) {
                    av[j] += P * dor[d];
                    ak[j] += dS * qr[d];
                }
            }
        }
    }
    float* okr = dk + (long long)s * kvd + g * HD;
    float* ovr = dv + (long long)s * kvd + g * HD;
    for (int j = 0; j < HD_PER_LANE; j++) {
        int d = lane + j * WARP;
        if (d < HD) {
            okr[d] = ak[j];
            ovr[d] = av[j];
        }
    }
}

// ---- elementwise -------------------------------------------------------------

// silu in the CPU's arithmetic: exp in double, rounded to float.
__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + (float)exp((double)-x)); }

extern "C" __global__ void swiglu_fwd(float* out, const float* gate, const float* up, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = gate[i];
    out[i] = x / (1.f + (float)exp((double)-x)) * up[i];
}

extern "C" __global__ void swiglu_bwd(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i], u = up[i], d = dout[i];
    float sg = sigmoidf_(g);
    dgate[i] = d * u * sg * (1.f + g * (1.f - sg));
    dup[i] = d * g * sg;
}

extern "C" __global__ void add_fwd(float* out, const float* a, const float* b, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = a[i] + b[i];
}

// out[t,o] += bias[o].
extern "C" __global__ void bias_add(float* out, const float* bias, int T, int OC) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)T * OC) return;
    out[i] += bias[i % OC];
}

// dbias[o] += sum_t dout[t,o], ascending t.
extern "C" __global__ void bias_bwd(float* dbias, const float* dout, int T, int OC) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= OC) return;
    float s = 0;
    for (int t = 0; t < T; t++) s += dout[(long long)t * OC + o];
    dbias[o] += s;
}

// ---- softmax and loss ----------------------------------------------------------

// grid N, block 256. out may alias in.
extern "C" __global__ void softmax_fwd(float* out, const float* in, int N, int C) {
    int n = blockIdx.x;
    if (n >= N) return;
    const float* x = in + (long long)n * C;
    float* o = out + (long long)n * C;
    float mx = -INFINITY;
    for (int c = threadIdx.x; c < C; c += blockDim.x) mx = fmaxf(mx, x[c]);
    mx = block_max(mx);
    double sum = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float e = (float)exp((double)(x[c] - mx));
        o[c] = e;
        sum += (double)e;
    }
    sum = block_sum_d(sum);
    float inv = (float)(1.0 / sum);
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] *= inv;
}

// nll[n] = log(sum exp(x - max)) + max - x[target], in double.
extern "C" __global__ void nll_fwd(double* nll, const float* logits, const int* targets, int N, int V) {
    int n = blockIdx.x;
    if (n >= N) return;
    const float* x = logits + (long long)n * V;
    float mx = -INFINITY;
    for (int c = threadIdx.x; c < V; c += blockDim.x) mx = fmaxf(mx, x[c]);
    mx = block_max(mx);
    double sum = 0;
    for (int c = threadIdx.x; c < V; c += blockDim.x) sum += exp((double)x[c] - (double)mx);
    sum = block_sum_d(sum);
    if (threadIdx.x == 0) nll[n] = log(sum) + (double)mx - (double)x[targets[n]];
}

// dlogits = dloss * (softmax - onehot); dlogits may alias logits.
extern "C" __global__ void nll_bwd(float* dlogits, const float* logits, const int* targets, float dloss, int N, int V) {
    int n = blockIdx.x;
    if (n >= N) return;
    const float* x = logits + (long long)n * V;
    float* d = dlogits + (long long)n * V;
    float mx = -INFINITY;
    for (int c = threadIdx.x; c < V; c += blockDim.x) mx = fmaxf(mx, x[c]);
    mx = block_max(mx);
    double sum = 0;
    for (int c = threadIdx.x; c < V; c += blockDim.x) sum += exp((double)x[c] - (double)mx);
    sum = block_sum_d(sum);
    __syncthreads();
    int tg = targets[n];
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        float p = (float)(exp((double)x[c] - (double)mx) / sum);
        d[c] = dloss * (p - (c == tg ? 1.f : 0.f));
    }
}

// ---- casts and optimizer ---------------------------------------------------------

// bf16 <-> f32 with round-to-nearest-even (NaN kept NaN), done on the bits so
// the result does not depend on the toolkit's intrinsics.
extern "C" __global__ void f32_to_bf16(unsigned short* out, const float* in, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int u = __float_as_uint(in[i]);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        out[i] = (unsigned short)((u >> 16) | 0x40);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    out[i] = (unsigned short)(u >> 16);
}

extern "C" __global__ void bf16_to_f32(float* out, const unsigned short* in, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = __uint_as_float(((unsigned int)in[i]) << 16);
}

extern "C" __global__ void f16_to_f32(float* out, const unsigned short* in, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = __half2float(__ushort_as_half(in[i]));
}

// AdamW as train.AdamW.Update computes it (torch's _single_tensor_adamw, op
// by op in float32; the file is compiled with --fmad=false so only the
// explicit fmaf calls fuse, where torch's CPU kernels fuse):
// p *= decay; m = g*a1 + m*b1; v = (a2*g)*g + v*b2;
// p += (step*m) / (sqrt(v)/bc2sqrt + eps), step = -lr/(1-b1^t).
extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, float decay, float b1, float b2, float a1, float a2,
                                 float bc2sqrt, float step, float eps, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float pi = p[i] * decay;
    float mi = fmaf(gi, a1, m[i] * b1);
    float vi = fmaf(a2 * gi, gi, v[i] * b2);
    m[i] = mi;
    v[i] = vi;
    float denom = sqrtf(vi) / bc2sqrt + eps;
    p[i] = pi + (step * mi) / denom;
}

// ---- dequant ---------------------------------------------------------------------
// Block-quantized weights (kernels/qblock: llama.cpp's GGUF blocks, NF4 with its
// double-quantized absmax decoded to fp32, the INT4/INT8 group-wise blocks of
// QLoRA bases) stay quantized in GPU memory; a matmul expands the rows it needs
// into an fp32 or bf16 tile (kernels/cuda/dequant.go) with one of these kernels,
// then runs the GEMM on the tile. One thread per output element: n elements of
// consecutive whole blocks at src (a row range of the weight) go to out[0..n),
// as float (bf16 == 0) or as bf16 with round-to-nearest-even (bf16 != 0).
// Each value is computed with the float32 operations of qblock's Go
// dequantizer in the same order (the PTX is built with --fmad=false, so no
// product and sum fuse), so the tile equals qblock.Dequantize* bit for bit;
// scripts/gpu/emulate/dequant_check.cpp checks that on the CPU. fp16 scales
// are decoded on the bits (dq_f16, as qblock's halfToFloat), not with the
// toolkit's intrinsic, so NaN payloads match too.

__device__ __forceinline__ float dq_f16(const unsigned char* p) {
    unsigned int h = (unsigned int)p[0] | ((unsigned int)p[1] << 8);
    unsigned int sign = (h & 0x8000u) << 16, em = h & 0x7fffu;
    if (em >= 0x0400u && em < 0x7c00u) return __uint_as_float(sign | (em << 13) + ((127u - 15u) << 23));
    if (em == 0x7c00u) return __uint_as_float(sign | 0x7f800000u);
    if (em > 0x7c00u) return __uint_as_float(sign | 0x7fc00000u | ((em & 0x3ffu) << 13));
    if (em == 0) return __uint_as_float(sign);
    unsigned int m = em, e = 127u - 15u + 1u;
    while ((m & 0x400u) == 0) {
        m <<= 1;
        e--;
    }
    return __uint_as_float(sign | (e << 23) | ((m & 0x3ffu) << 13));
}

__device__ __forceinline__ float dq_f32(const unsigned char* p) {
    return __uint_as_float((unsigned int)p[0] | ((unsigned int)p[1] << 8) | ((unsigned int)p[2] << 16) | ((unsigned int)p[3] << 24));
}

// dq_store writes element i as float or bf16 (f32_to_bf16's rounding).
__device__ __forceinline__ void dq_store(void* out, long long i, float x, int bf16) {
    if (!bf16) {
        ((float*)out)[i] = x;
        return;
    }
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        ((unsigned short*)out)[i] = (unsigned short)((u >> 16) | 0x40);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    ((unsigned short*)out)[i] = (unsigned short)(u >> 16);
}

// get_scale_min_k4 (qblock.ScaleMinK4).
__device__ __forceinline__ void dq_scale_min_k4(int j, const unsigned char* q, int* d, int* m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

#define DQ_INDEX                                                      \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
    if (i >= n) return;

// Q4_0 (18 bytes / 32): x = (q-8)*d.
extern "C" __global__ void dequant_q4_0(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 32) * 18;
    int j = (int)(i % 32);
    int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
    dq_store(out, i, (float)(q - 8) * dq_f16(b), bf16);
}

// Q4_1 (20 bytes / 32): x = q*d + m.
extern "C" __global__ void dequant_q4_1(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 32) * 20;
    int j = (int)(i % 32);
    int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
    float p = (float)q * dq_f16(b);
    dq_store(out, i, p + dq_f16(b + 2), bf16);
}

// dq_q5 is qblock's unpackQ5: the 5-bit level of element j from qh (4 bytes) then qs.
__device__ __forceinline__ int dq_q5(const unsigned char* b, int j) {
    unsigned int qh = (unsigned int)b[0] | ((unsigned int)b[1] << 8) | ((unsigned int)b[2] << 16) | ((unsigned int)b[3] << 24);
    int lo = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
    return lo | (int)((qh >> j) & 1u) << 4;
}

// Q5_0 (22 bytes / 32): x = (q-16)*d.
extern "C" __global__ void dequant_q5_0(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 32) * 22;
    dq_store(out, i, (float)(dq_q5(b + 2, (int)(i % 32)) - 16) * dq_f16(b), bf16);
}

// Q5_1 (24 bytes / 32): x = q*d + m.
extern "C" __global__ void dequant_q5_1(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 32) * 24;
    float p = (float)dq_q5(b + 4, (int)(i % 32)) * dq_f16(b);
    dq_store(out, i, p + dq_f16(b + 2), bf16);
}

// Q8_0 (34 bytes / 32): x = q*d, q signed.
extern "C" __global__ void dequant_q8_0(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 32) * 34;
    dq_store(out, i, (float)(signed char)b[2 + i % 32] * dq_f16(b), bf16);
}

// Q2_K (84 bytes / 256): scales[16] qs[64] d dmin; x = dl*q - ml.
extern "C" __global__ void dequant_q2_k(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 256) * 84;
    int k = (int)(i % 256), half = k / 128, r = k % 128, s = r / 32, h = (r % 32) / 16, l = r % 16;
    int sc = b[half * 8 + s * 2 + h];
    float dl = dq_f16(b + 80) * (float)(sc & 0xF), ml = dq_f16(b + 82) * (float)(sc >> 4);
    int q = (b[16 + half * 32 + 16 * h + l] >> (2 * s)) & 3;
    float p = dl * (float)q;
    dq_store(out, i, p - ml, bf16);
}

// Q3_K (110 bytes / 256): hmask[32] qs[64] scales[12] d; x = d*(sc-32)*(q - 4*!hbit).
extern "C" __global__ void dequant_q3_k(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 256) * 110;
    int k = (int)(i % 256), half = k / 128, r = k % 128, s = r / 32, h = (r % 32) / 16, l = r % 16;
    int is = half * 8 + s * 2 + h;
    const unsigned char* sc = b + 96;
    int lo = is < 8 ? (sc[is] & 0xF) : (sc[is - 8] >> 4);
    int scale = (lo | (((sc[8 + is % 4] >> (2 * (is / 4))) & 3) << 4)) - 32;
    float dl = dq_f16(b + 108) * (float)scale;
    int v = (b[32 + half * 32 + 16 * h + l] >> (2 * s)) & 3;
    if ((b[16 * h + l] & (1 << (half * 4 + s))) == 0) v -= 4;
    dq_store(out, i, dl * (float)v, bf16);
}

// Q4_K (144 bytes / 256): d dmin scales[12] qs[128]; x = d*sc*q - dmin*m per 32.
extern "C" __global__ void dequant_q4_k(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 256) * 144;
    int k = (int)(i % 256), c = k / 64, r = k % 64, hi = r >= 32;
    int sc, m;
    dq_scale_min_k4(2 * c + hi, b + 4, &sc, &m);
    float d1 = dq_f16(b) * (float)sc, m1 = dq_f16(b + 2) * (float)m;
    int q = b[16 + c * 32 + r % 32];
    q = hi ? q >> 4 : q & 0xF;
    float p = d1 * (float)q;
    dq_store(out, i, p - m1, bf16);
}

// Q5_K (176 bytes / 256): d dmin scales[12] qh[32] qs[128].
extern "C" __global__ void dequant_q5_k(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 256) * 176;
    int k = (int)(i % 256), c = k / 64, r = k % 64, hi = r >= 32, l = r % 32;
    int sc, m;
    dq_scale_min_k4(2 * c + hi, b + 4, &sc, &m);
    float d1 = dq_f16(b) * (float)sc, m1 = dq_f16(b + 2) * (float)m;
    int q = b[48 + c * 32 + l];
    q = (hi ? q >> 4 : q & 0xF) + (((b[16 + l] >> (2 * c + hi)) & 1) ? 16 : 0);
    float p = d1 * (float)q;
    dq_store(out, i, p - m1, bf16);
}

// Q6_K (210 bytes / 256): ql[128] qh[64] scales[16] (int8) d; x = d*sc*(q-32) per 16.
extern "C" __global__ void dequant_q6_k(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 256) * 210;
    int k = (int)(i % 256), half = k / 128, r = k % 128, part = r / 32, l = r % 32;
    const unsigned char* ql = b + 64 * half;
    const unsigned char* qh = b + 128 + 32 * half;
    const unsigned char* sc = b + 192 + 8 * half;
    int lo = (part & 1) ? ql[l + 32] : ql[l];
    lo = (part & 2) ? lo >> 4 : lo & 0xF;
    int q = (lo | (((qh[l] >> (2 * part)) & 3) << 4)) - 32;
    float ds = dq_f16(b + 208) * (float)(signed char)sc[l / 16 + 2 * part];
    dq_store(out, i, ds * (float)q, bf16);
}

// NF4 (36 bytes / 64): fp32 absmax, 32 bytes of nibbles (element 2j high, 2j+1 low).
__device__ const float dq_nf4_values[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

extern "C" __global__ void dequant_nf4(void* out, const unsigned char* src, long long n, int bf16) {
    DQ_INDEX
    const unsigned char* b = src + (i / 64) * 36;
    int j = (int)(i % 64);
    int c = b[4 + j / 2];
    int q = (j & 1) ? c & 15 : c >> 4;
    dq_store(out, i, dq_nf4_values[q] * dq_f32(b), bf16);
}

// INT4 / INT4_32 (3+E/2 bytes / E, E = 128 or 32): fp16 scale, zero, nibbles
// (2j low, 2j+1 high); x = scale*(q-zero). E is a power of two: shifts, not
// 64-bit divisions.
extern "C" __global__ void dequant_int4(void* out, const unsigned char* src, long long n, int bf16, int E) {
    DQ_INDEX
    int sh = E == 128 ? 7 : 5;
    const unsigned char* b = src + (i >> sh) * (3 + E / 2);
    int j = (int)(i & (E - 1));
    int c = b[3 + j / 2];
    int q = (j & 1) ? c >> 4 : c & 15;
    dq_store(out, i, dq_f16(b) * (float)(q - (int)b[2]), bf16);
}

// INT8 / INT8_32 (3+E bytes / E, E = 128 or 32): fp16 scale, zero, codes;
// x = scale*(q-zero).
extern "C" __global__ void dequant_int8(void* out, const unsigned char* src, long long n, int bf16, int E) {
    DQ_INDEX
    int sh = E == 128 ? 7 : 5;
    const unsigned char* b = src + (i >> sh) * (3 + E);
    dq_store(out, i, dq_f16(b) * (float)((int)b[3 + (i & (E - 1))] - (int)b[2]), bf16);
}

// ---- device-resident pass --------------------------------------------------------
// Helpers of the device-resident LoRA training pass (kernels/cuda/devpass.go):
// row gathers for the chunked loss and the RoPE tables, scaling, the loss and
// grad-norm reductions, and LoRA dropout with lora/linear.go's counter-based
// mask (element i = t*C+c of a module's input is kept iff
// splitmix64(key + i*0x9e3779b97f4a7c15) >= thresh, kept values scaled).

// out[j,:] = in[idx[j],:] for n rows of width W.
extern "C" __global__ void gather_rows(float* out, const float* in, const int* idx, int n, int W) {
    int j = blockIdx.x;
    if (j >= n) return;
    const float* s = in + (long long)idx[j] * W;
    float* d = out + (long long)j * W;
    for (int c = threadIdx.x; c < W; c += blockDim.x) d[c] = s[c];
}

// out[idx[j],:] = in[j,:] for n rows of width W (idx distinct).
extern "C" __global__ void scatter_rows(float* out, const float* in, const int* idx, int n, int W) {
    int j = blockIdx.x;
    if (j >= n) return;
    const float* s = in + (long long)j * W;
    float* d = out + (long long)idx[j] * W;
    for (int c = threadIdx.x; c < W; c += blockDim.x) d[c] = s[c];
}

// out = s * in; out may alias in.
extern "C" __global__ void scale_f32(float* out, const float* in, float s, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = s * in[i];
}

// out[0] = in[0] + in[1] + ... in this order, by one thread: the CPU pass
// sums its per-row losses so, in float64.
extern "C" __global__ void sum_f64(double* out, const double* in, int n) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0;
    for (int i = 0; i < n; i++) s += in[i];
    out[0] = s;
}

// part[b] = sum of x[i]^2 in float64 over block b's grid-stride share of x.
extern "C" __global__ void sumsq_f64(double* part, const float* x, long long n) {
    double s = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        double v = (double)x[i];
        s += v * v;
    }
    s = block_sum_d(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// out = dropout(in): kept elements times scale, the others 0.
extern "C" __global__ void lora_dropout(float* out, const float* in, unsigned long long key, unsigned long long thresh, float scale,
                                        long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    bool keep = splitmix64(key + (unsigned long long)i * 0x9e3779b97f4a7c15ull) >= thresh;
    out[i] = keep ? in[i] * scale : 0.f;
}

// din += dropout(dx), the input grad through the same mask.
extern "C" __global__ void lora_dropout_add(float* din, const float* dx, unsigned long long key, unsigned long long thresh,
                                            float scale, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    bool keep = splitmix64(key + (unsigned long long)i * 0x9e3779b97f4a7c15ull) >= thresh;
    din[i] += keep ? dx[i] * scale : 0.f;
}

// ---- tensor-core attention (bf16 wmma) ---------------------------------------------
// FA2-style attention for the device pass's bf16 GEMM mode (kernels/cuda/attn_tc.go
// decides when). Same arguments, layouts and masks as attention_fwd /
// attention_bwd_q / attention_bwd_kv above (packed form: segStart[t] is the first row
// of t's document, or NULL for one document); the matrix products run on tensor cores
// with nvcuda::wmma bf16 m16n16k16 tiles and fp32 accumulation:
// q, k, v, dout (and P, dS) are rounded to bf16, everything else is fp32.
//
// A block is TC_WARPS warps; each warp owns 16 rows (queries for fwd and dq, keys for
// dkv) and keeps them as wmma fragments in registers: its operand rows (bf16) and its
// accumulators (fp32). The other side streams through shared memory in tiles of
// TC_BN rows. Fragment elements are never indexed (their layout is opaque): a score
// tile is stored to shared memory (store_matrix_sync), the per-row softmax work is
// done there by the warp's lanes (lane l: row l/2, half the columns), and the result
// goes back through load_matrix_sync. Tiles wholly outside every row's [key_lo(t), t]
// are skipped, per block and per warp: that is most of a causal, packed or windowed
// pass. The skips assume key_lo(t) nondecreasing in t (packed documents in order).
//
// Forward softmax: online, with a lazy running max: the rows' max m is only raised
// (and O, l rescaled through shared memory) when a tile's max exceeds it by more than
// TC_RESCALE, so P = exp(s - m) <= e^8 stays far from overflow and the rescale is
// rare; l and O use the same m, so the result is exact either way.
//
// HD a multiple of 16, at most 128 (the HD-dependent loops are unrolled for
// buckets 32, 64, 128 so fragments stay in registers; one entry point per kernel
// so its register count is the 128 bucket's). Static shared memory under 48 KB.

#ifndef TUNE_EMULATE
#include <cuda_bf16.h>
#include <mma.h>
#endif
using namespace nvcuda;

#define TC_WARPS 4
#define TC_BM (TC_WARPS * 16)  // rows a block owns
#define TC_BN 32               // rows of a streamed tile
#define TC_LDS (TC_BN + 4)     // fp32 score tile row stride
#define TC_LDP (TC_BN + 8)     // bf16 P / dS tile row stride
#define TC_MAXLD (128 + 8)     // bf16 operand row stride at HD 128 (HD + 8: keeps wmma's 32-byte alignment)
#define TC_RESCALE 8.f

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> tc_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> tc_b;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> tc_bt;  // Xᵀ of a row-major X
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> tc_acc;

// tc_load converts rows [r0, r0+n) of a [T, stride] fp32 matrix, columns [col,
// col+HD), to bf16 rows of dst (row stride ld); rows >= T become zeros (a zero K/V
// row times P = 0 stays 0; garbage could be NaN). All threads of the block.
__device__ __forceinline__ void tc_load(__nv_bfloat16* dst, int ld, const float* src, long long stride, int col, int r0, int n, int T,
                                        int HD) {
    int per = HD / 4;
    // stride, col and d are multiples of 4 (HD % 16 == 0): float4 loads when src is
    // 16-byte aligned (cuMemAlloc's and the device pass's buffers are).
    bool vec = ((unsigned long long)src & 15) == 0;
    for (int i = threadIdx.x; i < n * per; i += blockDim.x) {
        int r = i / per, d = (i % per) * 4;
        float x0 = 0.f, x1 = 0.f, x2 = 0.f, x3 = 0.f;
        if (r0 + r < T) {
            const float* s = src + (long long)(r0 + r) * stride + col + d;
            if (vec) {
                float4 x = *(const float4*)s;
                x0 = x.x;
                x1 = x.y;
                x2 = x.z;
                x3 = x.w;
            } else {
                x0 = s[0];
                x1 = s[1];
                x2 = s[2];
                x3 = s[3];
            }
        }
        __nv_bfloat16* o = dst + r * ld + d;
        o[0] = __float2bfloat16(x0);
        o[1] = __float2bfloat16(x1);
        o[2] = __float2bfloat16(x2);
        o[3] = __float2bfloat16(x3);
    }
}

// tc_own loads the warp's 16 rows [r0 + 16w, +16) of src as NF matrix_a fragments,
// staging through buf (all threads of the block; 64 rows of ld fit in buf).
template <int NF>
__device__ __forceinline__ void tc_own(tc_a* fr, __nv_bfloat16* buf, int ld, const float* src, long long stride, int col, int r0, int T,
                                       int HD) {
    __syncthreads();
    tc_load(buf, ld, src, stride, col, r0, TC_BM, T, HD);
    __syncthreads();
    int w = threadIdx.x / WARP;
#pragma unroll
    for (int f = 0; f < NF; f++)
        if (f < HD / 16) wmma::load_matrix_sync(fr[f], buf + w * 16 * ld + f * 16, ld);
}

// tc_accumulate: acc[f] += P·X[:, 16f..16f+15] for f < nf: P is the warp's
// 16 x TC_BN bf16 rows in shared memory (leading dimension TC_LDP), X a
// TC_BN-row bf16 tile (leading dimension ld). O += P·V in the forward, dq +=
// dS·K, dv += Pᵀ·dout and dk += dSᵀ·Q in the backward.
template <int NF>
__device__ __forceinline__ void tc_accumulate(tc_acc (&acc)[NF], int nf, const __nv_bfloat16* P, const __nv_bfloat16* X, int ld) {
    tc_a pf[TC_BN / 16];
#pragma unroll
    for (int kb = 0; kb < TC_BN / 16; kb++) wmma::load_matrix_sync(pf[kb], P + kb * 16, TC_LDP);
#pragma unroll
    for (int f = 0; f < NF; f++)
        if (f < nf) {
#pragma unroll
            for (int kb = 0; kb < TC_BN / 16; kb++) {
                tc_b xb;
                wmma::load_matrix_sync(xb, X + kb * 16 * ld + f * 16, ld);
                wmma::mma_sync(acc[f], pf[kb], xb, acc[f]);
            }
        }
}

// tc_two_products: the backward's two score-like products of a warp's 16
// rows against a TC_BN-row tile: for each 16-column block nb,
// S[:, nb] = A·Xᵀ and D[:, nb] = B·Yᵀ (A, B: the warp's operand fragments
// over nf 16-column chunks; X, Y: TC_BN rows of bf16 in shared memory,
// leading dimension ld), stored row-major into Sw and DPw (ld TC_LDS).
template <int NF>
__device__ __forceinline__ void tc_two_products(const tc_a (&A)[NF], const tc_a (&B)[NF], int nf, const __nv_bfloat16* X,
                                                const __nv_bfloat16* Y, int ld, float* Sw, float* DPw) {
#pragma unroll
    for (int nb = 0; nb < TC_BN / 16; nb++) {
        tc_acc s, dp;
        wmma::fill_fragment(s, 0.f);
        wmma::fill_fragment(dp, 0.f);
#pragma unroll
        for (int f = 0; f < NF; f++)
            if (f < nf) {
                tc_bt b;
                wmma::load_matrix_sync(b, X + nb * 16 * ld + f * 16, ld);
                wmma::mma_sync(s, A[f], b, s);
                wmma::load_matrix_sync(b, Y + nb * 16 * ld + f * 16, ld);
                wmma::mma_sync(dp, B[f], b, dp);
            }
        wmma::store_matrix_sync(Sw + nb * 16, s, TC_LDS, wmma::mem_row_major);
        wmma::store_matrix_sync(DPw + nb * 16, dp, TC_LDS, wmma::mem_row_major);
    }
}

// tc_write stores acc (the warp's 16 rows) times mul to rows r0.. of dst (stride,
// column col), rows < T; scratch is the warp's 16 x TC_LDS floats.
__device__ __forceinline__ void tc_write(float* dst, long long stride, int col, int r0, int T, const tc_acc& acc, float* scratch,
                                         float mul) {
    int lane = threadIdx.x % WARP, r = lane >> 1, c0 = (lane & 1) * 8;
    __syncwarp();
    wmma::store_matrix_sync(scratch, acc, TC_LDS, wmma::mem_row_major);
    __syncwarp();
    if (r0 + r < T)
        for (int c = 0; c < 8; c++) dst[(long long)(r0 + r) * stride + col + c0 + c] = scratch[r * TC_LDS + c0 + c] * mul;
    __syncwarp();
}

// A streamed tile [k0, k0+TC_BN) matters to the warp's rows [w0, wlast] iff it
// meets [key_lo(w0), wlast] (key_lo nondecreasing).
__device__ __forceinline__ bool tc_meets(int k0, int w0lo, int wlast) { return k0 <= wlast && k0 + TC_BN - 1 >= w0lo; }

template <int NF>
__device__ void attn_fwd_tc(unsigned char* sm, float* out, float* lse, const float* q, const float* k, const float* v, const int* segStart,
                            int T, int NH, int KVH, int HD, int window, float scale) {
    int nqt = (T + TC_BM - 1) / TC_BM;
    int qt = nqt - 1 - (int)(blockIdx.x / NH), h = blockIdx.x % NH;  // longest rows first
    int g = h / (NH / KVH), ld = HD + 8, nf = HD / 16;
    long long qs = (long long)NH * HD, ks = (long long)KVH * HD;
    __nv_bfloat16* Ks = (__nv_bfloat16*)sm;
    __nv_bfloat16* Vs = Ks + TC_BN * ld;
    float* S = (float*)(sm + 2 * TC_BN * TC_MAXLD * 2);
    __nv_bfloat16* P = (__nv_bfloat16*)(S + TC_WARPS * 16 * TC_LDS);
    float* corrs = (float*)(P + TC_WARPS * 16 * TC_LDP);
    int w = threadIdx.x / WARP, lane = threadIdx.x % WARP, r = lane >> 1, half = lane & 1;
    int t0 = qt * TC_BM, w0 = t0 + w * 16, tr = w0 + r;
    float* Sw = S + w * 16 * TC_LDS;
    __nv_bfloat16* Pw = P + w * 16 * TC_LDP;
    float* corrw = corrs + w * 16;
    bool warpOK = w0 < T, rowOK = tr < T;
    int wlast = min(w0 + 15, T - 1), wlo = warpOK ? key_lo(segStart, w0, w0, window) : 0;
    int lo = rowOK ? key_lo(segStart, tr, tr, window) : 0;

    tc_a qf[NF];
    tc_acc of[NF];
    tc_own<NF>(qf, Ks, ld, q, qs, h * HD, t0, T, HD);
#pragma unroll
    for (int f = 0; f < NF; f++) wmma::fill_fragment(of[f], 0.f);
    float m = -INFINITY, l = 0.f;
    int blast = min(t0 + TC_BM - 1, T - 1);
    for (int k0 = key_lo(segStart, t0, t0, window) / TC_BN * TC_BN; k0 <= blast; k0 += TC_BN) {
        __syncthreads();
        tc_load(Ks, ld, k, ks, g * HD, k0, TC_BN, T, HD);
        tc_load(Vs, ld, v, ks, g * HD, k0, TC_BN, T, HD);
        __syncthreads();
        if (!warpOK || !tc_meets(k0, wlo, wlast)) continue;
        // S = Q Kᵀ
#pragma unroll
        for (int nb = 0; nb < TC_BN / 16; nb++) {
            tc_acc s;
            wmma::fill_fragment(s, 0.f);
#pragma unroll
            for (int f = 0; f < NF; f++)
                if (f < nf) {
                    tc_bt kb;
                    wmma::load_matrix_sync(kb, Ks + nb * 16 * ld + f * 16, ld);
                    wmma::mma_sync(s, qf[f], kb, s);
                }
            wmma::store_matrix_sync(Sw + nb * 16, s, TC_LDS, wmma::mem_row_major);
        }
        __syncwarp();
        // Online softmax of row r, columns [half*16, +16).
        float sv[TC_BN / 2], mx = -INFINITY;
#pragma unroll
        for (int c = 0; c < TC_BN / 2; c++) {
            int col = half * (TC_BN / 2) + c, s = k0 + col;
            bool vis = rowOK && s >= lo && s <= tr;
            sv[c] = vis ? Sw[r * TC_LDS + col] * scale : -INFINITY;
            mx = fmaxf(mx, sv[c]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
        float corr = 1.f;
        bool resc = false;
        if (mx > m + TC_RESCALE) {  // also m = -inf, mx finite: O and l are still 0
            corr = expf(m - mx);
            resc = m != -INFINITY;
            m = mx;
        }
        float ps = 0.f;
#pragma unroll
        for (int c = 0; c < TC_BN / 2; c++) {
            float p = sv[c] == -INFINITY ? 0.f : expf(sv[c] - m);
            ps += p;
            Pw[r * TC_LDP + half * (TC_BN / 2) + c] = __float2bfloat16(p);
        }
        ps += __shfl_xor_sync(0xffffffff, ps, 1);
        l = l * corr + ps;
        if (half == 0) corrw[r] = corr;
        bool any = __any_sync(0xffffffff, resc);
        __syncwarp();
        if (any) {  // O *= corr per row, through shared memory (Sw is free now)
#pragma unroll
            for (int f = 0; f < NF; f++)
                if (f < nf) {
                    wmma::store_matrix_sync(Sw, of[f], TC_LDS, wmma::mem_row_major);
                    __syncwarp();
                    for (int c = 0; c < 8; c++) Sw[r * TC_LDS + half * 8 + c] *= corrw[r];
                    __syncwarp();
                    wmma::load_matrix_sync(of[f], Sw, TC_LDS, wmma::mem_row_major);
                    __syncwarp();
                }
        }
        // O += P V
        tc_accumulate<NF>(of, nf, Pw, Vs, ld);
        __syncwarp();
    }
    if (!warpOK) return;  // no block-wide barrier follows
    // Each lane's l is its row's (both lanes of a row hold it); tc_write's lane
    // mapping is the same (row lane/2).
    float inv = rowOK ? 1.f / l : 0.f;
#pragma unroll
    for (int f = 0; f < NF; f++)
        if (f < nf) tc_write(out, qs, h * HD + f * 16, w0, T, of[f], Sw, inv);
    if (lse && rowOK && half == 0) lse[(long long)tr * NH + h] = m + logf(l);
}

#define TC_FWD_SMEM (2 * TC_BN * TC_MAXLD * 2 + TC_WARPS * 16 * TC_LDS * 4 + TC_WARPS * 16 * TC_LDP * 2 + TC_WARPS * 16 * 4)

// grid ceil(T/64)*NH, block 128. lse may be NULL.
extern "C" __global__ void attention_fwd_tc(float* out, float* lse, const float* q, const float* k, const float* v, const int* segStart,
                                            int T, int NH, int KVH, int HD, int window, float scale) {
    __shared__ __align__(128) unsigned char sm[TC_FWD_SMEM];
    if (HD <= 32) attn_fwd_tc<2>(sm, out, lse, q, k, v, segStart, T, NH, KVH, HD, window, scale);
    else if (HD <= 64) attn_fwd_tc<4>(sm, out, lse, q, k, v, segStart, T, NH, KVH, HD, window, scale);
    else attn_fwd_tc<8>(sm, out, lse, q, k, v, segStart, T, NH, KVH, HD, window, scale);
}

// dsum[i] = sum_d dout[i,d] * out[i,d] (FA2's D) for rows i < rows; a warp per row,
// grid ceil(rows/4), block 128.
extern "C" __global__ void attention_bwd_tc_pre(float* dsum, const float* dout, const float* out, int rows, int HD) {
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (row >= rows) return;
    const float* a = dout + (long long)row * HD;
    const float* b = out + (long long)row * HD;
    float s = 0.f;
    for (int d = lane; d < HD; d += WARP) s += a[d] * b[d];
    s = warp_sum(s);
    if (lane == 0) dsum[row] = s;
}

template <int NF>
__device__ void attn_bwd_tc_dq(unsigned char* sm, float* dq, const float* lse, const float* dsum, const float* dout, const float* q,
                               const float* k, const float* v, const int* segStart, int T, int NH, int KVH, int HD, int window,
                               float scale) {
    int nqt = (T + TC_BM - 1) / TC_BM;
    int qt = nqt - 1 - (int)(blockIdx.x / NH), h = blockIdx.x % NH;
    int g = h / (NH / KVH), ld = HD + 8, nf = HD / 16;
    long long qs = (long long)NH * HD, ks = (long long)KVH * HD;
    __nv_bfloat16* Ks = (__nv_bfloat16*)sm;
    __nv_bfloat16* Vs = Ks + TC_BN * ld;
    float* S = (float*)(sm + 2 * TC_BN * TC_MAXLD * 2);
    float* DP = S + TC_WARPS * 16 * TC_LDS;
    __nv_bfloat16* P = (__nv_bfloat16*)(DP + TC_WARPS * 16 * TC_LDS);
    int w = threadIdx.x / WARP, lane = threadIdx.x % WARP, r = lane >> 1, half = lane & 1;
    int t0 = qt * TC_BM, w0 = t0 + w * 16, tr = w0 + r;
    float* Sw = S + w * 16 * TC_LDS;
    float* DPw = DP + w * 16 * TC_LDS;
    __nv_bfloat16* Pw = P + w * 16 * TC_LDP;
    bool warpOK = w0 < T, rowOK = tr < T;
    int wlast = min(w0 + 15, T - 1), wlo = warpOK ? key_lo(segStart, w0, w0, window) : 0;
    int lo = rowOK ? key_lo(segStart, tr, tr, window) : 0;
    float L = rowOK ? lse[(long long)tr * NH + h] : 0.f, D = rowOK ? dsum[(long long)tr * NH + h] : 0.f;

    tc_a qf[NF], df[NF];
    tc_acc acc[NF];
    tc_own<NF>(qf, Ks, ld, q, qs, h * HD, t0, T, HD);
    tc_own<NF>(df, Ks, ld, dout, qs, h * HD, t0, T, HD);
#pragma unroll
    for (int f = 0; f < NF; f++) wmma::fill_fragment(acc[f], 0.f);
    int blast = min(t0 + TC_BM - 1, T - 1);
    for (int k0 = key_lo(segStart, t0, t0, window) / TC_BN * TC_BN; k0 <= blast; k0 += TC_BN) {
        __syncthreads();
        tc_load(Ks, ld, k, ks, g * HD, k0, TC_BN, T, HD);
        tc_load(Vs, ld, v, ks, g * HD, k0, TC_BN, T, HD);
        __syncthreads();
        if (!warpOK || !tc_meets(k0, wlo, wlast)) continue;
        // S = Q Kᵀ, dP = dout Vᵀ
        tc_two_products<NF>(qf, df, nf, Ks, Vs, ld, Sw, DPw);
        __syncwarp();
        // dS = P (dP - D), P = exp(s*scale - lse)
#pragma unroll
        for (int c = 0; c < TC_BN / 2; c++) {
            int col = half * (TC_BN / 2) + c, s = k0 + col;
            bool vis = rowOK && s >= lo && s <= tr;
            float p = vis ? expf(Sw[r * TC_LDS + col] * scale - L) : 0.f;
            Pw[r * TC_LDP + col] = __float2bfloat16(p * (DPw[r * TC_LDS + col] - D));
        }
        __syncwarp();
        // dq += dS K
        tc_accumulate<NF>(acc, nf, Pw, Ks, ld);
        __syncwarp();
    }
    if (!warpOK) return;
#pragma unroll
    for (int f = 0; f < NF; f++)
        if (f < nf) tc_write(dq, qs, h * HD + f * 16, w0, T, acc[f], Sw, scale);
}

#define TC_DQ_SMEM (2 * TC_BN * TC_MAXLD * 2 + 2 * TC_WARPS * 16 * TC_LDS * 4 + TC_WARPS * 16 * TC_LDP * 2)

// grid ceil(T/64)*NH, block 128; lse from attention_fwd_tc, dsum from _pre.
extern "C" __global__ void attention_bwd_tc_dq(float* dq, const float* lse, const float* dsum, const float* dout, const float* q,
                                               const float* k, const float* v, const int* segStart, int T, int NH, int KVH, int HD,
                                               int window, float scale) {
    __shared__ __align__(128) unsigned char sm[TC_DQ_SMEM];
    if (HD <= 32) attn_bwd_tc_dq<2>(sm, dq, lse, dsum, dout, q, k, v, segStart, T, NH, KVH, HD, window, scale);
    else if (HD <= 64) attn_bwd_tc_dq<4>(sm, dq, lse, dsum, dout, q, k, v, segStart, T, NH, KVH, HD, window, scale);
    else attn_bwd_tc_dq<8>(sm, dq, lse, dsum, dout, q, k, v, segStart, T, NH, KVH, HD, window, scale);
}

// dkv: a block per (64 keys, kv head g); each warp owns 16 keys (their k and v rows
// as fragments, their dk and dv accumulators) and streams the query tiles that see
// them, for every query head of the group: Sᵀ = K Qᵀ, dPᵀ = V doutᵀ, then
// dv += Pᵀ dout, dk += dSᵀ Q.
template <int NF>
__device__ void attn_bwd_tc_dkv(unsigned char* sm, float* dk, float* dv, const float* lse, const float* dsum, const float* dout,
                                const float* q, const float* k, const float* v, const int* segStart, int T, int NH, int KVH, int HD,
                                int window, float scale) {
    int kt = blockIdx.x / KVH, g = blockIdx.x % KVH, grp = NH / KVH;  // earliest keys (most queries) first
    int ld = HD + 8, nf = HD / 16;
    long long qs = (long long)NH * HD, ks = (long long)KVH * HD;
    __nv_bfloat16* Qs = (__nv_bfloat16*)sm;
    __nv_bfloat16* Os = Qs + TC_BN * ld;
    float* S = (float*)(sm + 2 * TC_BN * TC_MAXLD * 2);
    float* DP = S + TC_WARPS * 16 * TC_LDS;
    __nv_bfloat16* P = (__nv_bfloat16*)(DP + TC_WARPS * 16 * TC_LDS);
    __nv_bfloat16* DS = P + TC_WARPS * 16 * TC_LDP;
    float* qlse = (float*)(DS + TC_WARPS * 16 * TC_LDP);
    float* qD = qlse + TC_BN;
    int* qlo = (int*)(qD + TC_BN);
    int w = threadIdx.x / WARP, lane = threadIdx.x % WARP, r = lane >> 1, half = lane & 1;
    int s0 = kt * TC_BM, w0 = s0 + w * 16, sr = w0 + r;
    float* Sw = S + w * 16 * TC_LDS;
    float* DPw = DP + w * 16 * TC_LDS;
    __nv_bfloat16* Pw = P + w * 16 * TC_LDP;
    __nv_bfloat16* DSw = DS + w * 16 * TC_LDP;
    bool warpOK = w0 < T, rowOK = sr < T;
    int wlast = min(w0 + 15, T - 1), blast = min(s0 + TC_BM - 1, T - 1);

    tc_a kf[NF], vf[NF];
    tc_acc dkf[NF], dvf[NF];
    tc_own<NF>(kf, Qs, ld, k, ks, g * HD, s0, T, HD);
    tc_own<NF>(vf, Qs, ld, v, ks, g * HD, s0, T, HD);
#pragma unroll
    for (int f = 0; f < NF; f++) {
        wmma::fill_fragment(dkf[f], 0.f);
        wmma::fill_fragment(dvf[f], 0.f);
    }
    for (int h = g * grp; h < (g + 1) * grp; h++) {
        for (int q0 = s0 / TC_BN * TC_BN; q0 < T; q0 += TC_BN) {
            // Queries from q0 on see none of the block's keys: past the window, or
            // (key_lo nondecreasing) in a later document.
            if (window > 0 && q0 > blast + window - 1) break;
            if (key_lo(segStart, q0, q0, window) > blast) break;
            __syncthreads();
            tc_load(Qs, ld, q, qs, h * HD, q0, TC_BN, T, HD);
            tc_load(Os, ld, dout, qs, h * HD, q0, TC_BN, T, HD);
            for (int j = threadIdx.x; j < TC_BN; j += blockDim.x) {
                int t = q0 + j;
                bool ok = t < T;
                qlse[j] = ok ? lse[(long long)t * NH + h] : 0.f;
                qD[j] = ok ? dsum[(long long)t * NH + h] : 0.f;
                qlo[j] = ok ? key_lo(segStart, t, t, window) : T;  // T: sees no key
            }
            __syncthreads();
            if (!warpOK || q0 + TC_BN - 1 < w0 || qlo[0] > wlast) continue;
            // Sᵀ = K Qᵀ, dPᵀ = V doutᵀ (16 keys x TC_BN queries)
            tc_two_products<NF>(kf, vf, nf, Qs, Os, ld, Sw, DPw);
            __syncwarp();
#pragma unroll
            for (int c = 0; c < TC_BN / 2; c++) {
                int col = half * (TC_BN / 2) + c, t = q0 + col;
                bool vis = rowOK && t < T && t >= sr && qlo[col] <= sr;
                float p = vis ? expf(Sw[r * TC_LDS + col] * scale - qlse[col]) : 0.f;
                Pw[r * TC_LDP + col] = __float2bfloat16(p);
                DSw[r * TC_LDP + col] = __float2bfloat16(p * (DPw[r * TC_LDS + col] - qD[col]));
            }
            __syncwarp();
            // dv += Pᵀ dout, dk += dSᵀ Q
            tc_accumulate<NF>(dvf, nf, Pw, Os, ld);
            tc_accumulate<NF>(dkf, nf, DSw, Qs, ld);
            __syncwarp();
        }
    }
    if (!warpOK) return;
#pragma unroll
    for (int f = 0; f < NF; f++)
        if (f < nf) {
            tc_write(dk, ks, g * HD + f * 16, w0, T, dkf[f], Sw, scale);
            tc_write(dv, ks, g * HD + f * 16, w0, T, dvf[f], Sw, 1.f);
        }
}

#define TC_DKV_SMEM \
    (2 * TC_BN * TC_MAXLD * 2 + 2 * TC_WARPS * 16 * TC_LDS * 4 + 2 * TC_WARPS * 16 * TC_LDP * 2 + 3 * TC_BN * 4)

// grid ceil(T/64)*KVH, block 128.
extern "C" __global__ void attention_bwd_tc_dkv(float* dk, float* dv, const float* lse, const float* dsum, const float* dout,
                                                const float* q, const float* k, const float* v, const int* segStart, int T, int NH,
                                                int KVH, int HD, int window, float scale) {
    __shared__ __align__(128) unsigned char sm[TC_DKV_SMEM];
    if (HD <= 32) attn_bwd_tc_dkv<2>(sm, dk, dv, lse, dsum, dout, q, k, v, segStart, T, NH, KVH, HD, window, scale);
    else if (HD <= 64) attn_bwd_tc_dkv<4>(sm, dk, dv, lse, dsum, dout, q, k, v, segStart, T, NH, KVH, HD, window, scale);
    else attn_bwd_tc_dkv<8>(sm, dk, dv, lse, dsum, dout, q, k, v, segStart, T, NH, KVH, HD, window, scale);
}

#include "dora.cu"
#include "kld.cu"
