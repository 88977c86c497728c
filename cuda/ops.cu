// CUDA bodies of the transformer's training ops (src/ops/): LayerNorm, GELU, dropout, rotary embedding, the
// causal softmax of attention (with its dropout) and the cross-entropy loss, each forward and backward.
//
// Element types f32, f16 and bf16, arithmetic in f32. Every kernel takes its work in grid-stride loops (rows
// per warp or per block, or elements per thread), so any grid is correct: the host picks the grid for speed
// only. Block sizes must be multiples of 32 (warp reductions); the kernels that use shared memory say how much.
// The dropout masks are the CPU ops' own counter-based hash (src/ops/kernels.rs: lowbias32, row_key), so a
// GPU mask equals the CPU mask for the same seed and the layers compare between devices in training mode too.
// Built to PTX by build.rs with the `cuda` feature, launched from src/ops/cuda.rs. Written for this crate.

#include "common.cuh"

namespace {

constexpr float NEG_INF = -__builtin_huge_valf();

template <typename T> __device__ __forceinline__ T from_f32(float x) { return FromAcc<T, float>::f(x); }
template <typename T> __device__ __forceinline__ float ld(const T* p, long long i) { return to_acc(p[i]); }

// ---- reductions ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Merges the running (max, sum of exp(x - max)) pair (m2, s2) into (m, s).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == NEG_INF) return;  // both empty
    s = s * expf(m - mn) + s2 * expf(m2 - mn);
    m = mn;
}

// Adds one value to a running (max, sum of exp) pair: one exponential per value (online softmax).
__device__ __forceinline__ void lse_push(float& m, float& s, float v) {
    if (v > m) {
        s = s * expf(m - v) + 1.0f;
        m = v;
    } else if (m != NEG_INF) {
        s += expf(v - m);
    }
}

__device__ __forceinline__ void warp_lse(float& m, float& s) {
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
}

