// Tiled matmul y = x * W^T + bias, the base layer of a LoRA/DoRA layer and the prefill (large m) path of
// the quantised bases: W is dense (element type), bitsandbytes 4-bit (NF4/FP4 codes with plain or
// double-quantised absmax) or LLM.int8 codes CB with per-row scales SCB. A quantised W is dequantised
// tile by tile into shared memory and never reaches HBM in 16-bit.
//
// How the work is split. One block per 64 x 128 tile of y (grid: n tiles along x, so consecutive blocks
// share their x rows in L2). The block walks K in 32-column slices: each slice of x [64, 32] and W
// [128, 32] is loaded into registers (16-byte loads where aligned; 4-bit and int8 codes decoded to the
// element type on the way into shared memory), then multiplied while the next slice's loads are in
// flight. f16/bf16: 8 warps as 2 x 4, each a 32 x 32 warp tile of mma.sync m16n8k16 (f32 accumulate,
// fragments read from shared memory as 32-bit words; rows swizzled, not padded, so that neither the
// fragment reads nor the 16-byte staging stores conflict: SharedTiles).
// f32: CUDA-core FMAs, each thread a 4 x 8 register tile (f32 accuracy, no TF32). The epilogue scales
// int8 columns by SCB / 127, adds the bias and rounds once.
//
// linear_gemv_T is the decode path of a dense W (m <= 8): a warp per output column, x staged in shared
// memory a chunk at a time for the block's 8 warps (StagedX), with the optional LoRA term of
// LoraGemvEpilogue added before the store (see there).
//
// Bytes moved from HBM by the tiled kernel: W once per 64 rows of x (n*k elements, n*k/2 bytes for
// 4-bit plus absmax, n*k for int8; repeats come from L2 when W fits), x once per 128-column tile of y
// (from L2 after the first), y once. The GEMV: W once, x once per block (from L2 after the first, into
// shared memory), y once. A plain tiled kernel without cp.async pipelining or ldmatrix: it
// is the crate's own base GEMM (no cuBLAS dependency), not a cuBLAS rival at large m; see
// BENCHMARKS.md.
#include "common.cuh"
#include "lora_params.h"
#include "mma.cuh"

