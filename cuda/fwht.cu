// Fast Walsh-Hadamard transform kernels for candle-structured.
//
// y = scale * x * H_n over rows of length n = 2^m, H_n the Sylvester Hadamard matrix in natural order.
// Element types f32, f16, bf16 (arithmetic in f32) and f64 (arithmetic in f64); the scale is fused into the
// final store. Built to PTX by build.rs (nvcc --ptx) when the crate's `cuda` feature is on, and launched from
// src/fwht/cuda.rs through cudarc. Written for this crate.
//
// One pass (n <= 2^15; 2^14 for f64): one row lives in the registers of T = n/E threads, E = 2^e values each.
//   index i = k*E + r   (k: thread in the row, r: register)
//   * bits [0, e)        butterflies inside each thread's registers (loaded with 16-byte vector loads);
//   * bits [e, e+5)      butterflies across the lanes of a warp with __shfl_xor_sync;
//   * bits [e+5, m)      (only when T > 32) the row goes through shared memory once (XOR-swizzled 16-byte
//                        chunks: no bank conflicts), each thread picks up values that differ in the warp bits,
//                        butterflies them in registers, and the row goes back the same way.
//   Stages run from bit 0 upwards, with u+v on the lower and u-v on the upper element, exactly as the CPU kernel,
//   so f32 results match the CPU op bit for bit.
// More passes (n up to 2^24): n = n_hi * n_lo. Pass 1 transforms the n_hi contiguous sub-rows of length n_lo of
//   each row into an f32 (f64) scratch buffer (same row kernel, "sub-row" addressing); pass 2 transforms the
//   columns (stride n_lo, length n_hi <= 2^10) through a shared-memory tile and writes the output with the scale.
//   The host runs both passes over groups of rows whose scratch fits in L2, so the intermediate rarely reaches DRAM.

#include "common.cuh"

namespace {

// Counters shared between the blocks of the persistent kernel (the protocol of CUTLASS's generic barrier):
// a block's threads finish their writes, meet at __syncthreads, then one thread publishes with a release
// add; a waiting block's one thread spins with acquire loads, then the block meets at __syncthreads.
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
#ifdef FWHT_EMU
    return *p;
#else
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#endif
}

__device__ __forceinline__ void red_release_add(unsigned* p, unsigned v) {
#ifdef FWHT_EMU
    *p += v;
#else
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#endif
}

constexpr int cmax(int a, int b) { return a > b ? a : b; }
constexpr int cmin(int a, int b) { return a < b ? a : b; }

// Launch geometry of the one-pass kernel for n = 2^LOG_N. MUST match `RowCfg` in src/fwht/cuda.rs (the kernel
// traps when launched with another block size).
// XCH = 1: the "transposed exchange" variant (n >= 2^10, f32 arithmetic): 32 values per thread, and the trip
// through shared memory also takes over the top lane bits (see fwht_row_regs).
template <int LOG_N, typename Acc, int IN_BYTES, int XCH = 0> struct RowCfg {
    static constexpr int N = 1 << LOG_N;
    static constexpr bool TRANSPOSED = XCH != 0 && LOG_N >= 10 && sizeof(Acc) == 4;
    // e >= (m-5)/2 keeps the warp bits (m-e-5) within one register group. (n = 2^15: 1024 threads of 32 values,
    // capped at 64 registers, spill 60 bytes; 512 threads of 64 values spilled more.)
    // 2-byte inputs take at least 16 values (32 bytes in flight per thread) from n = 16 on.
    static constexpr int LOG_E =
        TRANSPOSED ? 5 : (LOG_N <= 3 ? LOG_N : cmax(IN_BYTES == 2 ? 4 : 3, (LOG_N - 4) / 2));
    static constexpr int E = 1 << LOG_E;
    static constexpr int LOG_T = LOG_N - LOG_E;  // threads per row
    static constexpr int T = 1 << LOG_T;
    static constexpr int ROWS = T >= 256 ? 1 : 256 / T;  // rows per block
    static constexpr int BLOCK = ROWS * T;
    static constexpr int LOG_LANE = cmin(LOG_T, 5);
    static constexpr int LOG_W = LOG_T > 5 ? LOG_T - 5 : 0;
    static constexpr int W = 1 << LOG_W;
    static constexpr int CH = 16 / (int)sizeof(Acc);  // Acc values per 16-byte chunk
    static constexpr int LOG_CH = sizeof(Acc) == 4 ? 2 : 1;
    // n = 2^14 (f32 arithmetic): ask for two 512-thread blocks per SM (<= 64 registers) so that one block loads
    // while the other computes.
    static constexpr int MIN_BLOCKS = (LOG_N == 14 && sizeof(Acc) == 4 && !TRANSPOSED) ? 2 : 1;
    // lane bits done in the shared-memory trip instead of by shuffles (transposed variant only)
    static constexpr int LANES_IN_SMEM = TRANSPOSED ? cmin(LOG_LANE, LOG_E - LOG_W) : 0;
};

