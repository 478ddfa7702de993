//! mma.sync fragment layouts and arithmetic, for m16n8k16 f16 and bf16 (f32 accumulate) and
//! m16n8k32 s8 (s32 accumulate), with expected values from the PTX ISA's fragment tables.
//!
//! The kernels (`tests/kernels/mma.cu`) pass registers through untouched; these tests pack the
//! fragments on the host with the manual's formulas (groupID = laneid >> 2,
//! threadID_in_group = laneid % 4):
//!
//! - m16n8k16 .f16/.bf16, A: a0..a7 in four .f16x2 registers (low half = lower index);
//!   row = groupID for a0,a1,a4,a5 and groupID+8 otherwise; col = 2*tig + (i&1), +8 for i >= 4.
//! - m16n8k16 B: b0..b3 in two .f16x2 registers; row = 2*tig + (i&1), +8 for i >= 2; col = groupID.
//! - m16n8k32 .s8, A: a0..a15 in four .b32 registers (low byte = lower index);
//!   row = groupID for a0..a3 and a8..a11, groupID+8 otherwise; col = 4*tig + (i&3), +16 for i >= 8.
//! - m16n8k32 B: b0..b7 in two .b32; row = 4*tig + (i&3), +16 for i >= 4; col = groupID.
//! - C/D (f32 or s32), c0..c3: row = groupID for c0,c1 and groupID+8 for c2,c3;
//!   col = 2*tig + (i&1).
//!
//! The matrices are one-hot (each output picks exactly one element, so D decodes which element
//! landed where) and coded (each element encodes its row and column), plus dense small-integer
//! matrices whose products and sums are exact in f32. The accumulator C is never zero.
// Matrix and lane loops read best with explicit indices.
#![allow(clippy::needless_range_loop)]
mod common;
use common::*;

const M: usize = 16;
const N: usize = 8;

fn group(lane: usize) -> (usize, usize) {
    (lane >> 2, lane & 3)
}

/// (row, col) of D/C element c_i of `lane`.
fn d_pos(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (g + if i >= 2 { 8 } else { 0 }, t * 2 + (i & 1))
}

/// f16 bits of a small integer (|v| < 2048, exact).
fn f16_of_int(v: i32) -> u16 {
    if v == 0 {
        return 0;
    }
    let bits = (v as f32).to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let e = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&e));
    assert_eq!(bits & 0x1fff, 0, "{v} not exact in f16");
    sign | ((e as u16) << 10) | ((bits >> 13) & 0x3ff) as u16
}

/// bf16 bits of a small integer (|v| <= 256, exact): the upper half of the f32.
fn bf16_of_int(v: i32) -> u16 {
    let bits = (v as f32).to_bits();
    assert_eq!(bits & 0xffff, 0, "{v} not exact in bf16");
    (bits >> 16) as u16
}

#[derive(Clone, Copy, PartialEq)]
enum Half {
    F16,
    Bf16,
}

/// Packs A (16x16, a[r][k]) and B (16x8, b[k][n]) into per-lane registers for m16n8k16.
fn pack_k16(kind: Half, a: &[[i32; 16]; 16], b: &[[i32; 8]; 16]) -> (Vec<u32>, Vec<u32>) {
    let enc = |v: i32| -> u32 {
        (match kind {
            Half::F16 => f16_of_int(v),
            Half::Bf16 => bf16_of_int(v),
        }) as u32
    };
    let mut ar = vec![0u32; 32 * 4];
    let mut br = vec![0u32; 32 * 2];
    for lane in 0..32 {
        let (g, t) = group(lane);
        for i in 0..8 {
            let row = g + if (i >> 1) & 1 == 1 { 8 } else { 0 };
            let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
            ar[lane * 4 + i / 2] |= enc(a[row][col]) << (16 * (i & 1));
        }
        for i in 0..4 {
            let row = t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 };
            br[lane * 2 + i / 2] |= enc(b[row][g]) << (16 * (i & 1));
        }
    }
    (ar, br)
}

