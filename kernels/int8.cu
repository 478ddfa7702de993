// LLM.int8 weight-only product, the decode path: y[r, j] = SCB[j] / 127 * sum_c x[r, c] * CB[j, c] + bias[j],
// never materialising the dequantised weight (bitsandbytes' weight-only dequantisation is
// CB * SCB * f32(1/127) per element; here the row scale is applied once to the f32 sum).
//
// How the work is split: one warp per output row j, 8 rows per block; each lane walks the row's codes
// with 16-byte loads (16 codes) and accumulates up to 8 rows of x in f32; a warp shuffle reduces. m > 8
// takes several passes over CB. When k is not a multiple of 16 (or pointers are unaligned) an
// element-wise path does the same sums.
//
// Bytes moved: CB once per pass (n * k), SCB (4 n), x from L1/L2 (m * k elements, shared by the block's
// warps), y once: at m = 1 half the bytes of a bf16 weight.
#include "common.cuh"
#include "lora_params.h"

namespace {

constexpr int kThreads = INT8_THREADS;
constexpr int kRowsPerBlock = kThreads / 32;
constexpr int kMTile = 8;

template <typename T> __device__ void int8_linear(const Int8LinearParams &p) {
    const int lane = threadIdx.x % 32;
    const int j = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
    if (j >= p.n) return;
    const int8_t *cb = reinterpret_cast<const int8_t *>(p.cb) + (size_t)j * p.k;
    const T *x = reinterpret_cast<const T *>(p.x);
    T *y = reinterpret_cast<T *>(p.y);
    const float row_scale = reinterpret_cast<const float *>(p.scb)[j] * (1.0f / 127.0f);
    for (int r0 = 0; r0 < p.m; r0 += kMTile) {
        const int rows = min(kMTile, p.m - r0);
        float acc[kMTile];
#pragma unroll
        for (int r = 0; r < kMTile; ++r) acc[r] = 0.0f;
        if (p.vector_k) {
            for (int v = lane; v < p.k / 16; v += 32) {
                const uint4 word = __ldg(reinterpret_cast<const uint4 *>(cb) + v);
                const int c0 = v * 16;
#pragma unroll 4
                for (int b = 0; b < 16; ++b) {
                    const uint32_t part = b < 4 ? word.x : b < 8 ? word.y : b < 12 ? word.z : word.w;
                    const float wv = (float)(int8_t)((part >> (8 * (b % 4))) & 0xff);
#pragma unroll
                    for (int r = 0; r < kMTile; ++r)
                        if (r < rows) acc[r] = fmaf(Element<T>::to_f32(x[(size_t)(r0 + r) * p.k + c0 + b]), wv, acc[r]);
                }
            }
        } else {
            for (int c = lane; c < p.k; c += 32) {
                const float wv = (float)cb[c];
#pragma unroll
                for (int r = 0; r < kMTile; ++r)
                    if (r < rows) acc[r] = fmaf(Element<T>::to_f32(x[(size_t)(r0 + r) * p.k + c]), wv, acc[r]);
            }
        }
        warp_sum_store_rows<T, kMTile>(acc, rows, row_scale, reinterpret_cast<const T *>(p.bias), y, r0, j, p.n);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 2) int8_linear_f32(const Int8LinearParams p) { int8_linear<float>(p); }
extern "C" __global__ void __launch_bounds__(kThreads, 2) int8_linear_f16(const Int8LinearParams p) { int8_linear<__half>(p); }
extern "C" __global__ void __launch_bounds__(kThreads, 2) int8_linear_bf16(const Int8LinearParams p) { int8_linear<__nv_bfloat16>(p); }