// Butterflies on register-index bits [0, LOG_B) of v[0..E).
template <int LOG_B, int E, typename Acc> __device__ __forceinline__ void butterfly_regs(Acc (&v)[E]) {
#pragma unroll
    for (int h = 1; h < (1 << LOG_B); h <<= 1) {
#pragma unroll
        for (int i = 0; i < E; ++i) {
            if ((i & h) == 0) {
                const Acc a = v[i], b = v[i + h];
                v[i] = a + b;
                v[i + h] = a - b;
            }
        }
    }
}

template <typename T, int E, typename Acc> __device__ __forceinline__ void load_vals(const T* p, Acc (&v)[E], bool vec) {
    if constexpr ((E * sizeof(T)) % 16 == 0) {
        if (vec) {
            constexpr int NV = E * sizeof(T) / 16;
            union {
                uint4 u[NV];
                T t[E];
            } tmp;
            const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
            for (int j = 0; j < NV; ++j) tmp.u[j] = __ldcs(q + j);  // streamed: read once
#pragma unroll
            for (int i = 0; i < E; ++i) v[i] = to_acc(tmp.t[i]);
            return;
        }
    }
#pragma unroll
    for (int i = 0; i < E; ++i) v[i] = to_acc(__ldcs(p + i));
}

template <typename T, int E, typename Acc>
__device__ __forceinline__ void store_vals(T* p, const Acc (&v)[E], Acc scale, bool vec) {
    if constexpr ((E * sizeof(T)) % 16 == 0) {
        if (vec) {
            constexpr int NV = E * sizeof(T) / 16;
            union {
                uint4 u[NV];
                T t[E];
            } tmp;
#pragma unroll
            for (int i = 0; i < E; ++i) tmp.t[i] = FromAcc<T, Acc>::f(v[i] * scale);
            uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
            for (int j = 0; j < NV; ++j) store16(q + j, tmp.u[j]);
            return;
        }
    }
#pragma unroll
    for (int i = 0; i < E; ++i) p[i] = FromAcc<T, Acc>::f(v[i] * scale);
}

// Position of element `idx` of a row in the swizzled shared-memory buffer: 16-byte chunk c goes to
// c ^ ((c >> SHIFT) & 7), where c >> SHIFT is the thread that owns the chunk in the natural layout. Bijective
// (unitriangular over GF(2)) and conflict-free for both access patterns used below.
template <int LOG_CH, int SHIFT> __device__ __forceinline__ int swz(int idx) {
    const int c = idx >> LOG_CH;
    return ((c ^ ((c >> SHIFT) & 7)) << LOG_CH) | (idx & ((1 << LOG_CH) - 1));
}

