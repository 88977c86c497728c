// Shared by the kernel files of cuda/ (fwht.cu, ops.cu): headers, the block's dynamic shared memory, the
// memory-access helpers that the CPU emulation (emu/cuda_emu.h) instruments, and the conversions between the
// element types and their f32/f64 arithmetic. Written for this crate.
#pragma once

#ifdef FWHT_EMU
#include "emu/cuda_emu.h"  // CPU emulation for the kernel tests (cuda/emu/)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#endif

namespace {

// The block's dynamic shared memory.
__device__ __forceinline__ unsigned char* dyn_smem() {
#ifdef FWHT_EMU
    return emu::smem();
#else
    extern __shared__ __align__(16) unsigned char smem_raw[];
    return smem_raw;
#endif
}

#ifndef FWHT_EMU
// A 16-byte global store (the emulation checks its alignment).
__device__ __forceinline__ void store16(uint4* p, uint4 v) { *p = v; }
// Shared-memory loads and stores (the emulation counts their bank conflicts).
template <typename T> __device__ __forceinline__ T sm_ld(const T* p) { return *p; }
template <typename T> __device__ __forceinline__ void sm_st(T* p, T v) { *p = v; }
#endif


__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ double to_acc(double x) { return x; }

template <typename T, typename A> struct FromAcc;
template <> struct FromAcc<float, float> {
    static __device__ __forceinline__ float f(float x) { return x; }
};
template <> struct FromAcc<__half, float> {
    static __device__ __forceinline__ __half f(float x) { return __float2half_rn(x); }
};
template <> struct FromAcc<__nv_bfloat16, float> {
    static __device__ __forceinline__ __nv_bfloat16 f(float x) { return __float2bfloat16_rn(x); }
};
template <> struct FromAcc<double, double> {
    static __device__ __forceinline__ double f(double x) { return x; }
};

}  // namespace
