#include <cuda_fp16.h>
__constant__ float coeffs[4] = {1.0f, 2.0f, 3.5f, -1.0f};
__device__ int table[3] = {7, 8, 9};
extern __shared__ float dyn[];
extern "C" __global__ void forms(float* out, const float* in, int n, int k) {
    float local[16];
    for (int i = 0; i < 16; ++i) local[i] = in[(threadIdx.x * 7 + i) % n];
    dyn[threadIdx.x] = local[k & 15] * coeffs[k & 3] + table[k % 3];
    __syncthreads();
    unsigned m = __ballot_sync(0xffffffff, dyn[threadIdx.x ^ 1] > 0);
    float v = __shfl_xor_sync(0xffffffff, dyn[threadIdx.x], 1);
    float4 q = __ldg(reinterpret_cast<const float4*>(in) + threadIdx.x);
    out[blockIdx.x * blockDim.x + threadIdx.x] = v + m + q.x + q.w + __half2float(__float2half(v)) + clock64();
    __nanosleep(10);
}