// One row of 2^LOG_N in the registers of the block's threads: row `rloc` of the block starts at `in_row` and
// `out_row`; `active` is false for the padding rows of the last block (they take part in the barriers only).
// LOG_B < 0: transform all LOG_N bits. LOG_B in [0, LOG_E] with LOG_N = 3 ("packed" kernels): rows of 2^LOG_B
// elements stored contiguously, handled 8 values (2^(3-LOG_B) rows) per thread.
// XCH = 1 (n >= 2^10, f32 arithmetic): after the shuffles, thread k picks up indices r * T + k (r = 0 .. E-1),
// i.e. the row as a T x E matrix transposed, so the trip through shared memory covers the warp bits and the top
// LANES_IN_SMEM lane bits, which then need no shuffles: 0 / 1 / 2 / 3 / 4 / 5 shuffle stages at n = 2^10 ... 2^15
// instead of 5, for the same shared-memory traffic. The stages still run from bit 0 upwards (bit-identical).
template <typename TIn, typename TOut, typename Acc, int LOG_N, int LOG_B = -1, int XCH = 0>
__device__ __forceinline__ void fwht_row_regs(const TIn* in_row, TOut* out_row, bool active, int rloc, int k,
                                              unsigned char* smem, Acc scale, int vin, int vout) {
    using C = RowCfg<LOG_N, Acc, (int)sizeof(TIn), XCH>;
    constexpr int E = C::E;
    Acc v[E];
    if (active) {
        load_vals<TIn, E, Acc>(in_row + (long long)k * E, v, vin != 0);
    } else {
#pragma unroll
        for (int i = 0; i < E; ++i) v[i] = Acc(0);
    }

    // bits [0, e): inside the thread
    static_assert(LOG_B < 0 || (LOG_B <= C::LOG_E && C::LOG_T == 0), "packed rows fit in one thread");
    butterfly_regs<(LOG_B < 0 ? C::LOG_E : LOG_B), E, Acc>(v);

    // bits [e, e + LOG_LANE - LANES_IN_SMEM): across lanes
#pragma unroll
    for (int b = 0; b < C::LOG_LANE - C::LANES_IN_SMEM; ++b) {
        const int mask = 1 << b;
        const bool upper = (k & mask) != 0;
#pragma unroll
        for (int i = 0; i < E; ++i) {
            const Acc o = __shfl_xor_sync(0xffffffffu, v[i], mask);
            v[i] = upper ? (o - v[i]) : (v[i] + o);
        }
    }

    // bits [e + 5, m) (and the top lane bits in the transposed variant): through shared memory
    if constexpr (C::LOG_W > 0 || C::LANES_IN_SMEM > 0) {
        Acc* sm = reinterpret_cast<Acc*>(smem) + (long long)rloc * C::N;
        constexpr int LOG_CH = C::LOG_CH;
        constexpr int CH = C::CH;
        constexpr int SHIFT = C::LOG_E - LOG_CH;
        static_assert(SHIFT >= 1, "swizzle needs at least two chunks per thread");
        static_assert(C::LOG_W <= C::LOG_E, "warp bits must fit in one register group");
        // natural layout, 16-byte chunks
#pragma unroll
        for (int j = 0; j < E / CH; ++j) {
            const int idx = k * E + j * CH;
            Acc* dst = sm + swz<LOG_CH, SHIFT>(idx);
            if constexpr (CH == 4) {
                sm_st(reinterpret_cast<float4*>(dst), make_float4(v[j * 4], v[j * 4 + 1], v[j * 4 + 2], v[j * 4 + 3]));
            } else {
                sm_st(reinterpret_cast<double2*>(dst), make_double2(v[j * 2], v[j * 2 + 1]));
            }
        }
        __syncthreads();
        if constexpr (C::TRANSPOSED) {
            // register r holds index r * T + k: bits [m - e, m) in registers
            static_assert(C::LOG_T + C::LOG_E == LOG_N && C::LOG_T == C::LOG_E + 5 - C::LANES_IN_SMEM,
                          "the transposed registers are exactly the bits left");
            // swz(r * T + k) = r * T + a[r % NX]: T is a multiple of 32, so the swizzle term of index r * T + k
            // is (r * T / 32 + k / 32) & 7, which takes NX values over r; the offsets r * T are constants.
            // Banks: for one r, the 32 lanes of a warp read 32 consecutive indices, i.e. the 8 chunks of one
            // natural-layout thread, each XORed with the same term: 8 distinct 16-byte bank groups, no conflict.
            // (The natural-layout float4 stores are conflict-free by the swizzle, as in the default kernel.)
            static_assert(LOG_CH == 2 && SHIFT == 3 && C::LOG_T >= 5, "f32, 32 values per thread");
            constexpr int TW = C::T >> 5;
            constexpr int NX = TW >= 8 ? 1 : 8 / TW;
            const int ko = (k >> 5) & 7;
            int a[NX];
#pragma unroll
            for (int x = 0; x < NX; ++x) a[x] = ((((k >> 2) ^ ((x * TW) & 7) ^ ko)) << 2) | (k & 3);
#pragma unroll
            for (int r = 0; r < E; ++r) v[r] = sm_ld(sm + r * C::T + a[r % NX]);
            butterfly_regs<C::LOG_E, E, Acc>(v);
#pragma unroll
            for (int r = 0; r < E; ++r) sm_st(sm + r * C::T + a[r % NX], v[r]);
        } else {
            // register s*W + hi holds index hi * 2^(e+5) + s * T + k
#pragma unroll
            for (int s = 0; s < E / C::W; ++s) {
#pragma unroll
                for (int hi = 0; hi < C::W; ++hi) {
                    const int idx = (hi << (C::LOG_E + 5)) + s * C::T + k;
                    v[s * C::W + hi] = sm_ld(sm + swz<LOG_CH, SHIFT>(idx));
                }
            }
            butterfly_regs<C::LOG_W, E, Acc>(v);
#pragma unroll
            for (int s = 0; s < E / C::W; ++s) {
#pragma unroll
                for (int hi = 0; hi < C::W; ++hi) {
                    const int idx = (hi << (C::LOG_E + 5)) + s * C::T + k;
                    sm_st(sm + swz<LOG_CH, SHIFT>(idx), v[s * C::W + hi]);
                }
            }
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < E / CH; ++j) {
            const int idx = k * E + j * CH;
            const Acc* src = sm + swz<LOG_CH, SHIFT>(idx);
            if constexpr (CH == 4) {
                const float4 f = sm_ld(reinterpret_cast<const float4*>(src));
                v[j * 4] = f.x;
                v[j * 4 + 1] = f.y;
                v[j * 4 + 2] = f.z;
                v[j * 4 + 3] = f.w;
            } else {
                const double2 d = sm_ld(reinterpret_cast<const double2*>(src));
                v[j * 2] = d.x;
                v[j * 2 + 1] = d.y;
            }
        }
    }

    if (active) store_vals<TOut, E, Acc>(out_row + (long long)k * E, v, scale, vout != 0);
}

