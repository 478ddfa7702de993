/* Parameter structs and constants shared by the CUDA kernels and Rust (bound by bindgen into
 * src/sys/params.rs). The one source of every value both sides use: change it here, then re-bless the
 * bindings (README, "Layout", src/sys/: LORA_KERNELS_BLESS=1 cargo test --test bindings).
 * Pointers travel as 64-bit integers so the layout is identical on both sides. */
#ifndef LORA_PARAMS_H
#define LORA_PARAMS_H

#include <stdint.h>

/* Largest summed rank one launch of the fused LoRA forward takes; the Rust side splits more. */
#define LORA_MAX_LAUNCH_RANK 256
/* Adapters one launch sums; the Rust side splits more into several launches. */
#define LORA_MAX_LAUNCH_ADAPTERS 8
/* Threads per block of the fused LoRA forward. */
#define LORA_FORWARD_THREADS 256
/* Output columns per expand tile. */
#define LORA_FORWARD_N_TILE 64
/* K columns one shrink step stages: 16-row tiles take 64 (16-bit elements) or 32 (f32); 64-row tiles
 * (the *_bm64 kernels, 16-bit only) take 128. The host rounds its K chunks to these. */
#define LORA_FORWARD_K_SLICE_16BIT 64
#define LORA_FORWARD_K_SLICE_F32 32
#define LORA_FORWARD_BM64_K_SLICE 128
/* Largest padded rank a 64-row tile takes (16-row tiles take LORA_MAX_LAUNCH_RANK). */
#define LORA_FORWARD_BM64_MAX_RANK 64

/* One adapter of a launch: A [rank, k] and B [n, rank], row-major, and its scale. Its rank columns sit
 * at [rank_offset, rank_offset + rank) of the launch's concatenated rank. */
typedef struct LoraAdapterSlot {
    uint64_t lora_a;
    uint64_t lora_b;
    int32_t rank;
    int32_t rank_offset;
    float scale;
    int32_t reserved;
} LoraAdapterSlot;

/* The LoRA term in the epilogue of the GEMV kernels (decode, m <= 8: quant4_gemv, int8_gemv,
 * linear_gemv): y[r, j] += sum_q hidden[r][q] * B(j, q), with hidden = sum_i s_i x A_i^T over the
 * adapters' concatenated ranks (f32 [m][rank_total], from lora_shrink_T) and B(j, q) row j of the B of
 * the adapter owning rank q. hidden 0: no LoRA term. */
typedef struct LoraGemvEpilogue {
    uint64_t hidden;
    int32_t rank_total;
    int32_t num_adapters;
    LoraAdapterSlot adapters[LORA_MAX_LAUNCH_ADAPTERS];
} LoraGemvEpilogue;

/* lora_shrink_T (kernels/lora_shrink.cu): one block per concatenated rank q,
 * hidden[r][q] = s_i * sum_c x[r, c] * A_i[q - offset_i, c] for the rows r < m (m <= 8). */
#define LORA_SHRINK_THREADS 256
#define LORA_SHRINK_MAX_ROWS 8
typedef struct LoraShrinkParams {
    uint64_t x;
    uint64_t hidden;
    int32_t m;
    int32_t k;
    int32_t rank_total;
    int32_t num_adapters;
    LoraAdapterSlot adapters[LORA_MAX_LAUNCH_ADAPTERS];
} LoraShrinkParams;

/* y = base + sum_i scale_i * (x * A_i^T) * B_i^T for x [m, k], base and y [m, n] row-major.
 * base may equal y (in place). The work is split into `m_tiles * k_chunks` shrink items followed by
 * `m_tiles * ceil(n_tiles / n_tiles_per_item)` expand items, handed out by a ticket counter (see
 * kernels/lora.cu). */
