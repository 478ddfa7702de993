// Mixed-batch LoRA forward (peft's adapter_names; Punica's BGMV in spirit): row i of x uses its own
// adapter, or none: y[i] = base[i] + s_a * (x[i] * A_a^T) * B_a^T with a = indices[i]; a = -1 (or any
// index outside the table) leaves y[i] = base[i]. One launch for the whole batch, adapter pointers and
// indices read on the device, so the call needs no host synchronisation and can be captured in a graph.
//
// How the work is split: block (i, t) owns row i and output columns [256 t, 256 t + 256). It forms the
// row's hidden h = s * x[i] * A_a^T in shared memory (warp w takes ranks w, w + 8, ...; lanes stride
// over k; a shuffle reduces), then each thread writes one column: y = base + h * B_a[col]^T.
//
// Bytes moved: x row and A_a once per block (k + r k elements; the decode path: at m <= 16 they are
// L2-resident and the blocks of one row share them), B_a's rows once, base and y once. The hidden is
// recomputed by each of the row's ceil(n / 256) blocks: r k n / 256 extra FMAs per row, which is why
// this is the decode path; a segment-grouped (SGMV-style) path for prefill is open work.
#include "common.cuh"
#include "lora_params.h"

namespace {

constexpr int kThreads = MIXED_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr int kNTile = MIXED_N_TILE;
constexpr int kMaxRank = LORA_MAX_LAUNCH_RANK;

template <typename T> __device__ void mixed_lora(const LoraMixedParams &p) {
    __shared__ float hidden[kMaxRank];
    const int n_tiles = (p.n + kNTile - 1) / kNTile;
    const int i = blockIdx.x / n_tiles;  // one flat grid: m may exceed the 65535 limit of gridDim.y
    const int col = (blockIdx.x % n_tiles) * kNTile + threadIdx.x;
    const int a = reinterpret_cast<const int *>(p.indices)[i];
    const T *base = reinterpret_cast<const T *>(p.base);
    T *y = reinterpret_cast<T *>(p.y);
    const size_t out = (size_t)i * p.n + col;
    if (a < 0 || a >= p.num_adapters) {  // the whole block takes this branch
        if (col < p.n) y[out] = base[out];
        return;
    }
    const LoraAdapterSlot slot = reinterpret_cast<const LoraAdapterSlot *>(p.slots)[a];
    const int rank = slot.rank;
    const T *x = reinterpret_cast<const T *>(p.x) + (size_t)i * p.k;
    const T *lora_a = reinterpret_cast<const T *>(slot.lora_a);
    const T *lora_b = reinterpret_cast<const T *>(slot.lora_b);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int j = warp; j < rank; j += kWarps) {
        float sum = 0.0f;
        for (int c = lane; c < p.k; c += 32)
            sum = fmaf(Element<T>::to_f32(x[c]), Element<T>::to_f32(lora_a[(size_t)j * p.k + c]), sum);
#pragma unroll
        for (int off = 16; off > 0; off /= 2) sum += __shfl_down_sync(0xffffffffu, sum, off);
        if (lane == 0) hidden[j] = sum * slot.scale;
    }
    __syncthreads();
    if (col < p.n) {
        float acc = 0.0f;
        const T *b_row = lora_b + (size_t)col * rank;
        for (int j = 0; j < rank; ++j) acc = fmaf(hidden[j], Element<T>::to_f32(b_row[j]), acc);
        y[out] = Element<T>::from_f32(Element<T>::to_f32(base[out]) + acc);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) mixed_lora_f32(const LoraMixedParams p) { mixed_lora<float>(p); }
extern "C" __global__ void __launch_bounds__(kThreads) mixed_lora_f16(const LoraMixedParams p) { mixed_lora<__half>(p); }
extern "C" __global__ void __launch_bounds__(kThreads) mixed_lora_bf16(const LoraMixedParams p) { mixed_lora<__nv_bfloat16>(p); }
