//! shfl.sync and vote.sync (`tests/kernels/warp.cu`), expected values from the PTX ISA's shfl
//! pseudo-code:
//!
//! ```text
//! bval = b[4:0]; cval = c[4:0]; segmask = c[12:8];
//! maxLane = (lane & segmask) | (cval & ~segmask);  minLane = lane & segmask;
//! up:   j = lane - bval;                        pval = (j >= maxLane)
//! down: j = lane + bval;                        pval = (j <= maxLane)
//! bfly: j = lane ^ bval;                        pval = (j <= maxLane)
//! idx:  j = minLane | (bval & ~segmask);        pval = (j <= maxLane)
//! if (!pval) j = lane;  d = a of lane j;  p = pval
//! ```
//!
//! The CUDA intrinsics pass c = (32 - width) << 8 for up and ((32 - width) << 8) | 0x1f for the
//! others.
mod common;
use common::*;

#[derive(Clone, Copy)]
enum Mode {
    Up,
    Down,
    Bfly,
    Idx,
}

/// The manual's source lane and valid flag.
fn shfl_ref(mode: Mode, lane: i32, b: u32, c: u32) -> (i32, bool) {
    let bval = (b & 31) as i32;
    let cval = (c & 31) as i32;
    let seg = ((c >> 8) & 31) as i32;
    let max_lane = (lane & seg) | (cval & !seg);
    let min_lane = lane & seg;
    let (j, p) = match mode {
        Mode::Up => (lane - bval, lane - bval >= max_lane),
        Mode::Down => (lane + bval, lane + bval <= max_lane),
        Mode::Bfly => (lane ^ bval, (lane ^ bval) <= max_lane),
        Mode::Idx => {
            let j = min_lane | (bval & !seg);
            (j, j <= max_lane)
        }
    };
    (if p { j } else { lane }, p)
}

fn val(lane: i32) -> i32 {
    100 + 7 * lane
}

fn run_shfl() -> Vec<i32> {
    let mut gpu = Gpu::load("warp");
    let input: Vec<i32> = (0..32).map(val).collect();
    // b, c pairs for the inline-asm rows (see warp.cu)
    let prm: Vec<i32> = vec![3, 0, 2, 0x0f, 1, 0x0f, 20, 0x1f, 3, 0x1800, 9, 0x05];
    let pin = gpu.upload(&input);
    let pprm = gpu.upload(&prm);
    let pout = gpu.filled(21 * 32, i32::MIN);
    gpu.launch(
        "shfl_all",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pin), ptr(pprm), ptr(pout)],
    );
    gpu.download(pout, 21 * 32)
}

fn check_row(out: &[i32], row: usize, what: &str, mode: Mode, b: impl Fn(i32) -> u32, c: u32) {
    for lane in 0..32 {
        let (src, _) = shfl_ref(mode, lane, b(lane), c);
        assert_eq!(
            out[row * 32 + lane as usize],
            val(src),
            "{what}: lane {lane} should read lane {src}"
        );
    }
}

fn check_pred(out: &[i32], row: usize, what: &str, mode: Mode, b: impl Fn(i32) -> u32, c: u32) {
    check_row(out, row, what, mode, &b, c);
    for lane in 0..32 {
        let (_, p) = shfl_ref(mode, lane, b(lane), c);
        assert_eq!(
            out[(row + 1) * 32 + lane as usize],
            p as i32,
            "{what}: predicate of lane {lane}"
        );
    }
}

#[test]
fn shfl_up_down_bfly_idx_with_width() {
    let out = run_shfl();
    // Hand-worked spot values first (in[l] = 100 + 7l):
    // up 3: lanes 0..2 keep their own value, lane 3 reads lane 0.
    assert_eq!(&out[0..4], &[100, 107, 114, 100]);
    // up 3 width 8: lane 9 (segment 8..15) would read lane 6 of the segment below: keeps 163.
    assert_eq!(out[32 + 9], 163);
    assert_eq!(out[32 + 11], 156); // lane 11 reads lane 8
                                   // down 5 width 16: lane 12 -> 17 is past its segment's end 15: keeps 184; lane 20 reads 25.
    assert_eq!(out[3 * 32 + 12], 184);
    assert_eq!(out[3 * 32 + 20], 275);
    // xor 6 width 4: lane 4 reads lane 2 (an earlier segment is allowed, maxLane = 7); lane 2
    // would read lane 4, a later segment (4 > maxLane 3): keeps 114.
    assert_eq!(out[5 * 32 + 4], 114);
    assert_eq!(out[5 * 32 + 2], 114);
    assert_eq!(out[5 * 32 + 6], 100); // lane 6 reads lane 0
                                      // idx 13 width 8: every lane reads lane 5 of its own segment of 8.
    assert_eq!(out[7 * 32 + 30], val(29));
    // idx lane*3+1 uses only b[4:0]: lane 31 reads (94) & 31 = 30.
    assert_eq!(out[8 * 32 + 31], val(30));

    check_row(&out, 0, "up 3", Mode::Up, |_| 3, 0);
    check_row(&out, 1, "up 3 width 8", Mode::Up, |_| 3, 24 << 8);
    check_row(&out, 2, "down 5", Mode::Down, |_| 5, 0x1f);
    check_row(
        &out,
        3,
        "down 5 width 16",
        Mode::Down,
        |_| 5,
        (16 << 8) | 0x1f,
    );
    check_row(&out, 4, "xor 6", Mode::Bfly, |_| 6, 0x1f);
    check_row(
        &out,
        5,
        "xor 6 width 4",
        Mode::Bfly,
        |_| 6,
        (28 << 8) | 0x1f,
    );
    check_row(&out, 6, "idx 9", Mode::Idx, |_| 9, 0x1f);
    check_row(
        &out,
        7,
        "idx 13 width 8",
        Mode::Idx,
        |_| 13,
        (24 << 8) | 0x1f,
    );
    check_row(
        &out,
        8,
        "idx 3 lane + 1",
        Mode::Idx,
        |l| (3 * l + 1) as u32,
        0x1f,
    );
}