/// Packs A (16x32) and B (32x8) of s8 into per-lane registers for m16n8k32.
fn pack_k32(a: &[[i32; 32]; 16], b: &[[i32; 8]; 32]) -> (Vec<u32>, Vec<u32>) {
    let byte = |v: i32| -> u32 {
        assert!((-128..=127).contains(&v));
        (v as i8 as u8) as u32
    };
    let mut ar = vec![0u32; 32 * 4];
    let mut br = vec![0u32; 32 * 2];
    for lane in 0..32 {
        let (g, t) = group(lane);
        for i in 0..16 {
            let row = g + if (i >> 2) & 1 == 1 { 8 } else { 0 };
            let col = t * 4 + (i & 3) + if i >= 8 { 16 } else { 0 };
            ar[lane * 4 + i / 4] |= byte(a[row][col]) << (8 * (i & 3));
        }
        for i in 0..8 {
            let row = t * 4 + (i & 3) + if i >= 4 { 16 } else { 0 };
            br[lane * 2 + i / 4] |= byte(b[row][g]) << (8 * (i & 3));
        }
    }
    (ar, br)
}

/// C in per-lane register order.
fn pack_c<T: Copy>(c: &[[T; 8]; 16]) -> Vec<T> {
    (0..128)
        .map(|x| {
            let (r, n) = d_pos(x / 4, x % 4);
            c[r][n]
        })
        .collect()
}

fn run_half(kind: Half, a: &[[i32; 16]; 16], b: &[[i32; 8]; 16], c: &[[f32; 8]; 16]) -> Vec<f32> {
    let (ar, br) = pack_k16(kind, a, b);
    let cr = pack_c(c);
    let mut gpu = Gpu::load("mma");
    let pa = gpu.upload(&ar);
    let pb = gpu.upload(&br);
    let pc = gpu.upload(&cr);
    let pd = gpu.filled(128, f32::NAN);
    let name = match kind {
        Half::F16 => "mma_f16_raw",
        Half::Bf16 => "mma_bf16_raw",
    };
    gpu.launch(
        name,
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pa), ptr(pb), ptr(pc), ptr(pd)],
    );
    gpu.download(pd, 128)
}

fn run_s8(a: &[[i32; 32]; 16], b: &[[i32; 8]; 32], c: &[[i32; 8]; 16]) -> Vec<i32> {
    let (ar, br) = pack_k32(a, b);
    let cr = pack_c(c);
    let mut gpu = Gpu::load("mma");
    let pa = gpu.upload(&ar);
    let pb = gpu.upload(&br);
    let pc = gpu.upload(&cr);
    let pd = gpu.filled(128, i32::MIN);
    gpu.launch(
        "mma_s8_raw",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pa), ptr(pb), ptr(pc), ptr(pd)],
    );
    gpu.download(pd, 128)
}