typedef struct LoraForwardParams {
    uint64_t x;
    uint64_t base;
    uint64_t y;
    /* f32 [k_chunks][m_tiles * block_m][rank_pad]: per-K-chunk partial x * A^T. */
    uint64_t partials;
    /* element type of x [m_tiles * block_m][rank_pad]: the scaled x * A^T, reduced. */
    uint64_t hidden;
    /* uint32 [2 + 2 * m_tiles]: ticket, finished blocks, per M-tile shrink count, per M-tile ready flag.
     * Zero before a launch; the last block to finish zeroes them again. */
    uint64_t counters;
    int32_t m;
    int32_t n;
    int32_t k;
    int32_t rank_total;
    int32_t rank_pad;
    int32_t num_adapters;
    int32_t m_tiles;
    int32_t k_chunks;
    int32_t k_chunk_len;
    /* 64-column output tiles, and how many consecutive ones one expand item covers. */
    int32_t n_tiles;
    int32_t n_tiles_per_item;
    /* 1 when k is a multiple of 16 / sizeof(element) and x and every A are 16-byte aligned. */
    int32_t vector_k;
    /* 1 when n is a multiple of 16 / sizeof(element) and base and y are 16-byte aligned. */
    int32_t vector_n;
    /* 1 when there is one adapter, its rank is even and B is 4-byte aligned: B pairs load as words. */
    int32_t vector_b;
    LoraAdapterSlot adapters[LORA_MAX_LAUNCH_ADAPTERS];
    /* DoRA epilogue (the lora_forward_dora_* kernels only): f32 [n] factor f = m / ||W + sBA|| and the
     * element-type [n] bias of the base layer (0: none). y = bias + f * (base - bias + LoRA term). */
    uint64_t dora_factor;
    uint64_t bias;
} LoraForwardParams;

/* bitsandbytes 4-bit weights (kernels/quant4.cu): W [n, k] as packed codes, first element of a byte in
 * its high nibble, absmax per `blocksize` consecutive elements of the flattened weight, either plain f32
 * or double-quantised (u8 codes into nested_code, f32 nested_absmax per nested_blocksize blocks, plus
 * offset). */
typedef struct Quant4Weights {
    uint64_t packed;
    /* f32 [blocks] (plain) or u8 [blocks] (nested). */
    uint64_t absmax;
    /* f32 [blocks / nested_blocksize], f32 [256]; 0 when plain. */
    uint64_t nested_absmax;
    uint64_t nested_code;
    float code[16];
    float offset;
    int32_t nested;
    int32_t nested_blocksize;
    int32_t blocksize;
    int32_t n;
    int32_t k;
} Quant4Weights;

/* The kernels quant4_dequantize_* (out = dequant(W) [n, k]) and quant4_gemv_* (y = x * dequant(W)^T
 * + bias, x [m, k], y [m, n]; bias 0: none). */
#define QUANT4_THREADS 256
typedef struct Quant4Params {
    Quant4Weights w;
    uint64_t x;
    uint64_t bias;
    uint64_t out;
    int32_t m;
    /* 1 when k is a multiple of 32 and packed and x are 16-byte aligned: 16-byte loads of 32 codes. */
    int32_t vector_k;
    /* The LoRA term of the GEMV epilogue (hidden 0: none; the tiled kernels ignore it). */
    LoraGemvEpilogue lora;
} Quant4Params;

/* The 4-bit quantiser (kernels/quant4.cu), as bitsandbytes' CPU backend quantises
 * (src/quant4/reference.rs has the exact steps):
 *   quant4_quantize_T       one block per absmax block: absmax = max |x| (NaN if any x is; f32
 *                           [blocks] into `absmax`), y = x * f32(1 / max(absmax, 1e-38)) (true division
 *                           in a partial last block), clamped to [-1, 1], coded by bucket search over
 *                           the code table sorted by value (`code`), packed first element high; an odd
 *                           element count pads the last byte with the code of 0.
 *   quant4_nested_quantize  one block per nested block of 256: absmax - offset (the host computes the
 *                           offset, the mean absmax, into `offset`), scaled by its block's absmax and
 *                           coded through bitsandbytes' 65536-point grid against the 256-entry dynamic
 *                           map, into `nested_codes` (u8 [blocks]) and `nested_absmax` (f32). */
