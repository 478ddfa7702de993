//! Serving and deployment ops on Llama-like shapes (bf16, K=N=4096), timed with CUDA events in one
//! run:
//!
//! - mixed batch: `Gpu::lora_forward_mixed` (one launch, every row its own adapter among 4 of ranks 8,
//!   16, 32 and 64, some rows none) against one fused `Gpu::lora_forward` launch per adapter over its
//!   rows (the batch is grouped by adapter, so both compute the same thing), M = 4, 16, 64, and its
//!   achieved bandwidth over x, base, y and the distinct adapters' bytes; and with every row on the
//!   same adapter against the single-adapter fused forward (the target is within 5%);
//! - merge: `Gpu::merge_adapter` (rank 16; plain and safe) and `Gpu::merge_adapter_int8`
//!   (dequantise, add, requantise) against their memory floor, W read and written once.
//!
//! The table goes to stdout and, with `LORA_KERNELS_BENCH_OUT=path`, to a JSON file. Without a GPU this
//! says so and benchmarks the CPU reference of the merge instead.
mod common;

use common::{copy_bandwidth_gbs, random_bf16, time_ms};
use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;
use lora_kernels::dora::reference;
use lora_kernels::{Gpu, LoraAdapter, LoraShape};
use std::time::Duration;

const K: usize = 4096;
const N: usize = 4096;
const RANKS: [usize; 4] = [8, 16, 32, 64];
const MS: &[usize] = &[4, 16, 64];

