// The driver tests' kernel (emulator/tests/driver_cudarc.rs): x[i] = x[i] * a + b[i] for i < n.
// Regenerate scale.ptx and scale.fatbin (PTX only, zstd-compressed by nvcc 13's default) with
//   nvcc -ptx    -arch=compute_80 -O3 -lineinfo scale.cu -o scale.ptx
//   nvcc -fatbin -arch=compute_80 -O3 -lineinfo scale.cu -o scale.fatbin
extern "C" __global__ void scale_add(float* x, const float* b, float a, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] = x[i] * a + b[i];
    }
}
