// Tests of the CUDA kernels in cuda/fwht.cu on the CPU, through the emulation in cuda_emu.h: every kernel
// family (one pass and its transposed variant, packed n <= 4, the two-kernel multi-pass path, the persistent
// multi-pass kernel) against a
// plain f32/f64 transform in the CPU kernel's butterfly order, bit for bit (the GPU kernels promise that).
// Launch geometry comes from the kernels' own constants (kernel_geometry.h); the host rules (split, schedule)
// follow src/fwht/cuda.rs.
//
//   cargo test --release --test cuda_emulated       # builds this file with the C++ compiler and runs it
//   g++ -std=c++17 -O2 -o /tmp/check cuda/emu/check.cpp && /tmp/check [--quick]   # by hand
#define FWHT_EMU
#define FWHT_UNTESTED_VARIANTS  // the emulated checks cover the opt-in variants too
#include "../fwht.cu"

#include "kernel_geometry.h"
#include "types.h"

#include <cinttypes>
#include <random>
#include <string>

namespace {

// ---- the reference: stages from bit 0 upwards, u + v low, u - v high, in Acc; then the scale; then rounding
template <typename T> std::vector<T> reference(const std::vector<T>& x, size_t rows, size_t n, size_t stride,
                                               size_t offset, double scale) {
    using Acc = typename Ty<T>::Acc;
    std::vector<T> out(rows * n);
    std::vector<Acc> v(n);
    for (size_t r = 0; r < rows; ++r) {
        for (size_t i = 0; i < n; ++i) v[i] = (Acc)Ty<T>::to(x[offset + r * stride + i]);
        for (size_t h = 1; h < n; h <<= 1)
            for (size_t i = 0; i < n; ++i)
                if ((i & h) == 0) {
                    const Acc a = v[i], b = v[i + h];
                    v[i] = a + b;
                    v[i + h] = a - b;
                }
        for (size_t i = 0; i < n; ++i) {
            const Acc y = v[i] * (Acc)scale;
            if constexpr (std::is_same_v<T, __half>) out[r * n + i] = __float2half_rn(y);
            else if constexpr (std::is_same_v<T, __nv_bfloat16>) out[r * n + i] = __float2bfloat16_rn(y);
            else out[r * n + i] = y;
        }
    }
    return out;
}

int failures = 0, comparisons = 0;

// Shared-memory wavefronts since the last call, and the conflict-free minimum for the same requests.
struct Banks {
    long long wavefronts, ideal;
};
Banks take_banks() {
    static long long w0 = 0, i0 = 0;
    const Banks b{emu::S().smem_wavefronts - w0, emu::S().smem_ideal - i0};
    w0 = emu::S().smem_wavefronts;
    i0 = emu::S().smem_ideal;
    return b;
}

// Compares bit for bit; `conflict_free`: the kernels that ran since the last take_banks() must also have had
// no shared-memory bank conflicts.
template <typename T> void compare(const std::string& what, const std::vector<T>& got, const std::vector<T>& want,
                                   bool conflict_free = false) {
    ++comparisons;
    const Banks banks = take_banks();
    char conflicts[64] = "";
    if (banks.ideal > 0)
        std::snprintf(conflicts, sizeof conflicts, ", shared memory %.2fx the conflict-free wavefronts",
                      (double)banks.wavefronts / (double)banks.ideal);
    if (conflict_free && banks.wavefronts != banks.ideal) {
        ++failures;
        std::printf("FAIL %-44s bank conflicts: %lld wavefronts for %lld requests\n", what.c_str(),
                    banks.wavefronts, banks.ideal);
    }
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < want.size(); ++i)
        if (bits(got[i]) != bits(want[i])) {
            if (bad++ == 0) first = i;
        }
    if (bad) {
        ++failures;
        std::printf("FAIL %-44s %zu of %zu differ, first at %zu: %.9g vs %.9g\n", what.c_str(), bad, want.size(),
                    first, Ty<T>::to(got[first]), Ty<T>::to(want[first]));
    } else {
        std::printf("ok   %-44s %zu values bit-identical%s\n", what.c_str(), want.size(), conflicts);
    }
    std::fflush(stdout);
}


