// Test kernels for the emulator's mma.sync semantics (emulator/tests/mma.rs).
//
// The `*_raw` kernels do no layout work at all: lane L loads its fragment registers verbatim from
// a[L*4 + i], b[L*2 + i] (s8: also a[L*4 + i], b[L*2 + i]), c[L*4 + i], runs one mma.sync, and
// stores d[L*4 + i]. The host packs the fragments with the PTX ISA's fragment-layout formulas
// ("Matrix Fragments for mma.m16n8k16 with floating point type" and "... mma.m16n8k32"), so a
// wrong layout in the emulator shows up as a wrong (lane, register) value.
//
// `mma_f16_rowmajor` does the same packing on the device from row-major A (16x16), B (16x8,
// B[k*8 + n]) and C (16x8), and writes D back row-major: a second, independent writing of the
// same formulas.
//
// Regenerate the PTX with ./build.sh (see there).

extern "C" __global__ void mma_f16_raw(const unsigned* a, const unsigned* b, const float* c, float* d)
{
    unsigned l = threadIdx.x;
    unsigned a0 = a[l * 4 + 0], a1 = a[l * 4 + 1], a2 = a[l * 4 + 2], a3 = a[l * 4 + 3];
    unsigned b0 = b[l * 2 + 0], b1 = b[l * 2 + 1];
    float c0 = c[l * 4 + 0], c1 = c[l * 4 + 1], c2 = c[l * 4 + 2], c3 = c[l * 4 + 3];
    float d0, d1, d2, d3;
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1),
                   "f"(c0), "f"(c1), "f"(c2), "f"(c3));
    d[l * 4 + 0] = d0;
    d[l * 4 + 1] = d1;
    d[l * 4 + 2] = d2;
    d[l * 4 + 3] = d3;
}

extern "C" __global__ void mma_bf16_raw(const unsigned* a, const unsigned* b, const float* c, float* d)
{
    unsigned l = threadIdx.x;
    unsigned a0 = a[l * 4 + 0], a1 = a[l * 4 + 1], a2 = a[l * 4 + 2], a3 = a[l * 4 + 3];
    unsigned b0 = b[l * 2 + 0], b1 = b[l * 2 + 1];
    float c0 = c[l * 4 + 0], c1 = c[l * 4 + 1], c2 = c[l * 4 + 2], c3 = c[l * 4 + 3];
    float d0, d1, d2, d3;
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1),
                   "f"(c0), "f"(c1), "f"(c2), "f"(c3));
    d[l * 4 + 0] = d0;
    d[l * 4 + 1] = d1;
    d[l * 4 + 2] = d2;
    d[l * 4 + 3] = d3;
}

extern "C" __global__ void mma_s8_raw(const unsigned* a, const unsigned* b, const int* c, int* d)
{
    unsigned l = threadIdx.x;
    unsigned a0 = a[l * 4 + 0], a1 = a[l * 4 + 1], a2 = a[l * 4 + 2], a3 = a[l * 4 + 3];
    unsigned b0 = b[l * 2 + 0], b1 = b[l * 2 + 1];
    int c0 = c[l * 4 + 0], c1 = c[l * 4 + 1], c2 = c[l * 4 + 2], c3 = c[l * 4 + 3];
    int d0, d1, d2, d3;
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=r"(d0), "=r"(d1), "=r"(d2), "=r"(d3)
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1),
                   "r"(c0), "r"(c1), "r"(c2), "r"(c3));
    d[l * 4 + 0] = d0;
    d[l * 4 + 1] = d1;
    d[l * 4 + 2] = d2;
    d[l * 4 + 3] = d3;
}

// Row-major in, row-major out; the fragment formulas of the PTX ISA, written out here:
//   groupID = laneid >> 2, threadID_in_group = laneid % 4
//   A (f16, 8 elements a0..a7 in 4 .f16x2 registers, low half = lower index):
//     row = groupID for a0,a1,a4,a5; groupID + 8 for a2,a3,a6,a7
//     col = threadID_in_group*2 + (i & 1), plus 8 for i >= 4
//   B (4 elements b0..b3 in 2 .f16x2 registers):
//     row = threadID_in_group*2 + (i & 1), plus 8 for i >= 2; col = groupID
//   C/D (f32, c0..c3): row = groupID for c0,c1; groupID + 8 for c2,c3;
//     col = threadID_in_group*2 + (i & 1)
extern "C" __global__ void mma_f16_rowmajor(const unsigned short* A, const unsigned short* B,
                                            const float* C, float* D)
{
    unsigned lane = threadIdx.x & 31;
    unsigned g = lane >> 2, t = lane & 3;
    unsigned ar[4], br[2];
    float cr[4], dr[4];
    for (int r = 0; r < 4; ++r) {
        unsigned e[2];
        for (int h = 0; h < 2; ++h) {
            int i = r * 2 + h;
            unsigned row = g + (((i >> 1) & 1) ? 8 : 0);
            unsigned col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
            e[h] = A[row * 16 + col];
        }
        ar[r] = e[0] | (e[1] << 16);
    }
    for (int r = 0; r < 2; ++r) {
        unsigned e[2];
        for (int h = 0; h < 2; ++h) {
            int i = r * 2 + h;
            unsigned row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
            e[h] = B[row * 8 + g];
        }
        br[r] = e[0] | (e[1] << 16);
    }
    for (int i = 0; i < 4; ++i)
        cr[i] = C[(g + (i >= 2 ? 8 : 0)) * 8 + t * 2 + (i & 1)];
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(dr[0]), "=f"(dr[1]), "=f"(dr[2]), "=f"(dr[3])
                 : "r"(ar[0]), "r"(ar[1]), "r"(ar[2]), "r"(ar[3]), "r"(br[0]), "r"(br[1]),
                   "f"(cr[0]), "f"(cr[1]), "f"(cr[2]), "f"(cr[3]));
    for (int i = 0; i < 4; ++i)
        D[(g + (i >= 2 ? 8 : 0)) * 8 + t * 2 + (i & 1)] = dr[i];
}
