//! A cross-block spin-wait (`tests/kernels/spin.cu`): block 0 spins on a flag (volatile load +
//! nanosleep) that the last of blocks 1..3 sets after an atomic counter. An emulator that runs
//! blocks to completion one at a time never finishes block 0, so the launch runs on a thread
//! and the test fails after a timeout instead of hanging.
mod common;
use common::*;
use std::sync::mpsc;
use std::time::Duration;

fn run_spin(seed: Option<u64>) -> Result<Vec<u32>, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut gpu = Gpu::load("spin");
        gpu.m.schedule_seed = seed;
        let counter = gpu.filled(1, 0u32);
        let flag = gpu.filled(1, 0u32);
        let out = gpu.filled(3, 0xdead_beefu32);
        let r = gpu
            .try_launch(
                "spin_wait",
                [4, 1, 1],
                [64, 1, 1],
                &[ptr(counter), ptr(flag), ptr(out)],
            )
            .map(|_| gpu.download::<u32>(out, 3))
            .map_err(|e| e.to_string());
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(r) => r,
        Err(_) => {
            Err("the spin-wait did not finish within 120 s: blocks are not interleaved".into())
        }
    }
}

#[test]
fn cross_block_spin_wait_completes() {
    let out = run_spin(None).unwrap_or_else(|e| panic!("{e}"));
    // blocks 1, 2, 3 each counted once before the flag was set: 3; the flag is 0x600d.
    assert_eq!(out[0], 3);
    assert_eq!(out[1], 0x600d);
}

#[test]
fn cross_block_spin_wait_completes_with_random_schedules() {
    for seed in [1u64, 2, 0xdead_beef] {
        let out = run_spin(Some(seed)).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(out[0], 3, "seed {seed}");
        assert_eq!(out[1], 0x600d, "seed {seed}");
    }
}

/// The same kernel with a grid of one block: nobody ever sets the flag, so block 0 spins
/// forever. The emulator must end the launch with an error that names the kernel (its hang
/// detector) instead of hanging the test binary.
#[test]
fn spin_wait_that_can_never_finish_is_reported() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut gpu = Gpu::load("spin");
        let counter = gpu.filled(1, 0u32);
        let flag = gpu.filled(1, 0u32);
        let out = gpu.filled(3, 0u32);
        let r = gpu.try_launch(
            "spin_wait",
            [1, 1, 1],
            [64, 1, 1],
            &[ptr(counter), ptr(flag), ptr(out)],
        );
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(())) => panic!("a spin-wait on a flag nobody sets completed"),
        Ok(Err(e)) => assert!(e.message.contains("spin_wait"), "kernel not named: {e}"),
        Err(_) => panic!("the launch hung for 120 s: no hang detector fired"),
    }
}
