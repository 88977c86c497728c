// Tests of the training-op kernels in cuda/ops.cu on the CPU, through the emulation in cuda_emu.h: LayerNorm,
// GELU, dropout, rotary embedding, the causal attention softmax and the cross-entropy, forward and backward, in
// f32, f16 and bf16, against double-precision references written from the ops' definitions (and, for the
// dropout masks, from the CPU ops' hash in src/ops/kernels.rs). Every kernel runs twice: with the launch shape
// src/ops/cuda.rs picks, and with a small odd grid that makes every grid-stride loop wrap.
//
//   cargo test --release --test cuda_emulated     # builds this file with the C++ compiler and runs it
//   g++ -std=c++17 -O2 -o /tmp/ops_check cuda/emu/ops_check.cpp && /tmp/ops_check
#define FWHT_EMU
#include "../ops.cu"

#include "types.h"

#include <cmath>
#include <string>

namespace {

int failures = 0, comparisons = 0;

// Compares `got` with a double reference: max |got - want| / (|want| + rms(want)) <= tol.
template <typename T>
void compare(const std::string& what, const std::vector<T>& got, const std::vector<double>& want, double tol) {
    ++comparisons;
    double rms = 0.0;
    for (double w : want) rms += w * w;
    rms = std::sqrt(rms / (double)(want.empty() ? 1 : want.size())) + 1e-30;
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double g = Ty<T>::to(got[i]);
        const double e = std::isnan(g) ? INFINITY : std::fabs(g - want[i]) / (std::fabs(want[i]) + rms);
        if (e > worst) worst = e, at = i;
    }
    if (worst > tol) {
        ++failures;
        std::printf("FAIL %-48s error %.3g > %.3g at %zu: %.9g vs %.9g\n", what.c_str(), worst, tol, at,
                    Ty<T>::to(got[at]), want[at]);
    } else {
        std::printf("ok   %-48s %zu values, error %.3g (tolerance %.3g)\n", what.c_str(), want.size(), worst, tol);
    }
    std::fflush(stdout);
}

void check(const std::string& what, bool ok, const std::string& detail) {
    ++comparisons;
    if (!ok) ++failures;
    std::printf("%s %-48s %s\n", ok ? "ok  " : "FAIL", what.c_str(), detail.c_str());
    std::fflush(stdout);
}

// Tolerance of one rounding to T on top of f32 arithmetic.
template <typename T> double tol() {
    if constexpr (std::is_same_v<T, float>) return 2e-5;
    if constexpr (std::is_same_v<T, __half>) return 2e-3;
    return 1.6e-2;
}

template <typename T> std::vector<double> wide(const std::vector<T>& x) {
    std::vector<double> v(x.size());
    for (size_t i = 0; i < x.size(); ++i) v[i] = Ty<T>::to(x[i]);
    return v;
}

// The CPU ops' dropout hash (src/ops/kernels.rs), written again as the reference.
uint32_t ref_lowbias32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}
uint32_t ref_row_key(uint64_t seed, uint64_t row) {
    const uint32_t a = ref_lowbias32((uint32_t)row ^ (uint32_t)seed);
    return ref_lowbias32(a ^ ((uint32_t)(row >> 32) * 0x9e3779b9u) ^ (uint32_t)(seed >> 32));
}
uint32_t threshold_of(double p) { return (uint32_t)std::fmin(p * 4294967296.0, 4294967295.0); }
double ref_keep(uint64_t seed, uint64_t row, uint32_t j, double p) {
    return ref_lowbias32(ref_row_key(seed, row) + j * 0x9e3779b9u) >= threshold_of(p) ? 1.0 / (1.0 - p) : 0.0;
}

// A launch shape: blocks, threads, dynamic shared memory.
struct Shape {
    unsigned grid, block;
    size_t smem;
};
unsigned cdiv(long long a, long long b) { return (unsigned)((a + b - 1) / b); }
// src/ops/cuda.rs: warp-per-row and element-wise kernels take blocks of 256 threads.
Shape rows_shape(long long rows) { return {cdiv(rows, 8), 256, 0}; }
Shape elems_shape(long long n) { return {cdiv(n, 256), 256, 0}; }
constexpr int LN_RPB = 32;  // rows per item of the LayerNorm backward
constexpr Shape ODD{3, 64, 0};

template <typename F> void run(Shape s, F&& kernel) {
    emu::launch({s.grid, 1, 1}, {s.block, 1, 1}, s.smem, 4, std::function<void()>(kernel));
}