#define QUANT4_NESTED_BLOCKSIZE 256
typedef enum Quant4Type { QUANT4_NF4 = 0, QUANT4_FP4 = 1 } Quant4Type;
typedef struct Quant4QuantizeParams {
    /* element type [numel]. */
    uint64_t input;
    /* u8 [(numel + 1) / 2]. */
    uint64_t packed;
    /* f32 [blocks]. */
    uint64_t absmax;
    /* f32 [1]. */
    uint64_t offset;
    /* f32 [256], sorted. */
    uint64_t nested_code;
    uint64_t nested_codes;
    uint64_t nested_absmax;
    int64_t numel;
    int32_t blocksize;
    int32_t blocks;
    int32_t quant_type;
    /* The 16-entry code table of quant_type (the kernel sorts it and takes the midpoints). */
    float code[16];
} Quant4QuantizeParams;

/* LLM.int8 weight-only product (kernels/int8.cu): y = x * (CB * SCB / 127)^T + bias, CB int8 [n, k],
 * SCB f32 [n], x [m, k], y [m, n] (bias 0: none). */
#define INT8_THREADS 256
typedef struct Int8LinearParams {
    uint64_t cb;
    uint64_t scb;
    uint64_t x;
    uint64_t bias;
    uint64_t y;
    int32_t m;
    int32_t n;
    int32_t k;
    /* 1 when k is a multiple of 16 and CB and x are 16-byte aligned: 16-byte loads of 16 codes. */
    int32_t vector_k;
    /* The LoRA term of the GEMV epilogue (hidden 0: none; the tiled kernels ignore it). */
    LoraGemvEpilogue lora;
} Int8LinearParams;

/* LLM.int8 as bitsandbytes runs it on CUDA (kernels/int8.cu, the int8_llm_* kernels):
 *   int8_llm_outliers_T  one block per row i of x: xh = f16(x); SCA[i] = max |xh| over the row's
 *                        non-outliers (|xh| < threshold, or all with threshold 0); flags[c] = 1 for
 *                        every column holding an outlier;
 *   int8_llm_columns     one block: the flagged columns in increasing order into cols[1..], count
 *                        into cols[0];
 *   int8_llm_quantize_T  one block per row: CA[i, c] = round-half-even(xh * 127 / SCA[i]), 0 for an
 *                        outlier, for a flagged column when m > 1, and for SCA[i] = 0;
 *   int8_llm_gemm_T      int8 x int8 -> int32 on tensor cores (mma.sync m16n8k32 s8) over 64 x 128
 *                        tiles of y, then y = f16(acc * SCA[i] * SCB[j] * 6.200012e-05) + bias[j] +
 *                        sum over flagged columns c of x[i, c] * T(CB[j, c] * SCB[j] / 127).
 * CA has row stride ca_stride (k rounded up to 16, the padding zero). */
#define INT8_LLM_BLOCK_M 64
#define INT8_LLM_BLOCK_N 128
#define INT8_LLM_BLOCK_K 64
typedef struct Int8LlmParams {
    /* element type [m, k]. */
    uint64_t x;
    /* int8 [n, k] and f32 [n]. */
    uint64_t cb;
    uint64_t scb;
    /* element type [n] (0: none). */
    uint64_t bias;
    /* element type [m, n]. */
    uint64_t y;
    /* int8 [m, ca_stride]. */
    uint64_t ca;
    /* f32 [m]. */
    uint64_t sca;
    /* u8 [k], zero before int8_llm_outliers. */
    uint64_t flags;
    /* uint32 [1 + k]: count, then the columns. */
    uint64_t cols;
    int32_t m;
    int32_t n;
    int32_t k;
    int32_t ca_stride;
    float threshold;
    /* 1 when k is a multiple of 16 and CB is 16-byte aligned: 16-byte loads of CB. */
    int32_t vector_cb;
} Int8LlmParams;

/* Mixed batch (kernels/mixed_batch.cu): row i of x uses adapter indices[i] of the slot table, or none
 * (-1, or any index outside [0, num_adapters): the row's output is its base). y = base + s (x A^T) B^T. */
