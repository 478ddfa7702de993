// Fused LoRA forward: y = base + sum_i scale_i * (x * A_i^T) * B_i^T, one launch.
//
// Shapes: x [m, k], A_i [r_i, k], B_i [n, r_i], base and y [m, n], all row-major, one element type
// (f32, f16 or bf16; products accumulate in f32). The adapters' ranks are concatenated into one rank
// R = sum r_i <= 256, padded to a power of two RP >= 16; scale_i is folded into the rank-R hidden.
//
// How the work is split. Rows are cut into M-tiles of BM rows (16, or 64 for large m). Two kinds of
// work items are handed out, in this order, by a ticket counter in global memory:
//   1. shrink (m_tiles * k_chunks items): an M-tile's x rows over one chunk of k, times the matching
//      columns of every A, gives a partial f32 hidden [BM, RP] written to `partials`. The last chunk to
//      finish for an M-tile sums the chunks, applies the scales and writes the hidden (element type)
//      to `hidden`, then raises the tile's ready flag. Splitting k keeps every SM busy at m = 1.
//   2. expand (m_tiles * n_items items): waits for its M-tile's flag, reads the hidden [BM, RP] into
//      shared memory once, then walks its consecutive 64-column tiles: each warp multiplies its
//      8 columns over all BM rows with B fragments read from L2 (mma.sync m16n8k16) and adds base
//      straight from the accumulator registers, with no barrier inside the tile loop.
// A block only claims an expand item after every shrink item has been claimed by a running block,
// and shrink items never wait, so the spin on the ready flag cannot deadlock whatever the residency.
// The last block to finish zeroes the counters for the next launch on the stream.
//
// Bytes moved from HBM: x once (shrink), base once and y once (expand); A and B once per M-tile
// (L2-resident: at most 2 * 256 * k * 2 bytes); the f32 partials and hidden are m * RP * (4 * k_chunks
// + 2) bytes, about k_chunks * 2 * RP / (k + n) of the x + base + y traffic (the host picks k_chunks
// near resident blocks / m_tiles, so it is small when m is large; for small m everything fits in L2
// anyway). f16/bf16 multiply on tensor cores (wmma in the shrink, mma.sync in the expand, f32
// accumulate); f32 uses CUDA-core FMAs to keep f32 accuracy. The lora_forward_dora_* variants end
// with the DoRA epilogue y = bias + f * (base - bias + LoRA term) (see output_value).
#include <mma.h>

#include "common.cuh"
#include "lora_params.h"
#include "mma.cuh"

