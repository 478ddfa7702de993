// Memory-path test kernels (emulator/tests/memory.rs): vector and cache-hinted loads, generic
// addressing that resolves to shared or global at run time, local arrays with dynamic indexing,
// and dynamic shared memory. Regenerate the PTX with ./build.sh.

// y4[i] = x4[i] * (1, 2, 3, 4) by 16-byte non-coherent loads (__ldg: ld.global.nc.v4.f32) and
// vector stores; z[i] = x[i] + 1 through __ldcg (ld.global.cg.f32).
extern "C" __global__ void vec_loads(const float4* x4, float4* y4, const float* x, float* z)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    float4 v = __ldg(&x4[i]);
    y4[i] = make_float4(v.x, v.y * 2.0f, v.z * 3.0f, v.w * 4.0f);
    z[i] = __ldcg(&x[i]) + 1.0f;
}

// A pointer that is shared or global depending on sel[0] (known only at run time, so nvcc must
// use generic ld/st): thread i writes p[i] = i * 10 + sel, reads back p[63 - i] after a barrier,
// and stores it to out[i]. The shared tile is first filled with -1 (so initcheck is satisfied).
extern "C" __global__ void generic_select(const int* sel, int* g, int* out)
{
    __shared__ int s[64];
    unsigned i = threadIdx.x;
    s[i] = -1;
    __syncthreads();
    int* p = sel[0] ? s : g;
    p[i] = (int)i * 10 + sel[0];
    __syncthreads();
    out[i] = p[63 - i];
}

// A per-thread array indexed by host data (so it lives in .local): loc[k] = tid * 100 + k,
// out[tid] = loc[idx[tid] & 7].
extern "C" __global__ void local_array(const int* idx, int* out)
{
    int loc[8];
    unsigned t = threadIdx.x;
    for (int k = 0; k < 8; ++k)
        loc[k] = (int)t * 100 + k;
    // keep the array addressable: the index is data
    out[t] = loc[idx[t] & 7];
}

// Dynamic shared memory: each thread writes dyn[i], and after a barrier reads dyn[idx[i]].
// With idx inside the launch's dynamic size this is clean; idx past it is out of bounds.
extern "C" __global__ void dyn_shared(const int* idx, float* out)
{
    extern __shared__ float dyn[];
    unsigned i = threadIdx.x;
    dyn[i] = (float)i + 0.25f;
    __syncthreads();
    float v = dyn[idx[i]]; // BUG:dyn_oob
    out[i] = v;
}