#define MIXED_THREADS 256
/* Output columns per block. */
#define MIXED_N_TILE 256
typedef struct LoraMixedParams {
    uint64_t x;
    uint64_t base;
    uint64_t y;
    /* LoraAdapterSlot [num_adapters] in device memory (rank_offset unused). */
    uint64_t slots;
    /* int32 [m] in device memory. */
    uint64_t indices;
    int32_t m;
    int32_t n;
    int32_t k;
    int32_t num_adapters;
    /* The two-phase (prefill) path: f32 [m][LORA_MAX_LAUNCH_RANK], each row's scaled x * A^T, written
     * by mixed_batch_shrink_T and read by mixed_batch_expand_T. 0 for the one-kernel path. */
    uint64_t hidden;
} LoraMixedParams;

/* Tiled matmul y = x * W^T + bias (kernels/linear.cu) for x [m, k], W [n, k], y [m, n] row-major, with W
 * dense (element type), bitsandbytes 4-bit (Quant4Weights) or LLM.int8 codes CB [n, k] with per-row
 * scales SCB (y column j scaled by SCB[j] / 127). Each block computes a LINEAR_BLOCK_M x LINEAR_BLOCK_N
 * tile of y over K slices of LINEAR_BLOCK_K. */
#define LINEAR_THREADS 256
#define LINEAR_BLOCK_M 64
#define LINEAR_BLOCK_N 128
#define LINEAR_BLOCK_K 32
typedef enum LinearWeightFormat {
    /* weight: element type [n, k]. */
    LINEAR_DENSE = 0,
    /* quant4: packed 4-bit codes with their absmax. */
    LINEAR_QUANT4 = 1,
    /* weight: int8 CB [n, k]; scb: f32 SCB [n]. */
    LINEAR_INT8 = 2
} LinearWeightFormat;
typedef struct LinearParams {
    uint64_t x;
    uint64_t weight;
    uint64_t scb;
    /* element type [n] (0: none). */
    uint64_t bias;
    uint64_t y;
    Quant4Weights quant4;
    int32_t m;
    int32_t n;
    int32_t k;
    /* 1 when k is a multiple of 16 / sizeof(element) and x is 16-byte aligned: 16-byte loads of x. */
    int32_t vector_x;
    /* 1 when W's rows load as 16-byte vectors: dense, k a multiple of 16 / sizeof(element); int8, k a
     * multiple of 16; 4-bit, k a multiple of 32; and the weight 16-byte aligned. */
    int32_t vector_w;
    /* 1 when n is even and y is 4-byte aligned: output pairs store as one word. */
    int32_t vector_y;
    /* The LoRA term of the GEMV epilogue (hidden 0: none; the tiled kernels ignore it). */
    LoraGemvEpilogue lora;
} LinearParams;

/* Rows of the DoRA weight norm, merge and unmerge (kernels/dora.cu).
 * W [n, k] (dense, 4-bit or int8), A [rank, k], B [n, rank] row-major; one pass over W, B*A formed on
 * the fly. Rank 0 (no adapter) with requantize is the row-wise int8 quantiser. */
#define DORA_ROWS_PER_BLOCK 16
#define DORA_THREADS 256
/* Row norms below this are treated as zero: f = m / max(norm, DORA_NORM_EPS). */
#define DORA_NORM_EPS 1e-12f
/* The norm on tensor cores (dora_norm_tc_*, NORM and FACTOR of a dense 16-bit W): rows of W per block,
 * k columns per step, and the largest padded rank (the rank rounded up to 16) it takes. */
#define DORA_TC_ROWS 64
#define DORA_TC_COLS 64
#define DORA_TC_MAX_RANK 128

/* What a row pass computes. */
typedef enum DoraRowOp {
    /* out[i] = ||W[i,:] + scale * (B A)[i,:]||_2, f32 [n]. */
    DORA_ROW_NORM = 0,
    /* out[i] = magnitude[i] / max(norm_i, DORA_NORM_EPS), f32 [n]: the factor f of the forward. */
    DORA_ROW_FACTOR = 1,
    /* W[i,:] = factor[i] * (W[i,:] + scale * (B A)[i,:]) in place (factor 0: plain LoRA merge). */
    DORA_ROW_MERGE = 2,
    /* W[i,:] = W[i,:] / factor[i] - scale * (B A)[i,:] in place (factor 0: plain LoRA unmerge). */
    DORA_ROW_UNMERGE = 3
} DoraRowOp;

