// Test kernels for divergence and reconvergence (emulator/tests/divergence.rs).
// Regenerate the PTX with ./build.sh.

// Nested if/else by lane parity and lane ranges, each arm with its own global store (so nvcc
// keeps real branches), then a loop with a lane-dependent trip count, then a full-warp shuffle
// that needs every lane back. Block of 64 threads (2 warps).
//   odd lane  < 16: r = 3v          (side[tid] = 1)
//   odd lane >= 16: r = v + 1000    (side[tid] = 2)
//   even lane >= 24: r = -v         (side[tid] = 3)
//   even lane < 24: r = 0 + 1 + ... + (lane - 1) by a loop of `lane` trips (side[tid] = 4)
//   then t = sum of in[(tid + i) & 63] for i in 0..(lane % 5)  (lane % 5 trips)
//   out[tid] = (r + t) of lane (lane + 1) & 31 of the same warp.
extern "C" __global__ void nested_diverge(const int* in, int* side, int* out)
{
    int tid = threadIdx.x;
    int lane = tid & 31;
    int v = in[tid];
    int r;
    if (lane & 1) {
        if (lane < 16) {
            r = v * 3;
            side[tid] = 1;
        } else {
            r = v + 1000;
            side[tid] = 2;
        }
    } else {
        if (lane >= 24) {
            r = -v;
            side[tid] = 3;
        } else {
            r = 0;
            for (int i = 0; i < lane; ++i)
                r += *(volatile const int*)&in[64 + i] ; // in[64 + i] = i
            side[tid] = 4;
        }
    }
    int t = 0;
    for (int i = 0; i < lane % 5; ++i)
        t += in[(tid + i) & 63];
    out[tid] = __shfl_sync(0xffffffffu, r + t, (lane + 1) & 31);
}

// Lane l sums 0 + 1 + ... + l with a loop of l + 1 trips, then the warp reduces by butterfly
// shuffles: every lane ends with sum_{l=0}^{31} l(l+1)/2 = 31*32*33/6 = 5456.
extern "C" __global__ void loop_then_reduce(const int* lim, int* out)
{
    int lane = threadIdx.x & 31;
    int t = 0;
    for (int i = 0; i <= lim[lane]; ++i)
        t += i;
    for (int off = 16; off > 0; off >>= 1)
        t += __shfl_xor_sync(0xffffffffu, t, off);
    out[threadIdx.x] = t;
}

// Lanes >= 20 write -1 and return; lanes < 10 double their value (divergent), the remaining 20
// lanes meet at __syncwarp(0x000fffff) and swap by idx shuffle under that mask:
// out[lane] = value of lane (19 - lane) for lane < 20.
extern "C" __global__ void early_exit(const int* in, int* out)
{
    int lane = threadIdx.x & 31;
    if (in[lane] < 0 || lane >= 20) {
        out[lane] = -1;
        return;
    }
    int v = in[lane];
    if (lane < 10)
        v = v * 2 + *(volatile const int*)&in[32];   // in[32] = 0
    __syncwarp(0x000fffffu);
    v = __shfl_sync(0x000fffffu, v, 19 - lane);
    out[lane] = v;
}
