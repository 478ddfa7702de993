// A cross-block spin-wait (emulator/tests/spin.rs): block 0 waits (volatile load + nanosleep) for
// a flag that the last of the other blocks sets after an atomic counter. It only finishes if the
// emulator interleaves blocks rather than running each to completion. Launch with a grid that
// fits the device at once (e.g. 4 blocks of 64 threads).
// Regenerate the PTX with ./build.sh.

extern "C" __global__ void spin_wait(unsigned* counter, unsigned* flag, unsigned* out)
{
    if (threadIdx.x != 0)
        return;
    if (blockIdx.x == 0) {
        unsigned spins = 0;
        while (*(volatile unsigned*)flag == 0) {
            __nanosleep(100);
            ++spins;
        }
        __threadfence();
        out[0] = *(volatile unsigned*)counter; // every other block has counted: gridDim.x - 1
        out[1] = *(volatile unsigned*)flag;    // the value the last block stored
        out[2] = spins > 0 ? 1u : 0u;          // informative only: the emulator may or may not spin
    } else {
        unsigned old = atomicAdd(counter, 1u);
        if (old == gridDim.x - 2) {
            __threadfence();
            *(volatile unsigned*)flag = 0x600du;
        }
    }
}