/// Compares D per (lane, register) with `expect(row, col)`.
fn check_d<T: PartialEq + std::fmt::Debug + Copy>(
    what: &str,
    d: &[T],
    expect: impl Fn(usize, usize) -> T,
) {
    let mut bad = Vec::new();
    for lane in 0..32 {
        for i in 0..4 {
            let (r, n) = d_pos(lane, i);
            let want = expect(r, n);
            if d[lane * 4 + i] != want {
                bad.push(format!(
                    "lane {lane} d{i} (row {r}, col {n}): got {:?}, want {want:?}",
                    d[lane * 4 + i]
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} wrong:\n{}",
        bad.len(),
        bad[..bad.len().min(16)].join("\n")
    );
}

// ---- f16 / bf16 ----

/// Coded A (a[r][k] = 16r + k, 0..255), one-hot B (column n picks row p(n) = (3n + 5) % 16,
/// distinct for n = 0..7: 5, 8, 11, 14, 1, 4, 7, 10), C[r][n] = 4096 (8r + n) - 300000.
/// Then D[r][n] = 16r + p(n) + C[r][n]: every output names the A element that reached it.
fn coded_a_onehot_b(kind: Half) {
    let p = |n: usize| (3 * n + 5) % 16;
    let mut a = [[0i32; 16]; 16];
    let mut b = [[0i32; 8]; 16];
    let mut c = [[0f32; 8]; 16];
    for r in 0..16 {
        for k in 0..16 {
            a[r][k] = (16 * r + k) as i32;
        }
        for n in 0..8 {
            c[r][n] = 4096.0 * (8 * r + n) as f32 - 300000.0;
        }
    }
    for n in 0..8 {
        b[p(n)][n] = 1;
    }
    let d = run_half(kind, &a, &b, &c);
    // spot checks worked by hand: lane 0 d0 is (row 0, col 0): 0 + 5 + (0 - 300000);
    // lane 5 (g 1, tig 1) d3 is (row 9, col 3): 16*9 + 14 + 4096*75 - 300000 = 7358.
    assert_eq!(d[0], -299995.0);
    assert_eq!(d[5 * 4 + 3], 7358.0);
    check_d("coded A, one-hot B", &d, |r, n| {
        (16 * r + p(n)) as f32 + 4096.0 * (8 * r + n) as f32 - 300000.0
    });
}

/// One-hot A (row r picks column q(r) = (5r + 3) % 16, a permutation of 0..15), coded B
/// (b[k][n] = 8k + n - 64, so -64..63), C[r][n] = (8r + n) / 4. D[r][n] = b[q(r)][n] + C[r][n].
fn onehot_a_coded_b(kind: Half) {
    let q = |r: usize| (5 * r + 3) % 16;
    let mut a = [[0i32; 16]; 16];
    let mut b = [[0i32; 8]; 16];
    let mut c = [[0f32; 8]; 16];
    for r in 0..16 {
        a[r][q(r)] = 1;
        for n in 0..8 {
            c[r][n] = (8 * r + n) as f32 * 0.25;
        }
    }
    for k in 0..16 {
        for n in 0..8 {
            b[k][n] = (8 * k + n) as i32 - 64;
        }
    }
    let d = run_half(kind, &a, &b, &c);
    // by hand: lane 31 (g 7, tig 3) d2 is (row 15, col 6): q(15) = 78 % 16 = 14,
    // b[14][6] = 112 + 6 - 64 = 54, C = 126 / 4 = 31.5, so 85.5.
    assert_eq!(d[31 * 4 + 2], 85.5);
    check_d("one-hot A, coded B", &d, |r, n| {
        (8 * q(r) + n) as f32 - 64.0 + (8 * r + n) as f32 * 0.25
    });
}

/// Dense small integers: a in -4..4, b in -3..3, C = r - n. Every product and partial sum is an
/// integer below 2^11, exact in f32 whatever the summation order.
fn dense(kind: Half) {
    let mut a = [[0i32; 16]; 16];
    let mut b = [[0i32; 8]; 16];
    let mut c = [[0f32; 8]; 16];
    for r in 0..16 {
        for k in 0..16 {
            a[r][k] = ((r * 7 + k * 3) % 9) as i32 - 4;
        }
        for n in 0..8 {
            c[r][n] = r as f32 - n as f32;
        }
    }
    for k in 0..16 {
        for n in 0..8 {
            b[k][n] = ((k * 5 + n * 11) % 7) as i32 - 3;
        }
    }
    let d = run_half(kind, &a, &b, &c);
    check_d("dense", &d, |r, n| {
        let s: i32 = (0..16).map(|k| a[r][k] * b[k][n]).sum();
        s as f32 + r as f32 - n as f32
    });
}

#[test]
fn mma_f16_coded_a_onehot_b() {
    coded_a_onehot_b(Half::F16);
}
#[test]
fn mma_f16_onehot_a_coded_b() {
    onehot_a_coded_b(Half::F16);
}
#[test]
fn mma_f16_dense() {
    dense(Half::F16);
}
#[test]
fn mma_bf16_coded_a_onehot_b() {
    coded_a_onehot_b(Half::Bf16);
}
#[test]
fn mma_bf16_onehot_a_coded_b() {
    onehot_a_coded_b(Half::Bf16);
}
#[test]
fn mma_bf16_dense() {
    dense(Half::Bf16);
}

/// bf16 and f16 are told apart: the f16 bits of 1.0 (0x3C00) read as bf16 are 2^(0x78 - 127) =
/// 2^-7. A = identity and B = ones in column 0, both packed as f16 bits, through the bf16
/// instruction: row r has the single product 2^-7 * 2^-7 = 2^-14 in column 0, so
/// D[r][0] = 0.5 + 2^-14 and D[r][n > 0] = 0.5 (C = 0.5 everywhere).
#[test]
fn mma_bf16_reads_bf16_bits() {
    let mut a = [[0i32; 16]; 16];
    let mut b = [[0i32; 8]; 16];
    for r in 0..16 {
        a[r][r] = 1;
    }
    for k in 0..16 {
        b[k][0] = 1;
    }
    // packed as f16 (0x3C00 for 1), run through the bf16 instruction
    let (ar, br) = pack_k16(Half::F16, &a, &b);
    let c = [[0.5f32; 8]; 16];
    let cr = pack_c(&c);
    let mut gpu = Gpu::load("mma");
    let pa = gpu.upload(&ar);
    let pb = gpu.upload(&br);
    let pc = gpu.upload(&cr);
    let pd = gpu.filled(128, f32::NAN);
    gpu.launch(
        "mma_bf16_raw",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pa), ptr(pb), ptr(pc), ptr(pd)],
    );
    let d: Vec<f32> = gpu.download(pd, 128);
    // bf16 0x3C00 = 2^(0x78 - 127) = 2^-7; one product per row in column 0: 2^-14 + 0.5.
    check_d("f16 bits through bf16", &d, |_, n| {
        if n == 0 {
            0.5 + 1.0 / 16384.0
        } else {
            0.5
        }
    });
}

/// The device-side packing (`mma_f16_rowmajor`, formulas written in the .cu) against the plain
/// matrix product, row-major in and out.
#[test]
fn mma_f16_rowmajor_device_packing() {
    let mut a = vec![0u16; 256];
    let mut b = vec![0u16; 128];
    let mut c = vec![0f32; 128];
    let av = |r: usize, k: usize| ((r * 5 + k * 7) % 11) as i32 - 5;
    let bv = |k: usize, n: usize| ((k * 3 + n * 13) % 9) as i32 - 4;
    for r in 0..M {
        for k in 0..16 {
            a[r * 16 + k] = f16_of_int(av(r, k));
        }
        for n in 0..N {
            c[r * 8 + n] = (r * 8 + n) as f32 * 100.0 - 3000.0;
        }
    }
    for k in 0..16 {
        for n in 0..N {
            b[k * 8 + n] = f16_of_int(bv(k, n));
        }
    }
    let mut gpu = Gpu::load("mma");
    let pa = gpu.upload(&a);
    let pb = gpu.upload(&b);
    let pc = gpu.upload(&c);
    let pd = gpu.filled(128, f32::NAN);
    gpu.launch(
        "mma_f16_rowmajor",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pa), ptr(pb), ptr(pc), ptr(pd)],
    );
    let d: Vec<f32> = gpu.download(pd, 128);
    for r in 0..M {
        for n in 0..N {
            let s: i32 = (0..16).map(|k| av(r, k) * bv(k, n)).sum();
            let want = s as f32 + (r * 8 + n) as f32 * 100.0 - 3000.0;
            assert_eq!(d[r * 8 + n], want, "D[{r}][{n}]");
        }
    }
}

