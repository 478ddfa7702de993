//! Fused LoRA forward against the unfused cuBLAS sequence peft runs, timed with CUDA events in the
//! same run, on Llama-like shapes (bf16; K=N=4096 and K=4096/N=14336; ranks 8, 16, 64; M = 1, 16,
//! 512, 4096).
//!
//! - fused:   `Gpu::lora_forward`, one launch.
//! - unfused: cuBLAS gemm h = x·Aᵀ, a copy of base into y, cuBLAS gemm y = s·h·Bᵀ + y: three launches
//!   that move the same bytes as peft's gemm, gemm, scale-and-add.
//!
//! Each figure is the median over repetitions of back-to-back launches bracketed by CUDA events
//! (launch gaps included, as a serving loop sees them). Also reported: achieved GB/s over the fused
//! kernel's minimum bytes (x, base, A, B read once, y written once) and that as a percentage of the
//! device-to-device copy bandwidth measured in the same run. The table goes to stdout and, with
//! `LORA_KERNELS_BENCH_OUT=path`, to a JSON file. Without a GPU the CPU reference is benchmarked
//! instead, and the output says so.
mod common;

use common::{copy_bandwidth_gbs, random_bf16, time_ms};
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use lora_kernels::lora::reference;
use lora_kernels::{Gpu, LoraAdapter, LoraShape};
use std::sync::Arc;
use std::time::Duration;

const SHAPES: &[(usize, usize)] = &[(4096, 4096), (4096, 14336)];
const RANKS: &[usize] = &[8, 16, 64];
const MS: &[usize] = &[1, 16, 512, 4096];

/// Device buffers of one problem.
struct Problem {
    shape: LoraShape,
    rank: usize,
    scale: f32,
    x: CudaSlice<bf16>,
    base: CudaSlice<bf16>,
    a: CudaSlice<bf16>,
    b: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
    hidden: CudaSlice<bf16>,
}

impl Problem {
    fn new(stream: &Arc<CudaStream>, m: usize, k: usize, n: usize, r: usize) -> Self {
        let up = |v: Vec<bf16>| stream.clone_htod(&v).unwrap();
        Problem {
            shape: LoraShape::new(m, k, n),
            rank: r,
            scale: 2.0,
            x: up(random_bf16(m * k, 1, 1.0)),
            base: up(random_bf16(m * n, 2, 1.0)),
            a: up(random_bf16(r * k, 3, 0.02)),
            b: up(random_bf16(n * r, 4, 0.02)),
            y: stream.alloc_zeros(m * n).unwrap(),
            hidden: stream.alloc_zeros(m * r).unwrap(),
        }
    }

    fn fused(&mut self, gpu: &Gpu) {
        let adapter = LoraAdapter::new(&self.a, &self.b, self.rank, self.scale);
        gpu.lora_forward(&self.x, &self.base, &[adapter], self.shape, &mut self.y)
            .unwrap();
    }

    fn unfused(&mut self, stream: &Arc<CudaStream>, blas: &CudaBlas) {
        let LoraShape { m, k, n } = self.shape;
        let r = self.rank as i32;
        let (m, k, n) = (m as i32, k as i32, n as i32);
        // Row-major h[m, r] = x[m, k] · A[r, k]ᵀ is column-major hᵀ[r, m] = A · xᵀ.
        let shrink = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: r,
            n: m,
            k,
            alpha: bf16::ONE,
            lda: k,
            ldb: k,
            beta: bf16::ZERO,
            ldc: r,
        };
        // y[m, n] = s · h[m, r] · B[n, r]ᵀ + y is column-major yᵀ[n, m] = s · B · hᵀ + yᵀ.
        let expand = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n,
            n: m,
            k: r,
            alpha: bf16::from_f32(self.scale),
            lda: r,
            ldb: r,
            beta: bf16::ONE,
            ldc: n,
        };
        unsafe {
            blas.gemm(shrink, &self.a, &self.x, &mut self.hidden)
                .unwrap();
            stream.memcpy_dtod(&self.base, &mut self.y).unwrap();
            blas.gemm(expand, &self.b, &self.hidden, &mut self.y)
                .unwrap();
        }
    }

    /// Minimum bytes of the fused op: x, base, A, B read once, y written once.
    fn bytes(&self) -> f64 {
        let LoraShape { m, k, n } = self.shape;
        (2 * (m * k + 2 * m * n + self.rank * (k + n))) as f64
    }
}

