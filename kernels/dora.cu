// DoRA row passes over W + scale * B * A, one pass over W, never writing B * A to memory:
//   NORM     out[i] = ||W[i,:] + s (B A)[i,:]||_2                       (f32 [n])
//   FACTOR   out[i] = m[i] / max(||W[i,:] + s (B A)[i,:]||_2, eps)     (f32 [n]; the forward's f)
//   MERGE    W[i,:] = f[i] * (W[i,:] + s (B A)[i,:])                   (in place; no factor: W + s B A)
//   UNMERGE  W[i,:] = W[i,:] / f[i] - s (B A)[i,:]                     (in place; no factor: W - s B A)
// With check_only, MERGE and UNMERGE write nothing and count the non-finite results instead (the
// safe mode: the host checks the count, then runs the writing pass).
//
// How the work is split: a block owns 16 rows of W (the grid covers n) and walks k in 32-column
// slices (16 for f32). The block's 16 rows of B (f32, once) and each slice of A (all ranks) sit in
// shared memory; 16 threads per row each take 2 columns (1 for f32) of the slice, form (B A)[i, c] = sum_j B[i, j] A[j, c] with
// f32 FMAs, and accumulate the square (NORM, FACTOR) or write the updated element (MERGE, UNMERGE).
//
// Bytes moved: W read once (and written once by MERGE/UNMERGE), B read once, A read once per block
// from L2 (rank * k * elem, L2-resident for ranks up to 256 at k = 8192), the f32 row values once.
// The products are n * k * rank FMAs on CUDA cores: the pass is memory-bound for ranks up to about
// 16 on Hopper; a tensor-core (mma) version of the inner product is the next step for larger ranks.
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

template <typename T> __device__ void dora_rows(const DoraRowParams &p) {
    __shared__ SharedRows<T> s;
    const int row0 = blockIdx.x * kRows;
    const int r = threadIdx.x / kLanesPerRow, lane = threadIdx.x % kLanesPerRow;
    const int row = row0 + r;
    const bool row_ok = row < p.n;
    T *weight = reinterpret_cast<T *>(p.weight);
    const T *lora_a = reinterpret_cast<const T *>(p.lora_a);
    const T *lora_b = reinterpret_cast<const T *>(p.lora_b);
    const float *factors = reinterpret_cast<const float *>(p.row_values);
    const bool writes = (p.op == DORA_ROW_MERGE || p.op == DORA_ROW_UNMERGE) && !p.check_only;

    for (int e = threadIdx.x; e < kRows * p.rank; e += kThreads) {
        const int rr = e / p.rank, j = e % p.rank;
        s.b[rr][j] = row0 + rr < p.n ? Element<T>::to_f32(lora_b[(size_t)(row0 + rr) * p.rank + j]) : 0.0f;
    }
    float factor = 1.0f;
    if ((p.op == DORA_ROW_MERGE || p.op == DORA_ROW_UNMERGE) && factors && row_ok) factor = factors[row];

    float sum_sq = 0.0f;
    unsigned int non_finite = 0;
    constexpr int KS = kSlice<T>;
    for (int k0 = 0; k0 < p.k; k0 += KS) {
        __syncthreads();  // the previous slice is done with s.a (and s.b is published on the first)
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
            const size_t idx = (size_t)row * p.k + col;
            const float w = Element<T>::to_f32(weight[idx]);
            float v;
            if (p.op == DORA_ROW_UNMERGE) {
                v = w / factor - p.scale * ba;
            } else {
                v = w + p.scale * ba;
                if (p.op == DORA_ROW_MERGE) v *= factor;
            }
            if (p.op == DORA_ROW_NORM || p.op == DORA_ROW_FACTOR) {
                sum_sq = fmaf(v, v, sum_sq);
            } else {
                const T out = Element<T>::from_f32(v);
                if (!isfinite(Element<T>::to_f32(out))) ++non_finite;
                if (writes) weight[idx] = out;
            }
        }
    }

    if (p.op == DORA_ROW_NORM || p.op == DORA_ROW_FACTOR) {
        // The 16 lanes of a row are 16 consecutive threads of one warp.
#pragma unroll
        for (int off = kLanesPerRow / 2; off > 0; off /= 2) sum_sq += __shfl_down_sync(0xffffffffu, sum_sq, off, kLanesPerRow);
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
    } else if (p.check_only && non_finite) {
        atomicAdd(reinterpret_cast<unsigned int *>(p.non_finite), non_finite);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) dora_rows_f32(const DoraRowParams p) { dora_rows<float>(p); }
extern "C" __global__ void __launch_bounds__(kThreads) dora_rows_f16(const DoraRowParams p) { dora_rows<__half>(p); }
extern "C" __global__ void __launch_bounds__(kThreads) dora_rows_bf16(const DoraRowParams p) { dora_rows<__nv_bfloat16>(p); }