// One-pass transform of `rows` (sub-)rows of length 2^LOG_N, ROWS per block.
// Sub-row q lives at in + (q >> sub_log) * in_stride + (q & (2^sub_log - 1)) * 2^LOG_N (same for out), so
// sub_log = 0 is a plain batch of rows with a row stride, and sub_log > 0 cuts each row into 2^sub_log pieces.
template <typename TIn, typename TOut, typename Acc, int LOG_N, int LOG_B = -1, int XCH = 0>
__device__ __forceinline__ void fwht_rows_body(const TIn* in, TOut* out, long long rows, int sub_log,
                                               long long in_stride, long long out_stride, Acc scale, int vin,
                                               int vout) {
    using C = RowCfg<LOG_N, Acc, (int)sizeof(TIn), XCH>;
    if (blockDim.x != C::BLOCK) __trap();
    const int tid = threadIdx.x;
    const int rloc = tid >> C::LOG_T;
    const int k = tid & (C::T - 1);
    const long long q = (long long)blockIdx.x * C::ROWS + rloc;
    const long long sub_mask = (1ll << sub_log) - 1;
    const long long in_off = (q >> sub_log) * in_stride + ((q & sub_mask) << LOG_N);
    const long long out_off = (q >> sub_log) * out_stride + ((q & sub_mask) << LOG_N);
    fwht_row_regs<TIn, TOut, Acc, LOG_N, LOG_B, XCH>(in + in_off, out + out_off, q < rows, rloc, k, dyn_smem(),
                                                     scale, vin, vout);
}