namespace {

constexpr int kThreads = LINEAR_THREADS;
constexpr int kBM = LINEAR_BLOCK_M;
constexpr int kBN = LINEAR_BLOCK_N;
constexpr int kBK = LINEAR_BLOCK_K;

template <typename T> struct Tile { static constexpr bool kTensorCores = sizeof(T) == 2; };

// The slices of x and W in shared memory; xe(r, c) and we(r, c) are element (r, c). f32 (CUDA cores):
// rows padded by 1, the CUDA-core path reads a column across 16 threads. 16-bit (tensor cores, below):
// rows of kBK = 32 elements as four 16-byte pieces, not padded but swizzled.
template <typename T, bool kTc = Tile<T>::kTensorCores> struct SharedTiles {
    T x[kBM][kBK + 1];
    T w[kBN][kBK + 1];
    __device__ __forceinline__ T &xe(int r, int c) { return x[r][c]; }
    __device__ __forceinline__ T &we(int r, int c) { return w[r][c]; }
};

// 16-bit: piece c / 8 of row r is stored at piece (c / 8) ^ ((r / 2) % 4) of the row (at). A 16-byte
// store of 8 lanes (2 rows, 4 pieces each) then fills 8 distinct 16-byte bank groups, and a fragment
// read (8 consecutive rows from a multiple of 8, one 32-bit word of one piece each) hits 32 distinct
// banks: neither conflicts (with 8 elements of row padding instead, the 80-byte row stride put two of
// a quarter-warp's 16-byte stores in the same banks).
template <typename T> struct SharedTiles<T, true> {
    static_assert(kBK == 4 * kVec<T>, "four 16-byte pieces a row");
    T x[kBM * kBK];
    T w[kBN * kBK];
    static __device__ __forceinline__ int at(int r, int c) { return r * kBK + (((c / 8) ^ ((r / 2) % 4)) * 8) + c % 8; }
    __device__ __forceinline__ T &xe(int r, int c) { return x[at(r, c)]; }
    __device__ __forceinline__ T &we(int r, int c) { return w[at(r, c)]; }
    // The 16-byte piece of elements c .. c + 7 (c a multiple of 8) of row r.
    __device__ __forceinline__ uint4 &piece(bool of_x, int r, int c) {
        return *reinterpret_cast<uint4 *>((of_x ? x : w) + at(r, c));
    }
};

// W[row, col] of the tile as an element, for the element-wise path (0 outside W).
template <typename T, int kFormat>
__device__ __forceinline__ T weight_element(const LinearParams &p, const float *code, int row, int col) {
    if (row >= p.n || col >= p.k) return Element<T>::from_f32(0.0f);
    const long long i = (long long)row * p.k + col;
    if constexpr (kFormat == LINEAR_DENSE) {
        return reinterpret_cast<const T *>(p.weight)[i];
    } else if constexpr (kFormat == LINEAR_INT8) {
        return Element<T>::from_f32((float)reinterpret_cast<const int8_t *>(p.weight)[i]);
    } else {
        const int q = quant4_code_at(reinterpret_cast<const uint8_t *>(p.quant4.packed), i);
        return Element<T>::from_f32(code[q] * quant4_block_absmax(p.quant4, i / p.quant4.blocksize));
    }
}

// One K slice of x rows [row0, row0 + 64) and W rows [col0, col0 + 128), held in registers between the
// global loads and the store to shared memory. Vector loads only (vector_x / vector_w); the
// element-wise path is load_slice_scalar.
template <typename T, int kFormat> struct Slice {
    static constexpr int V = kVec<T>;
    static constexpr int kXVecs = kBM * kBK / V / kThreads;
    // 16-byte words of W per slice: dense rows of 32 elements, int8 rows of 32 bytes (2 words), 4-bit
    // rows of 16 bytes (1 word, 128 of the 256 threads).
    static constexpr int kWWords = kFormat == LINEAR_DENSE ? kBN * kBK / V : kFormat == LINEAR_INT8 ? kBN * 2 : kBN;
    static constexpr int kWVecs = (kWWords + kThreads - 1) / kThreads;
    static constexpr int kWordsPerRow = kWWords / kBN;
    uint4 x[kXVecs];
    uint4 w[kWVecs];
    float absmax;  // 4-bit: the block scale of this thread's 32 codes

    __device__ void fetch(const LinearParams &p, int row0, int col0, int k0) {
        const T *xp = reinterpret_cast<const T *>(p.x);
        absmax = 0.0f;  // rows past n stage zeros
#pragma unroll
        for (int i = 0; i < kXVecs; ++i) {
            const int e = threadIdx.x + i * kThreads;
            const int r = e / (kBK / V), c = k0 + (e % (kBK / V)) * V;
            x[i] = make_uint4(0, 0, 0, 0);
            if (row0 + r < p.m && c < p.k)
                x[i] = __ldg(reinterpret_cast<const uint4 *>(xp + (size_t)(row0 + r) * p.k + c));
        }
#pragma unroll
        for (int i = 0; i < kWVecs; ++i) {
            const int e = threadIdx.x + i * kThreads;
            const int r = e / kWordsPerRow, word = e % kWordsPerRow;
            const int row = col0 + r;
            w[i] = make_uint4(0, 0, 0, 0);
            if (e >= kWWords || row >= p.n) continue;
            if constexpr (kFormat == LINEAR_DENSE) {
                const int c = k0 + word * V;
                if (c < p.k)
                    w[i] = __ldg(
                        reinterpret_cast<const uint4 *>(reinterpret_cast<const T *>(p.weight) + (size_t)row * p.k + c));
            } else if constexpr (kFormat == LINEAR_INT8) {
                const int c = k0 + word * 16;
                if (c < p.k)
                    w[i] = __ldg(reinterpret_cast<const uint4 *>(reinterpret_cast<const int8_t *>(p.weight) +
                                                                 (size_t)row * p.k + c));
            } else {
                // k % 32 == 0: the 32 codes start a 32-element group, inside one absmax block (>= 32).
                if (k0 < p.k) {
                    const long long e0 = (long long)row * p.k + k0;
                    w[i] = __ldg(
                        reinterpret_cast<const uint4 *>(reinterpret_cast<const uint8_t *>(p.quant4.packed) + e0 / 2));
                    absmax = quant4_block_absmax(p.quant4, e0 / p.quant4.blocksize);
                }
            }
        }
    }

    // Elements c .. c + V - 1 of row r of x (of_x) or W; 16-bit: one 16-byte store (SharedTiles::piece).
    static __device__ __forceinline__ void put(SharedTiles<T> &s, bool of_x, int r, int c, const Vec16<T> &v) {
        if constexpr (Tile<T>::kTensorCores) {
            s.piece(of_x, r, c) = v.raw;
        } else {
#pragma unroll
            for (int q = 0; q < V; ++q) (of_x ? s.xe(r, c + q) : s.we(r, c + q)) = v.v[q];
        }
    }

    __device__ void stash(SharedTiles<T> &s, const float *code) const {
#pragma unroll
        for (int i = 0; i < kXVecs; ++i) {
            const int e = threadIdx.x + i * kThreads;
            Vec16<T> v;
            v.raw = x[i];
            put(s, true, e / (kBK / V), (e % (kBK / V)) * V, v);
        }
#pragma unroll
        for (int i = 0; i < kWVecs; ++i) {
            const int e = threadIdx.x + i * kThreads;
            if (e >= kWWords) continue;
            const int r = e / kWordsPerRow, word = e % kWordsPerRow;
            if constexpr (kFormat == LINEAR_DENSE) {
                Vec16<T> v;
                v.raw = w[i];
                put(s, false, r, word * V, v);
            } else if constexpr (kFormat == LINEAR_INT8) {
                const uint32_t parts[4] = {w[i].x, w[i].y, w[i].z, w[i].w};
#pragma unroll
                for (int h = 0; h < 16 / V; ++h) {  // the 16 codes as 16 / V vectors
                    Vec16<T> v;
#pragma unroll
                    for (int q = 0; q < V; ++q) {
                        const int b = h * V + q;
                        v.v[q] = Element<T>::from_f32((float)(int8_t)((parts[b / 4] >> (8 * (b % 4))) & 0xff));
                    }
                    put(s, false, r, word * 16 + h * V, v);
                }
            } else {
                // Byte b holds elements 2b (high nibble) and 2b + 1 (low nibble).
                const uint32_t parts[4] = {w[i].x, w[i].y, w[i].z, w[i].w};
#pragma unroll
                for (int h = 0; h < kBK / V; ++h) {  // the 32 elements as kBK / V vectors
                    Vec16<T> v;
#pragma unroll
                    for (int q = 0; q < V; q += 2) {
                        const int b = (h * V + q) / 2;
                        const uint32_t byte = (parts[b / 4] >> (8 * (b % 4))) & 0xff;
                        v.v[q] = Element<T>::from_f32(code[byte >> 4] * absmax);
                        v.v[q + 1] = Element<T>::from_f32(code[byte & 0x0f] * absmax);
                    }
                    put(s, false, r, h * V, v);
                }
            }
        }
    }
};

// The same slice element by element: k not a multiple of the vector width, or unaligned pointers.
template <typename T, int kFormat>
__device__ void load_slice_scalar(const LinearParams &p, SharedTiles<T> &s, const float *code, int row0, int col0,
                                  int k0, bool x_done) {
    const T *x = reinterpret_cast<const T *>(p.x);
    const T zero = Element<T>::from_f32(0.0f);
    if (!x_done) {
        for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {
            const int r = e / kBK, c = e % kBK;
            s.xe(r, c) = (row0 + r < p.m && k0 + c < p.k) ? x[(size_t)(row0 + r) * p.k + k0 + c] : zero;
        }
    }
    for (int e = threadIdx.x; e < kBN * kBK; e += kThreads) {
        const int r = e / kBK, c = e % kBK;
        s.we(r, c) = weight_element<T, kFormat>(p, code, col0 + r, k0 + c);
    }
}

// y[row, col] = acc * column scale + bias, rounded once.
template <typename T, int kFormat>
__device__ __forceinline__ T output_element(const LinearParams &p, int col, float acc) {
    float v = acc;
    if constexpr (kFormat == LINEAR_INT8) v *= reinterpret_cast<const float *>(p.scb)[col] * (1.0f / 127.0f);
    if (p.bias) v += Element<T>::to_f32(reinterpret_cast<const T *>(p.bias)[col]);
    return Element<T>::from_f32(v);
}

template <typename T, int kFormat> __device__ void linear(const LinearParams &p) {
    __shared__ __align__(16) SharedTiles<T> s;
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = kFormat == LINEAR_QUANT4 ? p.quant4.code[threadIdx.x] : 0.0f;
    const int col0 = blockIdx.x * kBN, row0 = blockIdx.y * kBM;
    T *y = reinterpret_cast<T *>(p.y);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    // Runs multiply() on every K slice staged in shared memory.
    auto for_each_slice = [&](auto multiply) {
        if (p.vector_x && p.vector_w) {
            Slice<T, kFormat> regs;
            regs.fetch(p, row0, col0, 0);
            for (int k0 = 0; k0 < p.k; k0 += kBK) {
                __syncthreads();  // the previous products are done with s (and code[] is written)
                regs.stash(s, code);
                if (k0 + kBK < p.k) regs.fetch(p, row0, col0, k0 + kBK);
                __syncthreads();
                multiply();
            }
        } else {
            for (int k0 = 0; k0 < p.k; k0 += kBK) {
                __syncthreads();
                load_slice_scalar<T, kFormat>(p, s, code, row0, col0, k0, false);
                __syncthreads();
                multiply();
            }
        }
    };

    if constexpr (Tile<T>::kTensorCores) {
        // Warp (wm, wn) owns rows [32 wm, 32 wm + 32) and columns [32 wn, 32 wn + 32) of the tile: 2 x 4
        // m16n8 blocks. g = lane / 4, t = lane % 4 as in the PTX fragment layouts.
        const int wm = warp / 4, wn = warp % 4, g = lane / 4, t = lane % 4;
        float acc[2][4][4];
#pragma unroll
        for (int mb = 0; mb < 2; ++mb)
#pragma unroll
            for (int nb = 0; nb < 4; ++nb) acc[mb][nb][0] = acc[mb][nb][1] = acc[mb][nb][2] = acc[mb][nb][3] = 0.0f;
        // Every row this thread reads is g mod 8, so piece q of each sits at q ^ swz (SharedTiles::at).
        // frag: the 32-bit word of elements 2t, 2t + 1 of piece q of a row.
        const int swz = (g / 2) % 4;
        auto frag = [&](const T *rows, int row, int q) {
            return *reinterpret_cast<const uint32_t *>(rows + row * kBK + (q ^ swz) * 8 + 2 * t);
        };
        for_each_slice([&]() {
#pragma unroll
            for (int kk = 0; kk < kBK; kk += 16) {
                uint32_t a[2][4], b[4][2];
                const int q = kk / 8;  // the piece of columns kk .. kk + 7; q + 1: kk + 8 .. kk + 15
#pragma unroll
                for (int mb = 0; mb < 2; ++mb) {
                    const int r = wm * 32 + mb * 16 + g;
                    a[mb][0] = frag(s.x, r, q);
                    a[mb][1] = frag(s.x, r + 8, q);
                    a[mb][2] = frag(s.x, r, q + 1);
                    a[mb][3] = frag(s.x, r + 8, q + 1);
                }
#pragma unroll
                for (int nb = 0; nb < 4; ++nb) {
                    const int c = wn * 32 + nb * 8 + g;
                    b[nb][0] = frag(s.w, c, q);
                    b[nb][1] = frag(s.w, c, q + 1);
                }
#pragma unroll
                for (int mb = 0; mb < 2; ++mb)
#pragma unroll
                    for (int nb = 0; nb < 4; ++nb) mma_16816<T>(acc[mb][nb], a[mb], b[nb][0], b[nb][1]);
            }
        });
        // Accumulator (mb, nb): d0, d1 = row g, columns 2t, 2t + 1; d2, d3 = row g + 8.
#pragma unroll
        for (int mb = 0; mb < 2; ++mb)
#pragma unroll
            for (int nb = 0; nb < 4; ++nb)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = row0 + wm * 32 + mb * 16 + g + 8 * h;
                    const int col = col0 + wn * 32 + nb * 8 + 2 * t;
                    if (row >= p.m || col >= p.n) continue;
                    T *out = y + (size_t)row * p.n + col;
                    const T v0 = output_element<T, kFormat>(p, col, acc[mb][nb][2 * h]);
                    if (p.vector_y) {  // n even: col + 1 < n as well
                        const T v1 = output_element<T, kFormat>(p, col + 1, acc[mb][nb][2 * h + 1]);
                        *reinterpret_cast<uint32_t *>(out) = pack2(v0, v1);
                    } else {
                        out[0] = v0;
                        if (col + 1 < p.n) out[1] = output_element<T, kFormat>(p, col + 1, acc[mb][nb][2 * h + 1]);
                    }
                }
    } else {
        // CUDA cores: thread (ty, tx) = (tid / 16, tid % 16) owns rows 4 ty .. 4 ty + 3 and columns
        // tx + 16 j, j < 8, of the tile.
        const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
        float acc[4][8];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
        for_each_slice([&]() {
#pragma unroll 4
            for (int kk = 0; kk < kBK; ++kk) {
                float xr[4], wr[8];
#pragma unroll
                for (int i = 0; i < 4; ++i) xr[i] = Element<T>::to_f32(s.x[ty * 4 + i][kk]);
#pragma unroll
                for (int j = 0; j < 8; ++j) wr[j] = Element<T>::to_f32(s.w[tx + 16 * j][kk]);
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(xr[i], wr[j], acc[i][j]);
            }
        });
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int row = row0 + ty * 4 + i, col = col0 + tx + 16 * j;
                if (row < p.m && col < p.n) y[(size_t)row * p.n + col] = output_element<T, kFormat>(p, col, acc[i][j]);
            }
    }
}