template <typename T> struct K;
#define OPS_K(T, NAME)                                                                                        \
    template <> struct K<T> {                                                                                  \
        static constexpr auto ln_fwd = layer_norm_fwd_##NAME;                                                  \
        static constexpr auto ln_bwd = layer_norm_bwd_##NAME;                                                  \
        static constexpr auto col_sum = column_sum_##NAME;                                                     \
        static constexpr auto gelu_f = gelu_fwd_##NAME;                                                        \
        static constexpr auto gelu_b = gelu_bwd_##NAME;                                                        \
        static constexpr auto drop = dropout_##NAME;                                                           \
        static constexpr auto rot = rotary_##NAME;                                                             \
        static constexpr auto attn_f = attn_softmax_fwd_##NAME;                                                \
        static constexpr auto attn_b = attn_softmax_bwd_##NAME;                                                \
        static constexpr auto xent_f = xent_fwd_##NAME;                                                        \
        static constexpr auto xent_b = xent_bwd_##NAME;                                                        \
    };
OPS_K(float, f32)
OPS_K(__half, f16)
OPS_K(__nv_bfloat16, bf16)

template <typename T> std::string label(const char* op, bool odd) {
    return std::string(op) + " " + Ty<T>::name + (odd ? " (odd grid)" : "");
}

// ---- LayerNorm ------------------------------------------------------------------------------------------------
template <typename T> void layer_norm(long long rows, int d, bool odd) {
    const float eps = 1e-5f;
    auto x = random<T>(rows * d, 1), w = random<T>(d, 2), b = random<T>(d, 3), gy = random<T>(rows * d, 4);
    const auto xd = wide(x), wd = wide(w), bd = wide(b), gd = wide(gy);
    std::vector<double> y_ref(rows * d), dx_ref(rows * d), dw_ref(d, 0.0), db_ref(d, 0.0);
    for (long long r = 0; r < rows; ++r) {
        const double* xr = &xd[r * d];
        double mean = 0, var = 0;
        for (int i = 0; i < d; ++i) mean += xr[i];
        mean /= d;
        for (int i = 0; i < d; ++i) var += (xr[i] - mean) * (xr[i] - mean);
        const double rstd = 1.0 / std::sqrt(var / d + eps);
        double sg = 0, sgx = 0;
        for (int i = 0; i < d; ++i) {
            const double xh = (xr[i] - mean) * rstd, g = gd[r * d + i];
            y_ref[r * d + i] = xh * wd[i] + bd[i];
            sg += g * wd[i];
            sgx += g * wd[i] * xh;
            dw_ref[i] += g * xh;
            db_ref[i] += g;
        }
        for (int i = 0; i < d; ++i) {
            const double xh = (xr[i] - mean) * rstd;
            dx_ref[r * d + i] = rstd * (gd[r * d + i] * wd[i] - sg / d - xh * sgx / d);
        }
    }
    std::vector<T> y(rows * d);
    run(odd ? ODD : rows_shape(rows), [&] { K<T>::ln_fwd(x.data(), w.data(), b.data(), y.data(), rows, d, eps); });
    compare(label<T>("layer_norm_fwd", odd), y, y_ref, tol<T>());

    const long long items = (rows + LN_RPB - 1) / LN_RPB;
    // the packed output of the op: dx rows, then dw, then db
    std::vector<T> packed((rows + 2) * d);
    std::vector<float> partial(items * 2 * d, NAN);
    const Shape s = odd ? Shape{3, 64, 2 * LN_RPB * sizeof(float)}
                        : Shape{(unsigned)items, 256, 2 * LN_RPB * sizeof(float)};
    run(s, [&] {
        K<T>::ln_bwd(x.data(), w.data(), gy.data(), packed.data(), partial.data(), rows, d, eps, LN_RPB);
    });
    run(odd ? ODD : elems_shape(2 * d),
        [&] { K<T>::col_sum(partial.data(), packed.data() + rows * d, (int)items, 2 * d); });
    std::vector<T> dx(packed.begin(), packed.begin() + rows * d), dw(packed.begin() + rows * d,
                                                                     packed.begin() + (rows + 1) * d),
        db(packed.begin() + (rows + 1) * d, packed.end());
    compare(label<T>("layer_norm_bwd dx", odd), dx, dx_ref, 4 * tol<T>());
    compare(label<T>("layer_norm_bwd dw", odd), dw, dw_ref, 4 * tol<T>());
    compare(label<T>("layer_norm_bwd db", odd), db, db_ref, 4 * tol<T>());
}

