//! One deliberately broken kernel per checker (`tests/kernels/broken.cu`), each of which must
//! fail its launch with a report that names the checker, the kernel, the block and thread (as
//! `(x,y,z)`), the address (hex) where there is one, and the `.cu` file:line of the bad access
//! (from `-lineinfo`'s `.loc`; the line is found by its `// BUG:<tag>` marker). Each has a
//! correct twin (or correct parameters) that must pass clean, so the checkers are not simply
//! failing everything.
//!
//! Codes: memcheck out of bounds and use after free -> 700 ILLEGAL_ADDRESS, misaligned -> 716
//! MISALIGNED_ADDRESS, initcheck and racecheck -> 700 (the emulator's choice; compute-sanitizer
//! reports these without a code of their own), synccheck -> 719 LAUNCH_FAILED.
// Matrix and lane loops read best with explicit indices.
#![allow(clippy::needless_range_loop)]
mod common;
use common::*;
use lora_kernels_emulator::exec::CudaCode;

const FILE: &str = "broken.cu";

fn checker_named(res: &Result<(), lora_kernels_emulator::exec::EmuError>, checker: &str) {
    if let Err(e) = res {
        assert!(
            e.message.contains(checker),
            "the report should name the checker {checker}: {}",
            e.message
        );
    }
}

// ---- memcheck: out by one ----

#[test]
fn memcheck_catches_out_by_one_read() {
    let n = 64usize;
    let mut gpu = Gpu::load("broken");
    let x = gpu.upload(&(0..n).map(|i| i as f32).collect::<Vec<f32>>());
    let y = gpu.filled(128, 0f32);
    // one block of 128 threads; `i <= n` lets thread 64 read x[64], 4 * 64 = 256 bytes past x
    let res = gpu.try_launch(
        "oob_read",
        [1, 1, 1],
        [128, 1, 1],
        &[ptr(x), ptr(y), int(n as i32)],
    );
    checker_named(&res, "memcheck");
    let line = marked_line(FILE, "oob");
    assert_report(
        res,
        &Expect {
            code: CudaCode::IllegalAddress,
            kernel: "oob_read",
            file: FILE,
            lines: &[line],
            block: [0, 0, 0],
            threads: &|t| t == [64, 0, 0],
            addr: Some(&|a| a == x + 256),
        },
    );
}

#[test]
fn memcheck_passes_the_last_element() {
    // the same kernel with n = 63 reads x[0..=63]: all inside the 64-element allocation
    let mut gpu = Gpu::load("broken");
    let x = gpu.upload(&(0..64).map(|i| i as f32).collect::<Vec<f32>>());
    let y = gpu.filled(128, -1f32);
    gpu.launch(
        "oob_read",
        [1, 1, 1],
        [128, 1, 1],
        &[ptr(x), ptr(y), int(63)],
    );
    let out: Vec<f32> = gpu.download(y, 128);
    for i in 0..128 {
        let want = if i < 64 { 2.0 * i as f32 } else { -1.0 };
        assert_eq!(out[i], want, "y[{i}]");
    }
}

// ---- racecheck: missing __syncthreads ----

#[test]
fn racecheck_catches_missing_syncthreads() {
    let mut gpu = Gpu::load("broken");
    let x = gpu.upload(&(0..64).map(|i| i as f32 * 0.5).collect::<Vec<f32>>());
    let y = gpu.filled(64, 0f32);
    // 64 threads = 2 warps: thread i reads s[63 - i], written by a thread of the other warp
    let res = gpu.try_launch(
        "race_missing_sync",
        [1, 1, 1],
        [64, 1, 1],
        &[ptr(x), ptr(y)],
    );
    checker_named(&res, "racecheck");
    let (w, r) = (
        marked_line(FILE, "race_write"),
        marked_line(FILE, "race_read"),
    );
    assert_report(
        res,
        &Expect {
            code: CudaCode::IllegalAddress,
            kernel: "race_missing_sync",
            file: FILE,
            lines: &[w, r],
            block: [0, 0, 0],
            threads: &|t| t[0] < 64 && t[1] == 0 && t[2] == 0,
            addr: None,
        },
    );
}

#[test]
fn racecheck_passes_the_fixed_kernel() {
    let mut gpu = Gpu::load("broken");
    let x = gpu.upload(&(0..64).map(|i| i as f32 * 0.5).collect::<Vec<f32>>());
    let y = gpu.filled(64, -1f32);
    gpu.launch("race_fixed", [2, 1, 1], [64, 1, 1], &[ptr(x), ptr(y)]);
    let out: Vec<f32> = gpu.download(y, 64);
    for i in 0..64 {
        assert_eq!(out[i], (63 - i) as f32 * 0.5, "y[{i}]");
    }
}

// ---- initcheck: shared and global ----

