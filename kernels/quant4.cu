// bitsandbytes 4-bit (NF4/FP4) weights on the fly, never materialising the dequantised weight:
//   quant4_dequantize_T  out[i] = T(code[q_i] * absmax[i / blocksize])           (f32 multiply, one rounding)
//   quant4_linear_T      y[r, j] = sum_c x[r, c] * code[q_(j,c)] * absmax(j, c) + bias[j]
// absmax is plain f32 per block, or double-quantised: nested_code[u8] * nested_absmax[block / 256] + offset.
//
// How the work is split. Dequantize: one thread per packed byte (two elements). Linear (the GEMV path
// for decode, any m): one warp per output row j, 8 rows per block; each lane walks the row's packed
// bytes with 16-byte loads (32 codes, one absmax block since blocks are >= 32 and rows start on a
// 32-element boundary when k % 32 == 0), reads the code table from shared memory, accumulates up to 8
// rows of x in f32; a warp shuffle reduces. m > 8 takes several passes over W. Otherwise (k not a
// multiple of 32, unaligned pointers) an element-wise path does the same sums.
//
// Bytes moved by linear: the packed weight once per pass (n * k / 2), the absmax (a byte or a float per
// block), x from L1/L2 (m * k elements, shared by the block's 8 warps), y once. At m = 1 the packed
// weight dominates: 4x fewer bytes than a bf16 weight. A tensor-core GEMM for large m is open work.
#include "common.cuh"
#include "lora_params.h"

namespace {

constexpr int kThreads = QUANT4_THREADS;
constexpr int kRowsPerBlock = kThreads / 32;
constexpr int kMTile = 8;

__device__ __forceinline__ float block_absmax(const Quant4Weights &w, long long block) {
    if (w.nested) {
        const uint8_t q = reinterpret_cast<const uint8_t *>(w.absmax)[block];
        const float *nested_code = reinterpret_cast<const float *>(w.nested_code);
        const float *nested_absmax = reinterpret_cast<const float *>(w.nested_absmax);
        return nested_code[q] * nested_absmax[block / w.nested_blocksize] + w.offset;
    }
    return reinterpret_cast<const float *>(w.absmax)[block];
}

__device__ __forceinline__ int code_at(const uint8_t *packed, long long i) {
    const uint8_t byte = packed[i >> 1];
    return (i & 1) ? (byte & 0x0f) : (byte >> 4);
}

template <typename T> __device__ void dequantize(const Quant4Params &p) {
    const Quant4Weights &w = p.w;
    const long long numel = (long long)w.n * w.k;
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = w.code[threadIdx.x];
    __syncthreads();
    const long long byte = (long long)blockIdx.x * kThreads + threadIdx.x;
    if (2 * byte >= numel) return;
    const uint8_t *packed = reinterpret_cast<const uint8_t *>(w.packed);
    T *out = reinterpret_cast<T *>(p.out);
    for (int h = 0; h < 2; ++h) {
        const long long i = 2 * byte + h;
        if (i < numel) out[i] = Element<T>::from_f32(code[code_at(packed, i)] * block_absmax(w, i / w.blocksize));
    }
}

template <typename T> __device__ void linear(const Quant4Params &p) {
    const Quant4Weights &w = p.w;
    __shared__ float code[16];  // indexed by the codes: shared memory, not a local array
    if (threadIdx.x < 16) code[threadIdx.x] = w.code[threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x % 32;
    const int j = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;  // output feature (row of W)
    if (j >= w.n) return;
    const uint8_t *packed = reinterpret_cast<const uint8_t *>(w.packed);
    const T *x = reinterpret_cast<const T *>(p.x);
    T *y = reinterpret_cast<T *>(p.out);
    const long long row_start = (long long)j * w.k;  // element index of W[j, 0]

    for (int r0 = 0; r0 < p.m; r0 += kMTile) {
        const int rows = min(kMTile, p.m - r0);
        float acc[kMTile];
#pragma unroll
        for (int r = 0; r < kMTile; ++r) acc[r] = 0.0f;
        if (p.vector_k) {
            const uint4 *row_bytes = reinterpret_cast<const uint4 *>(packed + row_start / 2);
            for (int v = lane; v < w.k / 32; v += 32) {
                const uint4 word = __ldg(row_bytes + v);
                const int c0 = v * 32;
                const float scale = block_absmax(w, (row_start + c0) / w.blocksize);
#pragma unroll 2
                for (int b = 0; b < 16; ++b) {
                    const uint32_t part = b < 4 ? word.x : b < 8 ? word.y : b < 12 ? word.z : word.w;
                    const uint32_t byte = (part >> (8 * (b % 4))) & 0xff;
                    const float w0 = code[byte >> 4] * scale, w1 = code[byte & 0x0f] * scale;
#pragma unroll
                    for (int r = 0; r < kMTile; ++r) {
                        if (r < rows) {
                            const T *xr = x + (size_t)(r0 + r) * w.k + c0 + 2 * b;
                            acc[r] = fmaf(Element<T>::to_f32(xr[0]), w0, acc[r]);
                            acc[r] = fmaf(Element<T>::to_f32(xr[1]), w1, acc[r]);
                        }
                    }
                }
            }
        } else {
            for (int c = lane; c < w.k; c += 32) {
                const long long i = row_start + c;
                const float wv = code[code_at(packed, i)] * block_absmax(w, i / w.blocksize);
#pragma unroll
                for (int r = 0; r < kMTile; ++r)
                    if (r < rows) acc[r] = fmaf(Element<T>::to_f32(x[(size_t)(r0 + r) * w.k + c]), wv, acc[r]);
            }
        }
        warp_sum_store_rows<T, kMTile>(acc, rows, 1.0f, reinterpret_cast<const T *>(p.bias), y, r0, j, w.n);
    }
}

}  // namespace

#define QUANT4_ENTRIES(SUFFIX, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(kThreads) quant4_dequantize_##SUFFIX(const Quant4Params p) { \
        dequantize<T>(p);                                                                                  \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(kThreads, 2) quant4_linear_##SUFFIX(const Quant4Params p) {     \
        linear<T>(p);                                                                                      \
    }

QUANT4_ENTRIES(f32, float)
QUANT4_ENTRIES(f16, __half)
QUANT4_ENTRIES(bf16, __nv_bfloat16)
