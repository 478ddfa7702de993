// Launch-shape test kernels (emulator/tests/shapes.rs): 3-D grids and blocks, %laneid, block
// sizes that are not a multiple of 32 (a partial last warp at every __syncthreads), and grids
// far larger than what is resident at once. Regenerate the PTX with ./build.sh.

// One record of 4 words per thread, at the thread's global linear index (x fastest, then y, z;
// blocks likewise): tid, ctaid, ntid packed as x | y << 8 | z << 16; then laneid | nctaid.x << 8
// | nctaid.y << 16 | nctaid.z << 24.
extern "C" __global__ void ids(unsigned* out)
{
    unsigned lin = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned g = blk * (blockDim.x * blockDim.y * blockDim.z) + lin;
    unsigned lane;
    asm volatile("mov.u32 %0, %%laneid;" : "=r"(lane));
    out[g * 4 + 0] = threadIdx.x | threadIdx.y << 8 | threadIdx.z << 16;
    out[g * 4 + 1] = blockIdx.x | blockIdx.y << 8 | blockIdx.z << 16;
    out[g * 4 + 2] = blockDim.x | blockDim.y << 8 | blockDim.z << 16;
    out[g * 4 + 3] = lane | gridDim.x << 8 | gridDim.y << 16 | gridDim.z << 24;
}

// Per-block sum by a shared-memory tree over any blockDim.x (halving with rounding up), one
// __syncthreads per level; then every thread reads s[0] (reads only: no hazard). out[b] is
// written by thread 0, out[gridDim.x + b] by the block's last thread.
extern "C" __global__ void block_sum(const int* x, int* out, int n)
{
    __shared__ int s[1024];
    unsigned t = threadIdx.x;
    unsigned i = blockIdx.x * blockDim.x + t;
    s[t] = i < (unsigned)n ? x[i] : 0;
    __syncthreads();
    for (unsigned w = blockDim.x; w > 1;) {
        unsigned h = (w + 1) / 2;
        if (t < h && t + h < w)
            s[t] += s[t + h];
        __syncthreads();
        w = h;
    }
    int total = s[0];
    if (t == 0)
        out[blockIdx.x] = total;
    if (t == blockDim.x - 1)
        out[gridDim.x + blockIdx.x] = total;
}