typedef struct DoraRowParams {
    uint64_t weight;
    uint64_t lora_a;
    uint64_t lora_b;
    /* element-type [n] magnitude m (DORA_ROW_FACTOR). */
    uint64_t magnitude;
    /* f32 [n]: the output of NORM and FACTOR, the factor read by MERGE and UNMERGE (0: none). */
    uint64_t row_values;
    /* f32 [n]: with FACTOR, also the norm of every row (the backward's detached weight norm; 0: none). */
    uint64_t row_norms;
    /* uint32 [1]: with check_only, the number of non-finite results (nothing is written). */
    uint64_t non_finite;
    int32_t n;
    int32_t k;
    int32_t rank;
    float scale;
    int32_t op;
    int32_t check_only;
    /* How W is read (a LinearWeightFormat): the element type, 4-bit codes (`quant4`) or int8 codes with
     * row scales `scb`; each element is dequantised to the element type, as peft's DoRA sees it. */
    int32_t weight_format;
    /* With MERGE or UNMERGE: 1 requantises each updated row to int8 as bitsandbytes' Int8Params does
     * (values rounded to the element type, then f16; SCB = row absmax; CB = round-half-even(v * 127 /
     * SCB)) into out_cb / out_scb, which may be W's own codes and scales; 0 writes W (dense only). */
    int32_t requantize;
    uint64_t scb;
    uint64_t out_cb;
    uint64_t out_scb;
    Quant4Weights quant4;
} DoraRowParams;

/* The training backward (kernels/lora_backward.cu). Every gradient is a product of two operands
 * reduced over one index, computed by one tiled kernel (lora_backward_product_T): a block owns a
 * LORA_BACKWARD_TILE_M x LORA_BACKWARD_TILE_N tile of the output and walks the reduction in slices of
 * LORA_BACKWARD_TILE_K (f32: CUDA-core FMAs, a thread per 4 x 4 outputs) or LORA_BACKWARD_TC_TILE_K
 * (f16/bf16: mma.sync m16n8k16, a warp per 32 x 16 outputs), f32 accumulation, each output summed
 * in a fixed order (deterministic: no atomics, no split reduction). */
#define LORA_BACKWARD_THREADS 256
#define LORA_BACKWARD_TILE_M 64
#define LORA_BACKWARD_TILE_N 64
#define LORA_BACKWARD_TILE_K 16
#define LORA_BACKWARD_TC_TILE_K 32
/* Products a launch holds (LoraBackwardPhase), and outputs it computes (LoraBackwardJob): the host
 * batches independent gradients into one launch (L and H of every adapter; then dB, dA and dX) and
 * splits what does not fit. */
#define LORA_BACKWARD_MAX_PHASES 8
#define LORA_BACKWARD_MAX_JOBS 8
/* Output columns per block of the magnitude gradient (lora_backward_magnitude_T): a lane each. */
#define LORA_BACKWARD_MAGNITUDE_COLUMNS 32

/* How an operand's elements are stored. */
typedef enum LoraBackwardKind {
    /* The element type of the launch. */
    LORA_BACKWARD_ELEMENT = 0,
    /* f32 (the scratch L = x A^T and H = G_f B). */
    LORA_BACKWARD_F32 = 1,
    /* The launch's 4-bit W (LoraBackwardProductParams.quant4), each element dequantised to the element
     * type as peft's dequantize_module_weight gives it: T(code * absmax). */
    LORA_BACKWARD_QUANT4 = 2,
    /* The launch's int8 W: CB (data) with row scales SCB, each element T(CB * SCB * (1/127)). */
    LORA_BACKWARD_INT8 = 3
} LoraBackwardKind;