// ---- GELU ------------------------------------------------------------------------------------------------------
template <typename T> void gelu(long long n, bool odd) {
    auto x = random<T>(n, 5), gy = random<T>(n, 6);
    std::vector<double> y_ref(n), dx_ref(n);
    for (long long e = 0; e < n; ++e) {
        const double v = Ty<T>::to(x[e]);
        const double cdf = 0.5 * (1.0 + std::erf(v / std::sqrt(2.0)));
        y_ref[e] = v * cdf;
        dx_ref[e] = Ty<T>::to(gy[e]) * (cdf + v * std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI));
    }
    std::vector<T> y(n), dx(n);
    run(odd ? ODD : elems_shape(n), [&] { K<T>::gelu_f(x.data(), y.data(), n); });
    compare(label<T>("gelu_fwd", odd), y, y_ref, tol<T>());
    run(odd ? ODD : elems_shape(n), [&] { K<T>::gelu_b(x.data(), gy.data(), dx.data(), n); });
    compare(label<T>("gelu_bwd", odd), dx, dx_ref, tol<T>());
}

// ---- dropout ---------------------------------------------------------------------------------------------------
template <typename T> void dropout(long long n, double p, bool odd) {
    const uint64_t seed = 0x1234567890abcdefull;
    auto x = random<T>(n, 7), res = random<T>(n, 8);
    std::vector<double> y_ref(n), yr_ref(n);
    long long dropped = 0;
    for (long long e = 0; e < n; ++e) {
        const double k = ref_keep(seed, (uint64_t)e >> 12, (uint32_t)(e & 4095), p);
        dropped += k == 0.0;
        y_ref[e] = k * Ty<T>::to(x[e]);
        yr_ref[e] = y_ref[e] + Ty<T>::to(res[e]);
    }
    const float scale = (float)(1.0 / (1.0 - p));
    std::vector<T> y(n), yr(n);
    const Shape s = odd ? ODD : elems_shape(n);
    run(s, [&] { K<T>::drop(x.data(), nullptr, y.data(), n, seed, threshold_of(p), scale); });
    compare(label<T>("dropout", odd), y, y_ref, tol<T>());
    run(s, [&] { K<T>::drop(x.data(), res.data(), yr.data(), n, seed, threshold_of(p), scale); });
    compare(label<T>("residual dropout", odd), yr, yr_ref, tol<T>());
    // the reference mask itself drops about p of the elements (4 standard deviations)
    const double frac = (double)dropped / (double)n, sd = std::sqrt(p * (1 - p) / (double)n);
    check(label<T>("dropout rate", odd), std::fabs(frac - p) < 4 * sd + 1e-12,
          "dropped " + std::to_string(frac) + " for p = " + std::to_string(p));
}

// ---- rotary ----------------------------------------------------------------------------------------------------
template <typename T> void rotary(long long bh, int t, int hd, bool odd) {
    const int half = hd / 2;
    const long long rows = bh * t;
    auto x = random<T>(rows * hd, 9), c = random<T>(t * half, 10), s = random<T>(t * half, 11);
    for (float sgn : {1.0f, -1.0f}) {
        std::vector<double> ref(rows * hd);
        for (long long r = 0; r < rows; ++r)
            for (int j = 0; j < half; ++j) {
                const double cv = Ty<T>::to(c[(r % t) * half + j]), sv = sgn * Ty<T>::to(s[(r % t) * half + j]);
                const double x1 = Ty<T>::to(x[r * hd + j]), x2 = Ty<T>::to(x[r * hd + half + j]);
                ref[r * hd + j] = x1 * cv - x2 * sv;
                ref[r * hd + half + j] = x2 * cv + x1 * sv;
            }
        std::vector<T> y(rows * hd);
        run(odd ? ODD : elems_shape(rows * half),
            [&] { K<T>::rot(x.data(), c.data(), s.data(), y.data(), rows, t, half, sgn); });
        compare(label<T>(sgn > 0 ? "rotary" : "rotary inverse", odd), y, ref, tol<T>());
    }
}

// ---- causal attention softmax -----------------------------------------------------------------------------------
template <typename T> void attn_softmax(long long bh, int t, double p, bool odd) {
    const uint64_t seed = 0xfeedfacecafebeefull;
    const long long rows = bh * t;
    const float scale = 0.125f;
    auto s = random<T>(rows * t, 12), go = random<T>(rows * t, 13);
    std::vector<double> p_ref(rows * t), ds_ref(rows * t);
    for (long long r = 0; r < rows; ++r) {
        const int i = (int)(r % t);
        double m = -INFINITY, z = 0;
        for (int j = 0; j <= i; ++j) m = std::fmax(m, scale * Ty<T>::to(s[r * t + j]));
        for (int j = 0; j <= i; ++j) z += std::exp(scale * Ty<T>::to(s[r * t + j]) - m);
        double dot = 0;
        std::vector<double> pr(t, 0.0), dp(t, 0.0);
        for (int j = 0; j <= i; ++j) {
            pr[j] = std::exp(scale * Ty<T>::to(s[r * t + j]) - m) / z;
            const double k = ref_keep(seed, (uint64_t)r, (uint32_t)j, p);
            p_ref[r * t + j] = pr[j] * k;
            dp[j] = Ty<T>::to(go[r * t + j]) * k;
            dot += pr[j] * dp[j];
        }
        for (int j = 0; j < t; ++j) ds_ref[r * t + j] = j <= i ? scale * pr[j] * (dp[j] - dot) : 0.0;
    }
    const float ks = (float)(1.0 / (1.0 - p));
    std::vector<T> pt(rows * t), ds(rows * t);
    const Shape sh = odd ? ODD : rows_shape(rows);
    run(sh, [&] { K<T>::attn_f(s.data(), pt.data(), rows, t, scale, seed, threshold_of(p), ks); });
    compare(label<T>(p > 0 ? "attn_softmax_fwd dropout" : "attn_softmax_fwd", odd), pt, p_ref, tol<T>());
    run(sh, [&] { K<T>::attn_b(s.data(), go.data(), ds.data(), rows, t, scale, seed, threshold_of(p), ks); });
    compare(label<T>(p > 0 ? "attn_softmax_bwd dropout" : "attn_softmax_bwd", odd), ds, ds_ref, 4 * tol<T>());
}

