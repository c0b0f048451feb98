// kld.cu: KL divergence between two models' next-token distributions on
// the device (kernels/cuda/devkld.go), included at the end of kernels.cu.
// It is eval/kld.go's KLDAcc.Add for one row per block: both log-softmaxes
// in double, the argmaxes (lowest id on ties), KL(P_base || P_model) =
// sum_v p_base(v) (log p_base(v) - log p_model(v)) over v with p_base > 0,
// and the two NLLs of the target; the sums are block reductions, so they
// equal the CPU's serial float64 sums to rounding (~1e-15), not bit for bit.

// block_argmax: the block's largest v and its lowest index i; every thread
// gets both (blockDim.x a multiple of 32, at most 1024).
__device__ void block_argmax(float& v, int& i) {
    __shared__ float pv[32];
    __shared__ int pi[32];
    int lane = threadIdx.x % WARP, w = threadIdx.x / WARP, nw = blockDim.x / WARP;
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) {
            v = ov;
            i = oi;
        }
    }
    __syncthreads();
    if (lane == 0) {
        pv[w] = v;
        pi[w] = i;
    }
    __syncthreads();
    v = pv[0];
    i = pi[0];
    for (int k = 1; k < nw; k++)
        if (pv[k] > v || (pv[k] == v && pi[k] < i)) {
            v = pv[k];
            i = pi[k];
        }
}

// row_lse: the log-sum-exp of row x [V] in double (max first) and its argmax.
__device__ double row_lse(const float* x, int V, int& imax) {
    float m = -INFINITY;
    int im = 0x7fffffff;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        float v = x[c];
        if (im == 0x7fffffff || v > m) {  // a thread's first column seeds it, as logSoftmax's imax = 0
            m = v;
            im = c;
        }
    }
    block_argmax(m, im);
    imax = im;
    double mx = (double)m, s = 0;
    for (int c = threadIdx.x; c < V; c += blockDim.x) s += exp((double)x[c] - mx);
    s = block_sum_d(s);
    return mx + log(s);
}

// kld_rows: for each row n < N of the two models' logits lb (base) and lq
// [N,V], stats[4n..4n+3] = NLL of targets[n] under lq, under lb, the KL, and
// 1 when the argmaxes agree (else 0). One block per row.
extern "C" __global__ void kld_rows(double* stats, const float* lb, const float* lq, const int* targets, int N, int V) {
    int n = blockIdx.x;
    if (n >= N) return;
    const float* b = lb + (long long)n * V;
    const float* q = lq + (long long)n * V;
    int ib, iq;
    double lseb = row_lse(b, V, ib);
    double lseq = row_lse(q, V, iq);
    double kl = 0;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        double pb = (double)b[c] - lseb;
        if (pb > -INFINITY) kl += exp(pb) * (pb - ((double)q[c] - lseq));
    }
    kl = block_sum_d(kl);
    if (threadIdx.x == 0) {
        int tg = targets[n];
        stats[4 * n] = -((double)q[tg] - lseq);
        stats[4 * n + 1] = -((double)b[tg] - lseb);
        stats[4 * n + 2] = kl;
        stats[4 * n + 3] = ib == iq ? 1.0 : 0.0;
    }
}