// The decode path for a dense W (m <= 8, the host's GEMV_MAX_M): one warp per output column j, 8 per
// block; lanes walk W's row j with 16-byte loads (lane L: words L, L + 32, ...) and keep up to 8 rows
// of x in f32 accumulators; a warp shuffle reduces. x comes from shared memory: the block stages up to
// 8 rows of the chunk of 32 * 4 16-byte words its lanes work on at a time (StagedX, interleaved, in
// common.cuh) with coalesced 16-byte loads, so the block reads x once instead of once per warp; a warp
// past the last column still helps stage (the barriers). W is read once, as in the tiled kernel, but
// with n / 8 blocks instead of n / 128 the whole device streams it (the tiled grid is too small to
// fill the SMs at decode sizes). Otherwise (k not a multiple of the vector width, unaligned pointers)
// an element-wise path does the same sums, x straight from global memory.
template <typename T> __device__ void linear_gemv(const LinearParams &p) {
    constexpr int V = kVec<T>;
    constexpr int kRows = 8;
    constexpr int kPieces = 4;  // 16-byte words of W (and of each row of x) per lane and chunk
    using StagedXs = StagedX<T, kPieces * V, kRows, true>;
    __shared__ StagedXs xs;
    const int lane = threadIdx.x % 32;
    const int j = blockIdx.x * (kThreads / 32) + threadIdx.x / 32;
    const bool active = j < p.n;  // a warp past the last column still helps stage x (the barriers)
    const T *w = reinterpret_cast<const T *>(p.weight) + (size_t)j * p.k;
    // Passes of 8 rows (m > 8 re-reads W's row j, from L1/L2 when it stayed there).
    for (int r0 = 0; r0 < p.m; r0 += kRows) {
        const T *x = reinterpret_cast<const T *>(p.x) + (size_t)r0 * p.k;
        const int rows = min(p.m - r0, kRows);
        float acc[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
        if (p.vector_x && p.vector_w) {
            for (int c0 = 0; c0 < p.k; c0 += StagedXs::kChunk) {
                xs.template load<kThreads>(reinterpret_cast<const T *>(p.x), p.k, r0, rows, c0);
                if (!active) continue;
#pragma unroll
                for (int q = 0; q < kPieces; ++q) {
                    const int v = c0 / V + 32 * q + lane;  // the lane's words in increasing v: the order of the sums
                    if (v >= p.k / V) break;
                    Vec16<T> wv;
                    wv.raw = __ldg(reinterpret_cast<const uint4 *>(w) + v);
#pragma unroll
                    for (int r = 0; r < kRows; ++r) {
                        if (r < rows) {
                            const Vec16<T> xv = xs.at(r, lane, q);
#pragma unroll
                            for (int e = 0; e < V; ++e)
                                acc[r] = fmaf(Element<T>::to_f32(xv.v[e]), Element<T>::to_f32(wv.v[e]), acc[r]);
                        }
                    }
                }
            }
        } else if (active) {
            for (int c = lane; c < p.k; c += 32) {
                const float wv = Element<T>::to_f32(w[c]);
#pragma unroll
                for (int r = 0; r < kRows; ++r)
                    if (r < rows) acc[r] = fmaf(Element<T>::to_f32(x[(size_t)r * p.k + c]), wv, acc[r]);
            }
        }
        if (!active) continue;
        float lora[kRows] = {};
        lora_gemv_partials<T, kRows>(p.lora, r0, rows, j, lora);
        warp_sum_store_rows<T, kRows>(acc, lora, rows, 1.0f, reinterpret_cast<const T *>(p.bias),
                                      reinterpret_cast<T *>(p.y), r0, j, p.n);
    }
}

}  // namespace