namespace {

using namespace nvcuda;

constexpr int kThreads = LORA_FORWARD_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr int kNTile = LORA_FORWARD_N_TILE;
constexpr int kMaxRank = LORA_MAX_LAUNCH_RANK;

// Per element type: K slice staged per step, rank chunk per expand step, whether tensor cores run it,
// the row padding that keeps the expand's shared-memory accesses conflict-free, and the row padding
// of the shrink's x and A tiles. Those are read by wmma.load, and the PTX ISA (Matrix Storage for
// WMMA, Address Alignment) requires every row of a wmma operand to start at a multiple of the
// fragment size, 32 bytes: the row stride in bytes must be a multiple of 32, so 16 halves of padding
// (8 halves, 144-byte rows, met only CUDA C++'s 16-byte ldm rule; the emulator caught it).
template <typename T> struct Config {
    static constexpr int kKSlice = LORA_FORWARD_K_SLICE_16BIT;
    static constexpr int kRankChunk = 64;
    static constexpr bool kTensorCores = true;
    static constexpr int kPad = 8;
    static constexpr int kShrinkPad = 16;
};
template <> struct Config<float> {
    static constexpr int kKSlice = LORA_FORWARD_K_SLICE_F32;
    static constexpr int kRankChunk = 64;
    static constexpr bool kTensorCores = false;
    static constexpr int kPad = 1;
    static constexpr int kShrinkPad = 1;
};

// Largest padded rank a tile height takes: 64-row tiles (large m) take up to 64, which leaves room
// for 128-column K slices (twice the bytes in flight per block); the host uses 16-row tiles above.
template <int BM> constexpr int kRankCap = BM == 64 ? LORA_FORWARD_BM64_MAX_RANK : kMaxRank;
// K columns staged per shrink step.
template <typename T, int BM> constexpr int kKSlice = BM == 64 ? LORA_FORWARD_BM64_K_SLICE : Config<T>::kKSlice;

template <typename T, int BM> struct SharedShrink {
    T x[BM][kKSlice<T, BM> + Config<T>::kShrinkPad];
    T a[kRankCap<BM>][kKSlice<T, BM> + Config<T>::kShrinkPad];
};
template <typename T, int BM> struct SharedExpand {
    T hidden[BM][kRankCap<BM> + Config<T>::kPad];
    T b[kNTile][Config<T>::kRankChunk + Config<T>::kPad];  // CUDA-core path only
};
template <typename T, int BM> union SharedMem {
    SharedShrink<T, BM> shrink;
    SharedExpand<T, BM> expand;
};

struct Counters {
    unsigned int *ticket;
    unsigned int *finished_blocks;
    unsigned int *chunks_done;  // [m_tiles]
    unsigned int *tile_ready;   // [m_tiles]
    __device__ explicit Counters(const LoraForwardParams &p) {
        auto *c = reinterpret_cast<unsigned int *>(p.counters);
        ticket = c;
        finished_blocks = c + 1;
        chunks_done = c + 2;
        tile_ready = c + 2 + p.m_tiles;
    }
};

// The output of one element from the base layer's output and the LoRA term: base + lora, or with the
// DoRA epilogue bias + f * (base - bias + lora), f = m / ||W + s B A|| per output column.
template <typename T, bool kDora>
__device__ __forceinline__ float output_value(const LoraForwardParams &p, int col, float base, float lora) {
    if constexpr (kDora) {
        const float bias = p.bias ? Element<T>::to_f32(reinterpret_cast<const T *>(p.bias)[col]) : 0.0f;
        const float f = reinterpret_cast<const float *>(p.dora_factor)[col];
        return bias + f * (base - bias + lora);
    } else {
        return base + lora;
    }
}

// One K slice of x rows [row0, row0+BM) and of A rows [0, RP), held in registers as 16-byte vectors
// between the global load and the store to shared memory, so the next slice's loads are in flight
// while the current one is multiplied. Zero outside [0, m) x [k0, k_end) and beyond the summed rank.
template <typename T, int BM> struct ShrinkSlice {
    static constexpr int KS = kKSlice<T, BM>;
    static constexpr int V = kVec<T>;
    static constexpr int kXVecs = (BM * KS / V + kThreads - 1) / kThreads;
    // Padded ranks staged in registers; larger ones take the element-wise path (registers are the
    // limit: two blocks per SM).
    static constexpr int kStagedRank = kRankCap<BM> < 128 ? kRankCap<BM> : 128;
    static constexpr int kAVecs = (kStagedRank * KS / V + kThreads - 1) / kThreads;
    uint4 x[kXVecs];
    uint4 a[kAVecs];

    __device__ void fetch(const LoraForwardParams &p, const int8_t *adapter_of, int row0, int k0, int k_end) {
        const T *xp = reinterpret_cast<const T *>(p.x);
#pragma unroll
        for (int i = 0; i < kXVecs; ++i) {
            const int e = threadIdx.x + i * kThreads;
            const int r = e / (KS / V), col = k0 + (e % (KS / V)) * V;
            x[i] = make_uint4(0, 0, 0, 0);
            if (e < BM * KS / V && row0 + r < p.m && col < k_end)
                x[i] = __ldg(reinterpret_cast<const uint4 *>(xp + (size_t)(row0 + r) * p.k + col));
        }
#pragma unroll
        for (int i = 0; i < kAVecs; ++i) {
            const int e = threadIdx.x + i * kThreads;
            const int j = e / (KS / V), col = k0 + (e % (KS / V)) * V;
            a[i] = make_uint4(0, 0, 0, 0);
            if (j < p.rank_total && col < k_end) {
                const LoraAdapterSlot &ad = p.adapters[adapter_of[j]];
                const T *ap = reinterpret_cast<const T *>(ad.lora_a) + (size_t)(j - ad.rank_offset) * p.k;
                a[i] = __ldg(reinterpret_cast<const uint4 *>(ap + col));
            }
        }
    }

    __device__ void stash(SharedShrink<T, BM> &s, int rank_pad) const {
#pragma unroll
        for (int i = 0; i < kXVecs; ++i) {
            const int e = threadIdx.x + i * kThreads;
            if (e < BM * KS / V) {
                Vec16<T> v;
                v.raw = x[i];
#pragma unroll
                for (int q = 0; q < V; ++q) s.x[e / (KS / V)][(e % (KS / V)) * V + q] = v.v[q];
            }
        }
#pragma unroll
        for (int i = 0; i < kAVecs; ++i) {
            const int e = threadIdx.x + i * kThreads;
            if (e < rank_pad * KS / V) {
                Vec16<T> v;
                v.raw = a[i];
#pragma unroll
                for (int q = 0; q < V; ++q) s.a[e / (KS / V)][(e % (KS / V)) * V + q] = v.v[q];
            }
        }
    }
};

// Element-wise staging of the same slice, for k not a multiple of the vector width or unaligned
// pointers.
template <typename T, int BM>
__device__ void load_shrink_slice_scalar(const LoraForwardParams &p, SharedShrink<T, BM> &s, const int8_t *adapter_of,
                                         int row0, int k0, int k_end) {
    constexpr int KS = kKSlice<T, BM>;
    const T *x = reinterpret_cast<const T *>(p.x);
    const T zero = Element<T>::from_f32(0.0f);
    for (int e = threadIdx.x; e < BM * KS; e += kThreads) {
        const int r = e / KS, c = e % KS;
        const int row = row0 + r, col = k0 + c;
        s.x[r][c] = (row < p.m && col < k_end) ? x[(size_t)row * p.k + col] : zero;
    }
    for (int e = threadIdx.x; e < p.rank_pad * KS; e += kThreads) {
        const int j = e / KS, c = e % KS;
        const int col = k0 + c;
        T v = zero;
        if (j < p.rank_total && col < k_end) {
            const LoraAdapterSlot &ad = p.adapters[adapter_of[j]];
            v = reinterpret_cast<const T *>(ad.lora_a)[(size_t)(j - ad.rank_offset) * p.k + col];
        }
        s.a[j][c] = v;
    }
}

// Runs `multiply()` on every K slice of [k_begin, k_end) staged in shared memory.
template <typename T, int BM, typename Multiply>
__device__ void for_each_shrink_slice(const LoraForwardParams &p, SharedShrink<T, BM> &s, const int8_t *adapter_of,
                                      int row0, int k_begin, int k_end, Multiply multiply) {
    constexpr int KS = kKSlice<T, BM>;
    if (p.vector_k && p.rank_pad <= ShrinkSlice<T, BM>::kStagedRank) {
        ShrinkSlice<T, BM> regs;
        regs.fetch(p, adapter_of, row0, k_begin, k_end);
        for (int k0 = k_begin; k0 < k_end; k0 += KS) {
            __syncthreads();
            regs.stash(s, p.rank_pad);
            if (k0 + KS < k_end) regs.fetch(p, adapter_of, row0, k0 + KS, k_end);
            __syncthreads();
            multiply();
        }
    } else {
        for (int k0 = k_begin; k0 < k_end; k0 += KS) {
            __syncthreads();
            load_shrink_slice_scalar<T, BM>(p, s, adapter_of, row0, k0, k_end);
            __syncthreads();
            multiply();
        }
    }
}

// Shrink item: partial hidden of one M-tile over one K chunk; the last chunk reduces and publishes.
template <typename T, int BM>
__device__ void shrink_item(const LoraForwardParams &p, SharedShrink<T, BM> &s, const int8_t *adapter_of,
                            const Counters &ctr, int item) {
    constexpr int KS = kKSlice<T, BM>;
    const int mt = item / p.k_chunks, kc = item % p.k_chunks;
    const int row0 = mt * BM;
    const int m_pad = p.m_tiles * BM;
    const int rp = p.rank_pad;
    const int k_begin = kc * p.k_chunk_len;
    const int k_end = min(p.k, k_begin + p.k_chunk_len);
    float *partial = reinterpret_cast<float *>(p.partials) + ((size_t)kc * m_pad + row0) * rp;
    const int warp = threadIdx.x / 32;

    if constexpr (Config<T>::kTensorCores) {
        // Fragments of the [BM, RP] hidden, round-robin over warps.
        constexpr int kFragsPerWarp = (BM / 16) * (kRankCap<BM> / 16) / kWarps;
        const int frags = (BM / 16) * (rp / 16);
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFragsPerWarp];
#pragma unroll
        for (int i = 0; i < kFragsPerWarp; ++i) wmma::fill_fragment(acc[i], 0.0f);
        for_each_shrink_slice<T, BM>(p, s, adapter_of, row0, k_begin, k_end, [&]() {
#pragma unroll 2
            for (int kk = 0; kk < KS; kk += 16) {
#pragma unroll
                for (int i = 0; i < kFragsPerWarp; ++i) {
                    const int f = warp + i * kWarps;
                    if (f < frags) {
                        const int fm = f % (BM / 16), fn = f / (BM / 16);
                        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> xf;
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> af;
                        wmma::load_matrix_sync(xf, &s.x[fm * 16][kk], KS + Config<T>::kShrinkPad);
                        wmma::load_matrix_sync(af, &s.a[fn * 16][kk], KS + Config<T>::kShrinkPad);
                        wmma::mma_sync(acc[i], xf, af, acc[i]);
                    }
                }
            }
        });
#pragma unroll
        for (int i = 0; i < kFragsPerWarp; ++i) {
            const int f = warp + i * kWarps;
            if (f < frags) {
                const int fm = f % (BM / 16), fn = f / (BM / 16);
                wmma::store_matrix_sync(partial + (size_t)fm * 16 * rp + fn * 16, acc[i], rp, wmma::mem_row_major);
            }
        }
    } else {
        // CUDA cores: each thread owns outputs tid, tid + 256, ... of the [BM, RP] hidden.
        constexpr int kPerThread = BM * kRankCap<BM> / kThreads;
        const int outputs = BM * rp;
        float acc[kPerThread];
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) acc[i] = 0.0f;
        for_each_shrink_slice<T, BM>(p, s, adapter_of, row0, k_begin, k_end, [&]() {
#pragma unroll
            for (int i = 0; i < kPerThread; ++i) {
                const int o = threadIdx.x + i * kThreads;
                if (o < outputs) {
                    const int r = o / rp, j = o % rp;
                    float sum = acc[i];
#pragma unroll 8
                    for (int c = 0; c < KS; ++c)
                        sum = fmaf(Element<T>::to_f32(s.x[r][c]), Element<T>::to_f32(s.a[j][c]), sum);
                    acc[i] = sum;
                }
            }
        });
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
            const int o = threadIdx.x + i * kThreads;
            if (o < outputs) partial[o] = acc[i];
        }
    }

    // Publish: the last chunk of this M-tile reduces the partials into the scaled hidden.
    __shared__ int is_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(&ctr.chunks_done[mt], 1u) == (unsigned)p.k_chunks - 1;
    __syncthreads();
    if (is_last) {
        __threadfence();
        const float *partials = reinterpret_cast<const float *>(p.partials);
        T *hidden = reinterpret_cast<T *>(p.hidden);
        for (int e = threadIdx.x; e < BM * rp; e += kThreads) {
            const int r = e / rp, j = e % rp;
            float sum = 0.0f;
            if (row0 + r < p.m) {  // rows past m are never stored, so their hidden can stay zero
#pragma unroll 8
                for (int c = 0; c < p.k_chunks; ++c) sum += __ldcg(partials + ((size_t)c * m_pad + row0 + r) * rp + j);
            }
            const float scale = j < p.rank_total ? p.adapters[adapter_of[j]].scale : 0.0f;
            hidden[(size_t)(row0 + r) * rp + j] = Element<T>::from_f32(sum * scale);
        }
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) atomicExch(&ctr.tile_ready[mt], 1u);
    }
}

