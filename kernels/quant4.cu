// bitsandbytes 4-bit (NF4/FP4) weights: the quantiser, and products on the fly that never materialise
// the dequantised weight:
//   quant4_dequantize_T  out[i] = T(code[q_i] * absmax[i / blocksize])           (f32 multiply, one rounding)
//   quant4_gemv_T        y[r, j] = sum_c x[r, c] * code[q_(j,c)] * absmax(j, c) + bias[j]
// absmax is plain f32 per block, or double-quantised: nested_code[u8] * nested_absmax[block / 256] + offset.
//
//   quant4_quantize_T and quant4_nested_quantize: the quantiser (see Quant4QuantizeParams), byte-exact
//   with the CPU reference (bitsandbytes' CPU backend, src/quant4/reference.rs): one block per absmax
//   block, then the double quantisation of the absmax (the host computes the offset in between).
//   Every rounding step is an explicit __f*_rn intrinsic, so no FMA contraction changes a result.
//
// How the work is split. Dequantize: one thread per packed byte (two elements). GEMV (the path
// for decode, any m): one warp per output row j, 8 rows per block; each lane walks the row's packed
// bytes with 16-byte loads (32 codes, one absmax block since blocks are >= 32 and rows start on a
// 32-element boundary when k % 32 == 0), reads the code table from shared memory, accumulates up to 8
// rows of x in f32; a warp shuffle reduces. x comes from shared memory: the block stages up to 8 rows
// of 1024 columns at a time with coalesced 16-byte loads (StagedX in common.cuh), and every lane reads
// its word's 32 columns from there. m > 8 takes several passes over W. Otherwise (k not a multiple of
// 32, unaligned pointers) an element-wise path does the same sums, x straight from global memory.
//
// Bytes moved by the GEMV: the packed weight once per pass (n * k / 2), the absmax (a byte or a float per
// block), x from L2 (m * k elements once per block and pass, into shared memory), y once. At m = 1 the packed
// weight dominates: 4x fewer bytes than a bf16 weight. Large m goes to the tiled tensor-core kernel of
// kernels/linear.cu instead (the host switches above 8 rows).
#include "common.cuh"
#include "lora_params.h"

namespace {

constexpr int kThreads = QUANT4_THREADS;
constexpr int kRowsPerBlock = kThreads / 32;
constexpr int kMTile = 8;

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
        if (i < numel)
            out[i] = Element<T>::from_f32(code[quant4_code_at(packed, i)] * quant4_block_absmax(w, i / w.blocksize));
    }
}

template <typename T> __device__ void gemv(const Quant4Params &p) {
    using StagedXs = StagedX<T, 32, kMTile>;  // a lane's slice: the 32 columns of one packed 16-byte word
    constexpr int V = kVec<T>;
    const Quant4Weights &w = p.w;
    __shared__ float code[16];  // indexed by the codes: shared memory, not a local array
    __shared__ StagedXs xs;
    if (threadIdx.x < 16) code[threadIdx.x] = w.code[threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x % 32;
    const int j = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;  // output feature (row of W)
    const bool active = j < w.n;  // a warp past the last row still helps stage x (the barriers)
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
            for (int c0 = 0; c0 < w.k; c0 += StagedXs::kChunk) {
                xs.template load<kThreads>(x, w.k, r0, rows, c0);
                const int v = c0 / 32 + lane;  // the lane's packed word: columns 32 v .. 32 v + 31
                if (!active || v >= w.k / 32) continue;
                const uint4 word = __ldg(row_bytes + v);
                const float scale = quant4_block_absmax(w, (row_start + 32 * v) / w.blocksize);
#pragma unroll
                for (int q = 0; q < StagedXs::kPieces; ++q) {  // columns q V .. q V + V - 1 of the word
                    float wq[V];
#pragma unroll
                    for (int e = 0; e < V; e += 2) {
                        const int b = (q * V + e) / 2;  // the byte of columns e, e + 1
                        const uint32_t part = b < 4 ? word.x : b < 8 ? word.y : b < 12 ? word.z : word.w;
                        const uint32_t byte = (part >> (8 * (b % 4))) & 0xff;
                        wq[e] = code[byte >> 4] * scale;
                        wq[e + 1] = code[byte & 0x0f] * scale;
                    }
#pragma unroll
                    for (int r = 0; r < kMTile; ++r) {
                        if (r < rows) {
                            const Vec16<T> xv = xs.at(r, lane, q);
#pragma unroll
                            for (int e = 0; e < V; ++e) acc[r] = fmaf(Element<T>::to_f32(xv.v[e]), wq[e], acc[r]);
                        }
                    }
                }
            }
        } else if (active) {
            for (int c = lane; c < w.k; c += 32) {
                const long long i = row_start + c;
                const float wv = code[quant4_code_at(packed, i)] * quant4_block_absmax(w, i / w.blocksize);
#pragma unroll
                for (int r = 0; r < kMTile; ++r)
                    if (r < rows) acc[r] = fmaf(Element<T>::to_f32(x[(size_t)(r0 + r) * w.k + c]), wv, acc[r]);
            }
        }
        if (!active) continue;
        float lora[kMTile] = {};
        lora_gemv_partials<T, kMTile>(p.lora, r0, rows, j, lora);
        warp_sum_store_rows<T, kMTile>(acc, lora, rows, 1.0f, reinterpret_cast<const T *>(p.bias), y, r0, j, w.n);
    }
}