// Column pass: for each row (blockIdx.x / tiles) and each tile of NC consecutive columns, transforms the
// 2^A values at stride n_lo (a column of the n_hi x n_lo view of the row) and writes scale * result.
template <int A> struct ColCfg {
    // columns per block: tiles of 2^13 values (2^14 at A = 10), so that small n_hi still moves long rows
    static constexpr int NC = cmax(16, 1 << cmax(0, 13 - A));
    static constexpr int BLOCK = 256;
};

// One tile: the NC columns starting at `src` (scratch, row pitch n_lo) into `dst` (output, same pitch).
template <typename TOut, typename Acc, int A>
__device__ __forceinline__ void fwht_col_tile(const Acc* src, TOut* dst, long long n_lo, Acc scale, Acc* tile) {
    constexpr int H = 1 << A;
    constexpr int NC = ColCfg<A>::NC;
    constexpr int BLOCK = ColCfg<A>::BLOCK;
    const int tid = threadIdx.x;

    static_assert((H * NC) % BLOCK == 0, "whole tiles");
    // unrolled so that 8 independent loads per thread are in flight
#pragma unroll 8
    for (int j = 0; j < H * NC / BLOCK; ++j) {
        const int i = j * BLOCK + tid;
        const int r = i / NC, c = i % NC;
        sm_st(tile + i, __ldcg(src + (long long)r * n_lo + c));  // L2: the scratch may come from another block
    }
    __syncthreads();
#pragma unroll
    for (int b = 0; b < A; b += 3) {
        const int g = (A - b) < 3 ? (A - b) : 3;
        const int G = 1 << g;
        const int sets = H * NC / G;
        for (int set = tid; set < sets; set += BLOCK) {
            const int c = set % NC;
            const int qq = set / NC;
            const int base = ((qq >> b) << (b + g)) | (qq & ((1 << b) - 1));
            Acc u[8];
#pragma unroll
            for (int j = 0; j < 8; ++j)
                if (j < G) u[j] = sm_ld(tile + (base + (j << b)) * NC + c);
#pragma unroll
            for (int h = 1; h < 8; h <<= 1) {
                if (h < G) {
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        if ((j & h) == 0 && j + h < G) {
                            const Acc x = u[j], y = u[j + h];
                            u[j] = x + y;
                            u[j + h] = x - y;
                        }
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < 8; ++j)
                if (j < G) sm_st(tile + (base + (j << b)) * NC + c, u[j]);
        }
        __syncthreads();
    }
#pragma unroll 8
    for (int j = 0; j < H * NC / BLOCK; ++j) {
        const int i = j * BLOCK + tid;
        const int r = i / NC, c = i % NC;
        __stcs(dst + (long long)r * n_lo + c, FromAcc<TOut, Acc>::f(sm_ld(tile + i) * scale));  // keep L2 for scratch
    }
}

template <typename TOut, typename Acc, int A>
__device__ __forceinline__ void fwht_cols_body(const Acc* in, TOut* out, long long groups, long long n_lo,
                                               long long in_stride, long long out_stride, Acc scale) {
    constexpr int NC = ColCfg<A>::NC;
    if (blockDim.x != ColCfg<A>::BLOCK) __trap();
    const long long tiles = n_lo / NC;
    const long long row = blockIdx.x / tiles;
    if (row >= groups) return;  // whole block leaves together
    const long long col0 = (blockIdx.x % tiles) * NC;
    fwht_col_tile<TOut, Acc, A>(in + row * in_stride + col0, out + row * out_stride + col0, n_lo, scale,
                                reinterpret_cast<Acc*>(dyn_smem()));
}

// Persistent multi-pass transform, n = n_hi * n_lo with n_lo = 2^LOG_LO and n_hi = 2^A: the two passes of the
// two-kernel path, as work items of one kernel, so that the f32 (f64) intermediate lives in a small ring of
// `slots` rows that stays in L2 instead of a scratch buffer that goes to DRAM.
//   * item "row" (r, a): sub-row a of row r (n_lo contiguous elements) into ring slot r % slots;
//   * item "column" (r, c): columns tile c of row r from the ring into the output, with the scale.
// Items are handed out in order by an atomic counter, row by row: the row items of row t, then the column
// items of row t - lag. A column item waits until its row's row items are done; a row item reusing a slot
// waits until the column items of the slot's previous row are done. Every wait is on items handed out earlier
// to running blocks, which wait only on items earlier still, so the kernel cannot deadlock, whatever the
// number of resident blocks (slots > lag).
// ctl (zeroed before the launch): [0] the item counter, [1, 1 + slots) row items done per slot (cumulative),
// [1 + slots, 1 + 2 slots) column items done per slot (cumulative).
template <typename T, typename Acc, int LOG_LO, int A>
__device__ __forceinline__ void fwht_fused_body(const T* in, T* out, Acc* ring, unsigned* ctl, long long rows,
                                                long long in_stride, int slots, int lag, Acc scale, int vin) {
    using R = RowCfg<LOG_LO, Acc, (int)sizeof(T)>;
    using CC = ColCfg<A>;
    static_assert(R::BLOCK == CC::BLOCK && R::ROWS == 1, "one block shape for both kinds of item");
    constexpr long long N_LO = 1ll << LOG_LO;
    constexpr long long N = N_LO << A;
    constexpr long long ROW_ITEMS = 1ll << A;
    constexpr long long COL_ITEMS = N_LO / CC::NC;
    constexpr long long P = ROW_ITEMS + COL_ITEMS;
    if (blockDim.x != R::BLOCK) __trap();
    // shared memory: the item number (16 bytes), then the row buffer or the column tile
    unsigned char* base = dyn_smem();
    long long* item_slot = reinterpret_cast<long long*>(base);
    unsigned char* work = base + 16;
    const int tid = threadIdx.x;
    const long long L = lag < rows ? lag : rows;
    const long long total = rows * P;
    unsigned* row_done = ctl + 1;
    unsigned* col_done = ctl + 1 + slots;
    for (;;) {
        if (tid == 0) sm_st(item_slot, (long long)atomicAdd(ctl, 1u));
        __syncthreads();
        const long long j = sm_ld(item_slot);
        __syncthreads();  // everyone has read the item before thread 0 may claim the next one
        if (j >= total) return;
        // decode: steps t < L hold row items only, steps t >= rows column items only
        bool is_row;
        long long r, idx;
        if (j < L * ROW_ITEMS) {
            is_row = true;
            r = j / ROW_ITEMS;
            idx = j % ROW_ITEMS;
        } else if (j < L * ROW_ITEMS + (rows - L) * P) {
            const long long jj = j - L * ROW_ITEMS;
            const long long t = L + jj / P, o = jj % P;
            is_row = o < ROW_ITEMS;
            r = is_row ? t : t - L;
            idx = is_row ? o : o - ROW_ITEMS;
        } else {
            const long long jj = j - L * ROW_ITEMS - (rows - L) * P;
            is_row = false;
            r = rows - L + jj / COL_ITEMS;
            idx = jj % COL_ITEMS;
        }
        const int slot = (int)(r % slots);
        const unsigned use = (unsigned)(r / slots);
        Acc* ring_row = ring + (long long)slot * N;
        if (tid == 0) {
            // row item: the slot's previous row has been read; column item: this row is in the slot
            unsigned* ctr = is_row ? col_done + slot : row_done + slot;
            const unsigned need = is_row ? use * (unsigned)COL_ITEMS : (use + 1) * (unsigned)ROW_ITEMS;
            while (ld_acquire(ctr) < need) __nanosleep(64);
        }
        __syncthreads();
        if (is_row) {
            fwht_row_regs<T, Acc, Acc, LOG_LO>(in + r * in_stride + idx * N_LO, ring_row + idx * N_LO, true, 0, tid,
                                               work, Acc(1), vin, 1);
        } else {
            fwht_col_tile<T, Acc, A>(ring_row + idx * CC::NC, out + r * N + idx * CC::NC, N_LO, scale,
                                     reinterpret_cast<Acc*>(work));
        }
        __syncthreads();  // the item's loads and stores are done, and its shared memory free
        if (tid == 0) red_release_add(is_row ? row_done + slot : col_done + slot, 1u);
    }
}

}  // namespace

