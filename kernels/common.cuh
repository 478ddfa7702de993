// Element types and conversions shared by every kernel family.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// f32 <-> element conversions, round-to-nearest-even on the way down.
template <typename T> struct Element;

template <> struct Element<float> {
    static __device__ __forceinline__ float to_f32(float v) { return v; }
    static __device__ __forceinline__ float from_f32(float v) { return v; }
};

template <> struct Element<__half> {
    static __device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_f32(float v) { return __float2half_rn(v); }
};

template <> struct Element<__nv_bfloat16> {
    static __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_f32(float v) { return __float2bfloat16_rn(v); }
};

// Elements per 16-byte vector.
template <typename T> constexpr int kVec = 16 / sizeof(T);

// A 16-byte vector of elements, for coalesced 128-bit loads and stores.
template <typename T> union Vec16 {
    uint4 raw;
    T v[kVec<T>];
};
