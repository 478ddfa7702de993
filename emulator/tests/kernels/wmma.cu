// wmma test kernels (emulator/tests/wmma.rs). NVIDIA leaves the wmma fragment layout
// unspecified; the emulator uses a deliberately scrambled but self-consistent one. So: results
// through load/mma/store and elementwise fragment operations must be right, while the per-lane
// element order (dumped here) must not be any layout code might assume.
// Regenerate the PTX with ./build.sh.
#include <mma.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
using namespace nvcuda;

// A 16x16 row-major, B 16x16 column-major (element (k, n) at B[n*16 + k]), both staged in shared
// memory (wmma.load.*.shared.f16). C = 0.5 everywhere (fill_fragment). dump[lane*8 + i] =
// accumulator x[i] after the mma; then every element is doubled and D (row-major) stored.
extern "C" __global__ void wmma_f16_shared(const __half* A, const __half* B, float* D, float* dump)
{
    __shared__ __half sa[256], sb[256];
    for (int i = threadIdx.x; i < 256; i += 32) {
        sa[i] = A[i];
        sb[i] = B[i];
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.5f);
    wmma::load_matrix_sync(fa, sa, 16);
    wmma::load_matrix_sync(fb, sb, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    for (int i = 0; i < fc.num_elements; ++i)
        dump[threadIdx.x * fc.num_elements + i] = fc.x[i];
    for (int i = 0; i < fc.num_elements; ++i)
        fc.x[i] *= 2.0f;
    wmma::store_matrix_sync(D, fc, 16, wmma::mem_row_major);
}

// The same with bf16 operands loaded straight from global memory (generic wmma.load.*.bf16).
extern "C" __global__ void wmma_bf16_global(const __nv_bfloat16* A, const __nv_bfloat16* B, float* D)
{
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.5f);
    wmma::load_matrix_sync(fa, A, 16);
    wmma::load_matrix_sync(fb, B, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    for (int i = 0; i < fc.num_elements; ++i)
        fc.x[i] *= 2.0f;
    wmma::store_matrix_sync(D, fc, 16, wmma::mem_row_major);
}
