// Element types and conversions shared by every kernel family.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "lora_params.h"

// Every kernel entry of every family is declared by this one macro: extern "C" NAME(const PARAMS p)
// (the name the host loads, <family>_<op>_<dtype>), at most kThreads threads a block (the including
// file's constant), MIN_BLOCKS blocks per SM that ptxas keeps resident when it budgets registers (0:
// no minimum, no .minnctapersm in the PTX), and the device function in the variadic tail (it may hold
// template arguments) run on p.
#define KERNEL_ENTRY(NAME, PARAMS, MIN_BLOCKS, ...) \
    extern "C" __global__ void __launch_bounds__(kThreads, MIN_BLOCKS) NAME(const PARAMS p) { __VA_ARGS__(p); }

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

// The two-operand max of the warp and block reductions: fmaxf for float (a NaN operand is dropped),
// max for unsigned int.
__device__ __forceinline__ float max_of(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ unsigned int max_of(unsigned int a, unsigned int b) { return max(a, b); }

// The sum of v over each group of kLanes consecutive lanes (a power of two <= 32; the whole warp by
// default), every lane of the group getting it: a butterfly of __shfl_xor_sync, offsets kLanes / 2
// down to 1. For lane 0 of a group the additions are those (and in the order) of the tree of
// __shfl_down_sync with the same offsets. Every lane of the warp must call it.
template <int kLanes = 32> __device__ __forceinline__ float warp_sum(float v) {
    static_assert(kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0, "a power of two <= 32");
#pragma unroll
    for (int off = kLanes / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off, kLanes);
    return v;
}

// The max of v (float or unsigned int, see max_of) over each group of kLanes consecutive lanes, as
// warp_sum; a max does not depend on the order.
template <int kLanes = 32, typename V> __device__ __forceinline__ V warp_max(V v) {
    static_assert(kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0, "a power of two <= 32");
#pragma unroll
    for (int off = kLanes / 2; off > 0; off /= 2) v = max_of(v, __shfl_xor_sync(0xffffffffu, v, off, kLanes));
    return v;
}

// The lane's share of the LoRA term of output column j for rows row0 .. row0 + rows - 1 (the GEMV
// epilogues, see LoraGemvEpilogue in lora_params.h): lanes stride over the concatenated ranks q,
// lora[r] += hidden[row0 + r][q] * B(j, q). Adds nothing when e.hidden is 0.
template <typename T, int kRows>
__device__ __forceinline__ void lora_gemv_partials(const LoraGemvEpilogue &e, int row0, int rows, int j,
                                                   float (&lora)[kRows]) {
    if (!e.hidden) return;
    const float *hidden = reinterpret_cast<const float *>(e.hidden);
    for (int q = threadIdx.x % 32; q < e.rank_total; q += 32) {
        int slot = 0;
        for (int i = 1; i < e.num_adapters; ++i)
            if (q >= e.adapters[i].rank_offset) slot = i;
        const LoraAdapterSlot &ad = e.adapters[slot];
        const float b =
            Element<T>::to_f32(reinterpret_cast<const T *>(ad.lora_b)[(size_t)j * ad.rank + (q - ad.rank_offset)]);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
            if (r < rows) lora[r] = fmaf(hidden[(size_t)(row0 + r) * e.rank_total + q], b, lora[r]);
    }
}

// The end of a warp-per-output-column product (the GEMV paths): sums each of the first `rows`
// per-lane partial sums over the warp, and the LoRA partials likewise, then lane 0 writes
// y[row0 + r, j] = T(acc[r] * scale + lora[r] + bias[j]) for y with `ld` columns (bias may be null).
template <typename T, int kRows>
__device__ __forceinline__ void warp_sum_store_rows(float (&acc)[kRows], float (&lora)[kRows], int rows, float scale,
                                                    const T *bias, T *y, int row0, int j, int ld) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        acc[r] = warp_sum(acc[r]);
        lora[r] = warp_sum(lora[r]);
    }
    if (threadIdx.x % 32 == 0) {
        const float b = bias ? Element<T>::to_f32(bias[j]) : 0.0f;
#pragma unroll
        for (int r = 0; r < kRows; ++r)
            if (r < rows) y[(size_t)(row0 + r) * ld + j] = Element<T>::from_f32(acc[r] * scale + lora[r] + b);
    }
}

// Max of v over the block's kThreads threads (a multiple of 32); every thread gets it. `scratch` holds
// kThreads / 32 values of shared memory. Contains barriers: call from every thread. float (fmaxf: NaN
// is dropped) or unsigned int.
template <int kThreads, typename V> __device__ __forceinline__ V block_max(V v, V *scratch) {
    v = warp_max(v);
    __syncthreads();  // scratch is free
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    v = scratch[0];
#pragma unroll
    for (int w = 1; w < kThreads / 32; ++w) v = max_of(v, scratch[w]);
    return v;
}

