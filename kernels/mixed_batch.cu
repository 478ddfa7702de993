// Mixed-batch LoRA forward (peft's adapter_names; Punica's BGMV in spirit): row i of x uses its own
// adapter, or none: y[i] = base[i] + s_a * (x[i] * A_a^T) * B_a^T with a = indices[i]; a = -1 (or any
// index outside the table) leaves y[i] = base[i]. Adapter pointers and indices are read on the device,
// so a call needs no host synchronisation and can be captured in a graph.
//
// How the work is split. Decode (mixed_batch_lora_T, one launch): block (i, t) owns row i and output
// columns [256 t, 256 t + 256); it forms the row's hidden h = s * x[i] * A_a^T in shared memory (warp w
// takes ranks w, w + 8, ...; lanes stride over k; a shuffle reduces), then each thread writes one
// column: y = base + h * B_a[col]^T. The hidden is recomputed by each of the row's ceil(n / 256)
// blocks (r k n / 256 extra FMAs per row and A re-read from L2), which is cheap at decode sizes.
// Prefill (two launches): mixed_batch_shrink_T, one block per row, writes the row's hidden once to
// global memory; mixed_batch_expand_T, the same (row, column tile) blocks, reads it back instead of
// recomputing it: x and A_a once per row.
//
// Bytes moved: x row and A_a once per block (decode: L2-resident at m <= 16) or once per row
// (prefill), B_a's rows once per block from L2, base and y once, the prefill hidden 4 r bytes a row
// twice.
#include "common.cuh"
#include "lora_params.h"

namespace {

constexpr int kThreads = MIXED_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr int kNTile = MIXED_N_TILE;
constexpr int kMaxRank = LORA_MAX_LAUNCH_RANK;

// The adapter slot of row i, or null when the row has none (-1 or an index outside the table).
__device__ __forceinline__ const LoraAdapterSlot *row_slot(const LoraMixedParams &p, int i) {
    const int a = reinterpret_cast<const int *>(p.indices)[i];
    if (a < 0 || a >= p.num_adapters) return nullptr;
    return reinterpret_cast<const LoraAdapterSlot *>(p.slots) + a;
}

// h[j] = s * x[i] * A[j]^T for the slot's ranks: warp w takes ranks w, w + 8, ...; lanes stride over k.
template <typename T>
__device__ void shrink_row(const LoraMixedParams &p, int i, const LoraAdapterSlot &slot, float *h) {
    const T *x = reinterpret_cast<const T *>(p.x) + (size_t)i * p.k;
    const T *lora_a = reinterpret_cast<const T *>(slot.lora_a);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int j = warp; j < slot.rank; j += kWarps) {
        float sum = 0.0f;
        for (int c = lane; c < p.k; c += 32)
            sum = fmaf(Element<T>::to_f32(x[c]), Element<T>::to_f32(lora_a[(size_t)j * p.k + c]), sum);
        sum = warp_sum(sum);
        if (lane == 0) h[j] = sum * slot.scale;
    }
}

// y[i, col] = base[i, col] + h * B[col]^T (h in shared memory), or base alone without a slot.
template <typename T>
__device__ __forceinline__ void expand_col(const LoraMixedParams &p, int i, int col, const LoraAdapterSlot *slot,
                                           const float *h) {
    if (col >= p.n) return;
    const size_t out = (size_t)i * p.n + col;
    const T *base = reinterpret_cast<const T *>(p.base);
    float acc = 0.0f;
    if (slot) {
        const T *b_row = reinterpret_cast<const T *>(slot->lora_b) + (size_t)col * slot->rank;
        for (int j = 0; j < slot->rank; ++j) acc = fmaf(h[j], Element<T>::to_f32(b_row[j]), acc);
    }
    reinterpret_cast<T *>(p.y)[out] = slot ? Element<T>::from_f32(Element<T>::to_f32(base[out]) + acc) : base[out];
}

template <typename T> __device__ void mixed_batch_lora(const LoraMixedParams &p) {
    __shared__ float hidden[kMaxRank];
    const int n_tiles = (p.n + kNTile - 1) / kNTile;
    const int i = blockIdx.x / n_tiles;  // one flat grid: m may exceed the 65535 limit of gridDim.y
    const int col = (blockIdx.x % n_tiles) * kNTile + threadIdx.x;
    const LoraAdapterSlot *slot = row_slot(p, i);  // the same for the whole block
    if (slot) {
        shrink_row<T>(p, i, *slot, hidden);
        __syncthreads();
    }
    expand_col<T>(p, i, col, slot, hidden);
}

// Prefill, phase 1: one block per row writes the row's hidden to p.hidden.
template <typename T> __device__ void mixed_batch_shrink(const LoraMixedParams &p) {
    const int i = blockIdx.x;
    const LoraAdapterSlot *slot = row_slot(p, i);
    if (slot) shrink_row<T>(p, i, *slot, reinterpret_cast<float *>(p.hidden) + (size_t)i * kMaxRank);
}

// Prefill, phase 2: the decode kernel's blocks, with the row's hidden read back from p.hidden.
template <typename T> __device__ void mixed_batch_expand(const LoraMixedParams &p) {
    __shared__ float hidden[kMaxRank];
    const int n_tiles = (p.n + kNTile - 1) / kNTile;
    const int i = blockIdx.x / n_tiles;
    const int col = (blockIdx.x % n_tiles) * kNTile + threadIdx.x;
    const LoraAdapterSlot *slot = row_slot(p, i);
    if (slot) {
        for (int j = threadIdx.x; j < slot->rank; j += kThreads)
            hidden[j] = reinterpret_cast<const float *>(p.hidden)[(size_t)i * kMaxRank + j];
        __syncthreads();
    }
    expand_col<T>(p, i, col, slot, hidden);
}

}  // namespace

KERNEL_ENTRY(mixed_batch_lora_f32, LoraMixedParams, 0, mixed_batch_lora<float>)
KERNEL_ENTRY(mixed_batch_lora_f16, LoraMixedParams, 0, mixed_batch_lora<__half>)
KERNEL_ENTRY(mixed_batch_lora_bf16, LoraMixedParams, 0, mixed_batch_lora<__nv_bfloat16>)
KERNEL_ENTRY(mixed_batch_shrink_f32, LoraMixedParams, 0, mixed_batch_shrink<float>)
KERNEL_ENTRY(mixed_batch_shrink_f16, LoraMixedParams, 0, mixed_batch_shrink<__half>)
KERNEL_ENTRY(mixed_batch_shrink_bf16, LoraMixedParams, 0, mixed_batch_shrink<__nv_bfloat16>)
KERNEL_ENTRY(mixed_batch_expand_f32, LoraMixedParams, 0, mixed_batch_expand<float>)
KERNEL_ENTRY(mixed_batch_expand_f16, LoraMixedParams, 0, mixed_batch_expand<__half>)
KERNEL_ENTRY(mixed_batch_expand_bf16, LoraMixedParams, 0, mixed_batch_expand<__nv_bfloat16>)