// Expand item: for each of its 64-column tiles, y [BM, 64] = base + hidden [BM, RP] * B[cols, :RP]^T.
// The first tile's base and B chunk do not depend on the hidden, so they are fetched before waiting for
// the M-tile's ready flag: at small m that overlaps the shrink. Later tiles' base vectors are fetched
// one tile ahead into registers.
template <typename T, int BM, bool kDora>
__device__ void expand_item(const LoraForwardParams &p, SharedExpand<T, BM> &s, const int8_t *adapter_of,
                            const Counters &ctr, int item) {
    constexpr int RC = Config<T>::kRankChunk;
    constexpr int kHidPad = kRankCap<BM> + Config<T>::kPad;
    constexpr int V = kVec<T>;
    const int items_per_tile = (p.n_tiles + p.n_tiles_per_item - 1) / p.n_tiles_per_item;
    const int mt = item / items_per_tile;
    const int nt_begin = (item % items_per_tile) * p.n_tiles_per_item;
    const int nt_end = min(p.n_tiles, nt_begin + p.n_tiles_per_item);
    const int row0 = mt * BM;
    const int rp = p.rank_pad;
    const int warp = threadIdx.x / 32;
    const T *base = reinterpret_cast<const T *>(p.base);
    T *y = reinterpret_cast<T *>(p.y);
    const T zero = Element<T>::from_f32(0.0f);

    auto load_b = [&](int col0, int rc, int width) {
        for (int e = threadIdx.x; e < kNTile * width; e += kThreads) {
            const int nn = e / width, jj = e % width;
            const int col = col0 + nn, j = rc + jj;
            T v = zero;
            if (col < p.n && j < p.rank_total) {
                const LoraAdapterSlot &ad = p.adapters[adapter_of[j]];
                v = reinterpret_cast<const T *>(ad.lora_b)[(size_t)col * ad.rank + (j - ad.rank_offset)];
            }
            s.b[nn][jj] = v;
        }
    };
    auto wait_and_load_hidden = [&]() {
        if (threadIdx.x == 0) {
            while (atomicAdd(&ctr.tile_ready[mt], 0u) == 0u) __nanosleep(32);
            __threadfence();
        }
        __syncthreads();
        // Straight from L2: another block wrote it during this launch.
        const T *hidden = reinterpret_cast<const T *>(p.hidden) + (size_t)row0 * rp;
        for (int e = threadIdx.x; e < BM * rp / V; e += kThreads) {
            const int r = e / (rp / V), j = (e % (rp / V)) * V;
            Vec16<T> v;
            v.raw = __ldcg(reinterpret_cast<const uint4 *>(hidden + (size_t)r * rp + j));
#pragma unroll
            for (int i = 0; i < V; ++i) s.hidden[r][j + i] = v.v[i];
        }
        __syncthreads();
    };
    // B chunk `rc` of tile `nt` into s.b; the very first one was loaded before the wait.
    auto stage_b = [&](int nt, int rc, int width) {
        if (nt == nt_begin && rc == 0) return;
        __syncthreads();  // the previous products are done with s.b
        load_b(nt * kNTile, rc, width);
        __syncthreads();
    };

    if constexpr (Config<T>::kTensorCores) {
        // Warp w owns columns [8w, 8w + 8) of every tile, over all BM rows, and multiplies them with
        // raw mma.sync: one B fragment (read from L2) serves all BM / 16 row blocks, and the epilogue
        // adds base straight from the accumulator registers. No barrier inside the tile loop, so warps
        // drift past one another's loads.
        static_assert(kNTile / 8 == kWarps, "one 8-column block per warp");
        constexpr int kMBlocks = BM / 16;
        const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        const bool pairs = p.vector_n;  // base, y aligned and n even: columns 2t, 2t+1 as one 32-bit access

        // base[rows 16 mb + g (+8)][cols 2t, 2t+1 of this warp's block], packed, for tile nt.
        auto fetch_base = [&](uint32_t(&regs)[kMBlocks][2], int nt) {
            const int col = nt * kNTile + warp * 8 + 2 * t;
#pragma unroll
            for (int mb = 0; mb < kMBlocks; ++mb)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = row0 + mb * 16 + g + 8 * h;
                    regs[mb][h] = 0;
                    if (pairs && row < p.m && col < p.n)
                        regs[mb][h] = *reinterpret_cast<const uint32_t *>(base + (size_t)row * p.n + col);
                }
        };

        // Each tile's base is requested before its B fragments and products, which hide its latency
        // together with the other warps. Fetching one tile further ahead costs more than the 128
        // registers two blocks per SM leave.
        uint32_t base_regs[kMBlocks][2];
        fetch_base(base_regs, nt_begin);
        wait_and_load_hidden();
        const T *b_single = reinterpret_cast<const T *>(p.adapters[0].lora_b);
        for (int nt = nt_begin; nt < nt_end; ++nt) {
            if (nt > nt_begin) fetch_base(base_regs, nt);
            float acc[kMBlocks][4];
#pragma unroll
            for (int mb = 0; mb < kMBlocks; ++mb) acc[mb][0] = acc[mb][1] = acc[mb][2] = acc[mb][3] = 0.0f;
            const int b_col = nt * kNTile + warp * 8 + g;  // the output column this lane's B fragment feeds
            for (int kk = 0; kk < rp; kk += 16) {
                const int k0 = kk + 2 * t;
                uint32_t b0 = 0, b1 = 0;
                if (p.vector_b) {
                    // One adapter of even rank: B[b_col][k0], B[b_col][k0 + 1] are one aligned 32-bit word.
                    const T *row = b_single + (size_t)b_col * p.rank_total;
                    if (b_col < p.n && k0 < p.rank_total) b0 = __ldg(reinterpret_cast<const uint32_t *>(row + k0));
                    if (b_col < p.n && k0 + 8 < p.rank_total)
                        b1 = __ldg(reinterpret_cast<const uint32_t *>(row + k0 + 8));
                } else {
                    T e[4];
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        const int k = k0 + (q & 1) + 8 * (q >> 1);
                        e[q] = zero;
                        if (b_col < p.n && k < p.rank_total) {
                            const LoraAdapterSlot &ad = p.adapters[adapter_of[k]];
                            e[q] =
                                reinterpret_cast<const T *>(ad.lora_b)[(size_t)b_col * ad.rank + (k - ad.rank_offset)];
                        }
                    }
                    b0 = pack2(e[0], e[1]);
                    b1 = pack2(e[2], e[3]);
                }
#pragma unroll
                for (int mb = 0; mb < kMBlocks; ++mb) {
                    uint32_t a[4];
                    const int r = mb * 16 + g;
                    a[0] = *reinterpret_cast<const uint32_t *>(&s.hidden[r][k0]);
                    a[1] = *reinterpret_cast<const uint32_t *>(&s.hidden[r + 8][k0]);
                    a[2] = *reinterpret_cast<const uint32_t *>(&s.hidden[r][k0 + 8]);
                    a[3] = *reinterpret_cast<const uint32_t *>(&s.hidden[r + 8][k0 + 8]);
                    mma_16816<T>(acc[mb], a, b0, b1);
                }
            }
            const int col = nt * kNTile + warp * 8 + 2 * t;
#pragma unroll
            for (int mb = 0; mb < kMBlocks; ++mb)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = row0 + mb * 16 + g + 8 * h;
                    if (row >= p.m) continue;
                    const size_t idx = (size_t)row * p.n + col;
                    if (pairs) {
                        if (col < p.n) {
                            Vec16<T> v;  // only the first two lanes are used
                            v.raw.x = base_regs[mb][h];
                            v.v[0] = Element<T>::from_f32(
                                output_value<T, kDora>(p, col, Element<T>::to_f32(v.v[0]), acc[mb][2 * h]));
                            v.v[1] = Element<T>::from_f32(
                                output_value<T, kDora>(p, col + 1, Element<T>::to_f32(v.v[1]), acc[mb][2 * h + 1]));
                            *reinterpret_cast<uint32_t *>(y + idx) = v.raw.x;
                        }
                    } else {
#pragma unroll
                        for (int q = 0; q < 2; ++q)
                            if (col + q < p.n)
                                y[idx + q] = Element<T>::from_f32(output_value<T, kDora>(
                                    p, col + q, Element<T>::to_f32(base[idx + q]), acc[mb][2 * h + q]));
                    }
                }
        }
        __syncthreads();  // s.hidden is overwritten by the next item
    } else {
        // CUDA cores: each thread owns outputs tid, tid + 256, ... of each [BM, 64] tile.
        constexpr int kPerThread = BM * kNTile / kThreads;
        float acc[kPerThread], base_f[kPerThread];
        auto fetch_base = [&](int nt) {
#pragma unroll
            for (int i = 0; i < kPerThread; ++i) {
                const int o = threadIdx.x + i * kThreads;
                const int row = row0 + o / kNTile, col = nt * kNTile + o % kNTile;
                base_f[i] = (row < p.m && col < p.n) ? Element<T>::to_f32(base[(size_t)row * p.n + col]) : 0.0f;
            }
        };
        fetch_base(nt_begin);
        load_b(nt_begin * kNTile, 0, min(RC, rp));
        wait_and_load_hidden();
        for (int nt = nt_begin; nt < nt_end; ++nt) {
            if (nt > nt_begin) fetch_base(nt);
#pragma unroll
            for (int i = 0; i < kPerThread; ++i) acc[i] = 0.0f;
            for (int rc = 0; rc < rp; rc += RC) {
                const int width = min(RC, rp - rc);
                stage_b(nt, rc, width);
#pragma unroll
                for (int i = 0; i < kPerThread; ++i) {
                    const int o = threadIdx.x + i * kThreads;
                    const int r = o / kNTile, c = o % kNTile;
                    float sum = acc[i];
                    for (int jj = 0; jj < width; ++jj)
                        sum = fmaf(Element<T>::to_f32(s.hidden[r][rc + jj]), Element<T>::to_f32(s.b[c][jj]), sum);
                    acc[i] = sum;
                }
            }
#pragma unroll
            for (int i = 0; i < kPerThread; ++i) {
                const int o = threadIdx.x + i * kThreads;
                const int row = row0 + o / kNTile, col = nt * kNTile + o % kNTile;
                if (row < p.m && col < p.n)
                    y[(size_t)row * p.n + col] =
                        Element<T>::from_f32(output_value<T, kDora>(p, col, base_f[i], acc[i]));
            }
        }
        __syncthreads();
    }
}