// The block's (max, sum of exp) pair, in every thread. `red`: 66 floats of shared memory, free on entry and on
// exit (the closing barrier lets the caller reuse it at once).
__device__ __forceinline__ void block_lse(float& m, float& s, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    warp_lse(m, s);
    if (lane == 0) {
        red[warp] = m;
        red[32 + warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < nwarps ? red[lane] : NEG_INF;
        s = lane < nwarps ? red[32 + lane] : 0.0f;
        warp_lse(m, s);
        if (lane == 0) {
            red[64] = m;
            red[65] = s;
        }
    }
    __syncthreads();
    m = red[64];
    s = red[65];
    __syncthreads();
}

// ---- dropout masks: the CPU ops' hash ------------------------------------------------------------------------

__device__ __forceinline__ uint32_t lowbias32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

__device__ __forceinline__ uint32_t row_key(unsigned long long seed, unsigned long long row) {
    const uint32_t a = lowbias32((uint32_t)row ^ (uint32_t)seed);
    return lowbias32(a ^ ((uint32_t)(row >> 32) * 0x9e3779b9u) ^ (uint32_t)(seed >> 32));
}

// The dropout multiplier of element j of the row with hash key `key`: 0 or `scale`.
__device__ __forceinline__ float keep(uint32_t key, uint32_t j, uint32_t threshold, float scale) {
    return lowbias32(key + j * 0x9e3779b9u) >= threshold ? scale : 0.0f;
}

// Warps of the whole grid, and this thread's warp and lane in it.
struct WarpGrid {
    long long first, stride;
    int lane;
    __device__ __forceinline__ WarpGrid()
        : first((long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)),
          stride((long long)gridDim.x * (blockDim.x >> 5)),
          lane((int)(threadIdx.x & 31)) {}
};

__device__ __forceinline__ long long thread_first() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long thread_stride() { return (long long)gridDim.x * blockDim.x; }

// ---- LayerNorm -------------------------------------------------------------------------------------------------

// Mean and 1/sqrt(var + eps) of one row, by one warp (two passes, as the CPU op).
template <typename T>
__device__ __forceinline__ void row_stats(const T* xr, int d, int lane, float eps, float& mean, float& rstd) {
    float s = 0.0f;
    for (int i = lane; i < d; i += 32) s += ld(xr, i);
    mean = warp_sum(s) / (float)d;
    float q = 0.0f;
    for (int i = lane; i < d; i += 32) {
        const float c = ld(xr, i) - mean;
        q += c * c;
    }
    rstd = 1.0f / sqrtf(warp_sum(q) / (float)d + eps);
}

// y = (x - mean) * rstd * w + b over rows of d; one warp per row.
template <typename T>
__device__ void layer_norm_fwd(const T* x, const T* w, const T* b, T* y, long long rows, int d, float eps) {
    const WarpGrid g;
    for (long long r = g.first; r < rows; r += g.stride) {
        const T* xr = x + r * d;
        float mean, rstd;
        row_stats(xr, d, g.lane, eps, mean, rstd);
        for (int i = g.lane; i < d; i += 32)
            y[r * d + i] = from_f32<T>((ld(xr, i) - mean) * rstd * ld(w, i) + ld(b, i));
    }
}

// Backward over items of `rpb` rows: each row's dx (one warp per row), then the item's partial sums of
// dw = sum g * xhat and db = sum g into partial[item][0..d) and [d..2d) (f32). Shared memory: 2 * rpb floats.
template <typename T>
__device__ void layer_norm_bwd(const T* x, const T* w, const T* gy, T* dx, float* partial, long long rows, int d,
                               float eps, int rpb) {
    float* stats = reinterpret_cast<float*>(dyn_smem());
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (long long item = blockIdx.x; item * rpb < rows; item += gridDim.x) {
        const long long r0 = item * rpb;
        const int nr = (int)(rows - r0 < rpb ? rows - r0 : rpb);
        for (int k = warp; k < nr; k += nwarps) {
            const long long r = r0 + k;
            const T* xr = x + r * d;
            const T* gr = gy + r * d;
            float mean, rstd;
            row_stats(xr, d, lane, eps, mean, rstd);
            float sg = 0.0f, sgx = 0.0f;
            for (int i = lane; i < d; i += 32) {
                const float gw = ld(gr, i) * ld(w, i);
                sg += gw;
                sgx += gw * (ld(xr, i) - mean) * rstd;
            }
            const float mg = warp_sum(sg) / (float)d, mgx = warp_sum(sgx) / (float)d;
            for (int i = lane; i < d; i += 32) {
                const float xh = (ld(xr, i) - mean) * rstd;
                dx[r * d + i] = from_f32<T>(rstd * (ld(gr, i) * ld(w, i) - mg - xh * mgx));
            }
            if (lane == 0) {
                stats[2 * k] = mean;
                stats[2 * k + 1] = rstd;
            }
        }
        __syncthreads();
        float* part = partial + item * 2 * (long long)d;
        for (int c = threadIdx.x; c < d; c += blockDim.x) {
            float dw = 0.0f, db = 0.0f;
            for (int k = 0; k < nr; ++k) {
                const long long o = (r0 + k) * d + c;
                const float gv = ld(gy, o);
                dw += gv * (ld(x, o) - stats[2 * k]) * stats[2 * k + 1];
                db += gv;
            }
            part[c] = dw;
            part[d + c] = db;
        }
        __syncthreads();
    }
}

// out[c] = sum over items of partial[item][c], c < width.
template <typename T> __device__ void column_sum(const float* partial, T* out, int items, int width) {
    for (long long c = thread_first(); c < width; c += thread_stride()) {
        float s = 0.0f;
        for (int k = 0; k < items; ++k) s += partial[(long long)k * width + c];
        out[c] = from_f32<T>(s);
    }
}

// ---- GELU (exact, erf) -----------------------------------------------------------------------------------------

constexpr float SQRT1_2 = 0.70710678118654752f;
constexpr float INV_SQRT_2PI = 0.39894228040143268f;

template <typename T> __device__ void gelu_fwd(const T* x, T* y, long long n) {
    for (long long e = thread_first(); e < n; e += thread_stride()) {
        const float v = ld(x, e);
        y[e] = from_f32<T>(0.5f * v * (1.0f + erff(v * SQRT1_2)));
    }
}

template <typename T> __device__ void gelu_bwd(const T* x, const T* gy, T* dx, long long n) {
    for (long long e = thread_first(); e < n; e += thread_stride()) {
        const float v = ld(x, e);
        const float cdf = 0.5f * (1.0f + erff(v * SQRT1_2));
        const float pdf = expf(-0.5f * v * v) * INV_SQRT_2PI;
        dx[e] = from_f32<T>(ld(gy, e) * (cdf + v * pdf));
    }
}

// ---- dropout: y = keep * x (+ residual); keys per block of 4096 elements, as src/ops/dropout.rs -----------------

template <typename T>
__device__ void dropout(const T* x, const T* residual, T* y, long long n, unsigned long long seed,
                        uint32_t threshold, float scale) {
    for (long long e = thread_first(); e < n; e += thread_stride()) {
        const uint32_t key = row_key(seed, (unsigned long long)(e >> 12));
        float v = keep(key, (uint32_t)(e & 4095), threshold, scale) * ld(x, e);
        if (residual != nullptr) v += ld(residual, e);
        y[e] = from_f32<T>(v);
    }
}

// ---- rotary embedding (rotate-half), contiguous (b, h, t, hd); cos, sin (t, hd/2); sgn = -1 rotates by -theta ---

template <typename T>
__device__ void rotary(const T* x, const T* cos, const T* sin, T* y, long long rows, int t, int half, float sgn) {
    const long long pairs = rows * half;
    for (long long e = thread_first(); e < pairs; e += thread_stride()) {
        const long long r = e / half;
        const int j = (int)(e - r * half);
        const long long cs = (r % t) * half + j;
        const float c = ld(cos, cs), s = sgn * ld(sin, cs);
        const long long o = r * 2 * half + j;
        const float x1 = ld(x, o), x2 = ld(x, o + half);
        y[o] = from_f32<T>(x1 * c - x2 * s);
        y[o + half] = from_f32<T>(x2 * c + x1 * s);
    }
}

// ---- the causal softmax of attention, with dropout on the probabilities ------------------------------------------
// Rows of t raw scores q.k (row r is query i = r mod t of head r / t); P = softmax(scale * s + causal mask),
// out = P * keep (keep from row_key(seed, r), as the CPU attention op). One warp per row; keys j > i get 0.

template <typename T>
__device__ __forceinline__ void causal_row_lse(const T* sr, int i, int lane, float scale, float& m, float& s) {
    m = NEG_INF;
    s = 0.0f;
    for (int j = lane; j <= i; j += 32) lse_push(m, s, scale * ld(sr, j));
    warp_lse(m, s);
}

template <typename T>
__device__ void attn_softmax_fwd(const T* scores, T* probs, long long rows, int t, float scale,
                                 unsigned long long seed, uint32_t threshold, float keep_scale) {
    const WarpGrid g;
    for (long long r = g.first; r < rows; r += g.stride) {
        const int i = (int)(r % t);
        const T* sr = scores + r * t;
        float m, s;
        causal_row_lse(sr, i, g.lane, scale, m, s);
        const float inv = 1.0f / s;
        const uint32_t key = row_key(seed, (unsigned long long)r);
        for (int j = g.lane; j < t; j += 32) {
            const float p = j <= i ? expf(scale * ld(sr, j) - m) * inv * keep(key, j, threshold, keep_scale) : 0.0f;
            probs[r * t + j] = from_f32<T>(p);
        }
    }
}

// d scores = scale * P * (dP - sum_j P_j dP_j), dP = d(out) * keep; P recomputed from the scores.
template <typename T>
__device__ void attn_softmax_bwd(const T* scores, const T* dout, T* dscores, long long rows, int t, float scale,
                                 unsigned long long seed, uint32_t threshold, float keep_scale) {
    const WarpGrid g;
    for (long long r = g.first; r < rows; r += g.stride) {
        const int i = (int)(r % t);
        const T* sr = scores + r * t;
        const T* gr = dout + r * t;
        float m, s;
        causal_row_lse(sr, i, g.lane, scale, m, s);
        const float inv = 1.0f / s;
        const uint32_t key = row_key(seed, (unsigned long long)r);
        float dot = 0.0f;
        for (int j = g.lane; j <= i; j += 32)
            dot += expf(scale * ld(sr, j) - m) * inv * ld(gr, j) * keep(key, j, threshold, keep_scale);
        dot = warp_sum(dot);
        for (int j = g.lane; j < t; j += 32) {
            float d = 0.0f;
            if (j <= i) {
                const float p = expf(scale * ld(sr, j) - m) * inv;
                d = scale * p * (ld(gr, j) * keep(key, j, threshold, keep_scale) - dot);
            }
            dscores[r * t + j] = from_f32<T>(d);
        }
    }
}

// ---- cross-entropy: one block per row; shared memory 66 floats -------------------------------------------------

// The row's (max, sum of exp) in every thread of the block.
template <typename T> __device__ __forceinline__ void block_row_lse(const T* xr, int vocab, float& m, float& s) {
    m = NEG_INF;
    s = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) lse_push(m, s, ld(xr, i));
    block_lse(m, s, reinterpret_cast<float*>(dyn_smem()));
}