// ---- cross-entropy ----------------------------------------------------------------------------------------------
template <typename T> void cross_entropy(long long rows, int vocab, bool odd) {
    auto x = random<T>(rows * vocab, 14);
    std::vector<uint32_t> tg(rows);
    for (long long r = 0; r < rows; ++r) tg[r] = (uint32_t)((r * 7919 + 13) % vocab);
    const float g = 0.75f;
    double loss_ref = 0;
    std::vector<double> dx_ref(rows * vocab);
    for (long long r = 0; r < rows; ++r) {
        double m = -INFINITY, z = 0;
        for (int i = 0; i < vocab; ++i) m = std::fmax(m, Ty<T>::to(x[r * vocab + i]));
        for (int i = 0; i < vocab; ++i) z += std::exp(Ty<T>::to(x[r * vocab + i]) - m);
        loss_ref += m + std::log(z) - Ty<T>::to(x[r * vocab + tg[r]]);
        for (int i = 0; i < vocab; ++i)
            dx_ref[r * vocab + i] =
                (std::exp(Ty<T>::to(x[r * vocab + i]) - m) / z - (i == (int)tg[r])) * g / (double)rows;
    }
    loss_ref /= (double)rows;
    const size_t red = 66 * sizeof(float);
    std::vector<float> per_row(rows, NAN), loss(1, NAN), grad(1, g);
    run(odd ? Shape{3, 64, red} : Shape{(unsigned)rows, 256, red},
        [&] { K<T>::xent_f(x.data(), tg.data(), per_row.data(), rows, vocab); });
    run(odd ? Shape{1, 64, 32 * sizeof(double)} : Shape{1, 256, 32 * sizeof(double)},
        [&] { sum_scaled_f32(per_row.data(), loss.data(), rows, 1.0f / (float)rows); });
    compare(label<T>("cross_entropy loss", odd), loss, {loss_ref}, 1e-5);
    std::vector<T> dx(rows * vocab);
    run(odd ? Shape{3, 64, red} : Shape{(unsigned)rows, 256, red},
        [&] { K<T>::xent_b(x.data(), tg.data(), grad.data(), dx.data(), rows, vocab, 1.0f / (float)rows); });
    compare(label<T>("cross_entropy dlogits", odd), dx, dx_ref, tol<T>());
    // a target outside the vocabulary gives a NaN loss, not a read out of bounds
    tg[0] = (uint32_t)vocab;
    run(Shape{1, 64, red}, [&] { K<T>::xent_f(x.data(), tg.data(), per_row.data(), 1, vocab); });
    check(label<T>("cross_entropy bad target", odd), std::isnan(per_row[0]), "NaN loss");
}

template <typename T> void all(bool odd) {
    layer_norm<T>(odd ? 37 : 70, odd ? 80 : 96, odd);
    gelu<T>(odd ? 1000 : 5000, odd);
    dropout<T>(odd ? 5000 : 9000, 0.1, odd);
    rotary<T>(3, odd ? 7 : 19, 16, odd);
    attn_softmax<T>(2, odd ? 37 : 70, 0.0, odd);
    attn_softmax<T>(2, odd ? 37 : 70, 0.25, odd);
    cross_entropy<T>(odd ? 5 : 9, odd ? 300 : 1100, odd);
}

}  // namespace

int main() {
    for (bool odd : {false, true}) {
        all<float>(odd);
        all<__half>(odd);
        all<__nv_bfloat16>(odd);
    }
    std::printf("%s: %d comparisons, %d failures\n", failures ? "FAILED" : "ALL PASSED", comparisons, failures);
    return failures ? 1 : 0;
}