KERNEL_ENTRY(linear_gemv_f32, LinearParams, 0, linear_gemv<float>)
KERNEL_ENTRY(linear_gemv_f16, LinearParams, 0, linear_gemv<__half>)
KERNEL_ENTRY(linear_gemv_bf16, LinearParams, 0, linear_gemv<__nv_bfloat16>)

KERNEL_ENTRY(linear_tiled_dense_f32, LinearParams, 2, linear<float, LINEAR_DENSE>)
KERNEL_ENTRY(linear_tiled_dense_f16, LinearParams, 2, linear<__half, LINEAR_DENSE>)
KERNEL_ENTRY(linear_tiled_dense_bf16, LinearParams, 2, linear<__nv_bfloat16, LINEAR_DENSE>)
KERNEL_ENTRY(linear_tiled_quant4_f32, LinearParams, 2, linear<float, LINEAR_QUANT4>)
KERNEL_ENTRY(linear_tiled_quant4_f16, LinearParams, 2, linear<__half, LINEAR_QUANT4>)
KERNEL_ENTRY(linear_tiled_quant4_bf16, LinearParams, 2, linear<__nv_bfloat16, LINEAR_QUANT4>)
KERNEL_ENTRY(linear_tiled_int8_f32, LinearParams, 2, linear<float, LINEAR_INT8>)
KERNEL_ENTRY(linear_tiled_int8_f16, LinearParams, 2, linear<__half, LINEAR_INT8>)
KERNEL_ENTRY(linear_tiled_int8_bf16, LinearParams, 2, linear<__nv_bfloat16, LINEAR_INT8>)