#[test]
fn initcheck_catches_uninitialised_shared_read() {
    let mut gpu = Gpu::load("broken");
    let y = gpu.filled(64, 0f32);
    let res = gpu.try_launch("uninit_shared", [1, 1, 1], [64, 1, 1], &[ptr(y)]);
    checker_named(&res, "initcheck");
    let line = marked_line(FILE, "uninit_shared");
    assert_report(
        res,
        &Expect {
            code: CudaCode::IllegalAddress,
            kernel: "uninit_shared",
            file: FILE,
            lines: &[line],
            block: [0, 0, 0],
            // only threads 32..63 read words nobody wrote
            threads: &|t| (32..64).contains(&t[0]) && t[1] == 0 && t[2] == 0,
            addr: None,
        },
    );
}

#[test]
fn initcheck_catches_uninitialised_global_read() {
    let mut gpu = Gpu::load("broken");
    // 32 floats allocated, only the first 16 written
    let x = gpu.alloc_raw(128);
    gpu.m
        .write(
            x,
            &to_bytes(&(0..16).map(|i| i as f32).collect::<Vec<f32>>()),
        )
        .unwrap();
    let y = gpu.filled(32, 0f32);
    let res = gpu.try_launch("copy_f32", [1, 1, 1], [32, 1, 1], &[ptr(x), ptr(y)]);
    checker_named(&res, "initcheck");
    let line = marked_line(FILE, "copy_read");
    assert_report(
        res,
        &Expect {
            code: CudaCode::IllegalAddress,
            kernel: "copy_f32",
            file: FILE,
            lines: &[line],
            block: [0, 0, 0],
            threads: &|t| (16..32).contains(&t[0]) && t[1] == 0 && t[2] == 0,
            addr: Some(&|a| a >= x + 64 && a < x + 128),
        },
    );
}

#[test]
fn initcheck_passes_a_fully_written_copy() {
    let mut gpu = Gpu::load("broken");
    let src: Vec<f32> = (0..64).map(|i| i as f32 - 10.0).collect();
    let x = gpu.upload(&src);
    let y = gpu.alloc_raw(256); // an output the kernel writes before anyone reads: no report
    gpu.launch("copy_f32", [2, 1, 1], [32, 1, 1], &[ptr(x), ptr(y)]);
    assert_eq!(gpu.download::<f32>(y, 64), src);
}

// ---- synccheck: divergent __syncthreads ----

#[test]
fn synccheck_catches_divergent_barrier() {
    let mut gpu = Gpu::load("broken");
    let lim = gpu.upload(&[40i32]);
    let y = gpu.filled(64, 0f32);
    // threads 0..39 reach the barrier, 40..63 (lanes 8..31 of warp 1) never do
    let res = gpu.try_launch(
        "divergent_barrier",
        [1, 1, 1],
        [64, 1, 1],
        &[ptr(lim), ptr(y)],
    );
    checker_named(&res, "synccheck");
    let line = marked_line(FILE, "barrier");
    assert_report(
        res,
        &Expect {
            code: CudaCode::LaunchFailed,
            kernel: "divergent_barrier",
            file: FILE,
            lines: &[line],
            block: [0, 0, 0],
            threads: &|t| t[0] < 64 && t[1] == 0 && t[2] == 0,
            addr: None,
        },
    );
}

#[test]
fn synccheck_passes_a_uniform_barrier() {
    let mut gpu = Gpu::load("broken");
    let lim = gpu.upload(&[64i32]);
    let y = gpu.filled(64, 0f32);
    gpu.launch(
        "divergent_barrier",
        [1, 1, 1],
        [64, 1, 1],
        &[ptr(lim), ptr(y)],
    );
    assert_eq!(gpu.download::<f32>(y, 64), vec![2.0; 64]);
}

// ---- memcheck: misaligned ----

#[test]
fn memcheck_catches_misaligned_load() {
    let mut gpu = Gpu::load("broken");
    let base = gpu.upload(&vec![7u8; 512]);
    let y = gpu.filled(64, 0f32);
    let res = gpu.try_launch(
        "misaligned_load",
        [1, 1, 1],
        [64, 1, 1],
        &[ptr(base), ptr(y)],
    );
    checker_named(&res, "memcheck");
    let line = marked_line(FILE, "misaligned");
    assert_report(
        res,
        &Expect {
            code: CudaCode::MisalignedAddress,
            kernel: "misaligned_load",
            file: FILE,
            lines: &[line],
            block: [0, 0, 0],
            threads: &|t| t[0] < 64 && t[1] == 0 && t[2] == 0,
            // thread t loads 4 bytes at base + 2 + 4t
            addr: Some(&|a| a >= base + 2 && a < base + 2 + 256 && (a - base - 2) % 4 == 0),
        },
    );
}

// ---- memcheck: use after free ----