#[test]
fn shfl_clamp_and_valid_predicate() {
    let out = run_shfl();
    // down 2 with c = 0x0f (clamp at lane 15, no segments): lanes 0..13 read lane + 2 (p = 1),
    // lanes 14..31 keep their own value (p = 0).
    assert_eq!(out[11 * 32 + 13], val(15));
    assert_eq!(out[12 * 32 + 13], 1);
    assert_eq!(out[11 * 32 + 14], val(14));
    assert_eq!(out[12 * 32 + 14], 0);
    assert_eq!(out[11 * 32 + 31], val(31));
    // bfly 1 with c = 0x0f: lanes 16..31 would read lanes above 15: own value, p = 0.
    assert_eq!(out[13 * 32 + 16], val(16));
    assert_eq!(out[14 * 32 + 16], 0);
    assert_eq!(out[13 * 32 + 15], val(14));
    assert_eq!(out[14 * 32 + 15], 1);
    // idx 9 with clamp 5: j = 9 > maxLane 5 for every lane: all keep their own value, p = 0.
    for lane in 0..32 {
        assert_eq!(
            out[19 * 32 + lane],
            val(lane as i32),
            "idx clamp 5, lane {lane}"
        );
        assert_eq!(out[20 * 32 + lane], 0, "idx clamp 5 predicate, lane {lane}");
    }
    // up 3, no clamp: p = 0 exactly for lanes 0..2.
    assert_eq!(&out[10 * 32..10 * 32 + 4], &[0, 0, 0, 1]);

    check_pred(&out, 9, "asm up 3 c=0", Mode::Up, |_| 3, 0);
    check_pred(&out, 11, "asm down 2 c=0x0f", Mode::Down, |_| 2, 0x0f);
    check_pred(&out, 13, "asm bfly 1 c=0x0f", Mode::Bfly, |_| 1, 0x0f);
    check_pred(
        &out,
        15,
        "asm idx lane+20 c=0x1f",
        Mode::Idx,
        |l| (l + 20) as u32,
        0x1f,
    );
    check_pred(&out, 17, "asm up 3 c=0x1800", Mode::Up, |_| 3, 0x1800);
    check_pred(&out, 19, "asm idx 9 c=0x05", Mode::Idx, |_| 9, 0x05);
}

#[test]
fn vote_ballot_any_all() {
    // x[l] = (13 l + 5) % 23: 5, 18, 8, 21, 11, 1, 14, 4, 17 (lane 8), ..., 0 (lane 12), ...
    let x: Vec<i32> = (0..32).map(|l| (l * 13 + 5) % 23).collect();
    assert_eq!(x[8], 17);
    assert_eq!(x[12], 0);
    let mut gpu = Gpu::load("warp");
    let pin = gpu.upload(&x);
    let pout = gpu.filled(7 * 32, 0xffff_fff0u32);
    gpu.launch("vote_all", [1, 1, 1], [32, 1, 1], &[ptr(pin), ptr(pout)]);
    let out: Vec<u32> = gpu.download(pout, 7 * 32);
    // the odd x: lanes 0, 3, 4, 5 (0x39 in the low byte), ... worked out: 0x9cc66339
    let ballot_odd: u32 = (0..32).filter(|&l| x[l] & 1 == 1).map(|l| 1u32 << l).sum();
    assert_eq!(ballot_odd, 0x9cc6_6339);
    // lanes 0..19 with bit 1 of x set, only those bits (the others are outside the membermask)
    let ballot_sub: u32 = (0..20).filter(|&l| x[l] & 2 != 0).map(|l| 1u32 << l).sum();
    assert_eq!(ballot_sub, 0xb_4a52);
    for lane in 0..32 {
        assert_eq!(out[lane], 0x9cc6_6339, "ballot, lane {lane}");
        assert_eq!(out[32 + lane], 1, "any(x == 17), lane {lane}");
        assert_eq!(out[2 * 32 + lane], 0, "any(x > 1000), lane {lane}");
        assert_eq!(out[3 * 32 + lane], 1, "all(x >= 0), lane {lane}");
        assert_eq!(
            out[4 * 32 + lane],
            0,
            "all(x != 0) (lane 12 is 0), lane {lane}"
        );
        assert_eq!(out[5 * 32 + lane], 17, "popc(ballot(x > 10)), lane {lane}");
        let want = if lane < 20 { 0xb_4a52 } else { 0xdead_beef };
        assert_eq!(
            out[6 * 32 + lane],
            want,
            "ballot under mask 0x000fffff, lane {lane}"
        );
    }
}
