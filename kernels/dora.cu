// DoRA row passes over W + scale * B * A, one pass over W, never writing B * A to memory:
//   NORM     out[i] = ||W[i,:] + s (B A)[i,:]||_2                       (f32 [n])
//   FACTOR   out[i] = m[i] / max(||W[i,:] + s (B A)[i,:]||_2, eps)     (f32 [n]; the forward's f)
//   MERGE    W[i,:] = f[i] * (W[i,:] + s (B A)[i,:])                   (in place; no factor: W + s B A)
//   UNMERGE  W[i,:] = W[i,:] / f[i] - s (B A)[i,:]                     (in place; no factor: W - s B A)
// W is read dense, as bitsandbytes 4-bit codes or as int8 codes with row scales, each element
// dequantised to the element type first (peft's dequantize_module_weight), so the norm of a QLoRA /
// 8-bit base never needs a dequantised copy. With check_only, MERGE and UNMERGE write nothing and count
// the non-finite results instead (the safe mode: the host checks the count, then runs the writing
// pass). With requantize, MERGE and UNMERGE write int8 codes and row scales instead of W (bitsandbytes'
// merge into an 8-bit base: dequantise, add, requantise), in two sweeps over the row: the first finds
// the row absmax of the new values, the second writes the codes; rank 0 makes this the row-wise int8
// quantiser of a dense W.
//
// How the work is split: a block owns 16 rows of W (the grid covers n) and walks k in 32-column
// slices (16 for f32). The block's 16 rows of B (f32, once) and each slice of A (all ranks) sit in
// shared memory; 16 threads per row each take 2 columns (1 for f32) of the slice, form (B A)[i, c] = sum_j B[i, j] A[j, c] with
// f32 FMAs, and accumulate the square (NORM, FACTOR) or write the updated element (MERGE, UNMERGE).
//
// Bytes moved: W read once (dense: elements; 4-bit: k / 2 bytes a row plus absmax; int8: k bytes a
// row) and written once by MERGE/UNMERGE (the requantising ones read the row twice, the second time
// from L2), B read once, A read once per block from L2 (rank * k * elem, L2-resident for ranks up to
// 256 at k = 8192), the f32 row values once. The products are n * k * rank FMAs on CUDA cores: the pass
// is memory-bound for ranks up to about 16 on Hopper; a tensor-core (mma) version of the inner
// product is the next step for larger ranks.
#include "common.cuh"
#include "lora_params.h"

namespace {

constexpr int kRows = DORA_ROWS_PER_BLOCK;
constexpr int kThreads = DORA_THREADS;
constexpr int kLanesPerRow = kThreads / kRows;  // 16
constexpr int kMaxRank = LORA_MAX_LAUNCH_RANK;
// k columns per step: 32 (two per thread) for 16-bit elements, 16 for f32 (shared memory: 48 KB).
template <typename T> constexpr int kSlice = sizeof(T) == 4 ? 16 : 32;

template <typename T> struct SharedRows {
    float b[kRows][kMaxRank + 1];
    T a[kMaxRank][kSlice<T> + 2];
};

// W[idx] dequantised to the element type and widened to f32; `code` is the 4-bit table in shared memory.
template <typename T>
__device__ __forceinline__ float weight_value(const DoraRowParams &p, const float *code, int row, size_t idx) {
    if (p.weight_format == LINEAR_QUANT4) {
        const Quant4Weights &w = p.quant4;
        const uint8_t byte = reinterpret_cast<const uint8_t *>(w.packed)[idx >> 1];
        const int q = (idx & 1) ? (byte & 0x0f) : (byte >> 4);
        const long long block = (long long)(idx / (size_t)w.blocksize);
        float absmax;
        if (w.nested) {
            const uint8_t aq = reinterpret_cast<const uint8_t *>(w.absmax)[block];
            absmax = reinterpret_cast<const float *>(w.nested_code)[aq] *
                         reinterpret_cast<const float *>(w.nested_absmax)[block / w.nested_blocksize] +
                     w.offset;
        } else {
            absmax = reinterpret_cast<const float *>(w.absmax)[block];
        }
        return Element<T>::to_f32(Element<T>::from_f32(code[q] * absmax));
    }
    if (p.weight_format == LINEAR_INT8) {
        const float c = (float)reinterpret_cast<const int8_t *>(p.weight)[idx];
        return Element<T>::to_f32(Element<T>::from_f32(c * reinterpret_cast<const float *>(p.scb)[row] * (1.0f / 127.0f)));
    }
    return Element<T>::to_f32(reinterpret_cast<const T *>(p.weight)[idx]);
}

// Sum (or max) of a row's value over its 16 lanes, 16 consecutive threads of one warp.
__device__ __forceinline__ float row_reduce(float v, bool max_of) {
#pragma unroll
    for (int off = kLanesPerRow / 2; off > 0; off /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, v, off, kLanesPerRow);
        v = max_of ? fmaxf(v, other) : v + other;
    }
    return v;
}

