// Deliberately broken kernels, one per checker (emulator/tests/checkers.rs), and fixed twins that
// must pass clean. Each bad access sits alone on a line marked `// BUG:<name>`: the test finds
// that line in this file and expects the checker's report to name `broken.cu:<line>` (from
// -lineinfo's .loc). Do not move two accesses onto one marked line.
// Regenerate the PTX with ./build.sh.

// memcheck, out by one: `i <= n` reads x[n], one element past an n-element allocation.
extern "C" __global__ void oob_read(const float* x, float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) {
        float v = x[i]; // BUG:oob
        y[i] = v * 2.0f;
    }
}

// racecheck: thread i writes s[i], then reads s[63 - i] (written by a thread of the other warp)
// with no barrier in between.
extern "C" __global__ void race_missing_sync(const float* x, float* y)
{
    __shared__ float s[64];
    unsigned i = threadIdx.x;
    s[i] = x[i]; // BUG:race_write
    float v = s[63 - i]; // BUG:race_read
    y[i] = v;
}

// The fixed twin: the same with __syncthreads() between the write and the read.
extern "C" __global__ void race_fixed(const float* x, float* y)
{
    __shared__ float s[64];
    unsigned i = threadIdx.x;
    s[i] = x[i];
    __syncthreads();
    float v = s[63 - i];
    y[i] = v;
}

// initcheck, shared: only threads 0..31 write s[]; threads 32..63 read words nobody wrote.
extern "C" __global__ void uninit_shared(float* y)
{
    __shared__ float s[64];
    unsigned i = threadIdx.x;
    if (i < 32)
        s[i] = 1.0f + i;
    __syncthreads();
    float v = s[i]; // BUG:uninit_shared
    y[i] = v;
}

// initcheck, global (the host allocates x and writes only part of it), and use after free (the
// host frees x before the launch): a plain copy.
extern "C" __global__ void copy_f32(const float* x, float* y)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i]; // BUG:copy_read
    y[i] = v;
}

// synccheck: threads 0..39 reach __syncthreads(), threads 40..63 (part of warp 1) never do.
extern "C" __global__ void divergent_barrier(const int* lim, float* y)
{
    unsigned i = threadIdx.x;
    if (i < (unsigned)lim[0]) {
        y[i] = 1.0f;
        __syncthreads(); // BUG:barrier
        y[i] += 1.0f;
    } else {
        y[i] = 3.0f;
    }
}

// memcheck, misaligned: 4-byte loads from base + 2 + 4i.
extern "C" __global__ void misaligned_load(const char* base, float* y)
{
    unsigned i = threadIdx.x;
    const float* p = (const float*)(base + 2);
    float v = p[i]; // BUG:misaligned
    y[i] = v;
}

// synccheck, a collective naming exited lanes: lanes whose in[lane] < 0 (the host makes that
// lanes 16..31) return; the rest shuffle with a full-warp membermask.
extern "C" __global__ void shfl_exited_lanes(const int* in, int* out)
{
    unsigned lane = threadIdx.x & 31;
    if (in[lane] < 0)
        return;
    int v = __shfl_sync(0xffffffffu, in[lane], 0); // BUG:shfl_exited
    out[lane] = v;
}

// synccheck, a collective whose lanes are stuck elsewhere: the two halves of the warp reach two
// different shfl.sync instructions, each naming the whole warp.
extern "C" __global__ void shfl_split(const int* in, int* out)
{
    unsigned lane = threadIdx.x & 31;
    int v;
    if (in[lane] < 0) {
        v = __shfl_sync(0xffffffffu, in[lane], 1); // BUG:shfl_split_a
        out[lane + 32] = 1;
    } else {
        v = __shfl_sync(0xffffffffu, in[lane] * 3, 2); // BUG:shfl_split_b
        out[lane + 32] = 2;
    }
    out[lane] = v;
}

// racecheck, write after read: thread i reads s[(i + 1) % 64], then writes s[i]; thread i + 1's
// write of s[i + 1] is not separated from thread i's read by a barrier.
extern "C" __global__ void race_war(float* y)
{
    __shared__ float s[64];
    unsigned i = threadIdx.x;
    s[i] = (float)i;
    __syncthreads();
    float v = s[(i + 1) % 64]; // BUG:war_read
    s[i] = v * 2.0f; // BUG:war_write
    __syncthreads();
    y[i] = s[i];
}

// racecheck, write after write: threads 2k and 2k + 1 both write s[k].
extern "C" __global__ void race_waw(float* y)
{
    __shared__ float s[32];
    unsigned i = threadIdx.x;
    s[i / 2] = (float)i; // BUG:waw
    __syncthreads();
    if (i < 32)
        y[i] = s[i];
}

// __syncwarp orders the lanes of one warp only: thread i reads s[63 - i], written by the other
// warp, with only a __syncwarp between: a race. (The in-warp twin below is clean.)
extern "C" __global__ void race_across_syncwarp(float* y)
{
    __shared__ float s[64];
    unsigned i = threadIdx.x;
    s[i] = (float)i; // BUG:sw_write
    __syncwarp();
    float v = s[63 - i]; // BUG:sw_read
    y[i] = v;
}

// Clean: thread i reads s[w*32 + (31 - lane)], written by a lane of its own warp, after
// __syncwarp.
extern "C" __global__ void syncwarp_in_warp(float* y)
{
    __shared__ float s[64];
    unsigned i = threadIdx.x;
    s[i] = (float)i;
    __syncwarp();
    float v = s[(i & ~31u) | (31 - (i & 31))];
    y[i] = v;
}

// memcheck, a write one element before the allocation (x[-1], in the leading redzone).
extern "C" __global__ void oob_write_before(float* x, int off)
{
    x[(int)threadIdx.x + off] = 1.0f; // BUG:oob_before
}

// memcheck, an atomic past the end: atomicAdd(&cnt[idx], 1) with idx = n.
extern "C" __global__ void atomic_oob(unsigned* cnt, int idx)
{
    atomicAdd(&cnt[idx], 1u); // BUG:atomic_oob
}
