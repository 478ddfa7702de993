//! Atomics under contention (many blocks on one word) and bit intrinsics
//! (`tests/kernels/atomics.cu`).
mod common;
use common::*;

/// 8 blocks x 256 threads each add 1 to one counter: exactly 2048, and the values returned
/// (tickets) are a permutation of 0..2047 (each atomicAdd saw a distinct old value). Each block's
/// shared-memory counter (atom.shared.add) is exactly 256.
#[test]
fn atomic_add_count_is_exact() {
    let (blocks, threads) = (8usize, 256usize);
    let n = blocks * threads;
    let mut gpu = Gpu::load("atomics");
    let cnt = gpu.filled(1, 0u32);
    let tickets = gpu.filled(n, u32::MAX);
    let bc = gpu.filled(blocks, u32::MAX);
    gpu.launch(
        "atomic_count",
        [blocks as u32, 1, 1],
        [threads as u32, 1, 1],
        &[ptr(cnt), ptr(tickets), ptr(bc)],
    );
    assert_eq!(gpu.download::<u32>(cnt, 1)[0], 2048);
    let mut t: Vec<u32> = gpu.download(tickets, n);
    t.sort_unstable();
    assert!(
        t.iter().enumerate().all(|(i, &v)| v == i as u32),
        "tickets are not 0..2047"
    );
    assert_eq!(gpu.download::<u32>(bc, blocks), vec![256; blocks]);
}

/// 4 x 128 threads exchange gid + 1 into one slot (initially 0): the displaced values plus the
/// final value are exactly {0, 1, ..., 512}, each once.
#[test]
fn atomic_exch_loses_nothing() {
    let n = 512usize;
    let mut gpu = Gpu::load("atomics");
    let slot = gpu.filled(1, 0u32);
    let olds = gpu.filled(n, u32::MAX);
    gpu.launch(
        "atomic_exch",
        [4, 1, 1],
        [128, 1, 1],
        &[ptr(slot), ptr(olds)],
    );
    let mut all: Vec<u32> = gpu.download(olds, n);
    let last = gpu.download::<u32>(slot, 1)[0];
    assert!((1..=512).contains(&last));
    all.push(last);
    all.sort_unstable();
    assert_eq!(all, (0..=512).collect::<Vec<u32>>());
}

/// A CAS loop adding gid from 4 x 64 threads: 0 + 1 + ... + 255 = 255 * 256 / 2 = 32640; every
/// thread needed at least one attempt.
#[test]
fn atomic_cas_loop_sum() {
    let n = 256usize;
    let mut gpu = Gpu::load("atomics");
    let sum = gpu.filled(1, 0u32);
    let tries = gpu.filled(n, 0u32);
    gpu.launch(
        "atomic_cas_add",
        [4, 1, 1],
        [64, 1, 1],
        &[ptr(sum), ptr(tries)],
    );
    assert_eq!(gpu.download::<u32>(sum, 1)[0], 32640);
    let t: Vec<u32> = gpu.download(tries, n);
    assert!(t.iter().all(|&x| x >= 1), "a thread never tried: {t:?}");
}

/// Signed and unsigned max/min from 512 threads. vals = (37 gid) % 1001 - 500 (in -500..500)
/// with planted extremes: vals[300] = 123456 (signed max), vals[77] = -98765 (signed min),
/// vals[200] = -1 (as unsigned 0xffffffff: unsigned max), vals[400] = 0 (unsigned min).
#[test]
fn atomic_max_min_signed_and_unsigned() {
    let n = 512usize;
    let mut vals: Vec<i32> = (0..n).map(|g| ((37 * g) % 1001) as i32 - 500).collect();
    vals[300] = 123456;
    vals[77] = -98765;
    vals[200] = -1;
    vals[400] = 0;
    let mut gpu = Gpu::load("atomics");
    let pv = gpu.upload(&vals);
    let mm = gpu.upload(&[i32::MIN, i32::MAX]);
    let umm = gpu.upload(&[0u32, u32::MAX]);
    gpu.launch(
        "atomic_maxmin",
        [4, 1, 1],
        [128, 1, 1],
        &[ptr(pv), ptr(mm), ptr(umm)],
    );
    assert_eq!(gpu.download::<i32>(mm, 2), vec![123456, -98765]);
    assert_eq!(gpu.download::<u32>(umm, 2), vec![0xffff_ffff, 0]);
}

