//! wmma m16n16k16 (`tests/kernels/wmma.cu`), the forms the crate's kernels use: load.a row /
//! load.b col (f16 from shared, bf16 generic), mma f32 accumulate, store.d row f32.
//!
//! NVIDIA documents no wmma fragment layout, so the issue asks for a deliberately scrambled but
//! self-consistent one: results through load -> mma -> store (and elementwise fragment
//! operations, which are layout-free) must be exact; the element order inside a fragment must
//! cover every element once but must not be the layout code is tempted to assume (the mma.sync
//! m16n8 accumulator layout twice over, which is what sm_80 happens to use).
mod common;
use common::*;

fn f16_of_int(v: i32) -> u16 {
    if v == 0 {
        return 0;
    }
    let bits = (v as f32).to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let e = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    assert!(
        (1..31).contains(&e) && bits & 0x1fff == 0,
        "{v} not exact in f16"
    );
    sign | ((e as u16) << 10) | ((bits >> 13) & 0x3ff) as u16
}

fn bf16_of_int(v: i32) -> u16 {
    let bits = (v as f32).to_bits();
    assert_eq!(bits & 0xffff, 0, "{v} not exact in bf16");
    (bits >> 16) as u16
}

/// A = permutation matrix (row r has its 1 in column p(r) = (3r + 1) % 16), B coded
/// (B[k][n] = 16k + n - 128, all of -128..127), so D = 2 (B[p(r)][n] + 0.5).
#[test]
fn wmma_f16_shared_onehot_coded_and_scrambled_layout() {
    let p = |r: usize| (3 * r + 1) % 16;
    let bv = |k: usize, n: usize| (16 * k + n) as i32 - 128;
    let mut a = vec![0u16; 256];
    let mut b = vec![0u16; 256];
    for r in 0..16 {
        a[r * 16 + p(r)] = f16_of_int(1);
    }
    for k in 0..16 {
        for n in 0..16 {
            b[n * 16 + k] = f16_of_int(bv(k, n)); // column-major
        }
    }
    let mut gpu = Gpu::load("wmma");
    let pa = gpu.upload(&a);
    let pb = gpu.upload(&b);
    let pd = gpu.filled(256, f32::NAN);
    let pdump = gpu.filled(256, f32::NAN);
    gpu.launch(
        "wmma_f16_shared",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pa), ptr(pb), ptr(pd), ptr(pdump)],
    );
    let d: Vec<f32> = gpu.download(pd, 256);
    // by hand: row 5 picks B row p(5) = 0; D[5][3] = 2 (3 - 128 + 0.5) = -249
    assert_eq!(d[5 * 16 + 3], -249.0);
    for r in 0..16 {
        for n in 0..16 {
            let want = 2.0 * (bv(p(r), n) as f32 + 0.5);
            assert_eq!(d[r * 16 + n], want, "D[{r}][{n}]");
        }
    }
    // The accumulator before doubling holds B[p(r)][n] + 0.5 = (16 p(r) + n - 128) + 0.5: every
    // one of the 256 values exactly once across (lane, i): the fragment is self-consistent.
    let dump: Vec<f32> = gpu.download(pdump, 256);
    let mut codes: Vec<i32> = dump.iter().map(|&x| (x - 0.5) as i32 + 128).collect();
    assert!(
        dump.iter().all(|&x| x.fract() == 0.5 || x.fract() == -0.5),
        "{dump:?}"
    );
    codes.sort_unstable();
    assert_eq!(
        codes,
        (0..256).collect::<Vec<i32>>(),
        "fragment elements are not each held once"
    );
    // ... and scrambled: not the sm_80 layout, x[i] of lane (g, t) at row g + 8 ((i >> 1) & 1),
    // col 2t + (i & 1) + 8 (i >> 2).
    let sm80_like = (0..32).all(|lane| {
        let (g, t) = (lane >> 2, lane & 3);
        (0..8).all(|i| {
            let r = g + 8 * ((i >> 1) & 1);
            let n = 2 * t + (i & 1) + 8 * (i >> 2);
            dump[lane * 8 + i] == bv(p(r), n) as f32 + 0.5
        })
    });
    assert!(
        !sm80_like,
        "the wmma accumulator layout is the hardware's: it should be scrambled"
    );
    // nor plain row-major by lane (lane l holding row l / 2, 8 consecutive columns)
    let row_major = (0..256).all(|x| dump[x] == bv(p(x / 16), x % 16) as f32 + 0.5);
    assert!(
        !row_major,
        "the wmma accumulator layout is row-major: it should be scrambled"
    );
}

/// Dense small integers through bf16 from global: a in -3..3, b in -2..2, exact in f32.
#[test]
fn wmma_bf16_global_dense() {
    let av = |r: usize, k: usize| ((r * 5 + k * 3) % 7) as i32 - 3;
    let bv = |k: usize, n: usize| ((k * 7 + n * 2) % 5) as i32 - 2;
    let mut a = vec![0u16; 256];
    let mut b = vec![0u16; 256];
    for r in 0..16 {
        for k in 0..16 {
            a[r * 16 + k] = bf16_of_int(av(r, k));
            b[r * 16 + k] = bf16_of_int(bv(k, r)); // column-major: (k, n = r) at n*16 + k
        }
    }
    let mut gpu = Gpu::load("wmma");
    let pa = gpu.upload(&a);
    let pb = gpu.upload(&b);
    let pd = gpu.filled(256, f32::NAN);
    gpu.launch(
        "wmma_bf16_global",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pa), ptr(pb), ptr(pd)],
    );
    let d: Vec<f32> = gpu.download(pd, 256);
    for r in 0..16 {
        for n in 0..16 {
            let s: i32 = (0..16).map(|k| av(r, k) * bv(k, n)).sum();
            assert_eq!(d[r * 16 + n], 2.0 * (s as f32 + 0.5), "D[{r}][{n}]");
        }
    }
}