#define ROW_KERNEL(NAME, TIN, TOUT, ACC, LOG)                                                                     \
    extern "C" __global__ void __launch_bounds__(RowCfg<LOG, ACC, sizeof(TIN)>::BLOCK,                           \
                                                 RowCfg<LOG, ACC, sizeof(TIN)>::MIN_BLOCKS)                      \
        NAME##_##LOG(const TIN* in, TOUT* out, long long rows, int sub_log, long long in_stride,                   \
                     long long out_stride, ACC scale, int vin, int vout) {                                         \
        fwht_rows_body<TIN, TOUT, ACC, LOG>(in, out, rows, sub_log, in_stride, out_stride, scale, vin, vout);     \
    }

#define XROW_KERNEL(NAME, T, ACC, LOG)                                                                           \
    extern "C" __global__ void __launch_bounds__(RowCfg<LOG, ACC, sizeof(T), 1>::BLOCK)                          \
        NAME##_##LOG(const T* in, T* out, long long rows, int sub_log, long long in_stride, long long out_stride,  \
                     ACC scale, int vin, int vout) {                                                               \
        fwht_rows_body<T, T, ACC, LOG, -1, 1>(in, out, rows, sub_log, in_stride, out_stride, scale, vin, vout);   \
    }
#define PACK_KERNEL(NAME, T, ACC, LB)                                                                            \
    extern "C" __global__ void __launch_bounds__(RowCfg<3, ACC, sizeof(T)>::BLOCK)                               \
        NAME##_##LB(const T* in, T* out, long long rows, int sub_log, long long in_stride, long long out_stride,  \
                    ACC scale, int vin, int vout) {                                                                \
        fwht_rows_body<T, T, ACC, 3, LB>(in, out, rows, sub_log, in_stride, out_stride, scale, vin, vout);        \
    }