// ---- launch geometry: the kernels' own constants (kernel_geometry.h) --------------------------------------
// kernels are typed; wrap them so the tables below can hold one signature per element type
template <typename TIn, typename TOut, typename Acc>
using RowK = void (*)(const TIn*, TOut*, long long, int, long long, long long, Acc, int, int);
template <typename TOut, typename Acc>
using ColK = void (*)(const Acc*, TOut*, long long, long long, long long, long long, Acc);
template <typename T, typename Acc>
using FusedK = void (*)(const T*, T*, Acc*, unsigned*, long long, long long, int, int, Acc, int);

template <typename T> struct Kernels;
#define ROW_TABLE(P)                                                                                              \
    {P##_0, P##_1, P##_2, P##_3, P##_4, P##_5, P##_6, P##_7, P##_8, P##_9, P##_10, P##_11, P##_12, P##_13, P##_14}
#define KERNELS(T, ACC, S)                                                                                        \
    template <> struct Kernels<T> {                                                                              \
        static RowK<T, T, ACC> row(unsigned m) {                                                                  \
            static const RowK<T, T, ACC> t[] = ROW_TABLE(fwht_##S);                                               \
            return m < 15 ? t[m] : one_pass_15();                                                                 \
        }                                                                                                         \
        static RowK<T, T, ACC> one_pass_15();                                                                     \
        static RowK<T, T, ACC> pack(unsigned b) {                                                                 \
            static const RowK<T, T, ACC> t[] = {fwht_##S##_pack_0, fwht_##S##_pack_1, fwht_##S##_pack_2};         \
            return t[b];                                                                                          \
        }                                                                                                         \
        static RowK<T, ACC, ACC> acc(unsigned m) {                                                                \
            static const RowK<T, ACC, ACC> t[] = {fwht_##S##_acc_12, fwht_##S##_acc_13, fwht_##S##_acc_14};       \
            return m <= 14 ? t[m - 12] : acc_15();                                                                \
        }                                                                                                         \
        static RowK<T, ACC, ACC> acc_15();                                                                        \
        static ColK<T, ACC> col(unsigned a) {                                                                     \
            static const ColK<T, ACC> t[] = {fwht_cols_##S##_1, fwht_cols_##S##_2, fwht_cols_##S##_3,             \
                                             fwht_cols_##S##_4, fwht_cols_##S##_5, fwht_cols_##S##_6,             \
                                             fwht_cols_##S##_7, fwht_cols_##S##_8, fwht_cols_##S##_9,             \
                                             fwht_cols_##S##_10};                                                 \
            return t[a - 1];                                                                                      \
        }                                                                                                         \
        static RowK<T, T, ACC> xrow(unsigned m);                                                                  \
        static FusedK<T, ACC> fused(unsigned a) {                                                                 \
            static const FusedK<T, ACC> t[] = {fwht_fused_##S##_1, fwht_fused_##S##_2, fwht_fused_##S##_3,        \
                                               fwht_fused_##S##_4, fwht_fused_##S##_5, fwht_fused_##S##_6,        \
                                               fwht_fused_##S##_7, fwht_fused_##S##_8};                           \
            return t[a - 1];                                                                                      \
        }                                                                                                         \
    };
KERNELS(float, float, f32)
KERNELS(__half, float, f16)
KERNELS(__nv_bfloat16, float, bf16)
KERNELS(double, double, f64)
#define XROW_TABLE(P) {P##_10, P##_11, P##_12, P##_13, P##_14, P##_15}
RowK<float, float, float> Kernels<float>::xrow(unsigned m) {
    static const RowK<float, float, float> t[] = XROW_TABLE(fwht_f32_x);
    return t[m - 10];
}
RowK<__half, __half, float> Kernels<__half>::xrow(unsigned m) {
    static const RowK<__half, __half, float> t[] = XROW_TABLE(fwht_f16_x);
    return t[m - 10];
}
RowK<__nv_bfloat16, __nv_bfloat16, float> Kernels<__nv_bfloat16>::xrow(unsigned m) {
    static const RowK<__nv_bfloat16, __nv_bfloat16, float> t[] = XROW_TABLE(fwht_bf16_x);
    return t[m - 10];
}
RowK<double, double, double> Kernels<double>::xrow(unsigned) { return nullptr; }
RowK<float, float, float> Kernels<float>::one_pass_15() { return fwht_f32_15; }
RowK<__half, __half, float> Kernels<__half>::one_pass_15() { return fwht_f16_15; }
RowK<__nv_bfloat16, __nv_bfloat16, float> Kernels<__nv_bfloat16>::one_pass_15() { return fwht_bf16_15; }
RowK<double, double, double> Kernels<double>::one_pass_15() { return nullptr; }
RowK<float, float, float> Kernels<float>::acc_15() { return fwht_f32_acc_15; }
RowK<__half, float, float> Kernels<__half>::acc_15() { return fwht_f16_acc_15; }
RowK<__nv_bfloat16, float, float> Kernels<__nv_bfloat16>::acc_15() { return fwht_bf16_acc_15; }
RowK<double, double, double> Kernels<double>::acc_15() { return nullptr; }

constexpr unsigned WAVE = 4;  // blocks emulated together for the ordinary kernels

template <typename TIn, typename TOut, typename Acc>
void launch_rows(RowK<TIn, TOut, Acc> k, unsigned log_n, const TIn* in, TOut* out, long long rows, int sub_log,
                 long long in_stride, long long out_stride, Acc scale, bool vin, bool vout,
                 bool transposed = false) {
    const Geo g = row_geo<Acc, (int)sizeof(TIn)>(log_n, transposed);
    const unsigned blocks = (unsigned)((rows + g.rows_per_block - 1) / g.rows_per_block);
    emu::launch({blocks, 1, 1}, {g.block, 1, 1}, g.smem, WAVE,
                [&] { k(in, out, rows, sub_log, in_stride, out_stride, scale, vin, vout); });
}

// ---- the three paths of the op --------------------------------------------------------------------------
// input: `rows` rows of n at `stride`, starting `offset` elements into x (an offset breaks 16-byte alignment)
template <typename T> std::vector<T> one_pass(const std::vector<T>& x, unsigned log_n, size_t rows, size_t stride,
                                              size_t offset, double scale, bool transposed = false) {
    using Acc = typename Ty<T>::Acc;
    const size_t n = size_t(1) << log_n;
    std::vector<T> out(rows * n);
    const bool vin = (offset * sizeof(T)) % 16 == 0 && (rows == 1 || (stride * sizeof(T)) % 16 == 0);
    if (transposed) {
        launch_rows(Kernels<T>::xrow(log_n), log_n, x.data() + offset, out.data(), (long long)rows, 0,
                    (long long)stride, (long long)n, (Acc)scale, vin, true, true);
    } else if (log_n < 3 && (rows == 1 || stride == n) && (rows * n) % 8 == 0) {
        launch_rows(Kernels<T>::pack(log_n), 3, x.data() + offset, out.data(), (long long)(rows * n / 8), 0, 8, 8,
                    (Acc)scale, (offset * sizeof(T)) % 16 == 0, true);
    } else {
        launch_rows(Kernels<T>::row(log_n), log_n, x.data() + offset, out.data(), (long long)rows, 0,
                    (long long)stride, (long long)n, (Acc)scale, vin, true);
    }
    return out;
}

template <typename T> std::vector<T> two_kernels(const std::vector<T>& x, unsigned log_n, size_t rows,
                                                 size_t stride, size_t offset, double scale, size_t group) {
    using Acc = typename Ty<T>::Acc;
    const unsigned lo = std::min(std::max(12u, log_n > 9 ? log_n - 9 : 0u), sizeof(Acc) == 4 ? 15u : 14u);
    const unsigned hi = log_n - lo;
    const size_t n = size_t(1) << log_n, n_lo = size_t(1) << lo;
    std::vector<T> out(rows * n);
    std::vector<Acc> scratch(group * n);
    const bool stride_ok = rows == 1 || (stride * sizeof(T)) % 16 == 0;
    const unsigned nc = col_nc(hi);
    for (size_t first = 0; first < rows; first += group) {
        const size_t g = std::min(group, rows - first);
        const bool vin = ((offset + first * stride) * sizeof(T)) % 16 == 0 && stride_ok;
        launch_rows(Kernels<T>::acc(lo), lo, x.data() + offset + first * stride, scratch.data(),
                    (long long)(g << hi), (int)hi, (long long)stride, (long long)n, (Acc)1, vin, true);
        emu::launch({(unsigned)(g * (n_lo / nc)), 1, 1}, {256, 1, 1}, (size_t(1) << hi) * nc * sizeof(Acc), WAVE,
                    [&] {
                        Kernels<T>::col(hi)(scratch.data(), out.data() + first * n, (long long)g, (long long)n_lo,
                                            (long long)n, (long long)n, (Acc)scale);
                    });
    }
    return out;
}

template <typename T> std::vector<T> persistent(const std::vector<T>& x, unsigned log_n, size_t rows,
                                                size_t stride, size_t offset, double scale, unsigned blocks,
                                                int slots, int lag) {
    using Acc = typename Ty<T>::Acc;
    const unsigned a = log_n - 12;
    const size_t n = size_t(1) << log_n;
    std::vector<T> out(rows * n);
    std::vector<Acc> ring(slots * n, (Acc)12345.0);  // stale values: must all be overwritten before read
    std::vector<unsigned> ctl(1 + 2 * slots, 0);
    const bool vin = (offset * sizeof(T)) % 16 == 0 && (rows == 1 || (stride * sizeof(T)) % 16 == 0);
    const size_t smem = fused_smem<Acc, (int)sizeof(T)>(a);
    emu::S().jitter = true;  // blocks at uneven speeds: a missing wait shows up as wrong values
    emu::launch({blocks, 1, 1}, {256, 1, 1}, smem, blocks, [&] {
        Kernels<T>::fused(a)(x.data() + offset, out.data(), ring.data(), ctl.data(), (long long)rows,
                             (long long)stride, slots, lag, (Acc)scale, vin);
    });
    emu::S().jitter = false;
    // every item was handed out once, and the counters add up
    const size_t col_items = (size_t(1) << 12) / col_nc(a), row_items = size_t(1) << a;
    size_t rd = 0, cd = 0;
    for (int s = 0; s < slots; ++s) rd += ctl[1 + s], cd += ctl[1 + slots + s];
    if (rd != rows * row_items || cd != rows * col_items) {
        ++failures;
        std::printf("FAIL persistent counters: %zu row items, %zu column items done\n", rd, cd);
    }
    return out;
}

template <typename T> void check_type(bool quick) {
    const char* tn = Ty<T>::name;
    const unsigned max_one = sizeof(typename Ty<T>::Acc) == 4 ? 15 : 14;
    uint64_t seed = 1000 + sizeof(T);
    // one pass: every n, 3 rows (padding rows in the last block), plus a row stride and a misaligned start
    for (unsigned m = 0; m <= max_one; ++m) {
        const size_t n = size_t(1) << m;
        const size_t rows = m <= 10 ? 5 : (m <= 13 ? 3 : 2);
        const double scale = 1.0 / std::sqrt((double)n);
        auto x = random<T>(rows * (n + 8) + 8, seed++);
        auto want = reference(x, rows, n, n, 0, scale);
        take_banks();
        compare(std::string(tn) + " one pass n=2^" + std::to_string(m), one_pass(x, m, rows, n, 0, scale), want,
                true);
        if (quick && m > 12) continue;
        want = reference(x, rows, n, n + 8, 0, scale);
        take_banks();
        compare(std::string(tn) + " one pass n=2^" + std::to_string(m) + " stride n+8",
                one_pass(x, m, rows, n + 8, 0, scale), want, true);
        want = reference(x, rows, n, n, 1, scale);
        take_banks();
        compare(std::string(tn) + " one pass n=2^" + std::to_string(m) + " offset 1",
                one_pass(x, m, rows, n, 1, scale), want, true);
    }
    // the transposed-exchange variant of the one-pass kernel (f32 arithmetic, n = 2^10 .. 2^15)
    for (unsigned m = 10; m <= 15 && sizeof(typename Ty<T>::Acc) == 4; ++m) {
        const size_t n = size_t(1) << m;
        const size_t rows = m <= 12 ? 9 : 3;  // 9: a partly filled last block at n = 2^10 .. 2^12
        const double scale = 1.0 / std::sqrt((double)n);
        auto x = random<T>(rows * (n + 8) + 8, seed++);
        const std::string what = std::string(tn) + " transposed n=2^" + std::to_string(m);
        auto want = reference(x, rows, n, n, 0, scale);
        take_banks();
        compare(what, one_pass(x, m, rows, n, 0, scale, true), want, true);
        want = reference(x, rows, n, n + 8, 0, scale);
        take_banks();
        compare(what + " stride n+8", one_pass(x, m, rows, n + 8, 0, scale, true), want, true);
        want = reference(x, rows, n, n, 1, scale);
        take_banks();
        compare(what + " offset 1", one_pass(x, m, rows, n, 1, scale, true), want, true);
    }
    // the two-kernel multi-pass path, several groups
    for (unsigned m : {16u, 17u}) {
        const size_t n = size_t(1) << m;
        auto x = random<T>(3 * n + 8, seed++);
        compare(std::string(tn) + " two kernels n=2^" + std::to_string(m) + " 3 rows, groups of 2",
                two_kernels(x, m, 3, n, 0, 0.5, 2), reference(x, 3, n, n, 0, 0.5));
    }
    // the persistent kernel: every n_hi, few blocks, tight rings, rows fewer than the lag
    for (unsigned m = 13; m <= 20; ++m) {
        if (quick && m > 16 && m != 20) continue;
        const size_t n = size_t(1) << m;
        const size_t rows = m <= 15 ? 7 : (m <= 17 ? 3 : 2);
        const double scale = 1.0 / std::sqrt((double)n);
        auto x = random<T>(rows * (n + 8) + 8, seed++);
        const int slots = m % 2 ? 2 : 3, lag = slots - 1;
        compare(std::string(tn) + " persistent n=2^" + std::to_string(m) + " slots " + std::to_string(slots),
                persistent(x, m, rows, n, 0, scale, 3, slots, lag), reference(x, rows, n, n, 0, scale));
        if (m == 13 || m == 16) {
            compare(std::string(tn) + " persistent n=2^" + std::to_string(m) + " stride, offset, 5 blocks",
                    persistent(x, m, rows, n + 8, 1, scale, 5, 4, 2), reference(x, rows, n, n + 8, 1, scale));
            compare(std::string(tn) + " persistent n=2^" + std::to_string(m) + " lag > rows",
                    persistent(x, m, 2, n, 0, scale, 2, 9, 8), reference(x, 2, n, n, 0, scale));
        }
    }
}

}  // namespace

int main(int argc, char** argv) {  // --quick: fewer sizes
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    check_type<float>(quick);
    check_type<__nv_bfloat16>(quick);
    check_type<__half>(quick);
    check_type<double>(quick);
    std::printf("%s: %d comparisons, %d failures\n", failures ? "FAILED" : "ALL PASSED", comparisons, failures);
    return failures ? 1 : 0;
}
