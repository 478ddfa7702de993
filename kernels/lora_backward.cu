// The training backward of LoRA, DoRA and QLoRA/QDoRA layers (row-major x [m, k], W [n, k], A [r, k],
// B [n, r], upstream gradient G [m, n], scale s, DoRA factor f = m / max(norm, eps) per output column):
//
//   L  = x A^T                      [m, r]  f32 scratch   (recomputed: the fused forward keeps it on chip)
//   H  = G_f B                      [m, r]  f32 scratch   (G_f = G * f per column, applied on load)
//   dB = s G_f^T L                  [n, r]
//   dA = s H^T x                    [r, k]
//   dX = G_f W + sum_i s_i H_i A_i  [m, k]  (W dense, or 4-bit / int8 codes dequantised on load)
//   d magnitude = colsum(G * (base - bias + s L B^T)) / max(norm, eps)   (lora_backward_magnitude_T)
//
// lora_backward_product_T computes the products, several independent outputs ("jobs") per launch:
// the host batches L and H of every adapter into one launch, then dB, dA and dX into a second. How
// the work is split: one block per 64 x 64 tile of a job's output (a 1-D grid, the jobs' tiles one
// after another, n tiles fastest within a job, so neighbouring blocks share rows of the left
// operand), 256 threads. The block walks the reduction in slices: each operand's slice is loaded
// along whichever of its strides is 1 (coalesced for every operand above: x, G, Gᵀ, L, H, Hᵀ, A, Aᵀ,
// B, W), converted (4-bit and int8 codes dequantised to the element type first, as peft sees W),
// scaled by the operand's row / column factors (G_f) and stored to shared memory.
//   f16/bf16 (product_tensor_cores): slices of 32, both operands stored depth-contiguous as the
//   element type (rows of 20 words, pairs swizzled: conflict-free stores and fragment reads, see
//   tc_word), 8 warps of 32 x 16
//   outputs, mma.sync m16n8k16 with f32 accumulation. f32 operands (L, H) and G_f are rounded to the
//   element type on the way in, as peft computes them in that type.
//   f32, or LORA_KERNELS_BACKWARD=cuda-cores (product_cuda_cores): slices of 16 in f32, thread
//   (tx, ty) of 16 x 16 owns the outputs (ty + 16 i, tx + 16 j), i, j < 4, so a warp's shared-memory
//   reads are one broadcast row of the left operand and 16 consecutive words of the right one.
// Every output is summed in a fixed order over up to four phases (dX: the base product and each
// adapter's H_i A_i), rounded once, optionally added to what the output holds: the same inputs give
// bit-identical gradients run to run, with no atomics.
//
// Bytes moved (HBM, first touch; repeats of a tile's rows across the grid come from L2): each operand
// once per output tile column / row it feeds: dX reads G once per 64 columns of x (from L2 after the
// first), W once per 64 rows of G (n k elements, n k / 2 bytes for 4-bit plus absmax, n k for int8),
// and writes dX once; L and H read x and G once each; dB and dA read G and x once more, and L / H (f32,
// m r) once per tile. G is therefore read four times (H, dB, d magnitude, dX); see README, "Training".
// Not measured on a GPU yet; the counted bytes are in BENCHMARKS.md.
//
// lora_backward_magnitude_T: one block per 32 columns, a lane per column, the 8 warps over the rows
// (row i to warp i % 8), B's 32 rows staged in shared memory (rank padded by one: conflict-free);
// the 8 warp sums are added in warp order. Reads G and base once, L once per block (L2), B once.
//
// lora_backward_factor_T: out[j] = column_scale[j] * m[j] / max(norm[j], eps), a DoRA adapter's factor
// times the running product of the factors of the DoRA adapters after it (an earlier adapter sees G
// times the factors of those after it).
#include "common.cuh"
#include "lora_params.h"
#include "mma.cuh"

