// bitsandbytes' 8-bit weights (CB int8 [n, k], SCB f32 [n]).
//
// int8_gemv_T: the weight-only product, the decode path: y[r, j] = SCB[j] / 127 * sum_c x[r, c] * CB[j, c] + bias[j],
// never materialising the dequantised weight (bitsandbytes' weight-only dequantisation is
// CB * SCB * f32(1/127) per element; here the row scale is applied once to the f32 sum).
//
// How the work is split: one warp per output row j, 8 rows per block; each lane walks the row's codes
// with 16-byte loads (16 codes) and accumulates up to 8 rows of x in f32; a warp shuffle reduces. x
// comes from shared memory: the block stages up to 8 rows of 512 columns at a time with coalesced
// 16-byte loads (StagedX in common.cuh), and every lane reads its word's 16 columns from there. m > 8
// takes several passes over CB. When k is not a multiple of 16 (or pointers are unaligned) an
// element-wise path does the same sums, x straight from global memory.
//
// Bytes moved: CB once per pass (n * k), SCB (4 n), x from L2 (m * k elements once per block and pass,
// into shared memory), y once: at m = 1 half the bytes of a bf16 weight.
// int8_llm_*: LLM.int8 as bitsandbytes runs it on CUDA, with its outlier threshold (see Int8LlmParams in
// lora_params.h): activations quantised row-wise to int8 (outlier columns excluded), int8 x int8 ->
// int32 on tensor cores over 64 x 128 tiles of y in 64-byte K slices (CA and CB once per tile pair from
// L2, CB read once per 64 rows of x from HBM), both scales and the f16 rounding in the epilogue, then
// the outlier columns added in the input dtype against their dequantised weights.
#include "common.cuh"
#include "lora_params.h"
#include "mma.cuh"