/// popc, clz, brev, prmt (default mode: selector nibble bits [2:0] pick a byte of {b, a} =
/// bytes 7..0, bit 3 replicates that byte's sign), bfi/bfe (pos = c[7:0], len = d[7:0]; bits at
/// or past bit 31 are not written / read as the sign bit), ffs. Every value worked by hand.
#[test]
fn bit_intrinsics() {
    // (x, y, s) -> [popc, clz, brev, prmt, bfi, bfe.u32, bfe.s32, ffs]
    let cases: [(u32, u32, u32, [u32; 8]); 7] = [
        // prmt 0x5140: bytes 0x11 (0), 0x55 (4), 0x22 (1), 0x66 (5). bfi/bfe with pos 0x40 = 64:
        // nothing inserted (y), extract gives 0 (sign bit a[31] = 0).
        (
            0x4433_2211,
            0x8877_6655,
            0x5140,
            [10, 1, 0x8844_cc22, 0x6622_5511, 0x8877_6655, 0, 0, 1],
        ),
        // prmt 0xf7c0: 0x11 (0), sign of 0x55 = 0x00 (c), 0x88 (7), sign of 0x88 = 0xff (f).
        (
            0x4433_2211,
            0x8877_6655,
            0xf7c0,
            [10, 1, 0x8844_cc22, 0xff88_0011, 0x8877_6655, 0, 0, 1],
        ),
        // pos 8, len 12: bfi puts 0xbcd into bits 8..19 of 0x12345678 -> 0x123bcd78;
        // bfe bits 8..19 of 0xabcd = 0x0ab (sign bit a[19] = 0). prmt 0x0c08: sign of 0xcd =
        // 0xff (8), 0xcd (0), sign of 0x78 = 0x00 (c), 0xcd (0).
        (
            0x0000_abcd,
            0x1234_5678,
            0x0c08,
            [10, 16, 0xb3d5_0000, 0xcd00_cdff, 0x123b_cd78, 0xab, 0xab, 1],
        ),
        // pos 12, len 4 of 0xf000: 0xf; signed: sign bit a[15] = 1 fills -> 0xffffffff.
        // bfi inserts x[3:0] = 0 into bits 12..15 of 0xf0. prmt 0x040c: sign of 0xf0 = 0xff (c),
        // 0x00 (0), 0xf0 (4), 0x00 (0).
        (
            0x0000_f000,
            0x0000_00f0,
            0x040c,
            [
                4,
                16,
                0x000f_0000,
                0x00f0_00ff,
                0x0000_00f0,
                0xf,
                0xffff_ffff,
                13,
            ],
        ),
        // pos 28, len 8: bfi writes only bits 28..31 (x[3:0] = 0xf) -> 0xf0000000; bfe reads
        // bits 28..31 of 0xff = 0, the rest the sign bit a[31] = 0. prmt 0x081c: sign of
        // y.b0 = 0 (c), x.b1 = 0 (1), sign of 0xff = 0xff (8), 0xff (0).
        (
            0x0000_00ff,
            0,
            0x081c,
            [8, 24, 0xff00_0000, 0xffff_0000, 0xf000_0000, 0, 0, 1],
        ),
        // len 0: bfi returns y, bfe returns 0. clz(0) = 32, ffs(0) = 0.
        (0, 0x1234_5678, 0, [0, 32, 0, 0, 0x1234_5678, 0, 0, 0]),
        // pos 31, len 1: bfi clears bit 31 of 0xffffffff (x[0] = 0); bfe.u = a[31] = 1,
        // bfe.s = sign-filled 0xffffffff. prmt 0x011f: sign of y.b3 = 0xff (f), 0, 0, 0.
        (
            0x8000_0000,
            0xffff_ffff,
            0x011f,
            [1, 0, 1, 0x0000_00ff, 0x7fff_ffff, 1, 0xffff_ffff, 32],
        ),
    ];
    let n = cases.len();
    let xs: Vec<u32> = cases.iter().map(|c| c.0).collect();
    let ys: Vec<u32> = cases.iter().map(|c| c.1).collect();
    let ss: Vec<u32> = cases.iter().map(|c| c.2).collect();
    let mut gpu = Gpu::load("atomics");
    let px = gpu.upload(&xs);
    let py = gpu.upload(&ys);
    let ps = gpu.upload(&ss);
    let out = gpu.filled(n * 8, 0xdead_beefu32);
    gpu.launch(
        "bits",
        [1, 1, 1],
        [n as u32, 1, 1],
        &[ptr(px), ptr(py), ptr(ps), ptr(out)],
    );
    let got: Vec<u32> = gpu.download(out, n * 8);
    let names = [
        "popc", "clz", "brev", "prmt", "bfi", "bfe.u32", "bfe.s32", "ffs",
    ];
    for (i, c) in cases.iter().enumerate() {
        for k in 0..8 {
            assert_eq!(
                got[i * 8 + k],
                c.3[k],
                "{} of case {i} (x {:#x}, y {:#x}, s {:#x}): got {:#x}, want {:#x}",
                names[k],
                c.0,
                c.1,
                c.2,
                got[i * 8 + k],
                c.3[k]
            );
        }
    }
}