namespace {

constexpr int kThreads = LORA_BACKWARD_THREADS;
constexpr int kTM = LORA_BACKWARD_TILE_M;
constexpr int kTN = LORA_BACKWARD_TILE_N;
constexpr int kTK = LORA_BACKWARD_TILE_K;
constexpr int kPer = 4;  // outputs per thread along each dimension
constexpr int kTcK = LORA_BACKWARD_TC_TILE_K;
// A staged 16-bit row: kTcK elements as kTcK / 2 words of two, padded to kTcWords words.
constexpr int kTcWords = kTcK / 2 + 4;
constexpr int kMagCols = LORA_BACKWARD_MAGNITUDE_COLUMNS;
constexpr int kWarps = kThreads / 32;

static_assert(kTM == 16 * kPer && kTN == 16 * kPer && kThreads == 256, "16 x 16 threads of 4 x 4 outputs");

// Element (i, j) of operand o in f32, before its row and column scales.
template <typename T>
__device__ __forceinline__ float element_at(const LoraBackwardProductParams &p, const LoraBackwardOperand &o,
                                            const float *code, long long i, long long j) {
    const long long idx = i * o.row_stride + j * o.col_stride;
    switch (o.kind) {
    case LORA_BACKWARD_F32:
        return reinterpret_cast<const float *>(o.data)[idx];
    case LORA_BACKWARD_QUANT4: {
        const int q = quant4_code_at(reinterpret_cast<const uint8_t *>(p.quant4.packed), idx);
        const float v = code[q] * quant4_block_absmax(p.quant4, idx / p.quant4.blocksize);
        return Element<T>::to_f32(Element<T>::from_f32(v));
    }
    case LORA_BACKWARD_INT8: {
        const float c = (float)reinterpret_cast<const int8_t *>(o.data)[idx];
        const float scb = reinterpret_cast<const float *>(p.scb)[idx / p.weight_k];
        return Element<T>::to_f32(Element<T>::from_f32(c * scb * (1.0f / 127.0f)));
    }
    default:
        return Element<T>::to_f32(reinterpret_cast<const T *>(o.data)[idx]);
    }
}

// Element (i, j) of o with its scales, 0 outside [rows, cols].
template <typename T>
__device__ __forceinline__ float scaled_at(const LoraBackwardProductParams &p, const LoraBackwardOperand &o,
                                           const float *code, int i, int j, int rows, int cols) {
    if (i >= rows || j >= cols) return 0.0f;
    float v = element_at<T>(p, o, code, i, j);
    if (o.row_scale) v *= reinterpret_cast<const float *>(o.row_scale)[i];
    if (o.col_scale) v *= reinterpret_cast<const float *>(o.col_scale)[j];
    return v;
}

// Output element `at` = v (added to what it holds with accumulate), rounded once to its type.
template <typename T> __device__ __forceinline__ void store_output(const LoraBackwardJob &job, size_t at, float v) {
    if (job.out_kind == LORA_BACKWARD_F32) {
        float *out = reinterpret_cast<float *>(job.out);
        out[at] = job.accumulate ? out[at] + v : v;
    } else {
        T *out = reinterpret_cast<T *>(job.out);
        out[at] = Element<T>::from_f32(job.accumulate ? Element<T>::to_f32(out[at]) + v : v);
    }
}

template <typename T>
__device__ void product_cuda_cores(const LoraBackwardProductParams &p, const LoraBackwardJob &job, int tile) {
    __shared__ float a_tile[kTK][kTM + 1];
    __shared__ float b_tile[kTK][kTN + 1];
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = p.quant4.code[threadIdx.x];
    __syncthreads();
    const int tiles_n = (job.n + kTN - 1) / kTN;
    const int m0 = (tile / tiles_n) * kTM, n0 = (tile % tiles_n) * kTN;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[kPer][kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[i][j] = 0.0f;

    for (int ph = 0; ph < job.num_phases; ++ph) {
        const LoraBackwardPhase &f = p.phases[job.first_phase + ph];
        const bool a_along_depth = f.a.col_stride == 1;
        const bool b_along_depth = f.b.row_stride == 1 && f.b.col_stride != 1;
        float part[kPer][kPer];
#pragma unroll
        for (int i = 0; i < kPer; ++i)
#pragma unroll
            for (int j = 0; j < kPer; ++j) part[i][j] = 0.0f;
        for (int d0 = 0; d0 < f.depth; d0 += kTK) {
            for (int e = threadIdx.x; e < kTM * kTK; e += kThreads) {
                const int mm = a_along_depth ? e / kTK : e % kTM;
                const int dd = a_along_depth ? e % kTK : e / kTM;
                a_tile[dd][mm] = scaled_at<T>(p, f.a, code, m0 + mm, d0 + dd, job.m, f.depth);
            }
            for (int e = threadIdx.x; e < kTN * kTK; e += kThreads) {
                const int nn = b_along_depth ? e / kTK : e % kTN;
                const int dd = b_along_depth ? e % kTK : e / kTN;
                b_tile[dd][nn] = scaled_at<T>(p, f.b, code, d0 + dd, n0 + nn, f.depth, job.n);
            }
            __syncthreads();
#pragma unroll
            for (int dd = 0; dd < kTK; ++dd) {
                float av[kPer], bv[kPer];
#pragma unroll
                for (int i = 0; i < kPer; ++i) av[i] = a_tile[dd][ty + 16 * i];
#pragma unroll
                for (int j = 0; j < kPer; ++j) bv[j] = b_tile[dd][tx + 16 * j];
#pragma unroll
                for (int i = 0; i < kPer; ++i)
#pragma unroll
                    for (int j = 0; j < kPer; ++j) part[i][j] = fmaf(av[i], bv[j], part[i][j]);
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < kPer; ++i)
#pragma unroll
            for (int j = 0; j < kPer; ++j) acc[i][j] = fmaf(f.alpha, part[i][j], acc[i][j]);
    }

#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        const int row = m0 + ty + 16 * i;
        if (row >= job.m) continue;
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
            const int col = n0 + tx + 16 * j;
            if (col >= job.n) continue;
            store_output<T>(job, (size_t)row * job.n + col, acc[i][j]);
        }
    }
}

// The word of shared memory holding elements (2 pair, 2 pair + 1) of staged row r: rows of 20 words,
// the pair's low two bits XORed with (r / 8) % 4. A fragment read (8 rows in one group of 8, 4
// consecutive pairs) and a store of 32 consecutive rows at one pair both land in 32 distinct banks.
__device__ __forceinline__ int tc_word(int r, int pair) { return r * kTcWords + (pair ^ ((r >> 3) & 3)); }

// Stages one operand's 64 x 32 slice as the element type, depth-contiguous (tc_word): value(r, d) is
// element (r, d). An operand contiguous along the depth is read a row of 32 per warp; one contiguous
// along the rows (Gᵀ, Hᵀ, B, x, W, A) 32 rows at one depth pair per warp, each lane packing its pair
// into one 32-bit store. Either way a warp's loads are contiguous and its stores conflict-free.
template <typename T, typename Value>
__device__ __forceinline__ void stage_tc(uint32_t (&dst)[kTM * kTcWords], bool along_depth, Value value) {
    static_assert(kTM == kTN && kTM % 32 == 0, "one staging for both operands");
    if (along_depth) {
        T *half = reinterpret_cast<T *>(dst);
        for (int e = threadIdx.x; e < kTM * kTcK; e += kThreads) {
            const int r = e / kTcK, d = e % kTcK;
            half[2 * tc_word(r, d >> 1) + (d & 1)] = Element<T>::from_f32(value(r, d));
        }
        return;
    }
    for (int e = threadIdx.x; e < kTM * kTcK / 2; e += kThreads) {
        const int r = e % kTM, pair = e / kTM;
        dst[tc_word(r, pair)] =
            pack2(Element<T>::from_f32(value(r, 2 * pair)), Element<T>::from_f32(value(r, 2 * pair + 1)));
    }
}

// The f16/bf16 product on tensor cores: the block's 64 x 64 tile as 8 warps of 32 x 16 (2 x 4), each
// two m16 x two n8 mma tiles per 16-deep step. Both operands are staged as the element type,
// depth-contiguous (stage_tc) whatever their layout in memory, so fragments are 32-bit reads; f32
// operands (L, H) and the scaled G_f are rounded to the element type on the way in (peft computes
// them in that type too).
template <typename T>
__device__ void product_tensor_cores(const LoraBackwardProductParams &p, const LoraBackwardJob &job, int tile) {
    __shared__ uint32_t a_s[kTM * kTcWords];
    __shared__ uint32_t b_s[kTN * kTcWords];
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = p.quant4.code[threadIdx.x];
    __syncthreads();
    const int tiles_n = (job.n + kTN - 1) / kTN;
    const int m0 = (tile / tiles_n) * kTM, n0 = (tile % tiles_n) * kTN;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = (warp / 4) * 32, wn = (warp % 4) * 16;
    const int g = lane / 4, t = lane % 4;
    float acc[2][2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.0f;

    for (int ph = 0; ph < job.num_phases; ++ph) {
        const LoraBackwardPhase &f = p.phases[job.first_phase + ph];
        const bool a_along_depth = f.a.col_stride == 1;
        const bool b_along_depth = f.b.row_stride == 1 && f.b.col_stride != 1;
        float part[2][2][4];
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j)
#pragma unroll
                for (int c = 0; c < 4; ++c) part[i][j][c] = 0.0f;
        for (int d0 = 0; d0 < f.depth; d0 += kTcK) {
            stage_tc<T>(a_s, a_along_depth,
                        [&](int r, int d) { return scaled_at<T>(p, f.a, code, m0 + r, d0 + d, job.m, f.depth); });
            stage_tc<T>(b_s, b_along_depth,
                        [&](int c, int d) { return scaled_at<T>(p, f.b, code, d0 + d, n0 + c, f.depth, job.n); });
            __syncthreads();
#pragma unroll
            for (int k0 = 0; k0 < kTcK; k0 += 16) {
                uint32_t a[2][4], b[2][2];
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const int r = wm + 16 * i + g;
                    a[i][0] = a_s[tc_word(r, k0 / 2 + t)];
                    a[i][1] = a_s[tc_word(r + 8, k0 / 2 + t)];
                    a[i][2] = a_s[tc_word(r, k0 / 2 + t + 4)];
                    a[i][3] = a_s[tc_word(r + 8, k0 / 2 + t + 4)];
                }
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int c = wn + 8 * j + g;
                    b[j][0] = b_s[tc_word(c, k0 / 2 + t)];
                    b[j][1] = b_s[tc_word(c, k0 / 2 + t + 4)];
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 2; ++j) mma_16816<T>(part[i][j], a[i], b[j][0], b[j][1]);
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[i][j][c] = fmaf(f.alpha, part[i][j][c], acc[i][j][c]);
    }

#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int row = m0 + wm + 16 * i + g + (c >= 2 ? 8 : 0);
                const int col = n0 + wn + 8 * j + 2 * t + (c & 1);
                if (row < job.m && col < job.n) store_output<T>(job, (size_t)row * job.n + col, acc[i][j][c]);
            }
}