fn gpu_benches(c: &mut Criterion, gpu: &Gpu) {
    let s = gpu.stream().clone();
    unsafe { s.context().disable_event_tracking() };
    let copy_gbs = copy_bandwidth_gbs(&s);
    println!(
        "device: {} ({} SMs), copy bandwidth {copy_gbs:.0} GB/s (read + write)",
        gpu.name(),
        gpu.sm_count()
    );
    let up = |v: Vec<bf16>| s.clone_htod(&v).unwrap();
    let weights: Vec<_> = RANKS
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            (
                up(random_bf16(r * K, 10 + i as u64, 0.02)),
                up(random_bf16(N * r, 20 + i as u64, 0.02)),
            )
        })
        .collect();
    let adapters: Vec<_> = weights
        .iter()
        .zip(RANKS)
        .map(|((a, b), r)| LoraAdapter::new(a, b, r, 2.0))
        .collect();
    let table = gpu.mixed_adapters(&adapters, K, N).unwrap();
    let mut json = Vec::new();

    println!("\nmixed batch (4 adapters, ranks 8-64, rows grouped by adapter), bf16, K=N={K}");
    println!(
        "{:>4} {:>10} {:>14} {:>6} {:>8} {:>7} {:>13} {:>13} {:>6}",
        "M",
        "mixed us",
        "per-adapter us",
        "x",
        "GB/s",
        "%copy",
        "same-adpt us",
        "fused-one us",
        "ratio"
    );
    for &m in MS {
        let (x, base) = (
            up(random_bf16(m * K, 1, 1.0)),
            up(random_bf16(m * N, 2, 1.0)),
        );
        let mut y = s.alloc_zeros::<bf16>(m * N).unwrap();
        // Rows grouped by adapter: segment i of m / 5 rows uses adapter i, the rest none.
        let seg = (m / 5).max(1);
        let indices: Vec<i32> = (0..m)
            .map(|row| {
                if row / seg < 4 {
                    (row / seg) as i32
                } else {
                    -1
                }
            })
            .collect();
        let idx = s.clone_htod(&indices).unwrap();
        let shape = LoraShape::new(m, K, N);
        let mixed_ms = time_ms(&s, 50, 15, || {
            gpu.lora_forward_mixed(&x, &base, &table, &idx, shape, &mut y)
                .unwrap()
        });
        // Each adapter's rows [r0, r1), found once, outside the timing.
        let segments: Vec<(usize, usize, usize)> = (0..4)
            .filter_map(|i| {
                let r0 = indices.iter().position(|&a| a == i as i32)?;
                let r1 = indices.iter().rposition(|&a| a == i as i32)? + 1;
                Some((i, r0, r1))
            })
            .collect();
        let per_adapter_ms = time_ms(&s, 50, 15, || {
            for &(i, r0, r1) in &segments {
                let seg_shape = LoraShape::new(r1 - r0, K, N);
                let xs = x.slice(r0 * K..r1 * K);
                let bs = base.slice(r0 * N..r1 * N);
                let mut ys = y.slice_mut(r0 * N..r1 * N);
                gpu.lora_forward(&xs, &bs, &[adapters[i]], seg_shape, &mut ys)
                    .unwrap();
            }
        });
        let used: usize = segments
            .iter()
            .map(|&(i, _, _)| 2 * RANKS[i] * (K + N))
            .sum();
        let bytes = (2 * (m * K + 2 * m * N) + used) as f64;
        let gbs = bytes / (mixed_ms * 1e-3) / 1e9;
        // Every row on adapter 1 (rank 16) against the fused single-adapter forward.
        let same = s.clone_htod(&vec![1i32; m]).unwrap();
        let same_ms = time_ms(&s, 50, 15, || {
            gpu.lora_forward_mixed(&x, &base, &table, &same, shape, &mut y)
                .unwrap()
        });
        let fused_ms = time_ms(&s, 50, 15, || {
            gpu.lora_forward(&x, &base, &[adapters[1]], shape, &mut y)
                .unwrap()
        });
        println!(
            "{m:>4} {:>10.2} {:>14.2} {:>5.2}x {gbs:>8.0} {:>6.1}% {:>13.2} {:>13.2} {:>5.2}x",
            mixed_ms * 1e3,
            per_adapter_ms * 1e3,
            per_adapter_ms / mixed_ms,
            100.0 * gbs / copy_gbs,
            same_ms * 1e3,
            fused_ms * 1e3,
            same_ms / fused_ms
        );
        json.push(format!(
            "{{\"op\":\"mixed\",\"m\":{m},\"mixed_ms\":{mixed_ms},\"per_adapter_ms\":{per_adapter_ms},\"same_adapter_ms\":{same_ms},\"fused_ms\":{fused_ms},\"gbs\":{gbs}}}"
        ));
        c.bench_function(&format!("lora_forward_mixed_bf16/m{m}"), |bch| {
            bch.iter_custom(|iters| {
                let ms = time_ms(&s, iters as usize, 1, || {
                    gpu.lora_forward_mixed(&x, &base, &table, &idx, shape, &mut y)
                        .unwrap()
                });
                Duration::from_secs_f64(ms * 1e-3 * iters as f64)
            })
        });
    }

    println!("\nmerge W += s·B·A in place (rank 16), bf16 [N={N}, K={K}]; floor: W read + written");
    println!("{:>22} {:>9} {:>8} {:>7}", "op", "us", "GB/s", "%copy");
    let mut w = up(random_bf16(N * K, 3, 0.02));
    let adapter = adapters[1];
    let merge_bytes = (2 * 2 * N * K + 2 * 16 * (K + N)) as f64;
    let mut report = |name: &str, ms: f64, bytes: f64| {
        let gbs = bytes / (ms * 1e-3) / 1e9;
        println!(
            "{name:>22} {:>9.2} {gbs:>8.0} {:>6.1}%",
            ms * 1e3,
            100.0 * gbs / copy_gbs
        );
        json.push(format!(
            "{{\"op\":{name:?},\"ms\":{ms},\"gbs\":{gbs},\"copy_gbs\":{copy_gbs}}}"
        ));
    };
    // Merging repeatedly drifts W; the values do not change the timing.
    let merge_ms = time_ms(&s, 10, 15, || {
        gpu.merge_adapter(&mut w, adapter, None, K, N, false)
            .unwrap()
    });
    report("merge", merge_ms, merge_bytes);
    let safe_ms = time_ms(&s, 5, 9, || {
        gpu.merge_adapter(&mut w, adapter, None, K, N, true)
            .unwrap()
    });
    report("merge, safe", safe_ms, merge_bytes);
    let mut q = gpu.quantize_int8(&w, K, N).unwrap();
    let int8_ms = time_ms(&s, 10, 15, || {
        gpu.merge_adapter_int8(&mut q, adapter, None, false)
            .unwrap()
    });
    // int8: CB read twice (the second time mostly from L2) and written once, SCB once.
    report(
        "merge into int8",
        int8_ms,
        (2 * N * K + 8 * N + 2 * 16 * (K + N)) as f64,
    );
    common::write_bench_json(
        gpu.name(),
        copy_gbs,
        &[("rows", format!("[{}]", json.join(",")))],
    );
}

fn cpu_benches(c: &mut Criterion) {
    println!("no CUDA device: benchmarking the CPU reference of the merge, not the kernels");
    let (n, k, r) = (256, 512, 16);
    let w = random_bf16(n * k, 1, 0.02);
    let (a, b) = (random_bf16(r * k, 2, 0.02), random_bf16(n * r, 3, 0.02));
    let adapter = LoraAdapter::new(&a[..], &b[..], r, 2.0);
    c.bench_function("merge_cpu_reference/n256_k512_r16", |bch| {
        bch.iter(|| reference::dora_merged_weight(&w, adapter, None, k, n).unwrap())
    });
}

fn benches(c: &mut Criterion) {
    common::gpu_or_cpu(c, gpu_benches, cpu_benches);
}

criterion_group! {
    name = adapters;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(adapters);