// ---- s8 ----

fn wrap8(v: usize) -> i32 {
    (v as u8) as i8 as i32
}

/// Coded A (a[r][k] = 16r + k wrapped to s8, so rows 8..15 and the upper columns are negative:
/// a[8][0] = 128 -> -128, a[15][31] = 271 -> 15), one-hot B picking row 8j + (3n % 8) for column
/// n (3n % 8: 0, 3, 6, 1, 4, 7, 2, 5), four launches j = 0..3 covering every k,
/// C[r][n] = 1000 (8r + n) - 50000. D[r][n] = a[r][8j + 3n % 8] + C[r][n].
#[test]
fn mma_s8_coded_a_onehot_b() {
    let mut a = [[0i32; 32]; 16];
    let mut c = [[0i32; 8]; 16];
    for r in 0..16 {
        for k in 0..32 {
            a[r][k] = wrap8(16 * r + k);
        }
        for n in 0..8 {
            c[r][n] = 1000 * (8 * r + n) as i32 - 50000;
        }
    }
    for j in 0..4 {
        let sel = |n: usize| 8 * j + (3 * n) % 8;
        let mut b = [[0i32; 8]; 32];
        for n in 0..8 {
            b[sel(n)][n] = 1;
        }
        let d = run_s8(&a, &b, &c);
        if j == 2 {
            // by hand: lane 9 (g 2, tig 1) d2 is (row 10, col 2): sel(2) = 16 + 6 = 22,
            // a[10][22] = 182 -> -74, C = 1000 * 82 - 50000 = 32000, so 31926.
            assert_eq!(d[9 * 4 + 2], 31926);
        }
        check_d(&format!("s8 coded A, one-hot B, j = {j}"), &d, |r, n| {
            wrap8(16 * r + sel(n)) + 1000 * (8 * r + n) as i32 - 50000
        });
    }
}

