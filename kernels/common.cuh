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

// The end of a warp-per-output-row product (the GEMV paths): sums each of the first `rows` per-lane
// partial sums over the warp, then lane 0 writes y[row0 + r, j] = T(acc[r] * scale + bias[j]) for
// y with `ld` columns (bias may be null).
template <typename T, int kRows>
__device__ __forceinline__ void warp_sum_store_rows(float (&acc)[kRows], int rows, float scale, const T *bias, T *y,
                                                    int row0, int j, int ld) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
        for (int off = 16; off > 0; off /= 2) acc[r] += __shfl_down_sync(0xffffffffu, acc[r], off);
    }
    if (threadIdx.x % 32 == 0) {
        const float b = bias ? Element<T>::to_f32(bias[j]) : 0.0f;
#pragma unroll
        for (int r = 0; r < kRows; ++r)
            if (r < rows) y[(size_t)(row0 + r) * ld + j] = Element<T>::from_f32(acc[r] * scale + b);
    }
}

// Max of v over the block's kThreads threads (a multiple of 32); every thread gets it. `scratch` holds
// kThreads / 32 floats of shared memory. Contains barriers: call from every thread.
template <int kThreads> __device__ __forceinline__ float block_max(float v, float *scratch) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    __syncthreads();  // scratch is free
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    v = scratch[0];
#pragma unroll
    for (int w = 1; w < kThreads / 32; ++w) v = fmaxf(v, scratch[w]);
    return v;
}

// v rounded to f16 and back (bitsandbytes' int8 paths see activations and weights in f16).
__device__ __forceinline__ float round_to_f16(float v) { return __half2float(__float2half_rn(v)); }
