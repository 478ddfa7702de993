// Test kernels for shfl.sync and vote.sync (emulator/tests/warp.rs). One warp of 32 threads.
//
// shfl_all: v = in[lane]; row k of the output (out[k*32 + lane]) is one shuffle variant. The
// CUDA intrinsics pass c = ((32 - width) << 8) for .up and ((32 - width) << 8) | 0x1f for
// .down/.bfly/.idx; the inline-asm rows use c operands the intrinsics never produce, and read
// the valid predicate p (written as 1/0 to the output).
//
// Regenerate the PTX with ./build.sh.

#define FULL 0xffffffffu

__device__ __forceinline__ int shfl_pred_up(int v, int b, int c, int* p)
{
    int d, pv;
    asm volatile("{ .reg .pred %%q; shfl.sync.up.b32 %0|%%q, %2, %3, %4, 0xffffffff; selp.s32 %1, 1, 0, %%q; }"
                 : "=r"(d), "=r"(pv) : "r"(v), "r"(b), "r"(c));
    *p = pv;
    return d;
}
__device__ __forceinline__ int shfl_pred_down(int v, int b, int c, int* p)
{
    int d, pv;
    asm volatile("{ .reg .pred %%q; shfl.sync.down.b32 %0|%%q, %2, %3, %4, 0xffffffff; selp.s32 %1, 1, 0, %%q; }"
                 : "=r"(d), "=r"(pv) : "r"(v), "r"(b), "r"(c));
    *p = pv;
    return d;
}
__device__ __forceinline__ int shfl_pred_bfly(int v, int b, int c, int* p)
{
    int d, pv;
    asm volatile("{ .reg .pred %%q; shfl.sync.bfly.b32 %0|%%q, %2, %3, %4, 0xffffffff; selp.s32 %1, 1, 0, %%q; }"
                 : "=r"(d), "=r"(pv) : "r"(v), "r"(b), "r"(c));
    *p = pv;
    return d;
}
__device__ __forceinline__ int shfl_pred_idx(int v, int b, int c, int* p)
{
    int d, pv;
    asm volatile("{ .reg .pred %%q; shfl.sync.idx.b32 %0|%%q, %2, %3, %4, 0xffffffff; selp.s32 %1, 1, 0, %%q; }"
                 : "=r"(d), "=r"(pv) : "r"(v), "r"(b), "r"(c));
    *p = pv;
    return d;
}

// params: b and c values come from the host (prm[]), so nvcc cannot fold them.
extern "C" __global__ void shfl_all(const int* in, const int* prm, int* out)
{
    int lane = threadIdx.x & 31;
    int v = in[lane];
    int p;
    out[0 * 32 + lane] = __shfl_up_sync(FULL, v, 3);
    out[1 * 32 + lane] = __shfl_up_sync(FULL, v, 3, 8);
    out[2 * 32 + lane] = __shfl_down_sync(FULL, v, 5);
    out[3 * 32 + lane] = __shfl_down_sync(FULL, v, 5, 16);
    out[4 * 32 + lane] = __shfl_xor_sync(FULL, v, 6);
    out[5 * 32 + lane] = __shfl_xor_sync(FULL, v, 6, 4);
    out[6 * 32 + lane] = __shfl_sync(FULL, v, 9);
    out[7 * 32 + lane] = __shfl_sync(FULL, v, 13, 8);
    out[8 * 32 + lane] = __shfl_sync(FULL, v, lane * 3 + 1);
    // rows 9..18: inline asm with explicit c and the predicate (value row, predicate row)
    out[9 * 32 + lane] = shfl_pred_up(v, prm[0], prm[1], &p);     // b=3, c=0
    out[10 * 32 + lane] = p;
    out[11 * 32 + lane] = shfl_pred_down(v, prm[2], prm[3], &p);  // b=2, c=0x0f
    out[12 * 32 + lane] = p;
    out[13 * 32 + lane] = shfl_pred_bfly(v, prm[4], prm[5], &p);  // b=1, c=0x0f
    out[14 * 32 + lane] = p;
    out[15 * 32 + lane] = shfl_pred_idx(v, lane + prm[6], prm[7], &p); // b=lane+20, c=0x1f
    out[16 * 32 + lane] = p;
    out[17 * 32 + lane] = shfl_pred_up(v, prm[8], prm[9], &p);    // b=3, c=0x1800 (width 8)
    out[18 * 32 + lane] = p;
    out[19 * 32 + lane] = shfl_pred_idx(v, prm[10], prm[11], &p); // b=9, c=0x05 (clamp 5)
    out[20 * 32 + lane] = p;
}

// vote: in[lane] is host data; out rows as below.
extern "C" __global__ void vote_all(const int* in, unsigned* out)
{
    int lane = threadIdx.x & 31;
    int x = in[lane];
    out[0 * 32 + lane] = __ballot_sync(FULL, x & 1);
    out[1 * 32 + lane] = __any_sync(FULL, x == 17);
    out[2 * 32 + lane] = __any_sync(FULL, x > 1000);
    out[3 * 32 + lane] = __all_sync(FULL, x >= 0);
    out[4 * 32 + lane] = __all_sync(FULL, x != 0);
    out[5 * 32 + lane] = __popc(__ballot_sync(FULL, x > 10));
    // a ballot by a subset: lanes 0..19 only, membermask 0x000fffff
    unsigned r = 0xdeadbeef;
    if (x < 1000 && lane < 20)
        r = __ballot_sync(0x000fffffu, x & 2);
    out[6 * 32 + lane] = r;
}
