// Test kernels for atomics under contention and bit intrinsics (emulator/tests/atomics.rs).
// Regenerate the PTX with ./build.sh.

// Every thread of every block adds 1 to cnt[0] and keeps the old value as its ticket: the final
// count is the thread count and the tickets are a permutation of 0..N-1. Each block also counts
// its threads in shared memory (atom.shared.add) and thread 0 stores that count.
extern "C" __global__ void atomic_count(unsigned* cnt, unsigned* tickets, unsigned* block_counts)
{
    __shared__ unsigned s;
    unsigned gid = blockIdx.x * blockDim.x + threadIdx.x;
    if (threadIdx.x == 0)
        s = 0;
    __syncthreads();
    tickets[gid] = atomicAdd(cnt, 1u);
    atomicAdd(&s, 1u);
    __syncthreads();
    if (threadIdx.x == 0)
        block_counts[blockIdx.x] = s;
}

// Every thread exchanges gid + 1 into *slot and keeps the value it displaced.
extern "C" __global__ void atomic_exch(unsigned* slot, unsigned* olds)
{
    unsigned gid = blockIdx.x * blockDim.x + threadIdx.x;
    olds[gid] = atomicExch(slot, gid + 1);
}

// A compare-and-swap loop adding gid to *sum; tries[gid] counts the attempts (at least 1).
extern "C" __global__ void atomic_cas_add(unsigned* sum, unsigned* tries)
{
    unsigned gid = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned n = 0;
    unsigned old = *(volatile unsigned*)sum;
    while (true) {
        ++n;
        unsigned seen = atomicCAS(sum, old, old + gid);
        if (seen == old)
            break;
        old = seen;
    }
    tries[gid] = n;
}

// Signed max/min of vals[gid] into mm[0] (max) and mm[1] (min); unsigned max/min into
// umm[0], umm[1].
extern "C" __global__ void atomic_maxmin(const int* vals, int* mm, unsigned* umm)
{
    unsigned gid = blockIdx.x * blockDim.x + threadIdx.x;
    int v = vals[gid];
    atomicMax(&mm[0], v);
    atomicMin(&mm[1], v);
    atomicMax(&umm[0], (unsigned)v);
    atomicMin(&umm[1], (unsigned)v);
}

// Bit operations on host data x[i], y[i], s[i] (one thread per test vector).
// out[i*8 + k]: 0 popc(x), 1 clz(x), 2 brev(x), 3 prmt(x, y, s) (PTX default mode, with the
// sign-replicate bit), 4 bfi(x into y at pos s&0xff, len (s>>8)&0xff), 5 bfe.u32(x, pos, len),
// 6 bfe.s32(x, pos, len), 7 ffs(x).
extern "C" __global__ void bits(const unsigned* x, const unsigned* y, const unsigned* s, unsigned* out)
{
    unsigned i = threadIdx.x;
    unsigned a = x[i], b = y[i], c = s[i];
    unsigned pos = c & 0xff, len = (c >> 8) & 0xff;
    unsigned r;
    out[i * 8 + 0] = __popc(a);
    out[i * 8 + 1] = __clz(a);
    out[i * 8 + 2] = __brev(a);
    asm volatile("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    out[i * 8 + 3] = r;
    asm volatile("bfi.b32 %0, %1, %2, %3, %4;" : "=r"(r) : "r"(a), "r"(b), "r"(pos), "r"(len));
    out[i * 8 + 4] = r;
    asm volatile("bfe.u32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(pos), "r"(len));
    out[i * 8 + 5] = r;
    asm volatile("bfe.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(pos), "r"(len));
    out[i * 8 + 6] = r;
    out[i * 8 + 7] = __ffs(a);
}
