// The LoRA shrink of the decode path: hidden[r][q] = s_i * sum_c x[r, c] * A_i[q - offset_i, c] for
// the m <= 8 rows of x and every concatenated rank q of up to 8 adapters, in f32. The GEMV kernels of
// the base product (quant4_gemv, int8_gemv, linear_gemv) then add hidden * B^T in their epilogue
// (LoraGemvEpilogue), so the base product and the adapters' expand are one pass over the weight.
//
// How the work is split: one block per rank q; its 256 threads stride over k, read A's row q once
// and the m rows of x (from L2: x is m * k elements, shared by every block), and keep one f32 sum
// per row; warp shuffles and shared memory reduce.
//
// Bytes moved: A once (rank_total * k elements), x once from HBM and rank_total times from L2, hidden
// (m * rank_total f32) once.
#include "common.cuh"
#include "lora_params.h"

namespace {

constexpr int kThreads = LORA_SHRINK_THREADS;
constexpr int kRows = LORA_SHRINK_MAX_ROWS;

template <typename T> __device__ void lora_shrink(const LoraShrinkParams &p) {
    __shared__ float partial[kRows][kThreads / 32];
    const int q = blockIdx.x;
    int slot = 0;
    for (int i = 1; i < p.num_adapters; ++i)
        if (q >= p.adapters[i].rank_offset) slot = i;
    const LoraAdapterSlot &ad = p.adapters[slot];
    const T *a = reinterpret_cast<const T *>(ad.lora_a) + (size_t)(q - ad.rank_offset) * p.k;
    const T *x = reinterpret_cast<const T *>(p.x);
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
    for (int c = threadIdx.x; c < p.k; c += kThreads) {
        const float av = Element<T>::to_f32(a[c]);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
            if (r < p.m) acc[r] = fmaf(Element<T>::to_f32(x[(size_t)r * p.k + c]), av, acc[r]);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        acc[r] = warp_sum(acc[r]);
        if (lane == 0) partial[r][warp] = acc[r];
    }
    __syncthreads();
    if (threadIdx.x < p.m) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kThreads / 32; ++w) sum += partial[threadIdx.x][w];
        reinterpret_cast<float *>(p.hidden)[(size_t)threadIdx.x * p.rank_total + q] = sum * ad.scale;
    }
}

}  // namespace

KERNEL_ENTRY(lora_shrink_f32, LoraShrinkParams, 0, lora_shrink<float>)
KERNEL_ENTRY(lora_shrink_f16, LoraShrinkParams, 0, lora_shrink<__half>)
KERNEL_ENTRY(lora_shrink_bf16, LoraShrinkParams, 0, lora_shrink<__nv_bfloat16>)
