//! Named barriers (`tests/kernels/barriers.cu`): `bar.sync a, b` waits for b threads (b/32
//! warps) at barrier a. The consumer warp of each pair reads what its producer warp wrote; the
//! barrier orders them, so racecheck must stay silent and the values must be there.
mod common;
use common::*;

#[test]
fn named_barrier_pairs_order_their_warps() {
    for seed in [None, Some(3u64), Some(11)] {
        let mut gpu = Gpu::load("barriers");
        gpu.m.schedule_seed = seed;
        let y = gpu.filled(128, f32::NAN);
        gpu.launch("named_barriers", [2, 1, 1], [128, 1, 1], &[ptr(y)]);
        let out: Vec<f32> = gpu.download(y, 128);
        for i in 0..128u32 {
            let (warp, lane) = (i / 32, i % 32);
            let want = if warp % 2 == 0 {
                -1.0
            } else {
                // consumer of pair warp / 2 reads the producer's lane 31 - lane
                ((warp / 2) * 1000 + (31 - lane)) as f32
            };
            assert_eq!(out[i as usize], want, "seed {seed:?}, y[{i}]");
        }
    }
}