// ---- The quantiser: bitsandbytes' CPU backend, step for step as src/quant4/reference.rs ----

// The bucket search of the code table (reference::Bucketizer): order[] lists the table's indices in
// increasing value (a stable rank: FP4's two zeros in index order), mids[] the 15 f32 midpoints of
// neighbours; the code of y is order[number of midpoints that are not >= y] (NaN: past the last).
struct Buckets {
    float code[16];
    float mids[15];
    int order[16];
};

// Fills b from the 16-entry table; ends on a barrier.
__device__ void build_buckets(const float *table, Buckets &b) {
    if (threadIdx.x < 16) b.code[threadIdx.x] = table[threadIdx.x];
    __syncthreads();
    if (threadIdx.x < 16) {
        const int i = threadIdx.x;
        const float c = b.code[i];
        int rank = 0;
        for (int j = 0; j < 16; ++j) rank += (b.code[j] < c || (b.code[j] == c && j < i)) ? 1 : 0;
        b.order[rank] = i;
    }
    __syncthreads();
    if (threadIdx.x < 15)
        b.mids[threadIdx.x] =
            __fdiv_rn(__fadd_rn(b.code[b.order[threadIdx.x]], b.code[b.order[threadIdx.x + 1]]), 2.0f);
    __syncthreads();
}

__device__ __forceinline__ uint8_t bucket_code(const Buckets &b, float y) {
    int below = 0;
#pragma unroll
    for (int i = 0; i < 15; ++i) below += !(b.mids[i] >= y) ? 1 : 0;
    return (uint8_t)b.order[below];
}

// One absmax block per thread block: pairs of elements (2i, 2i + 1) of the block per thread and step.
//   absmax = max |x| (NaN if any x is), stored as is;
//   d = max(absmax, 1e-38) (NaN kept); full block: y = x * f32(1 / d); partial last block: y = x / d;
//   y clamped to [-1, 1] (NaN kept); code = bucket_code(y).
template <typename T> __device__ void quantize(const Quant4QuantizeParams &p) {
    __shared__ Buckets buckets;
    __shared__ unsigned int scratch[kThreads / 32];
    build_buckets(p.code, buckets);
    const long long start = (long long)blockIdx.x * p.blocksize;
    const int len = (int)min((long long)p.blocksize, p.numel - start);
    const T *in = reinterpret_cast<const T *>(p.input) + start;
    unsigned int bits = 0;
    for (int i = threadIdx.x; i < len; i += kThreads)
        bits = max(bits, __float_as_uint(Element<T>::to_f32(in[i])) & 0x7fffffffu);
    // The block max of |x| over the raw bits: for non-negative floats the unsigned order is the float
    // order, and a NaN (all-ones exponent, non-zero mantissa) ranks above +Inf, so the max is NaN as
    // soon as one element is (torch's max propagates NaN; fmaxf would drop it).
    bits = block_max<kThreads>(bits, scratch);
    const float amax = bits > 0x7f800000u ? __uint_as_float(0x7fc00000u) : __uint_as_float(bits);
    if (threadIdx.x == 0) reinterpret_cast<float *>(p.absmax)[blockIdx.x] = amax;
    const bool full = len == p.blocksize;
    const float denom = isnan(amax) ? amax : fmaxf(amax, 1e-38f);
    const float recip = __fdiv_rn(1.0f, denom);
    auto code_of = [&](int i) -> uint8_t {
        if (i >= len) return bucket_code(buckets, 0.0f);  // the pad of an odd count
        const float v = Element<T>::to_f32(in[i]);
        float y = full ? __fmul_rn(v, recip) : __fdiv_rn(v, denom);
        y = y < -1.0f ? -1.0f : (y > 1.0f ? 1.0f : y);
        return bucket_code(buckets, y);
    };
    uint8_t *packed = reinterpret_cast<uint8_t *>(p.packed) + start / 2;  // blocksize is even
    for (int b = threadIdx.x; 2 * b < len; b += kThreads)
        packed[b] = (uint8_t)((code_of(2 * b) << 4) | code_of(2 * b + 1));
}