// loss[r] = logsumexp(row) - row[target] (NaN for a target outside the vocabulary).
template <typename T>
__device__ void xent_fwd(const T* logits, const uint32_t* targets, float* loss, long long rows, int vocab) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = logits + r * vocab;
        float m, s;
        block_row_lse(xr, vocab, m, s);
        if (threadIdx.x == 0) {
            const uint32_t tr = targets[r];
            loss[r] = tr < (uint32_t)vocab ? m + logf(s) - ld(xr, tr) : __builtin_nanf("");
        }
    }
}

// out[0] = sum(v) * scale, by one block (f64 accumulation); shared memory 32 doubles.
__device__ void sum_scaled(const float* v, float* out, long long n, float scale) {
    double* red = reinterpret_cast<double*>(dyn_smem());
    double acc = 0.0;
    for (long long e = threadIdx.x; e < n; e += blockDim.x) acc += v[e];
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) red[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int k = 0; k < nwarps; ++k) total += red[k];
        out[0] = (float)(total * (double)scale);
    }
}

// d logits = (softmax(row) - onehot(target)) * grad[0] * inv_rows.
template <typename T>
__device__ void xent_bwd(const T* logits, const uint32_t* targets, const float* grad, T* dx, long long rows,
                         int vocab, float inv_rows) {
    const float gs = grad[0] * inv_rows;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = logits + r * vocab;
        float m, s;
        block_row_lse(xr, vocab, m, s);
        const float f = gs / s;
        const uint32_t tr = targets[r];
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            float d = expf(ld(xr, i) - m) * f;
            if ((uint32_t)i == tr) d -= gs;
            dx[r * vocab + i] = from_f32<T>(d);
        }
    }
}

}  // namespace

