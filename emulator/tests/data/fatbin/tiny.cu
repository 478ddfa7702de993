extern "C" __global__ void add_one(float* x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] += 1.0f; }
__device__ unsigned counter;
extern "C" __global__ void count(int* out) { out[threadIdx.x] = atomicAdd(&counter, 1); }