template <typename T> __device__ void dora_rows(const DoraRowParams &p) {
    __shared__ SharedRows<T> s;
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = p.weight_format == LINEAR_QUANT4 ? p.quant4.code[threadIdx.x] : 0.0f;
    const int row0 = blockIdx.x * kRows;
    const int r = threadIdx.x / kLanesPerRow, lane = threadIdx.x % kLanesPerRow;
    const int row = row0 + r;
    const bool row_ok = row < p.n;
    const T *lora_a = reinterpret_cast<const T *>(p.lora_a);
    const T *lora_b = reinterpret_cast<const T *>(p.lora_b);
    const float *factors = reinterpret_cast<const float *>(p.row_values);
    const bool updates = p.op == DORA_ROW_MERGE || p.op == DORA_ROW_UNMERGE;
    const bool writes = updates && !p.check_only;

    for (int e = threadIdx.x; e < kRows * p.rank; e += kThreads) {
        const int rr = e / p.rank, j = e % p.rank;
        s.b[rr][j] = row0 + rr < p.n ? Element<T>::to_f32(lora_b[(size_t)(row0 + rr) * p.rank + j]) : 0.0f;
    }
    float factor = 1.0f;
    if (updates && factors && row_ok) factor = factors[row];

    // Runs visit(col, v) over this thread's columns of its row, v = the updated element in f32.
    constexpr int KS = kSlice<T>;
    auto sweep = [&](auto visit) {
        for (int k0 = 0; k0 < p.k; k0 += KS) {
            __syncthreads();  // the previous slice is done with s.a (and s.b, code are published first)
            for (int e = threadIdx.x; e < p.rank * KS; e += kThreads) {
                const int j = e / KS, c = e % KS;
                s.a[j][c] = k0 + c < p.k ? lora_a[(size_t)j * p.k + k0 + c] : Element<T>::from_f32(0.0f);
            }
            __syncthreads();
#pragma unroll
            for (int cc = 0; cc < KS / kLanesPerRow; ++cc) {
                const int c = lane + cc * kLanesPerRow;
                const int col = k0 + c;
                if (!row_ok || col >= p.k) continue;
                float ba = 0.0f;
                for (int j = 0; j < p.rank; ++j) ba = fmaf(s.b[r][j], Element<T>::to_f32(s.a[j][c]), ba);
                const float w = weight_value<T>(p, code, row, (size_t)row * p.k + col);
                float v;
                if (p.op == DORA_ROW_UNMERGE) {
                    v = w / factor - p.scale * ba;
                } else {
                    v = w + p.scale * ba;
                    if (p.op == DORA_ROW_MERGE) v *= factor;
                }
                visit(col, v);
            }
        }
    };

    if (!updates) {
        float sum_sq = 0.0f;
        sweep([&](int, float v) { sum_sq = fmaf(v, v, sum_sq); });
        sum_sq = row_reduce(sum_sq, false);
        if (lane == 0 && row_ok) {
            const float norm = sqrtf(sum_sq);
            float *out = reinterpret_cast<float *>(p.row_values);
            if (p.op == DORA_ROW_NORM) {
                out[row] = norm;
            } else {
                const float m = Element<T>::to_f32(reinterpret_cast<const T *>(p.magnitude)[row]);
                out[row] = m / fmaxf(norm, DORA_NORM_EPS);
            }
        }
        return;
    }

    unsigned int non_finite = 0;
    if (p.requantize) {
        // The new row as Int8Params sees it: rounded to the element type, then to f16.
        auto as_f16 = [](float v) { return __half2float(__float2half_rn(Element<T>::to_f32(Element<T>::from_f32(v)))); };
        float amax = 0.0f;
        sweep([&](int, float v) {
            const float h = as_f16(v);
            if (!isfinite(h)) ++non_finite;
            amax = fmaxf(amax, fabsf(h));
        });
        amax = row_reduce(amax, true);
        // Every lane of the row knows amax now; the codes are written in a second sweep (the old codes
        // of this element are read just before they are overwritten, by the same thread).
        if (writes) {  // uniform over the block: every thread meets the sweep's barriers
            int8_t *out_cb = reinterpret_cast<int8_t *>(p.out_cb);
            const float scale = 127.0f / amax;
            sweep([&](int col, float v) {  // visits rows inside W only
                const float q = amax == 0.0f ? 0.0f : fminf(fmaxf(rintf(as_f16(v) * scale), -127.0f), 127.0f);
                out_cb[(size_t)row * p.k + col] = (int8_t)q;
            });
            // Every lane of the row has read the old scale (inside the sweep, which ends in a block
            // barrier-free tail, hence the warp sync); lane 0 then replaces it.
            __syncwarp();
            if (lane == 0 && row_ok) reinterpret_cast<float *>(p.out_scb)[row] = amax;
        }
    } else {
        T *weight = reinterpret_cast<T *>(p.weight);
        sweep([&](int col, float v) {
            const T out = Element<T>::from_f32(v);
            if (!isfinite(Element<T>::to_f32(out))) ++non_finite;
            if (writes && p.weight_format == LINEAR_DENSE) weight[(size_t)row * p.k + col] = out;
        });
    }
    if (p.check_only && non_finite) atomicAdd(reinterpret_cast<unsigned int *>(p.non_finite), non_finite);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) dora_rows_f32(const DoraRowParams p) { dora_rows<float>(p); }
extern "C" __global__ void __launch_bounds__(kThreads) dora_rows_f16(const DoraRowParams p) { dora_rows<__half>(p); }
extern "C" __global__ void __launch_bounds__(kThreads) dora_rows_bf16(const DoraRowParams p) { dora_rows<__nv_bfloat16>(p); }
