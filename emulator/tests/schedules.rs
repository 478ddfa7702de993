//! The same kernels under seeded random scheduling orders (`Machine::schedule_seed`): results
//! that do not depend on the order must not change, the race checker must still catch the
//! missing barrier whichever thread runs first, and must stay silent on the fixed twin.
mod common;
use common::*;
use lora_kernels_emulator::exec::CudaCode;

const SEEDS: [u64; 4] = [1, 7, 0x5eed, 0xdead_beef_cafe];

#[test]
fn atomic_count_exact_under_random_schedules() {
    for seed in SEEDS {
        let mut gpu = Gpu::load("atomics");
        gpu.m.schedule_seed = Some(seed);
        let cnt = gpu.filled(1, 0u32);
        let tickets = gpu.filled(512, u32::MAX);
        let bc = gpu.filled(4, u32::MAX);
        gpu.launch(
            "atomic_count",
            [4, 1, 1],
            [128, 1, 1],
            &[ptr(cnt), ptr(tickets), ptr(bc)],
        );
        assert_eq!(gpu.download::<u32>(cnt, 1)[0], 512, "seed {seed}");
        let mut t: Vec<u32> = gpu.download(tickets, 512);
        t.sort_unstable();
        assert_eq!(t, (0..512).collect::<Vec<u32>>(), "seed {seed}");
        assert_eq!(gpu.download::<u32>(bc, 4), vec![128; 4], "seed {seed}");
    }
}

#[test]
fn reconvergence_under_random_schedules() {
    for seed in SEEDS {
        let lim: Vec<i32> = (0..32).collect();
        let mut gpu = Gpu::load("diverge");
        gpu.m.schedule_seed = Some(seed);
        let plim = gpu.upload(&lim);
        let pout = gpu.filled(64, 0i32);
        gpu.launch(
            "loop_then_reduce",
            [1, 1, 1],
            [64, 1, 1],
            &[ptr(plim), ptr(pout)],
        );
        // 31 * 32 * 33 / 6 = 5456 in every lane
        assert_eq!(gpu.download::<i32>(pout, 64), vec![5456; 64], "seed {seed}");
    }
}

#[test]
fn racecheck_catches_missing_barrier_under_random_schedules() {
    let (w, r) = (
        marked_line("broken.cu", "race_write"),
        marked_line("broken.cu", "race_read"),
    );
    for seed in SEEDS {
        let mut gpu = Gpu::load("broken");
        gpu.m.schedule_seed = Some(seed);
        let x = gpu.upload(&(0..64).map(|i| i as f32).collect::<Vec<f32>>());
        let y = gpu.filled(64, 0f32);
        let res = gpu.try_launch(
            "race_missing_sync",
            [1, 1, 1],
            [64, 1, 1],
            &[ptr(x), ptr(y)],
        );
        if let Err(e) = &res {
            assert!(
                e.message.contains("racecheck"),
                "seed {seed}: {}",
                e.message
            );
        }
        assert_report(
            res,
            &Expect {
                code: CudaCode::IllegalAddress,
                kernel: "race_missing_sync",
                file: "broken.cu",
                lines: &[w, r],
                block: [0, 0, 0],
                threads: &|t| t[0] < 64 && t[1] == 0 && t[2] == 0,
                addr: None,
            },
        );
    }
}

#[test]
fn racecheck_silent_on_fixed_twin_under_random_schedules() {
    for seed in SEEDS {
        let mut gpu = Gpu::load("broken");
        gpu.m.schedule_seed = Some(seed);
        let x = gpu.upload(&(0..64).map(|i| i as f32).collect::<Vec<f32>>());
        let y = gpu.filled(64, 0f32);
        gpu.launch("race_fixed", [3, 1, 1], [64, 1, 1], &[ptr(x), ptr(y)]);
        let out: Vec<f32> = gpu.download(y, 64);
        let want: Vec<f32> = (0..64).map(|i| (63 - i) as f32).collect();
        assert_eq!(out, want, "seed {seed}");
    }
}