#[test]
fn memcheck_catches_use_after_free() {
    let mut gpu = Gpu::load("broken");
    let x = gpu.upload(&(0..32).map(|i| i as f32).collect::<Vec<f32>>());
    let y = gpu.filled(32, 0f32);
    gpu.m.free(x).unwrap();
    let res = gpu.try_launch("copy_f32", [1, 1, 1], [32, 1, 1], &[ptr(x), ptr(y)]);
    checker_named(&res, "memcheck");
    if let Err(e) = &res {
        assert!(
            e.message.to_ascii_lowercase().contains("free"),
            "the report should say the memory was freed: {}",
            e.message
        );
    }
    let line = marked_line(FILE, "copy_read");
    assert_report(
        res,
        &Expect {
            code: CudaCode::IllegalAddress,
            kernel: "copy_f32",
            file: FILE,
            lines: &[line],
            block: [0, 0, 0],
            threads: &|t| t[0] < 32 && t[1] == 0 && t[2] == 0,
            addr: Some(&|a| a >= x && a < x + 128),
        },
    );
}

// ---- synccheck: collectives with absent lanes ----

#[test]
fn synccheck_catches_shfl_naming_exited_lanes() {
    let mut gpu = Gpu::load("broken");
    // lanes 16..31 get negative input and return before the full-warp shuffle
    let input: Vec<i32> = (0..32).map(|l| if l < 16 { l } else { -1 }).collect();
    let pin = gpu.upload(&input);
    let out = gpu.filled(32, 0i32);
    let res = gpu.try_launch(
        "shfl_exited_lanes",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pin), ptr(out)],
    );
    checker_named(&res, "synccheck");
    let line = marked_line(FILE, "shfl_exited");
    assert_report(
        res,
        &Expect {
            code: CudaCode::LaunchFailed,
            kernel: "shfl_exited_lanes",
            file: FILE,
            lines: &[line],
            block: [0, 0, 0],
            threads: &|t| t[0] < 32 && t[1] == 0 && t[2] == 0,
            addr: None,
        },
    );
}

#[test]
fn synccheck_passes_shfl_when_no_lane_exits() {
    let mut gpu = Gpu::load("broken");
    let input: Vec<i32> = (0..32).map(|l| 100 + l).collect();
    let pin = gpu.upload(&input);
    let out = gpu.filled(32, 0i32);
    gpu.launch(
        "shfl_exited_lanes",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pin), ptr(out)],
    );
    // every lane reads lane 0's in[0] = 100
    assert_eq!(gpu.download::<i32>(out, 32), vec![100; 32]);
}

#[test]
fn synccheck_catches_full_mask_shfl_split_across_branches() {
    let mut gpu = Gpu::load("broken");
    // even lanes take one branch, odd lanes the other; each branch's shfl names all 32 lanes
    let input: Vec<i32> = (0..32)
        .map(|l| if l % 2 == 0 { -1 - l } else { l })
        .collect();
    let pin = gpu.upload(&input);
    let out = gpu.filled(64, 0i32);
    let res = gpu.try_launch("shfl_split", [1, 1, 1], [32, 1, 1], &[ptr(pin), ptr(out)]);
    checker_named(&res, "synccheck");
    let (a, b) = (
        marked_line(FILE, "shfl_split_a"),
        marked_line(FILE, "shfl_split_b"),
    );
    assert_report(
        res,
        &Expect {
            code: CudaCode::LaunchFailed,
            kernel: "shfl_split",
            file: FILE,
            lines: &[a, b],
            block: [0, 0, 0],
            threads: &|t| t[0] < 32 && t[1] == 0 && t[2] == 0,
            addr: None,
        },
    );
}

// ---- memcheck: a host pointer ----

#[test]
fn memcheck_catches_host_pointer() {
    let host: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let hp = host.as_ptr() as u64;
    let mut gpu = Gpu::load("broken");
    let y = gpu.filled(32, 0f32);
    let res = gpu.try_launch("copy_f32", [1, 1, 1], [32, 1, 1], &[ptr(hp), ptr(y)]);
    checker_named(&res, "memcheck");
    let line = marked_line(FILE, "copy_read");
    assert_report(
        res,
        &Expect {
            code: CudaCode::IllegalAddress,
            kernel: "copy_f32",
            file: FILE,
            lines: &[line],
            block: [0, 0, 0],
            threads: &|t| t[0] < 32 && t[1] == 0 && t[2] == 0,
            addr: Some(&|a| a >= hp && a < hp + 128),
        },
    );
    drop(host);
}

// ---- racecheck: the other hazards, and __syncwarp's reach ----

fn race_expect(
    res: Result<(), lora_kernels_emulator::exec::EmuError>,
    kernel: &str,
    lines: &[u32],
) {
    checker_named(&res, "racecheck");
    assert_report(
        res,
        &Expect {
            code: CudaCode::IllegalAddress,
            kernel,
            file: FILE,
            lines,
            block: [0, 0, 0],
            threads: &|t| t[0] < 64 && t[1] == 0 && t[2] == 0,
            addr: None,
        },
    );
}