namespace {

constexpr int kThreads = INT8_THREADS;
constexpr int kRowsPerBlock = kThreads / 32;
constexpr int kMTile = 8;

template <typename T> __device__ void int8_gemv(const Int8LinearParams &p) {
    using StagedXs = StagedX<T, 16, kMTile>;  // a lane's slice: the 16 columns of one 16-byte word of CB
    constexpr int V = kVec<T>;
    __shared__ StagedXs xs;
    const int lane = threadIdx.x % 32;
    const int j = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
    const bool active = j < p.n;  // a warp past the last row still helps stage x (the barriers)
    const int8_t *cb = reinterpret_cast<const int8_t *>(p.cb) + (size_t)j * p.k;
    const T *x = reinterpret_cast<const T *>(p.x);
    T *y = reinterpret_cast<T *>(p.y);
    const float row_scale = active ? reinterpret_cast<const float *>(p.scb)[j] * (1.0f / 127.0f) : 0.0f;
    for (int r0 = 0; r0 < p.m; r0 += kMTile) {
        const int rows = min(kMTile, p.m - r0);
        float acc[kMTile];
#pragma unroll
        for (int r = 0; r < kMTile; ++r) acc[r] = 0.0f;
        if (p.vector_k) {
            for (int c0 = 0; c0 < p.k; c0 += StagedXs::kChunk) {
                xs.template load<kThreads>(x, p.k, r0, rows, c0);
                const int v = c0 / 16 + lane;  // the lane's word: columns 16 v .. 16 v + 15
                if (!active || v >= p.k / 16) continue;
                const uint4 word = __ldg(reinterpret_cast<const uint4 *>(cb) + v);
#pragma unroll
                for (int q = 0; q < StagedXs::kPieces; ++q) {  // columns q V .. q V + V - 1 of the word
                    float wq[V];
#pragma unroll
                    for (int e = 0; e < V; ++e) {
                        const int b = q * V + e;
                        const uint32_t part = b < 4 ? word.x : b < 8 ? word.y : b < 12 ? word.z : word.w;
                        wq[e] = (float)(int8_t)((part >> (8 * (b % 4))) & 0xff);
                    }
#pragma unroll
                    for (int r = 0; r < kMTile; ++r) {
                        if (r < rows) {
                            const Vec16<T> xv = xs.at(r, lane, q);
#pragma unroll
                            for (int e = 0; e < V; ++e) acc[r] = fmaf(Element<T>::to_f32(xv.v[e]), wq[e], acc[r]);
                        }
                    }
                }
            }
        } else if (active) {
            for (int c = lane; c < p.k; c += 32) {
                const float wv = (float)cb[c];
#pragma unroll
                for (int r = 0; r < kMTile; ++r)
                    if (r < rows) acc[r] = fmaf(Element<T>::to_f32(x[(size_t)(r0 + r) * p.k + c]), wv, acc[r]);
            }
        }
        if (!active) continue;
        float lora[kMTile] = {};
        lora_gemv_partials<T, kMTile>(p.lora, r0, rows, j, lora);
        warp_sum_store_rows<T, kMTile>(acc, lora, rows, row_scale, reinterpret_cast<const T *>(p.bias), y, r0, j, p.n);
    }
}

// out[i] = T(CB[i] * SCB[row] * (1/127)), bitsandbytes' dequantisation rounded to the element type (the
// dequantise-then-GEMM baseline, and what peft's dequantize_module_weight returns): one thread per
// element, y is the output [n, k].
template <typename T> __device__ void int8_dequantize(const Int8LinearParams &p) {
    const long long i = (long long)blockIdx.x * kThreads + threadIdx.x;
    if (i >= (long long)p.n * p.k) return;
    const float scale = reinterpret_cast<const float *>(p.scb)[i / p.k];
    const float v = (float)reinterpret_cast<const int8_t *>(p.cb)[i] * scale * (1.0f / 127.0f);
    reinterpret_cast<T *>(p.y)[i] = Element<T>::from_f32(v);
}

// ---- LLM.int8 (see Int8LlmParams in lora_params.h) ----

__device__ __forceinline__ bool is_outlier(float v, float threshold) {
    return threshold > 0.0f && fabsf(v) >= threshold;
}

template <typename T> __device__ void llm_outliers(const Int8LlmParams &p) {
    __shared__ float scratch[kThreads / 32];
    const int i = blockIdx.x;
    const T *x = reinterpret_cast<const T *>(p.x) + (size_t)i * p.k;
    uint8_t *flags = reinterpret_cast<uint8_t *>(p.flags);
    float amax = 0.0f;
    for (int c = threadIdx.x; c < p.k; c += kThreads) {
        const float v = round_to_f16(Element<T>::to_f32(x[c]));
        if (!(fabsf(v) <= 65504.0f)) {
            amax = INFINITY;  // NaN or inf (not an outlier): the row's scale becomes NaN below
        } else if (is_outlier(v, p.threshold)) {
            flags[c] = 1;
        } else {
            amax = fmaxf(amax, fabsf(v));
        }
    }
    amax = block_max<kThreads>(amax, scratch);
    if (threadIdx.x == 0) reinterpret_cast<float *>(p.sca)[i] = amax > 65504.0f ? __int_as_float(0x7fffffff) : amax;
}

// One block: a block-wide scan of the flags, kThreads columns per step, in increasing order.
__device__ void llm_columns(const Int8LlmParams &p) {
    __shared__ unsigned int warp_counts[kThreads / 32];
    __shared__ unsigned int base;
    const uint8_t *flags = reinterpret_cast<const uint8_t *>(p.flags);
    unsigned int *cols = reinterpret_cast<unsigned int *>(p.cols);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (threadIdx.x == 0) base = 0;
    for (int c0 = 0; c0 < p.k; c0 += kThreads) {
        const int c = c0 + threadIdx.x;
        const bool flagged = c < p.k && flags[c];
        const unsigned int ballot = __ballot_sync(0xffffffffu, flagged);
        __syncthreads();  // base is published, warp_counts is free
        if (lane == 0) warp_counts[warp] = __popc(ballot);
        __syncthreads();
        unsigned int offset = base + __popc(ballot & ((1u << lane) - 1u));
        for (int w = 0; w < warp; ++w) offset += warp_counts[w];
        if (flagged) cols[1 + offset] = (unsigned int)c;
        __syncthreads();  // everyone has read base
        if (threadIdx.x == 0)
            for (int w = 0; w < kThreads / 32; ++w) base += warp_counts[w];
    }
    __syncthreads();
    if (threadIdx.x == 0) cols[0] = base;
}

template <typename T> __device__ void llm_quantize(const Int8LlmParams &p) {
    const int i = blockIdx.x;
    const T *x = reinterpret_cast<const T *>(p.x) + (size_t)i * p.k;
    const uint8_t *flags = reinterpret_cast<const uint8_t *>(p.flags);
    const float amax = reinterpret_cast<const float *>(p.sca)[i];
    int8_t *ca = reinterpret_cast<int8_t *>(p.ca) + (size_t)i * p.ca_stride;
    for (int c = threadIdx.x; c < p.ca_stride; c += kThreads) {
        int8_t q = 0;
        if (c < p.k) {
            const float v = round_to_f16(Element<T>::to_f32(x[c]));
            const bool zeroed = is_outlier(v, p.threshold) || (p.m > 1 && flags[c]) || amax == 0.0f;
            if (!zeroed) q = (int8_t)fminf(fmaxf(rintf(v * (127.0f / amax)), -127.0f), 127.0f);
        }
        ca[c] = q;
    }
}

constexpr int kLlmBM = INT8_LLM_BLOCK_M;
constexpr int kLlmBN = INT8_LLM_BLOCK_N;
constexpr int kLlmBK = INT8_LLM_BLOCK_K;

// Rows padded by 16 bytes (80-byte stride): the warp's 32-bit fragment reads hit 32 banks, and rows
// stay 16-byte aligned for the vector stores.
struct LlmTiles {
    int8_t a[kLlmBM][kLlmBK + 16];
    int8_t w[kLlmBN][kLlmBK + 16];
};

// One block per 64 x 128 tile of y; 8 warps as 2 x 4, each a 32 x 32 warp tile of m16n8k32 blocks.
template <typename T> __device__ void llm_gemm(const Int8LlmParams &p) {
    __shared__ __align__(16) LlmTiles s;
    const int col0 = blockIdx.x * kLlmBN, row0 = blockIdx.y * kLlmBM;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / 4, wn = warp % 4, g = lane / 4, t = lane % 4;
    const int8_t *ca = reinterpret_cast<const int8_t *>(p.ca);
    const int8_t *cb = reinterpret_cast<const int8_t *>(p.cb);
    int acc[2][4][4] = {};
    for (int k0 = 0; k0 < p.ca_stride; k0 += kLlmBK) {
        __syncthreads();  // the previous products are done with s
        // CA: 64 rows x 64 bytes, one 16-byte word per thread (rows padded to 16, zero beyond).
        {
            const int r = threadIdx.x / 4, c = k0 + (threadIdx.x % 4) * 16;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (row0 + r < p.m && c < p.ca_stride)
                v = __ldg(reinterpret_cast<const uint4 *>(ca + (size_t)(row0 + r) * p.ca_stride + c));
            *reinterpret_cast<uint4 *>(&s.a[r][(threadIdx.x % 4) * 16]) = v;
        }
        for (int e = threadIdx.x; e < kLlmBN * 4; e += kThreads) {  // CB: 128 rows x 64 bytes
            const int r = e / 4, c16 = (e % 4) * 16, c = k0 + c16, row = col0 + r;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (row < p.n) {
                const int8_t *src = cb + (size_t)row * p.k + c;
                if (p.vector_cb) {
                    if (c < p.k) v = __ldg(reinterpret_cast<const uint4 *>(src));
                } else {
                    union {
                        uint4 word;
                        int8_t bytes[16];
                    } u;
#pragma unroll
                    for (int b = 0; b < 16; ++b) u.bytes[b] = c + b < p.k ? src[b] : (int8_t)0;
                    v = u.word;
                }
            }
            *reinterpret_cast<uint4 *>(&s.w[r][c16]) = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kLlmBK; kk += 32) {
            uint32_t a[2][4], b[4][2];
#pragma unroll
            for (int mb = 0; mb < 2; ++mb) {
                const int r = wm * 32 + mb * 16 + g;
                a[mb][0] = *reinterpret_cast<const uint32_t *>(&s.a[r][kk + 4 * t]);
                a[mb][1] = *reinterpret_cast<const uint32_t *>(&s.a[r + 8][kk + 4 * t]);
                a[mb][2] = *reinterpret_cast<const uint32_t *>(&s.a[r][kk + 16 + 4 * t]);
                a[mb][3] = *reinterpret_cast<const uint32_t *>(&s.a[r + 8][kk + 16 + 4 * t]);
            }
#pragma unroll
            for (int nb = 0; nb < 4; ++nb) {
                const int c = wn * 32 + nb * 8 + g;
                b[nb][0] = *reinterpret_cast<const uint32_t *>(&s.w[c][kk + 4 * t]);
                b[nb][1] = *reinterpret_cast<const uint32_t *>(&s.w[c][kk + 16 + 4 * t]);
            }
#pragma unroll
            for (int mb = 0; mb < 2; ++mb)
#pragma unroll
                for (int nb = 0; nb < 4; ++nb) mma_s8_16832(acc[mb][nb], a[mb], b[nb][0], b[nb][1]);
        }
    }

    const T *x = reinterpret_cast<const T *>(p.x);
    const T *bias = reinterpret_cast<const T *>(p.bias);
    const float *sca = reinterpret_cast<const float *>(p.sca);
    const float *scb = reinterpret_cast<const float *>(p.scb);
    const unsigned int *cols = reinterpret_cast<const unsigned int *>(p.cols);
    const unsigned int outliers = cols[0];
    T *y = reinterpret_cast<T *>(p.y);
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int nb = 0; nb < 4; ++nb)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int row = row0 + wm * 32 + mb * 16 + g + 8 * (q / 2);
                const int col = col0 + wn * 32 + nb * 8 + 2 * t + (q % 2);
                if (row >= p.m || col >= p.n) continue;
                const float s_col = scb[col];
                float v = round_to_f16((float)acc[mb][nb][q] * sca[row] * s_col * 6.200012e-05f);
                if (bias) v += Element<T>::to_f32(bias[col]);
                for (unsigned int o = 0; o < outliers; ++o) {
                    const unsigned int c = cols[1 + o];
                    const float w =
                        Element<T>::to_f32(Element<T>::from_f32((float)cb[(size_t)col * p.k + c] * s_col / 127.0f));
                    v = fmaf(Element<T>::to_f32(x[(size_t)row * p.k + c]), w, v);
                }
                y[(size_t)row * p.n + col] = Element<T>::from_f32(v);
            }
}

}  // namespace

