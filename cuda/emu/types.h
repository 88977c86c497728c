// Element types of the emulated kernel checks (check.cpp, ops_check.cpp): conversions to and from double, the
// bits of a value, and seeded normal random inputs.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

// ---- element types --------------------------------------------------------------------------------------
template <typename T> struct Ty;
template <> struct Ty<float> {
    using Acc = float;
    static constexpr const char* name = "f32";
    static float from(double x) { return (float)x; }
    static double to(float x) { return x; }
};
template <> struct Ty<double> {
    using Acc = double;
    static constexpr const char* name = "f64";
    static double from(double x) { return x; }
    static double to(double x) { return x; }
};
template <> struct Ty<__half> {
    using Acc = float;
    static constexpr const char* name = "f16";
    static __half from(double x) { return __float2half_rn((float)x); }
    static double to(__half x) { return __half2float(x); }
};
template <> struct Ty<__nv_bfloat16> {
    using Acc = float;
    static constexpr const char* name = "bf16";
    static __nv_bfloat16 from(double x) { return __float2bfloat16_rn((float)x); }
    static double to(__nv_bfloat16 x) { return __bfloat162float(x); }
};

template <typename T> uint64_t bits(T x) {
    uint64_t b = 0;
    std::memcpy(&b, &x, sizeof(T));
    return b;
}

template <typename T> std::vector<T> random(size_t len, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> d(0.0, 1.0);
    std::vector<T> x(len);
    for (auto& e : x) e = Ty<T>::from(d(rng));
    return x;
}
