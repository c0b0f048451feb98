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