// bitsandbytes 4-bit: the absmax of block `block`, plain f32 or double-quantised (nested_code[u8] *
// nested_absmax[block / nested_blocksize] + offset; multiply, then add: two roundings, as bitsandbytes'
// dequantize_blockwise + offset, no FMA).
__device__ __forceinline__ float quant4_block_absmax(const Quant4Weights &w, long long block) {
    if (w.nested) {
        const uint8_t q = reinterpret_cast<const uint8_t *>(w.absmax)[block];
        const float *nested_code = reinterpret_cast<const float *>(w.nested_code);
        const float *nested_absmax = reinterpret_cast<const float *>(w.nested_absmax);
        return __fadd_rn(__fmul_rn(nested_code[q], nested_absmax[block / w.nested_blocksize]), w.offset);
    }
    return reinterpret_cast<const float *>(w.absmax)[block];
}

// bitsandbytes 4-bit: the code of flattened element i (the first element of a byte in its high nibble).
__device__ __forceinline__ int quant4_code_at(const uint8_t *packed, long long i) {
    const uint8_t byte = packed[i >> 1];
    return (i & 1) ? (byte & 0x0f) : (byte >> 4);
}

// v rounded to f16 and back (bitsandbytes' int8 paths see activations and weights in f16).
__device__ __forceinline__ float round_to_f16(float v) { return __half2float(__float2half_rn(v)); }

// x staged in shared memory for the GEMVs (kernels/quant4.cu, kernels/int8.cu, kernels/linear.cu): the
// block loads a chunk of kChunk = 32 * kSlice columns of up to kRows rows of x once, with coalesced
// 16-byte loads (a warp's 32 loads are 512 consecutive bytes), and each lane reads its kPieces 16-byte
// pieces of the chunk back from there. The values are the bits of x: a lane's sums are unchanged.
//   kInterleaved = false (quant4, int8): lane L works on the kSlice consecutive columns
//   [c0 + L * kSlice, c0 + (L + 1) * kSlice), the columns of one word of packed W. Its piece q sits in
//   slot L * kPieces + (q ^ ((L / kGroup) % kPieces)), kGroup lanes per 128 bytes: the XOR spreads both
//   the stores (consecutive pieces) and the reads (piece q of 8 consecutive lanes) over 8 distinct
//   16-byte bank groups, so neither conflicts.
//   kInterleaved = true (the dense GEMV, whose lanes walk W's row 16 bytes at a time, 32 lanes apart):
//   lane L's piece q is columns c0 + (32 q + L) * kVec<T> .. + kVec<T> - 1, kept in load order (slot
//   32 q + L): a warp reads piece q as 512 consecutive bytes, and stores are consecutive too, so
//   neither conflicts without a swizzle.
template <typename T, int kSlice, int kRows, bool kInterleaved = false> struct StagedX {
    static constexpr int kPieces = kSlice / kVec<T>;  // 16-byte pieces of a lane in a chunk
    static constexpr int kChunk = 32 * kSlice;
    static constexpr int kGroup = kPieces >= 8 ? 1 : 8 / kPieces;
    static_assert(kPieces >= 2 && (kPieces & (kPieces - 1)) == 0, "a power-of-two number of pieces");
    uint4 piece[kRows][32 * kPieces];

    static __device__ __forceinline__ int slot(int lane, int q) {
        if constexpr (kInterleaved) return 32 * q + lane;
        return lane * kPieces + (q ^ ((lane / kGroup) % kPieces));
    }
    // Stages x[row0 + r, c0 + c] for r < rows and c < min(kChunk, k - c0) (x is [.., k], 16-byte
    // aligned, k and c0 multiples of kVec<T>). Every thread of the block (kThreads) calls it: it starts
    // and ends on a barrier.
    template <int kThreads> __device__ __forceinline__ void load(const T *x, int k, int row0, int rows, int c0) {
        __syncthreads();  // every warp is done with the previous chunk
        const int pieces = min(32 * kPieces, (k - c0) / kVec<T>);
        for (int e = threadIdx.x; e < rows * 32 * kPieces; e += kThreads) {
            const int r = e / (32 * kPieces), u = e % (32 * kPieces);  // u: the piece's place in the chunk
            if (u < pieces)
                piece[r][kInterleaved ? u : slot(u / kPieces, u % kPieces)] =
                    __ldg(reinterpret_cast<const uint4 *>(x + (size_t)(row0 + r) * k + c0) + u);
        }
        __syncthreads();
    }
    // Piece q of lane `lane` in row r (kInterleaved = false: its columns q * kVec<T> .. q * kVec<T> +
    // kVec<T> - 1 of the lane's slice; true: chunk columns (32 q + lane) * kVec<T> ..).
    __device__ __forceinline__ Vec16<T> at(int r, int lane, int q) const {
        Vec16<T> v;
        v.raw = piece[r][slot(lane, q)];
        return v;
    }
};