template <typename T, int BM, bool kDora> __device__ void lora_forward(const LoraForwardParams &p) {
    __shared__ __align__(128) SharedMem<T, BM> smem;
    __shared__ int8_t adapter_of[kMaxRank];
    __shared__ unsigned int ticket;
    const Counters ctr(p);

    for (int j = threadIdx.x; j < kMaxRank; j += kThreads) {
        int8_t owner = 0;
        for (int i = 0; i < p.num_adapters; ++i)
            if (j >= p.adapters[i].rank_offset && j < p.adapters[i].rank_offset + p.adapters[i].rank) owner = (int8_t)i;
        adapter_of[j] = owner;
    }

    const unsigned int shrink_items = (unsigned)(p.m_tiles * p.k_chunks);
    const int expand_per_tile = (p.n_tiles + p.n_tiles_per_item - 1) / p.n_tiles_per_item;
    const unsigned int total_items = shrink_items + (unsigned)(p.m_tiles * expand_per_tile);
    for (;;) {
        __syncthreads();
        if (threadIdx.x == 0) ticket = atomicAdd(ctr.ticket, 1u);
        __syncthreads();
        const unsigned int t = ticket;
        if (t < shrink_items) {
            shrink_item<T, BM>(p, smem.shrink, adapter_of, ctr, (int)t);
        } else if (t < total_items) {
            expand_item<T, BM, kDora>(p, smem.expand, adapter_of, ctr, (int)(t - shrink_items));
        } else {
            break;
        }
    }

    // The last block out resets the counters: every item is done and no block reads them again.
    if (threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(ctr.finished_blocks, 1u) == gridDim.x - 1) {
            for (int i = 0; i < p.m_tiles; ++i) {
                ctr.chunks_done[i] = 0;
                ctr.tile_ready[i] = 0;
            }
            *ctr.ticket = 0;
            *ctr.finished_blocks = 0;
            __threadfence();
        }
    }
}

}  // namespace