/// One-hot A with signs (row r picks column q(r) = (7r + 2) % 32, a permutation restricted to
/// 16 rows, with +1 for even r and -1 for odd r), coded B (b[k][n] = 8k + n wrapped to s8: all
/// 256 values, unique), C[r][n] = -7 (8r + n) - 1. D[r][n] = ±b[q(r)][n] + C[r][n].
#[test]
fn mma_s8_onehot_a_coded_b() {
    let q = |r: usize| (7 * r + 2) % 32;
    let sign = |r: usize| if r % 2 == 0 { 1 } else { -1 };
    let mut a = [[0i32; 32]; 16];
    let mut b = [[0i32; 8]; 32];
    let mut c = [[0i32; 8]; 16];
    for r in 0..16 {
        a[r][q(r)] = sign(r);
        for n in 0..8 {
            c[r][n] = -7 * (8 * r + n) as i32 - 1;
        }
    }
    for k in 0..32 {
        for n in 0..8 {
            b[k][n] = wrap8(8 * k + n);
        }
    }
    let d = run_s8(&a, &b, &c);
    // by hand: lane 14 (g 3, tig 2) d1 is (row 3, col 5): q(3) = 23, b[23][5] = 189 -> -67,
    // sign -1 gives +67, C = -7 * 29 - 1 = -204, so -137.
    assert_eq!(d[14 * 4 + 1], -137);
    check_d("s8 one-hot A, coded B", &d, |r, n| {
        sign(r) * wrap8(8 * q(r) + n) - 7 * (8 * r + n) as i32 - 1
    });
}

/// Dense s8 with the extremes -128 and 127: products up to 16384, sums of 32 of them, plus C.
#[test]
fn mma_s8_dense_extremes() {
    let av = [-128, 127, -1, 0, 1, -77, 55, 100];
    let bv = [-128, 3, 127, -2, 90, -128, 0, -33, 7];
    let mut a = [[0i32; 32]; 16];
    let mut b = [[0i32; 8]; 32];
    let mut c = [[0i32; 8]; 16];
    for r in 0..16 {
        for k in 0..32 {
            a[r][k] = av[(r * 3 + k) % 8];
        }
        for n in 0..8 {
            c[r][n] = (r as i32 - 8) * 100_000 + n as i32;
        }
    }
    for k in 0..32 {
        for n in 0..8 {
            b[k][n] = bv[(k + 2 * n) % 9];
        }
    }
    let d = run_s8(&a, &b, &c);
    check_d("s8 dense", &d, |r, n| {
        let s: i32 = (0..32).map(|k| a[r][k] * b[k][n]).sum();
        s + c[r][n]
    });
}
