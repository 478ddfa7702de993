//! DoRA on Llama-like shapes (bf16; K=N=4096 and K=4096/N=14336; ranks 16 and 64), timed with CUDA
//! events in one run:
//!
//! - norm: `Gpu::dora_weight_norm` (one pass over W, B·A formed on the fly; the tensor-core kernel,
//!   and the CUDA-core row pass forced with `LORA_KERNELS_DORA_NORM=cuda-cores`) against its memory floor
//!   (bytes of W, A, B over the copy bandwidth measured in the same run) and against the first step of
//!   peft's path, cuBLAS materialising `W + s·B·A` densely (a lower bound on peft's norm, which then
//!   also reads that product back to take the row norms);
//! - forward: `Gpu::dora_forward` with the cached factor against `Gpu::lora_forward` on the same
//!   problem (the target is ≤ 1.02×), M = 1, 16, 512, 4096.
//!
//! The table goes to stdout and, with `LORA_KERNELS_BENCH_OUT=path`, to a JSON file. Without a GPU the
//! CPU reference of the norm is benchmarked instead, and the output says so.
mod common;

use common::{copy_bandwidth_gbs, random_bf16, time_ms};
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use half::bf16;
use lora_kernels::dora::reference;
use lora_kernels::{Gpu, LoraAdapter, LoraShape};
use std::time::Duration;

const SHAPES: &[(usize, usize)] = &[(4096, 4096), (4096, 14336)];
const RANKS: &[usize] = &[16, 64];
const MS: &[usize] = &[1, 16, 512, 4096];