#[test]
fn racecheck_catches_write_after_read() {
    let mut gpu = Gpu::load("broken");
    let y = gpu.filled(64, 0f32);
    let res = gpu.try_launch("race_war", [1, 1, 1], [64, 1, 1], &[ptr(y)]);
    let lines = [
        marked_line(FILE, "war_read"),
        marked_line(FILE, "war_write"),
    ];
    race_expect(res, "race_war", &lines);
}

#[test]
fn racecheck_catches_write_after_write() {
    let mut gpu = Gpu::load("broken");
    let y = gpu.filled(32, 0f32);
    let res = gpu.try_launch("race_waw", [1, 1, 1], [64, 1, 1], &[ptr(y)]);
    race_expect(res, "race_waw", &[marked_line(FILE, "waw")]);
}

#[test]
fn racecheck_catches_cross_warp_access_ordered_only_by_syncwarp() {
    let mut gpu = Gpu::load("broken");
    let y = gpu.filled(64, 0f32);
    let res = gpu.try_launch("race_across_syncwarp", [1, 1, 1], [64, 1, 1], &[ptr(y)]);
    let lines = [marked_line(FILE, "sw_write"), marked_line(FILE, "sw_read")];
    race_expect(res, "race_across_syncwarp", &lines);
}

#[test]
fn racecheck_accepts_in_warp_exchange_after_syncwarp() {
    let mut gpu = Gpu::load("broken");
    let y = gpu.filled(64, -1f32);
    gpu.launch("syncwarp_in_warp", [1, 1, 1], [64, 1, 1], &[ptr(y)]);
    let want: Vec<f32> = (0..64u32)
        .map(|i| ((i & !31) | (31 - (i & 31))) as f32)
        .collect();
    assert_eq!(gpu.download::<f32>(y, 64), want);
}

// ---- memcheck: before the start, and atomics ----

#[test]
fn memcheck_catches_write_before_the_allocation() {
    let mut gpu = Gpu::load("broken");
    let x = gpu.filled(32, 0f32);
    // off = -1: thread 0 writes x[-1], 4 bytes before x
    let res = gpu.try_launch(
        "oob_write_before",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(x), int(-1)],
    );
    checker_named(&res, "memcheck");
    assert_report(
        res,
        &Expect {
            code: CudaCode::IllegalAddress,
            kernel: "oob_write_before",
            file: FILE,
            lines: &[marked_line(FILE, "oob_before")],
            block: [0, 0, 0],
            threads: &|t| t == [0, 0, 0],
            addr: Some(&|a| a == x - 4),
        },
    );
    // off = 0 is clean
    let mut gpu = Gpu::load("broken");
    let x = gpu.filled(32, 0f32);
    gpu.launch("oob_write_before", [1, 1, 1], [32, 1, 1], &[ptr(x), int(0)]);
    assert_eq!(gpu.download::<f32>(x, 32), vec![1.0; 32]);
}

#[test]
fn memcheck_catches_atomic_past_the_end() {
    let mut gpu = Gpu::load("broken");
    let cnt = gpu.filled(8, 0u32);
    let res = gpu.try_launch("atomic_oob", [1, 1, 1], [4, 1, 1], &[ptr(cnt), int(8)]);
    checker_named(&res, "memcheck");
    assert_report(
        res,
        &Expect {
            code: CudaCode::IllegalAddress,
            kernel: "atomic_oob",
            file: FILE,
            lines: &[marked_line(FILE, "atomic_oob")],
            block: [0, 0, 0],
            threads: &|t| t[0] < 4 && t[1] == 0 && t[2] == 0,
            addr: Some(&|a| a == cnt + 32),
        },
    );
    // idx = 7 is clean: 4 threads add 1 to cnt[7]
    let mut gpu = Gpu::load("broken");
    let cnt = gpu.filled(8, 0u32);
    gpu.launch("atomic_oob", [1, 1, 1], [4, 1, 1], &[ptr(cnt), int(7)]);
    assert_eq!(gpu.download::<u32>(cnt, 8), vec![0, 0, 0, 0, 0, 0, 0, 4]);
}

// ---- initcheck: memset counts as a write ----

#[test]
fn initcheck_accepts_memset_memory() {
    let mut gpu = Gpu::load("broken");
    let x = gpu.alloc_raw(128);
    gpu.m.memset8(x, 0, 128).unwrap();
    let y = gpu.alloc_raw(128);
    gpu.launch("copy_f32", [1, 1, 1], [32, 1, 1], &[ptr(x), ptr(y)]);
    assert_eq!(gpu.download::<f32>(y, 32), vec![0.0; 32]);
}