// The block's job (the last whose first tile is at or below the block) and its tile within it.
template <typename T> __device__ void product(const LoraBackwardProductParams &p) {
    int j = 0;
    while (j + 1 < p.num_jobs && (int)blockIdx.x >= p.jobs[j + 1].tile_start) ++j;
    const LoraBackwardJob &job = p.jobs[j];
    const int tile = (int)blockIdx.x - job.tile_start;
    if constexpr (sizeof(T) == 2) {
        if (!p.cuda_cores) {
            product_tensor_cores<T>(p, job, tile);
            return;
        }
    }
    product_cuda_cores<T>(p, job, tile);
}

template <typename T> __device__ void magnitude(const LoraBackwardMagnitudeParams &p) {
    __shared__ float b_rows[kMagCols][LORA_MAX_LAUNCH_RANK + 1];
    __shared__ float partial[kWarps][kMagCols];
    const int j0 = blockIdx.x * kMagCols;
    const T *lora_b = reinterpret_cast<const T *>(p.lora_b);
    for (int e = threadIdx.x; e < kMagCols * p.rank; e += kThreads) {
        const int c = e / p.rank, q = e % p.rank;
        b_rows[c][q] = j0 + c < p.n ? Element<T>::to_f32(lora_b[(size_t)(j0 + c) * p.rank + q]) : 0.0f;
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int j = j0 + lane;
    float acc = 0.0f;
    if (j < p.n) {
        const T *g = reinterpret_cast<const T *>(p.grad_output);
        const T *base = reinterpret_cast<const T *>(p.base);
        const float *hidden = reinterpret_cast<const float *>(p.hidden);
        const float bias = p.bias ? Element<T>::to_f32(reinterpret_cast<const T *>(p.bias)[j]) : 0.0f;
        const float col_scale = p.column_scale ? reinterpret_cast<const float *>(p.column_scale)[j] : 1.0f;
        for (int i = warp; i < p.m; i += kWarps) {
            const float *l = hidden + (size_t)i * p.rank;
            float u = 0.0f;
            for (int q = 0; q < p.rank; ++q) u = fmaf(l[q], b_rows[lane][q], u);
            const size_t at = (size_t)i * p.n + j;
            const float pre = Element<T>::to_f32(base[at]) - bias + p.scale * u;
            acc = fmaf(Element<T>::to_f32(g[at]) * col_scale, pre, acc);
        }
    }
    partial[warp][lane] = acc;
    __syncthreads();
    if (threadIdx.x < kMagCols && j0 + threadIdx.x < p.n) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum += partial[w][threadIdx.x];
        const float norm = reinterpret_cast<const float *>(p.norm)[j0 + threadIdx.x];
        const float c = norm < DORA_NORM_EPS ? DORA_NORM_EPS : norm;  // NaN stays NaN (not fmaxf)
        T *out = reinterpret_cast<T *>(p.out) + j0 + threadIdx.x;
        const float grad = sum / c;
        *out = Element<T>::from_f32(p.accumulate ? Element<T>::to_f32(*out) + grad : grad);
    }
}