fn gpu_benches(c: &mut Criterion, gpu: &Gpu) {
    let s = gpu.stream().clone();
    unsafe { s.context().disable_event_tracking() };
    let blas = CudaBlas::new(s.clone()).unwrap();
    let copy_gbs = copy_bandwidth_gbs(&s);
    println!(
        "device: {} ({} SMs), copy bandwidth {copy_gbs:.0} GB/s (read + write)",
        gpu.name(),
        gpu.sm_count()
    );
    let up = |v: Vec<bf16>| s.clone_htod(&v).unwrap();
    let mut norm_rows = Vec::new();
    let mut fwd_rows = Vec::new();
    for &(k, n) in SHAPES {
        for &r in RANKS {
            let w = up(random_bf16(n * k, 1, 0.02));
            let (a, b) = (
                up(random_bf16(r * k, 2, 0.02)),
                up(random_bf16(n * r, 3, 0.02)),
            );
            let magnitude = up(random_bf16(n, 4, 1.0));
            let scale = 2.0;
            let adapter = LoraAdapter::new(&a, &b, r, scale);
            let mut norm = s.alloc_zeros::<f32>(n).unwrap();
            let norm_ms = time_ms(&s, 10, 15, || {
                gpu.dora_weight_norm(&w, adapter, k, n, &mut norm).unwrap()
            });
            // cuBLAS: dense = s·B·A + dense (a copy of W), as peft materialises it.
            let mut dense = s.alloc_zeros::<bf16>(n * k).unwrap();
            let materialise = GemmConfig {
                transa: cublasOperation_t::CUBLAS_OP_N,
                transb: cublasOperation_t::CUBLAS_OP_N,
                m: k as i32,
                n: n as i32,
                k: r as i32,
                alpha: bf16::from_f32(scale),
                lda: k as i32,
                ldb: r as i32,
                beta: bf16::ONE,
                ldc: k as i32,
            };
            let dense_ms = time_ms(&s, 10, 15, || {
                s.memcpy_dtod(&w, &mut dense).unwrap();
                unsafe { blas.gemm(materialise, &a, &b, &mut dense).unwrap() };
            });
            // The same norm on the CUDA-core row pass (the tensor-core kernel is the default where it
            // applies: 16-bit W, rank <= 128).
            std::env::set_var("LORA_KERNELS_DORA_NORM", "cuda-cores");
            let rows_ms = time_ms(&s, 10, 15, || {
                gpu.dora_weight_norm(&w, adapter, k, n, &mut norm).unwrap()
            });
            std::env::remove_var("LORA_KERNELS_DORA_NORM");
            let bytes = (2 * (n * k + r * (k + n)) + 4 * n) as f64;
            norm_rows.push((
                k,
                n,
                r,
                norm_ms,
                rows_ms,
                dense_ms,
                bytes / (norm_ms * 1e-3) / 1e9,
            ));
            c.bench_function(&format!("dora_weight_norm_bf16/k{k}_n{n}_r{r}"), |bch| {
                bch.iter_custom(|iters| {
                    let ms = time_ms(&s, iters as usize, 1, || {
                        gpu.dora_weight_norm(&w, adapter, k, n, &mut norm).unwrap()
                    });
                    Duration::from_secs_f64(ms * 1e-3 * iters as f64)
                })
            });

            let factor = gpu.dora_factor(&w, adapter, &magnitude, k, n).unwrap();
            let bias = up(random_bf16(n, 5, 0.1));
            let bias_view = bias.slice(..);
            for &m in MS {
                let shape = LoraShape::new(m, k, n);
                let (x, base) = (
                    up(random_bf16(m * k, 6, 1.0)),
                    up(random_bf16(m * n, 7, 1.0)),
                );
                let mut y = s.alloc_zeros::<bf16>(m * n).unwrap();
                let calls = if m >= 512 { 10 } else { 50 };
                let dora_ms = time_ms(&s, calls, 15, || {
                    gpu.dora_forward(
                        &x,
                        &base,
                        Some(&bias_view),
                        lora_kernels::DoraAdapter::new(adapter, &factor),
                        shape,
                        &mut y,
                    )
                    .unwrap()
                });
                let lora_ms = time_ms(&s, calls, 15, || {
                    gpu.lora_forward(&x, &base, &[adapter], shape, &mut y)
                        .unwrap()
                });
                fwd_rows.push((m, k, n, r, dora_ms, lora_ms));
            }
        }
    }
    println!("\nDoRA weight norm, bf16, on {}", gpu.name());
    println!(
        "{:>5} {:>6} {:>3} {:>9} {:>13} {:>15} {:>8} {:>7}",
        "K", "N", "r", "norm us", "cuda-core us", "W+sBA cuBLAS us", "GB/s", "%copy"
    );
    for (k, n, r, norm, rows, dense, gbs) in &norm_rows {
        println!(
            "{k:>5} {n:>6} {r:>3} {:>9.2} {:>13.2} {:>15.2} {gbs:>8.0} {:>6.1}%",
            norm * 1e3,
            rows * 1e3,
            dense * 1e3,
            100.0 * gbs / copy_gbs
        );
    }
    println!(
        "\nDoRA forward with the cached factor vs the fused LoRA forward, bf16, on {}",
        gpu.name()
    );
    println!(
        "{:>5} {:>5} {:>6} {:>3} {:>9} {:>9} {:>7}",
        "M", "K", "N", "r", "dora us", "lora us", "ratio"
    );
    for (m, k, n, r, d, l) in &fwd_rows {
        println!(
            "{m:>5} {k:>5} {n:>6} {r:>3} {:>9.2} {:>9.2} {:>6.3}x",
            d * 1e3,
            l * 1e3,
            d / l
        );
    }
    let norms: Vec<String> = norm_rows
        .iter()
        .map(|(k, n, r, a, c, b, g)| format!("{{\"k\":{k},\"n\":{n},\"r\":{r},\"norm_ms\":{a},\"cuda_core_norm_ms\":{c},\"dense_ms\":{b},\"gbs\":{g}}}"))
        .collect();
    let fwds: Vec<String> = fwd_rows
        .iter()
        .map(|(m, k, n, r, d, l)| {
            format!("{{\"m\":{m},\"k\":{k},\"n\":{n},\"r\":{r},\"dora_ms\":{d},\"lora_ms\":{l}}}")
        })
        .collect();
    common::write_bench_json(
        gpu.name(),
        copy_gbs,
        &[
            ("norm", format!("[{}]", norms.join(","))),
            ("forward", format!("[{}]", fwds.join(","))),
        ],
    );
}

fn cpu_benches(c: &mut Criterion) {
    println!(
        "no CUDA device: benchmarking the CPU reference of the DoRA norm (f64), not the kernels"
    );
    let (k, n, r) = (512, 256, 16);
    let (w, a, b) = (
        random_bf16(n * k, 1, 0.02),
        random_bf16(r * k, 2, 0.02),
        random_bf16(n * r, 3, 0.02),
    );
    c.bench_function(
        &format!("dora_weight_norm_cpu_reference/k{k}_n{n}_r{r}"),
        |bch| {
            bch.iter(|| {
                reference::dora_weight_norm(&w, LoraAdapter::new(&a[..], &b[..], r, 2.0), k, n)
                    .unwrap()
            })
        },
    );
}

fn benches(c: &mut Criterion) {
    common::gpu_or_cpu(c, gpu_benches, cpu_benches);
}

criterion_group! {
    name = dora;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(dora);
