// Test kernels for cvt rounding, f16/bf16 conversions, float->int and div.rn/sqrt.rn
// (emulator/tests/cvt.rs). The conversions are written as inline PTX so that exactly the named
// instruction runs (the CUDA intrinsics compile to the same instructions).
// Regenerate the PTX with ./build.sh.

// f32 -> f16 (cvt.rn.f16.f32) and f32 -> bf16 (cvt.rn.bf16.f32), one element per thread.
extern "C" __global__ void cvt_to_half(const float* in, unsigned short* h, unsigned short* bf, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    float x = in[i];
    unsigned short a, b;
    asm volatile("cvt.rn.f16.f32 %0, %1;" : "=h"(a) : "f"(x));
    asm volatile("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(x));
    h[i] = a;
    bf[i] = b;
}

// f16 -> f32 and bf16 -> f32 (cvt.f32.f16, cvt.f32.bf16: exact).
extern "C" __global__ void cvt_from_half(const unsigned short* h, const unsigned short* bf, float* hf,
                                         float* bff, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    unsigned short a = h[i], b = bf[i];
    float x, y;
    asm volatile("cvt.f32.f16 %0, %1;" : "=f"(x) : "h"(a));
    asm volatile("cvt.f32.bf16 %0, %1;" : "=f"(y) : "h"(b));
    hf[i] = x;
    bff[i] = y;
}

// f32 -> s32 with .rzi/.rni/.rmi/.rpi, and f32 -> u32 with .rzi: out[i*5 + k].
extern "C" __global__ void cvt_to_int(const float* in, int* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    float x = in[i];
    int z, r, m, p;
    unsigned u;
    asm volatile("cvt.rzi.s32.f32 %0, %1;" : "=r"(z) : "f"(x));
    asm volatile("cvt.rni.s32.f32 %0, %1;" : "=r"(r) : "f"(x));
    asm volatile("cvt.rmi.s32.f32 %0, %1;" : "=r"(m) : "f"(x));
    asm volatile("cvt.rpi.s32.f32 %0, %1;" : "=r"(p) : "f"(x));
    asm volatile("cvt.rzi.u32.f32 %0, %1;" : "=r"(u) : "f"(x));
    out[i * 5 + 0] = z;
    out[i * 5 + 1] = r;
    out[i * 5 + 2] = m;
    out[i * 5 + 3] = p;
    out[i * 5 + 4] = (int)u;
}

// q = __fdiv_rn(a, b) (div.rn.f32), s = __fsqrt_rn(a) (sqrt.rn.f32).
extern "C" __global__ void div_sqrt(const float* a, const float* b, float* q, float* s, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    q[i] = __fdiv_rn(a[i], b[i]);
    s[i] = __fsqrt_rn(a[i]);
}