#define PACKS(NAME, T, ACC) PACK_KERNEL(NAME, T, ACC, 0) PACK_KERNEL(NAME, T, ACC, 1) PACK_KERNEL(NAME, T, ACC, 2)

#define COL_KERNEL(NAME, TOUT, ACC, A)                                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        NAME##_##A(const ACC* in, TOUT* out, long long groups, long long n_lo, long long in_stride,               \
                   long long out_stride, ACC scale) {                                                              \
        fwht_cols_body<TOUT, ACC, A>(in, out, groups, n_lo, in_stride, out_stride, scale);                         \
    }

#define FUSED_KERNEL(NAME, T, ACC, A)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        NAME##_##A(const T* in, T* out, ACC* ring, unsigned* ctl, long long rows, long long in_stride, int slots,   \
                   int lag, ACC scale, int vin) {                                                                   \
        fwht_fused_body<T, ACC, 12, A>(in, out, ring, ctl, rows, in_stride, slots, lag, scale, vin);              \
    }
// M(args..., i) for each i of a range: one kernel instantiation per size
#define EACH_1_8(M, ...)                                                                                          \
    M(__VA_ARGS__, 1) M(__VA_ARGS__, 2) M(__VA_ARGS__, 3) M(__VA_ARGS__, 4) M(__VA_ARGS__, 5) M(__VA_ARGS__, 6)   \
        M(__VA_ARGS__, 7) M(__VA_ARGS__, 8)
#define EACH_1_10(M, ...) EACH_1_8(M, __VA_ARGS__) M(__VA_ARGS__, 9) M(__VA_ARGS__, 10)
#define EACH_10_15(M, ...)                                                                                        \
    M(__VA_ARGS__, 10) M(__VA_ARGS__, 11) M(__VA_ARGS__, 12) M(__VA_ARGS__, 13) M(__VA_ARGS__, 14) M(__VA_ARGS__, 15)
