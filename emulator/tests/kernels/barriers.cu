// Named barriers (emulator/tests/barriers.rs): bar.sync with an id and a thread count orders
// only the warps that use it. Block of 128 threads: warps 0 and 1 pair on barrier 1, warps 2
// and 3 on barrier 2; in each pair the first warp writes shared memory, the second reads it
// after the barrier. Regenerate the PTX with ./build.sh.
extern "C" __global__ void named_barriers(float* y)
{
    __shared__ float s[128];
    unsigned i = threadIdx.x;
    unsigned warp = i / 32, lane = i & 31;
    unsigned pair = warp / 2;           // 0: warps 0, 1; 1: warps 2, 3
    bool producer = (warp & 1) == 0;
    if (producer)
        s[pair * 64 + lane] = (float)(pair * 1000 + lane);
    if (pair == 0)
        asm volatile("bar.sync 1, 64;" ::: "memory");
    else
        asm volatile("bar.sync 2, 64;" ::: "memory");
    if (!producer)
        y[i] = s[pair * 64 + (31 - lane)];
    else
        y[i] = -1.0f;
}