template <typename T> __device__ void factor(const LoraBackwardFactorParams &p) {
    const int j = blockIdx.x * kThreads + threadIdx.x;
    if (j >= p.n) return;
    const float m = Element<T>::to_f32(reinterpret_cast<const T *>(p.magnitude)[j]);
    const float norm = reinterpret_cast<const float *>(p.norm)[j];
    const float f = m / (norm < DORA_NORM_EPS ? DORA_NORM_EPS : norm);  // as kernels/dora.cu's FACTOR
    reinterpret_cast<float *>(p.out)[j] = p.column_scale ? reinterpret_cast<const float *>(p.column_scale)[j] * f : f;
}

}  // namespace

KERNEL_ENTRY(lora_backward_product_f32, LoraBackwardProductParams, 1, product<float>)
KERNEL_ENTRY(lora_backward_product_f16, LoraBackwardProductParams, 1, product<__half>)
KERNEL_ENTRY(lora_backward_product_bf16, LoraBackwardProductParams, 1, product<__nv_bfloat16>)

KERNEL_ENTRY(lora_backward_magnitude_f32, LoraBackwardMagnitudeParams, 1, magnitude<float>)
KERNEL_ENTRY(lora_backward_magnitude_f16, LoraBackwardMagnitudeParams, 1, magnitude<__half>)
KERNEL_ENTRY(lora_backward_magnitude_bf16, LoraBackwardMagnitudeParams, 1, magnitude<__nv_bfloat16>)

KERNEL_ENTRY(lora_backward_factor_f32, LoraBackwardFactorParams, 1, factor<float>)
KERNEL_ENTRY(lora_backward_factor_f16, LoraBackwardFactorParams, 1, factor<__half>)
KERNEL_ENTRY(lora_backward_factor_bf16, LoraBackwardFactorParams, 1, factor<__nv_bfloat16>)