KERNEL_ENTRY(int8_dequantize_f32, Int8LinearParams, 0, int8_dequantize<float>)
KERNEL_ENTRY(int8_dequantize_f16, Int8LinearParams, 0, int8_dequantize<__half>)
KERNEL_ENTRY(int8_dequantize_bf16, Int8LinearParams, 0, int8_dequantize<__nv_bfloat16>)
KERNEL_ENTRY(int8_llm_columns, Int8LlmParams, 0, llm_columns)
KERNEL_ENTRY(int8_llm_outliers_f32, Int8LlmParams, 0, llm_outliers<float>)
KERNEL_ENTRY(int8_llm_outliers_f16, Int8LlmParams, 0, llm_outliers<__half>)
KERNEL_ENTRY(int8_llm_outliers_bf16, Int8LlmParams, 0, llm_outliers<__nv_bfloat16>)
KERNEL_ENTRY(int8_llm_quantize_f32, Int8LlmParams, 0, llm_quantize<float>)
KERNEL_ENTRY(int8_llm_quantize_f16, Int8LlmParams, 0, llm_quantize<__half>)
KERNEL_ENTRY(int8_llm_quantize_bf16, Int8LlmParams, 0, llm_quantize<__nv_bfloat16>)
KERNEL_ENTRY(int8_llm_gemm_f32, Int8LlmParams, 2, llm_gemm<float>)
KERNEL_ENTRY(int8_llm_gemm_f16, Int8LlmParams, 2, llm_gemm<__half>)
KERNEL_ENTRY(int8_llm_gemm_bf16, Int8LlmParams, 2, llm_gemm<__nv_bfloat16>)

KERNEL_ENTRY(int8_gemv_f32, Int8LinearParams, 2, int8_gemv<float>)
KERNEL_ENTRY(int8_gemv_f16, Int8LinearParams, 2, int8_gemv<__half>)
KERNEL_ENTRY(int8_gemv_bf16, Int8LinearParams, 2, int8_gemv<__nv_bfloat16>)