// ---- entry points: <op>_<dtype> ------------------------------------------------------------------------------------

#define OPS_ENTRY_POINTS(T, NAME)                                                                                    \
    extern "C" __global__ void layer_norm_fwd_##NAME(const T* x, const T* w, const T* b, T* y, long long rows, int d, \
                                                     float eps) {                                                    \
        layer_norm_fwd(x, w, b, y, rows, d, eps);                                                                    \
    }                                                                                                                \
    extern "C" __global__ void layer_norm_bwd_##NAME(const T* x, const T* w, const T* gy, T* dx, float* partial,     \
                                                     long long rows, int d, float eps, int rpb) {                    \
        layer_norm_bwd(x, w, gy, dx, partial, rows, d, eps, rpb);                                                    \
    }                                                                                                                \
    extern "C" __global__ void column_sum_##NAME(const float* partial, T* out, int items, int width) {                \
        column_sum(partial, out, items, width);                                                                      \
    }                                                                                                                \
    extern "C" __global__ void gelu_fwd_##NAME(const T* x, T* y, long long n) { gelu_fwd(x, y, n); }                  \
    extern "C" __global__ void gelu_bwd_##NAME(const T* x, const T* gy, T* dx, long long n) {                        \
        gelu_bwd(x, gy, dx, n);                                                                                      \
    }                                                                                                                \
    extern "C" __global__ void dropout_##NAME(const T* x, const T* residual, T* y, long long n,                       \
                                              unsigned long long seed, uint32_t threshold, float scale) {            \
        dropout(x, residual, y, n, seed, threshold, scale);                                                          \
    }                                                                                                                \
    extern "C" __global__ void rotary_##NAME(const T* x, const T* cos, const T* sin, T* y, long long rows, int t,     \
                                             int half, float sgn) {                                                  \
        rotary(x, cos, sin, y, rows, t, half, sgn);                                                                  \
    }                                                                                                                \
    extern "C" __global__ void attn_softmax_fwd_##NAME(const T* s, T* p, long long rows, int t, float scale,          \
                                                       unsigned long long seed, uint32_t threshold,                 \
                                                       float keep_scale) {                                           \
        attn_softmax_fwd(s, p, rows, t, scale, seed, threshold, keep_scale);                                         \
    }                                                                                                                \
    extern "C" __global__ void attn_softmax_bwd_##NAME(const T* s, const T* dout, T* ds, long long rows, int t,       \
                                                       float scale, unsigned long long seed, uint32_t threshold,    \
                                                       float keep_scale) {                                           \
        attn_softmax_bwd(s, dout, ds, rows, t, scale, seed, threshold, keep_scale);                                  \
    }                                                                                                                \
    extern "C" __global__ void xent_fwd_##NAME(const T* logits, const uint32_t* targets, float* loss, long long rows, \
                                               int vocab) {                                                          \
        xent_fwd(logits, targets, loss, rows, vocab);                                                                \
    }                                                                                                                \
    extern "C" __global__ void xent_bwd_##NAME(const T* logits, const uint32_t* targets, const float* grad, T* dx,   \
                                               long long rows, int vocab, float inv_rows) {                          \
        xent_bwd(logits, targets, grad, dx, rows, vocab, inv_rows);                                                  \
    }

OPS_ENTRY_POINTS(float, f32)
OPS_ENTRY_POINTS(__half, f16)
OPS_ENTRY_POINTS(__nv_bfloat16, bf16)

extern "C" __global__ void sum_scaled_f32(const float* v, float* out, long long n, float scale) {
    sum_scaled(v, out, n, scale);
}