fn gpu_benches(c: &mut Criterion, gpu: &Gpu) {
    let stream = gpu.stream().clone();
    // Benchmarks manage their own ordering: skip cudarc's per-buffer event tracking so host overhead
    // does not stand between launches (the baseline gets the same treatment).
    unsafe { stream.context().disable_event_tracking() };
    let blas = CudaBlas::new(stream.clone()).unwrap();
    let copy_gbs = copy_bandwidth_gbs(&stream);
    println!(
        "device: {} ({} SMs), copy bandwidth {copy_gbs:.0} GB/s (read + write)",
        gpu.name(),
        gpu.sm_count()
    );
    let mut rows = Vec::new();
    for &(k, n) in SHAPES {
        for &r in RANKS {
            for &m in MS {
                let mut p = Problem::new(&stream, m, k, n, r);
                let calls = if m >= 512 { 10 } else { 50 };
                let fused_ms = time_ms(&stream, calls, 15, || p.fused(gpu));
                let unfused_ms = time_ms(&stream, calls, 15, || p.unfused(&stream, &blas));
                let gbs = p.bytes() / (fused_ms * 1e-3) / 1e9;
                let floor_ms = p.bytes() / (copy_gbs * 1e9) * 1e3;
                rows.push((m, k, n, r, fused_ms, unfused_ms, gbs, floor_ms));
                let name = format!("m{m}_k{k}_n{n}_r{r}");
                let mut group = c.benchmark_group(format!("lora_forward_bf16/{name}"));
                group.bench_function("fused", |bch| {
                    bch.iter_custom(|iters| {
                        Duration::from_secs_f64(
                            time_ms(&stream, iters as usize, 1, || p.fused(gpu))
                                * 1e-3
                                * iters as f64,
                        )
                    })
                });
                group.bench_function("unfused_cublas", |bch| {
                    bch.iter_custom(|iters| {
                        Duration::from_secs_f64(
                            time_ms(&stream, iters as usize, 1, || p.unfused(&stream, &blas))
                                * 1e-3
                                * iters as f64,
                        )
                    })
                });
                group.finish();
            }
        }
    }
    println!(
        "\nfused LoRA forward vs unfused cuBLAS (gemm, copy, gemm), bf16, on {}",
        gpu.name()
    );
    println!(
        "{:>5} {:>5} {:>6} {:>3} {:>10} {:>10} {:>8} {:>8} {:>7} {:>9}",
        "M", "K", "N", "r", "fused us", "cublas us", "speedup", "GB/s", "%copy", "floor us"
    );
    let mut json = Vec::new();
    for (m, k, n, r, f, u, gbs, floor) in &rows {
        println!(
            "{m:>5} {k:>5} {n:>6} {r:>3} {:>10.2} {:>10.2} {:>7.2}x {gbs:>8.0} {:>6.1}% {:>9.2}",
            f * 1e3,
            u * 1e3,
            u / f,
            100.0 * gbs / copy_gbs,
            floor * 1e3
        );
        json.push(format!(
            "{{\"m\":{m},\"k\":{k},\"n\":{n},\"r\":{r},\"fused_ms\":{f},\"unfused_ms\":{u},\"gbs\":{gbs},\"floor_ms\":{floor}}}"
        ));
    }
    common::write_bench_json(
        gpu.name(),
        copy_gbs,
        &[("rows", format!("[{}]", json.join(",")))],
    );
}

fn cpu_benches(c: &mut Criterion) {
    println!("no CUDA device: benchmarking the CPU reference (f64 accumulation), not the kernels");
    let (m, k, n, r) = (4, 512, 512, 16);
    let f = |len, seed| random_bf16(len, seed, 1.0);
    let (x, base, a, b) = (f(m * k, 1), f(m * n, 2), f(r * k, 3), f(n * r, 4));
    c.bench_function(
        &format!("lora_forward_cpu_reference/m{m}_k{k}_n{n}_r{r}"),
        |bch| {
            bch.iter(|| {
                let adapter = LoraAdapter::new(&a[..], &b[..], r, 2.0);
                reference::lora_forward(&x, &base, &[adapter], LoraShape::new(m, k, n)).unwrap()
            })
        },
    );
}

fn benches(c: &mut Criterion) {
    common::gpu_or_cpu(c, gpu_benches, cpu_benches);
}

criterion_group! {
    name = lora;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(lora);
