//! Counted, not measured: runs each kernel family on the PTX emulator with its profile counters
//! on and prints, per call, the floor bytes, the DRAM bytes of the emulator's L2 model and their
//! ratio, global sectors per request against the ideal, shared-memory bank conflicts per request,
//! mma count, and an H200 time from a roofline model (`tests/common/profile_harness.rs`).
//!
//!     cargo run --release --example profile [-- --calibrate]
//!
//! `--calibrate` also runs the one measured shape of BENCHMARKS.md (fused LoRA forward, bf16,
//! M = 1 and 16, K = N = 4096, r = 8 and 16) and prints the model against the measured times.
//! Runs on the emulator only (`LORA_KERNELS_EMULATOR=1` is set): a real GPU has no counters here.
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/profile_harness.rs"]
mod harness;

use harness::{Case, Model};

fn row(model: &Model, c: &Case) {
    let (spr, ideal) = c.sectors_per_request();
    let (sreq, conf) = c.shared_conflicts();
    println!(
        "| {} | {} | {} | {} | {} | {:.2}x | {:.1} / {:.1} | {} | {:.2} | {} | {:.1} |",
        c.name,
        c.kernels(),
        c.floor_bytes,
        c.sector_bytes(),
        c.dram_bytes(),
        c.dram_over_floor(),
        spr,
        ideal,
        sreq,
        conf,
        c.mma(),
        model.time_us(c),
    );
}

fn main() {
    std::env::set_var("LORA_KERNELS_EMULATOR", "1");
    let gpu = common::gpu().expect("the emulator");
    let model = Model::calibrated();
    println!(
        "Counted on the emulator (not measured); time: roofline model, launch {} µs each.",
        model.launch_us
    );
    let header = || {
        println!("| call | kernels | floor B | sector B (no L2) | DRAM B (L2 model) | DRAM/floor | sectors/req (ideal) | shared req | conflicts/req | mma | model µs |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
    };
    println!("Small shapes (the CI baseline, tests/data/profile_baseline.json):");
    header();
    for c in harness::standard_cases(&gpu) {
        row(&model, &c);
    }
    println!();
    println!("Decode at K = N = 4096 (a Llama-like layer):");
    header();
    for c in harness::llama_decode_cases(&gpu) {
        row(&model, &c);
    }
    if std::env::args().any(|a| a == "--calibrate") {
        println!();
        println!("| measured shape | warp instr | floor B | DRAM B (L2 model) | body µs (model) | model µs | measured µs | error |");
        println!("|---|---|---|---|---|---|---|---|");
        // BENCHMARKS.md, fused LoRA forward, bf16, H200, 2026-11-27, K = N = 4096.
        let measured = [
            (1, 8, 11.2),
            (16, 8, 11.9),
            (512, 8, 19.6),
            (4096, 8, 60.3),
            (1, 16, 11.4),
            (16, 16, 11.9),
            (512, 16, 20.2),
            (4096, 16, 60.7),
            (1, 64, 12.4),
            (16, 64, 15.0),
            (512, 64, 56.4),
            (4096, 64, 105.8),
        ];
        let mut fitted = None;
        for (m, r, measured) in measured {
            let t0 = std::time::Instant::now();
            let c = harness::lora_forward(&gpu, m, 4096, 4096, r);
            if (m, r) == (1, 16) {
                fitted = Some(measured - model.body_us(&c));
            }
            let t = model.time_us(&c);
            println!(
                "| {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {:+.1}% | ({:.1} s on the emulator)",
                c.name,
                c.warp_instructions(),
                c.floor_bytes,
                c.dram_bytes(),
                model.body_us(&c),
                t,
                measured,
                (t - measured) / measured * 100.0,
                t0.elapsed().as_secs_f64()
            );
        }
        if let Some(f) = fitted {
            println!(
                "launch cost fitted at M=1, r=16: {f:.2} µs (harness::LAUNCH_US = {})",
                harness::LAUNCH_US
            );
        }
    }
}