// MIN_BLOCKS: blocks per SM the register budget is cut for: 2 for the tensor-core kernels on Hopper
// (128 registers, no spills); sm_8x code needs a few more registers for the same wmma code, so it gets
// 1 there, and so does the f32 kernel, which keeps 16 accumulators per thread.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define LORA_TC_MIN_BLOCKS 2
#else
#define LORA_TC_MIN_BLOCKS 1
#endif
KERNEL_ENTRY(lora_forward_bm16_f32, LoraForwardParams, 1, lora_forward<float, 16, false>)
KERNEL_ENTRY(lora_forward_bm16_f16, LoraForwardParams, LORA_TC_MIN_BLOCKS, lora_forward<__half, 16, false>)
KERNEL_ENTRY(lora_forward_bm64_f16, LoraForwardParams, LORA_TC_MIN_BLOCKS, lora_forward<__half, 64, false>)
KERNEL_ENTRY(lora_forward_bm16_bf16, LoraForwardParams, LORA_TC_MIN_BLOCKS, lora_forward<__nv_bfloat16, 16, false>)
KERNEL_ENTRY(lora_forward_bm64_bf16, LoraForwardParams, LORA_TC_MIN_BLOCKS, lora_forward<__nv_bfloat16, 64, false>)
// The DoRA forward: the same kernel with the per-column DoRA epilogue (see output_value).
KERNEL_ENTRY(lora_forward_dora_bm16_f32, LoraForwardParams, 1, lora_forward<float, 16, true>)
KERNEL_ENTRY(lora_forward_dora_bm16_f16, LoraForwardParams, LORA_TC_MIN_BLOCKS, lora_forward<__half, 16, true>)
KERNEL_ENTRY(lora_forward_dora_bm64_f16, LoraForwardParams, LORA_TC_MIN_BLOCKS, lora_forward<__half, 64, true>)
KERNEL_ENTRY(lora_forward_dora_bm16_bf16, LoraForwardParams, LORA_TC_MIN_BLOCKS, lora_forward<__nv_bfloat16, 16, true>)
KERNEL_ENTRY(lora_forward_dora_bm64_bf16, LoraForwardParams, LORA_TC_MIN_BLOCKS, lora_forward<__nv_bfloat16, 64, true>)
