// Parameter passing and module-scope variables (emulator/tests/params.rs): a struct passed by
// value (.param .align 8 .b8 p[24]), scalar parameters of 1, 2, 4 and 8 bytes, __constant__ and
// __device__ variables with initialisers. Regenerate the PTX with ./build.sh.

struct Mixed {
    int a;      // offset 0
    float b;    // offset 4
    double c;   // offset 8
    short d;    // offset 16
    char e;     // offset 18
};              // size 24, align 8

__constant__ int ctable[4] = {1, -2, 3, -4};
__device__ int gcounter = 5;
__device__ float gtable[3] = {0.5f, -1.5f, 2.25f};

extern "C" __global__ void params_mixed(Mixed m, signed char c8, short s16, unsigned u32,
                                        long long s64, double f64, int* out, double* dout)
{
    out[0] = m.a;
    out[1] = __float_as_int(m.b);
    out[2] = m.d;
    out[3] = m.e;
    out[4] = c8;
    out[5] = s16;
    out[6] = (int)u32;
    out[7] = (int)(s64 >> 32);
    out[8] = (int)(s64 & 0xffffffff);
    dout[0] = m.c;
    dout[1] = f64;
}

// out[i] = ctable[i] + gcounter (all threads), then each thread adds 1 to gcounter; thread 0 of
// the last launch reads gtable.
extern "C" __global__ void module_vars(const int* idx, int* out, float* fout)
{
    unsigned i = threadIdx.x;
    out[i] = ctable[idx[i] & 3] * 100 + gcounter;
    __syncthreads();
    atomicAdd(&gcounter, 1);
    if (i < 3)
        fout[i] = gtable[i];
}