/* One operand of a product, a [rows, cols] matrix: element (i, j) is data[i * row_stride + j *
 * col_stride] (for the quantised kinds, that index into W's flattened [n, k] codes), times
 * row_scale[i] and col_scale[j] when given (f32; 0: none). The loads run along whichever of the two
 * strides is 1. */
typedef struct LoraBackwardOperand {
    uint64_t data;
    int64_t row_stride;
    int64_t col_stride;
    uint64_t row_scale;
    uint64_t col_scale;
    int32_t kind;
    int32_t pad;
} LoraBackwardOperand;

/* alpha * (a [m, depth] . b [depth, n]). */
typedef struct LoraBackwardPhase {
    LoraBackwardOperand a;
    LoraBackwardOperand b;
    int32_t depth;
    float alpha;
} LoraBackwardPhase;

/* One output of a launch: out [m, n] (row-major, element type or f32) = the sum of phases
 * [first_phase, first_phase + num_phases), rounded once; with accumulate, out + that sum (out read in
 * its own precision first). Its 64 x 64 tiles are the launch's blocks [tile_start, tile_start +
 * tiles), n tiles fastest. */
typedef struct LoraBackwardJob {
    uint64_t out;
    int32_t m;
    int32_t n;
    int32_t first_phase;
    int32_t num_phases;
    int32_t out_kind;
    int32_t accumulate;
    int32_t tile_start;
    int32_t pad;
} LoraBackwardJob;

typedef struct LoraBackwardProductParams {
    LoraBackwardPhase phases[LORA_BACKWARD_MAX_PHASES];
    LoraBackwardJob jobs[LORA_BACKWARD_MAX_JOBS];
    int32_t num_jobs;
    /* int8 W: elements per row of W (SCB is indexed by index / weight_k). */
    int32_t weight_k;
    /* f16/bf16: 1 runs the f32 CUDA-core path instead of tensor cores (operands stay f32, not
     * rounded to the element type; LORA_KERNELS_BACKWARD=cuda-cores). */
    int32_t cuda_cores;
    int32_t pad;
    uint64_t scb;
    Quant4Weights quant4;
} LoraBackwardProductParams;

/* d magnitude [n] of one DoRA adapter: out[j] = sum_i G[i, j] * column_scale[j] * (base[i, j] -
 * bias[j] + scale * sum_q hidden[i, q] * lora_b[j, q]) / max(norm[j], DORA_NORM_EPS). */
typedef struct LoraBackwardMagnitudeParams {
    /* element type [m, n]: the layer's upstream gradient. */
    uint64_t grad_output;
    /* f32 [n]: the product of the factors of the DoRA adapters after this one (0: none). */
    uint64_t column_scale;
    /* element type [m, n]: the base this adapter's forward took (x W^T + bias + earlier adapters). */
    uint64_t base;
    /* element type [n] (0: none). */
    uint64_t bias;
    /* f32 [m, rank]: L = x A^T. */
    uint64_t hidden;
    /* element type [n, rank]. */
    uint64_t lora_b;
    /* f32 [n]: the detached weight norm. */
    uint64_t norm;
    /* element type [n]. */
    uint64_t out;
    int32_t m;
    int32_t n;
    int32_t rank;
    float scale;
    /* 1: out += the gradient (out read in its own precision first). */
    int32_t accumulate;
    int32_t pad;
} LoraBackwardMagnitudeParams;

/* out[j] = column_scale[j] * magnitude[j] / max(norm[j], DORA_NORM_EPS) (f32 [n]; column_scale 0:
 * none): a DoRA adapter's factor (the forward's, same operations) times those of the DoRA adapters
 * after it, the column scale that turns the layer's upstream gradient into this adapter's. */
typedef struct LoraBackwardFactorParams {
    /* f32 [n] (0: none). */
    uint64_t column_scale;
    /* element type [n]. */
    uint64_t magnitude;
    /* f32 [n]. */
    uint64_t norm;
    /* f32 [n]. */
    uint64_t out;
    int32_t n;
    int32_t pad;
} LoraBackwardFactorParams;

#endif
