//! Divergence and reconvergence (`tests/kernels/diverge.cu`): nested branches by lane parity and
//! lane ranges, loops with lane-dependent trip counts, early-exiting lanes; each followed by a
//! `.sync` collective that needs the lanes it names back together. Under the PTX ISA's
//! independent thread scheduling a `shfl.sync`/`bar.warp.sync` waits for every lane of its
//! membermask, so these only finish (with the right values) if the emulator reconverges.
// Matrix and lane loops read best with explicit indices.
#![allow(clippy::needless_range_loop)]
mod common;
use common::*;

/// in[tid] = 3 tid - 50 (tid < 64), in[64 + i] = i (the loop's terms).
fn nested_input() -> Vec<i32> {
    let mut v: Vec<i32> = (0..64).map(|t| 3 * t - 50).collect();
    v.extend(0..32);
    v
}

/// The kernel's arms, written out from the .cu: (r, side) of thread `tid`.
fn arm(input: &[i32], tid: usize) -> (i32, i32) {
    let lane = tid & 31;
    let v = input[tid];
    if lane & 1 == 1 {
        if lane < 16 {
            (v * 3, 1)
        } else {
            (v + 1000, 2)
        }
    } else if lane >= 24 {
        (-v, 3)
    } else {
        // 0 + 1 + ... + (lane - 1)
        ((lane * (lane.max(1) - 1) / 2) as i32, 4)
    }
}

#[test]
fn nested_branches_and_loops_reconverge_for_shfl() {
    let input = nested_input();
    let mut gpu = Gpu::load("diverge");
    let pin = gpu.upload(&input);
    let pside = gpu.filled(64, 0i32);
    let pout = gpu.filled(64, i32::MIN);
    gpu.launch(
        "nested_diverge",
        [1, 1, 1],
        [64, 1, 1],
        &[ptr(pin), ptr(pside), ptr(pout)],
    );
    let side: Vec<i32> = gpu.download(pside, 64);
    let out: Vec<i32> = gpu.download(pout, 64);

    let value = |tid: usize| -> i32 {
        let lane = tid & 31;
        let (r, _) = arm(&input, tid);
        let t: i32 = (0..lane % 5).map(|i| input[(tid + i) & 63]).sum();
        r + t
    };
    // Hand-worked: lane 1 (odd, < 16): r = 3 * in[1] = 3 * -47 = -141, one loop trip adds
    // in[1] = -47: -188, which lane 0 reads. Lane 0 (even, < 24): r = 0, no trips: 0, read by
    // lane 31. Lane 31 of warp 1 (tid 63, odd, >= 16): r = 139 + 1000 = 1139, 31 % 5 = 1 trip
    // adds in[63] = 139: 1278, read by lane 30 (tid 62).
    assert_eq!(out[0], -188);
    assert_eq!(out[31], 0);
    assert_eq!(out[62], 1278);
    // lane 22 (even, < 24): the loop sums 0..21 = 231; 22 % 5 = 2 trips add in[22] + in[23]
    // = 16 + 19: 266, read by lane 21.
    assert_eq!(out[21], 266);
    for tid in 0..64 {
        let lane = tid & 31;
        assert_eq!(side[tid], arm(&input, tid).1, "arm taken by tid {tid}");
        let src = (tid & !31) | ((lane + 1) & 31);
        assert_eq!(
            out[tid],
            value(src),
            "tid {tid} reads lane {}",
            (lane + 1) & 31
        );
    }
}

#[test]
fn lane_dependent_loop_then_butterfly_reduce() {
    let lim: Vec<i32> = (0..32).collect();
    let mut gpu = Gpu::load("diverge");
    let plim = gpu.upload(&lim);
    let pout = gpu.filled(64, 0i32);
    gpu.launch(
        "loop_then_reduce",
        [1, 1, 1],
        [64, 1, 1],
        &[ptr(plim), ptr(pout)],
    );
    let out: Vec<i32> = gpu.download(pout, 64);
    // sum over lanes of l (l + 1) / 2 = 31 * 32 * 33 / 6 = 5456, in every lane of both warps
    assert_eq!(out, vec![5456; 64]);
}

#[test]
fn early_exit_then_syncwarp_of_the_rest() {
    let mut input: Vec<i32> = (0..32).map(|l| 10 + l).collect();
    input.push(0); // in[32] = 0
    let mut gpu = Gpu::load("diverge");
    let pin = gpu.upload(&input);
    let pout = gpu.filled(32, i32::MIN);
    gpu.launch("early_exit", [1, 1, 1], [32, 1, 1], &[ptr(pin), ptr(pout)]);
    let out: Vec<i32> = gpu.download(pout, 32);
    // v(l) = 2 (10 + l) for l < 10, 10 + l for 10 <= l < 20; out[l] = v(19 - l); lanes >= 20: -1.
    let v = |l: i32| if l < 10 { 2 * (10 + l) } else { 10 + l };
    assert_eq!(out[0], 29);
    assert_eq!(out[9], 20);
    assert_eq!(out[10], 38);
    assert_eq!(out[19], 20);
    for l in 0..32 {
        let want = if l < 20 { v(19 - l as i32) } else { -1 };
        assert_eq!(out[l], want, "lane {l}");
    }
}
