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
// shared memory; 16 threads per row each take 2 columns (1 for f32) of the slice, form
// (B A)[i, c] = sum_j B[i, j] A[j, c] with f32 FMAs, and accumulate the square (NORM, FACTOR) or write
// the updated element (MERGE, UNMERGE).
//
// Bytes moved: W read once (dense: elements; 4-bit: k / 2 bytes a row plus absmax; int8: k bytes a
// row) and written once by MERGE/UNMERGE (the requantising ones read the row twice, the second time
// from L2), B read once, A read once per block from L2 (rank * k * elem, L2-resident for ranks up to
// 256 at k = 8192), the f32 row values once. The products are n * k * rank FMAs on CUDA cores: the pass
// is memory-bound for ranks up to about 16 on Hopper. dora_norm_tc_* (below) does NORM and FACTOR of a
// dense 16-bit W with the products on tensor cores (padded rank <= 128, k a multiple of 8, W 16-byte
// aligned); the host picks it whenever it applies.
#include "common.cuh"
#include "lora_params.h"
#include "mma.cuh"

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
        const int q = quant4_code_at(reinterpret_cast<const uint8_t *>(w.packed), (long long)idx);
        const float absmax = quant4_block_absmax(w, (long long)(idx / (size_t)w.blocksize));
        return Element<T>::to_f32(Element<T>::from_f32(code[q] * absmax));
    }
    if (p.weight_format == LINEAR_INT8) {
        const float c = (float)reinterpret_cast<const int8_t *>(p.weight)[idx];
        return Element<T>::to_f32(
            Element<T>::from_f32(c * reinterpret_cast<const float *>(p.scb)[row] * (1.0f / 127.0f)));
    }
    return Element<T>::to_f32(reinterpret_cast<const T *>(p.weight)[idx]);
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
        sum_sq = warp_sum<kLanesPerRow>(sum_sq);  // over the row's 16 lanes
        if (lane == 0 && row_ok) {
            const float norm = sqrtf(sum_sq);
            float *out = reinterpret_cast<float *>(p.row_values);
            if (p.op == DORA_ROW_NORM) {
                out[row] = norm;
            } else {
                const float m = Element<T>::to_f32(reinterpret_cast<const T *>(p.magnitude)[row]);
                out[row] = m / (norm < DORA_NORM_EPS ? DORA_NORM_EPS : norm);  // NaN stays NaN (not fmaxf)
                if (p.row_norms) reinterpret_cast<float *>(p.row_norms)[row] = norm;
            }
        }
        return;
    }

    unsigned int non_finite = 0;
    if (p.requantize) {
        // The new row as Int8Params sees it: rounded to the element type, then to f16.
        auto as_f16 = [](float v) {
            return __half2float(__float2half_rn(Element<T>::to_f32(Element<T>::from_f32(v))));
        };
        float amax = 0.0f;
        sweep([&](int, float v) {
            const float h = as_f16(v);
            if (!isfinite(h)) ++non_finite;
            amax = fmaxf(amax, fabsf(h));
        });
        amax = warp_max<kLanesPerRow>(amax);
        // Every lane of the row knows amax now; the codes are written in a second sweep (the old codes
        // of this element are read just before they are overwritten, by the same thread).
        if (writes) {  // uniform over the block: every thread meets the sweep's barriers
            // bitsandbytes' CPU quantiser (int8::reference::quantize_rowwise): scale = f32(f32(1 / amax) * 127),
            // code = round-half-even(f32(h * scale)); explicit roundings, no contraction. The clamp never
            // acts on finite values (|h * scale| <= 127 up to rounding); an all-zero row gets codes 0.
            int8_t *out_cb = reinterpret_cast<int8_t *>(p.out_cb);
            const float scale = __fmul_rn(__fdiv_rn(1.0f, amax), 127.0f);
            sweep([&](int col, float v) {  // visits rows inside W only
                const float q = amax == 0.0f ? 0.0f : fminf(fmaxf(rintf(__fmul_rn(as_f16(v), scale)), -127.0f), 127.0f);
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

// ---- The norm on tensor cores (NORM and FACTOR of a dense 16-bit W, padded rank <= 128) ----
//
// A block owns 64 rows of W and walks k in 64-column slices. (B A) for the block's rows and the slice
// is a [64, 64] product over the rank: 8 warps as 4 (16-row blocks) x 2 (32-column halves), each warp
// 4 mma.sync m16n8k16 per 16 ranks, B's rows as the A operand (staged once per block), the A slice
// transposed in shared memory as the B operand (both rank-contiguous and swizzled, norm_tc_word: no
// bank conflicts). The accumulators line up with the W slice's elements, staged from 16-byte loads
// issued one slice ahead: v = w + s * (B A), sum v^2 per row, reduced over the row's lanes and the two
// column halves at the end. Bytes: W once, A once per block from L2, B once.
constexpr int kTcRows = DORA_TC_ROWS;
constexpr int kTcCols = DORA_TC_COLS;
constexpr int kTcMaxRank = DORA_TC_MAX_RANK;

// The 32-bit word holding ranks (2 pair, 2 pair + 1) of row r of a rank-contiguous operand (s.b, s.at):
// rows of 64 words (kTcMaxRank, no padding), the pair's low five bits XORed with
// 8 (r % 4) + 4 ((r / 4) % 2) + (r / 8) % 4. Every access lands in distinct banks: a fragment read
// (8 rows of an aligned group of 8, 4 consecutive pairs), the A slice's 2-byte stores (32 consecutive
// rows at one rank) and B's 2-byte stores (32 consecutive elements in [row][rank] order, rp a multiple
// of 16: 2 rows of 8 pairs at rp = 16, one run of 16 pairs otherwise).
__device__ __forceinline__ int norm_tc_word(int r, int pair) {
    return r * (kTcMaxRank / 2) + (pair ^ (((r & 3) << 3) | (r & 4) | ((r >> 3) & 3)));
}

template <typename T> struct SharedNormTc {
    uint32_t b[kTcRows * kTcMaxRank / 2];   // the block's rows of B, [row][rank] (norm_tc_word), zero past the rank
    uint32_t at[kTcCols * kTcMaxRank / 2];  // the slice of A transposed, [column][rank] (norm_tc_word)
    T w[kTcRows][kTcCols + 8];              // the slice of W
    float partial[2][kTcRows];              // sums of squares per column half

    // Element (r, j) of s.b or s.at.
    static __device__ __forceinline__ T &elem(uint32_t *words, int r, int j) {
        return reinterpret_cast<T *>(words)[2 * norm_tc_word(r, j >> 1) + (j & 1)];
    }
};

template <typename T> __device__ void dora_norm_tc(const DoraRowParams &p) {
    __shared__ __align__(16) SharedNormTc<T> s;
    constexpr int V = kVec<T>;
    constexpr int kWVecs = kTcRows * kTcCols / V / kThreads;  // 2
    const int row0 = blockIdx.x * kTcRows;
    const int rp = (p.rank + 15) / 16 * 16;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int mb = warp / 2, nh = warp % 2;
    const T *weight = reinterpret_cast<const T *>(p.weight);
    const T *lora_a = reinterpret_cast<const T *>(p.lora_a);
    const T *lora_b = reinterpret_cast<const T *>(p.lora_b);
    const T zero = Element<T>::from_f32(0.0f);
    // W must be 16-byte loadable (the host checks k % V == 0 and the alignment).
    uint4 w_regs[kWVecs];
    auto fetch_w = [&](int k0) {
#pragma unroll
        for (int i = 0; i < kWVecs; ++i) {
            const int e = threadIdx.x + i * kThreads;
            const int r = e / (kTcCols / V), col = k0 + (e % (kTcCols / V)) * V;
            w_regs[i] = make_uint4(0, 0, 0, 0);
            if (row0 + r < p.n && col < p.k)
                w_regs[i] = __ldg(reinterpret_cast<const uint4 *>(weight + (size_t)(row0 + r) * p.k + col));
        }
    };
    for (int e = threadIdx.x; e < kTcRows * rp; e += kThreads) {
        const int r = e / rp, j = e % rp;
        SharedNormTc<T>::elem(s.b, r, j) =
            (row0 + r < p.n && j < p.rank) ? lora_b[(size_t)(row0 + r) * p.rank + j] : zero;
    }
    fetch_w(0);
    float sum_sq[2] = {0.0f, 0.0f};  // rows 16 mb + g and 16 mb + g + 8
    for (int k0 = 0; k0 < p.k; k0 += kTcCols) {
        __syncthreads();  // the previous products are done with s.at and s.w
#pragma unroll
        for (int i = 0; i < kWVecs; ++i) {
            const int e = threadIdx.x + i * kThreads;
            *reinterpret_cast<uint4 *>(&s.w[e / (kTcCols / V)][(e % (kTcCols / V)) * V]) = w_regs[i];
        }
        {
            // Consecutive threads read consecutive columns of A: thread e stages column e % 64, ranks
            // e / 64, e / 64 + 4, ...
            static_assert(kThreads % kTcCols == 0, "a fixed column per thread");
            const int c = threadIdx.x % kTcCols;
            const bool col_ok = k0 + c < p.k;
            for (int j = threadIdx.x / kTcCols; j < rp; j += kThreads / kTcCols)
                SharedNormTc<T>::elem(s.at, c, j) = (j < p.rank && col_ok) ? lora_a[(size_t)j * p.k + k0 + c] : zero;
        }
        if (k0 + kTcCols < p.k) fetch_w(k0 + kTcCols);
        __syncthreads();
        float acc[4][4];
#pragma unroll
        for (int nb = 0; nb < 4; ++nb) acc[nb][0] = acc[nb][1] = acc[nb][2] = acc[nb][3] = 0.0f;
        for (int kk = 0; kk < rp; kk += 16) {
            uint32_t a[4];
            const int r = mb * 16 + g;
            a[0] = s.b[norm_tc_word(r, kk / 2 + t)];
            a[1] = s.b[norm_tc_word(r + 8, kk / 2 + t)];
            a[2] = s.b[norm_tc_word(r, kk / 2 + t + 4)];
            a[3] = s.b[norm_tc_word(r + 8, kk / 2 + t + 4)];
#pragma unroll
            for (int nb = 0; nb < 4; ++nb) {
                const int c = nh * 32 + nb * 8 + g;
                mma_16816<T>(acc[nb], a, s.at[norm_tc_word(c, kk / 2 + t)], s.at[norm_tc_word(c, kk / 2 + t + 4)]);
            }
        }
        // Accumulator (nb, q): row 16 mb + g + 8 (q / 2), column 32 nh + 8 nb + 2 t + q % 2.
#pragma unroll
        for (int nb = 0; nb < 4; ++nb)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int r = mb * 16 + g + 8 * (q / 2), c = nh * 32 + nb * 8 + 2 * t + q % 2;
                if (k0 + c < p.k) {  // rows past n have zero W and B: they add nothing
                    const float v = Element<T>::to_f32(s.w[r][c]) + p.scale * acc[nb][q];
                    sum_sq[q / 2] = fmaf(v, v, sum_sq[q / 2]);
                }
            }
    }
    // Sum over the row's 4 lanes (t), then over the two column halves.
#pragma unroll
    for (int h = 0; h < 2; ++h) sum_sq[h] = warp_sum<4>(sum_sq[h]);
    if (t == 0) {
        s.partial[nh][mb * 16 + g] = sum_sq[0];
        s.partial[nh][mb * 16 + g + 8] = sum_sq[1];
    }
    __syncthreads();
    if (threadIdx.x < kTcRows && row0 + threadIdx.x < p.n) {
        const int row = row0 + threadIdx.x;
        const float norm = sqrtf(s.partial[0][threadIdx.x] + s.partial[1][threadIdx.x]);
        float *out = reinterpret_cast<float *>(p.row_values);
        if (p.op == DORA_ROW_NORM) {
            out[row] = norm;
        } else {
            const float m = Element<T>::to_f32(reinterpret_cast<const T *>(p.magnitude)[row]);
            out[row] = m / (norm < DORA_NORM_EPS ? DORA_NORM_EPS : norm);  // NaN stays NaN (not fmaxf)
            if (p.row_norms) reinterpret_cast<float *>(p.row_norms)[row] = norm;
        }
    }
}

}  // namespace

KERNEL_ENTRY(dora_norm_tc_f16, DoraRowParams, 0, dora_norm_tc<__half>)
KERNEL_ENTRY(dora_norm_tc_bf16, DoraRowParams, 0, dora_norm_tc<__nv_bfloat16>)

KERNEL_ENTRY(dora_rows_f32, DoraRowParams, 0, dora_rows<float>)
KERNEL_ENTRY(dora_rows_f16, DoraRowParams, 0, dora_rows<__half>)
KERNEL_ENTRY(dora_rows_bf16, DoraRowParams, 0, dora_rows<__nv_bfloat16>)