// One nested block of 256 absmax values per thread block, one value per thread, as bitsandbytes' C++
// CPU kernel (reference::double_quantize): v = absmax - offset (the host computed the offset and
// checked every absmax is finite); a = max |v| over the block (the nested absmax; 0 gives code 0);
// y = clamp(v * f32(1 / a), -1, 1); grid point j = trunc(fma(f32((y + 1) * 0.5), 65535, 0.5)); the
// code is the number of map midpoints 0.5 * (m[i] + m[i + 1]) below g_j = f32(f32(2j) / 65535) - 1.
static_assert(kThreads == QUANT4_NESTED_BLOCKSIZE, "one thread per nested value and map entry");
__device__ void nested_quantize(const Quant4QuantizeParams &p) {
    __shared__ float map[256];
    __shared__ float scratch[kThreads / 32];
    map[threadIdx.x] = reinterpret_cast<const float *>(p.nested_code)[threadIdx.x];
    const int i = blockIdx.x * QUANT4_NESTED_BLOCKSIZE + threadIdx.x;
    const float offset = *reinterpret_cast<const float *>(p.offset);
    const float v = i < p.blocks ? __fsub_rn(reinterpret_cast<const float *>(p.absmax)[i], offset) : 0.0f;
    const float amax = block_max<kThreads>(fabsf(v), scratch);  // its barriers also publish map[]
    if (threadIdx.x == 0) reinterpret_cast<float *>(p.nested_absmax)[blockIdx.x] = amax;
    if (i >= p.blocks) return;
    uint8_t code = 0;
    if (amax != 0.0f) {
        const float recip = __fdiv_rn(1.0f, amax);
        const float y = fminf(fmaxf(__fmul_rn(v, recip), -1.0f), 1.0f);
        const int j = (int)__fmaf_rn(__fmul_rn(__fadd_rn(y, 1.0f), 0.5f), 65535.0f, 0.5f);  // truncates
        const float g = __fadd_rn(-1.0f, __fdiv_rn(__int2float_rn(2 * j), 65535.0f));
        int lo = 0, hi = 255;  // the first midpoint >= g: the count of those below
        while (lo < hi) {
            const int mid = (lo + hi) / 2;
            if (__fmul_rn(0.5f, __fadd_rn(map[mid], map[mid + 1])) < g)
                lo = mid + 1;
            else
                hi = mid;
        }
        code = (uint8_t)lo;
    }
    reinterpret_cast<uint8_t *>(p.nested_codes)[i] = code;
}

}  // namespace

KERNEL_ENTRY(quant4_quantize_f32, Quant4QuantizeParams, 0, quantize<float>)
KERNEL_ENTRY(quant4_quantize_f16, Quant4QuantizeParams, 0, quantize<__half>)
KERNEL_ENTRY(quant4_quantize_bf16, Quant4QuantizeParams, 0, quantize<__nv_bfloat16>)
KERNEL_ENTRY(quant4_nested_quantize, Quant4QuantizeParams, 0, nested_quantize)

KERNEL_ENTRY(quant4_dequantize_f32, Quant4Params, 0, dequantize<float>)
KERNEL_ENTRY(quant4_dequantize_f16, Quant4Params, 0, dequantize<__half>)
KERNEL_ENTRY(quant4_dequantize_bf16, Quant4Params, 0, dequantize<__nv_bfloat16>)
KERNEL_ENTRY(quant4_gemv_f32, Quant4Params, 2, gemv<float>)
KERNEL_ENTRY(quant4_gemv_f16, Quant4Params, 2, gemv<__half>)
KERNEL_ENTRY(quant4_gemv_bf16, Quant4Params, 2, gemv<__nv_bfloat16>)