#define EACH_0_14(M, ...)                                                                                         \
    M(__VA_ARGS__, 0) EACH_1_8(M, __VA_ARGS__) M(__VA_ARGS__, 9) M(__VA_ARGS__, 10) M(__VA_ARGS__, 11)            \
        M(__VA_ARGS__, 12) M(__VA_ARGS__, 13) M(__VA_ARGS__, 14)
#define ROWS_0_14(NAME, TIN, TOUT, ACC) EACH_0_14(ROW_KERNEL, NAME, TIN, TOUT, ACC)
#define COLS_1_10(NAME, TOUT, ACC) EACH_1_10(COL_KERNEL, NAME, TOUT, ACC)

// one pass, T -> T: fwht_<dtype>_<log2 n>, n = 2^0 .. 2^15 (2^14 for f64)
ROWS_0_14(fwht_f32, float, float, float)
ROW_KERNEL(fwht_f32, float, float, float, 15)
ROWS_0_14(fwht_f16, __half, __half, float)
ROW_KERNEL(fwht_f16, __half, __half, float, 15)
ROWS_0_14(fwht_bf16, __nv_bfloat16, __nv_bfloat16, float)
ROW_KERNEL(fwht_bf16, __nv_bfloat16, __nv_bfloat16, float, 15)
ROWS_0_14(fwht_f64, double, double, double)

// one pass, transposed-exchange variant (opt-in, not yet run on a GPU: built only with FWHT_UNTESTED_VARIANTS,
// the crate's `cuda-untested` feature): fwht_<dtype>_x_<log2 n>, n = 2^10 .. 2^15
#ifdef FWHT_UNTESTED_VARIANTS
EACH_10_15(XROW_KERNEL, fwht_f32_x, float, float)
EACH_10_15(XROW_KERNEL, fwht_f16_x, __half, float)
EACH_10_15(XROW_KERNEL, fwht_bf16_x, __nv_bfloat16, float)
#endif

// n = 1, 2, 4 with contiguous rows: 8 values per thread: fwht_<dtype>_pack_<log2 n>
PACKS(fwht_f32_pack, float, float)
PACKS(fwht_f16_pack, __half, float)
PACKS(fwht_bf16_pack, __nv_bfloat16, float)
PACKS(fwht_f64_pack, double, double)

// first pass of the multi-pass transform, T -> accumulator scratch: fwht_<dtype>_acc_<log2 n_lo>
#define ACC_ROWS(NAME, TIN, ACC)                                                                                  \
    ROW_KERNEL(NAME, TIN, ACC, ACC, 12)                                                                           \
    ROW_KERNEL(NAME, TIN, ACC, ACC, 13)                                                                           \
    ROW_KERNEL(NAME, TIN, ACC, ACC, 14)
ACC_ROWS(fwht_f32_acc, float, float)
ROW_KERNEL(fwht_f32_acc, float, float, float, 15)
ACC_ROWS(fwht_f16_acc, __half, float)
ROW_KERNEL(fwht_f16_acc, __half, float, float, 15)
ACC_ROWS(fwht_bf16_acc, __nv_bfloat16, float)
ROW_KERNEL(fwht_bf16_acc, __nv_bfloat16, float, float, 15)
ACC_ROWS(fwht_f64_acc, double, double)

// second pass, accumulator scratch -> T with the scale: fwht_cols_<dtype>_<log2 n_hi>
COLS_1_10(fwht_cols_f32, float, float)
COLS_1_10(fwht_cols_f16, __half, float)
COLS_1_10(fwht_cols_bf16, __nv_bfloat16, float)
COLS_1_10(fwht_cols_f64, double, double)

// persistent multi-pass, n = 2^12 * 2^A (2^13 .. 2^20): fwht_fused_<dtype>_<A> (opt-in, not yet run on a GPU)
#ifdef FWHT_UNTESTED_VARIANTS
EACH_1_8(FUSED_KERNEL, fwht_fused_f32, float, float)
EACH_1_8(FUSED_KERNEL, fwht_fused_f16, __half, float)
EACH_1_8(FUSED_KERNEL, fwht_fused_bf16, __nv_bfloat16, float)
EACH_1_8(FUSED_KERNEL, fwht_fused_f64, double, double)
#endif
