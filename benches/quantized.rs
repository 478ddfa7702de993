//! Quantised-weight products from decode to prefill sizes (bf16 activations; K=4096/N=14336 and
//! K=8192/N=28672; M = 1, 4, 16 on the GEMV kernels, M = 32, 64, 4096 on the tiled kernel), timed with
//! CUDA events in one run:
//!
//! - `Gpu::quant4_linear` on NF4 (blocksize 64, plain and double-quantised absmax),
//! - `Gpu::int8_linear` (weight-only),
//! - `Gpu::linear`, the crate's tiled dense product (the base of its layers),
//! - `Gpu::quantized_lora_forward` on the NF4 weight with a rank-16 adapter (QLoRA; the adapter in
//!   the GEMV epilogue up to 8 rows),
//! - above 8 rows, NF4 on the GEMV kernel in 8-row passes too (`LORA_KERNELS_GEMV_MAX_M`), to
//!   place the GEMV/tiled crossover from measurements,
//! - cuBLAS bf16 on the dense weight (the baseline), and NF4 and int8 dequantise-then-cuBLAS.
//!
//! Reported: time, achieved GB/s over the bytes the kernel must move (packed weight + absmax + x + y)
//! as a share of the copy bandwidth measured in the same run, and the speedup over cuBLAS bf16. The
//! weights are random bytes in the right layout (the timing does not depend on their values). The table
//! goes to stdout and, with `LORA_KERNELS_BENCH_OUT=path`, to a JSON file. Without a GPU this says so
//! and benchmarks the CPU dequantisation reference instead.
mod common;

use common::{copy_bandwidth_gbs, random_bf16, time_ms};
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use half::bf16;
use lora_kernels::int8::Int8Weight;
use lora_kernels::linear::QuantizedWeight;
use lora_kernels::quant4::{reference, Absmax, Quant4Weight, QuantType, NF4_CODE};
use lora_kernels::{DType, Gpu, LoraAdapter};
use std::time::Duration;

const SHAPES: &[(usize, usize)] = &[(4096, 14336), (8192, 28672)];
const MS: &[usize] = &[1, 4, 16, 32, 64, 4096];

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    common::Rng::new(seed).bytes(len)
}

fn nf4(n: usize, k: usize, nested: bool) -> Quant4Weight {
    let blocks = (n * k).div_ceil(64);
    let absmax = if nested {
        Absmax::Nested {
            codes: random_bytes(blocks, 3),
            nested_absmax: vec![0.01; blocks.div_ceil(256)],
            nested_code: reference::dynamic_map(),
            nested_blocksize: 256,
            offset: 0.02,
        }
    } else {
        Absmax::Plain(
            random_bytes(blocks, 4)
                .iter()
                .map(|&b| 0.01 + b as f32 * 1e-4)
                .collect(),
        )
    };
    Quant4Weight {
        quant_type: QuantType::Nf4,
        blocksize: 64,
        shape: [n, k],
        dtype: DType::BF16,
        packed: random_bytes((n * k).div_ceil(2), 5),
        absmax,
        code: NF4_CODE,
    }
}

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
    let mut rows = Vec::new();
    for &(k, n) in SHAPES {
        let dense = s.clone_htod(&random_bf16(n * k, 1, 0.02)).unwrap();
        let plain = gpu.upload_quant4(&nf4(n, k, false)).unwrap();
        let nested = gpu.upload_quant4(&nf4(n, k, true)).unwrap();
        let int8 = Int8Weight {
            shape: [n, k],
            cb: random_bytes(n * k, 6)
                .iter()
                .map(|&b| (b as i8).max(-127))
                .collect(),
            scb: vec![0.05; n],
        };
        let int8 = gpu.upload_int8(&int8).unwrap();
        let mut scratch = s.alloc_zeros::<bf16>(n * k).unwrap();
        let lora_a = s.clone_htod(&random_bf16(16 * k, 7, 0.02)).unwrap();
        let lora_b = s.clone_htod(&random_bf16(n * 16, 8, 0.02)).unwrap();
        for &m in MS {
            let x = s.clone_htod(&random_bf16(m * k, 2, 1.0)).unwrap();
            let mut y = s.alloc_zeros::<bf16>(m * n).unwrap();
            // Row-major y[m, n] = x[m, k] · W[n, k]ᵀ is column-major yᵀ = W · xᵀ.
            let cfg = GemmConfig {
                transa: cublasOperation_t::CUBLAS_OP_T,
                transb: cublasOperation_t::CUBLAS_OP_N,
                m: n as i32,
                n: m as i32,
                k: k as i32,
                alpha: bf16::ONE,
                lda: k as i32,
                ldb: k as i32,
                beta: bf16::ZERO,
                ldc: n as i32,
            };
            let cublas_ms = time_ms(&s, 20, 15, || unsafe {
                blas.gemm(cfg, &dense, &x, &mut y).unwrap()
            });
            let nf4_ms = time_ms(&s, 20, 15, || {
                gpu.quant4_linear(&x, &plain, None, m, &mut y).unwrap()
            });
            let nf4_dq_ms = time_ms(&s, 20, 15, || {
                gpu.quant4_linear(&x, &nested, None, m, &mut y).unwrap()
            });
            let int8_ms = time_ms(&s, 20, 15, || {
                gpu.int8_linear(&x, &int8, None, m, &mut y).unwrap()
            });
            let dense_ms = time_ms(&s, 20, 15, || {
                let shape = lora_kernels::LoraShape::new(m, k, n);
                gpu.linear(&x, &dense, None, shape, &mut y).unwrap()
            });
            let deq_ms = time_ms(&s, 10, 15, || {
                gpu.quant4_dequantize(&plain, &mut scratch).unwrap();
                unsafe { blas.gemm(cfg, &scratch, &x, &mut y).unwrap() };
            });
            // Above 8 rows: the same NF4 product on the GEMV kernel in 8-row passes (the other side of
            // the crossover, to place GEMV_MAX_M from measurements).
            let nf4_gemv_ms = if m > 8 {
                std::env::set_var("LORA_KERNELS_GEMV_MAX_M", "1000000");
                let ms = time_ms(&s, 20, 15, || {
                    gpu.quant4_linear(&x, &plain, None, m, &mut y).unwrap()
                });
                std::env::remove_var("LORA_KERNELS_GEMV_MAX_M");
                ms
            } else {
                nf4_ms
            };
            // QLoRA: the same NF4 product with a rank-16 adapter (in the GEMV epilogue at M <= 8).
            let nf4_lora_ms = time_ms(&s, 20, 15, || {
                gpu.quantized_lora_forward(
                    &x,
                    QuantizedWeight::Quant4(&plain),
                    None,
                    &[LoraAdapter::new(&lora_a, &lora_b, 16, 2.0)],
                    m,
                    &mut y,
                )
                .unwrap()
            });
            let int8_deq_ms = time_ms(&s, 10, 15, || {
                gpu.int8_dequantize(&int8, &mut scratch).unwrap();
                unsafe { blas.gemm(cfg, &scratch, &x, &mut y).unwrap() };
            });
            let act = (2 * (m * k + m * n)) as f64;
            let nf4_bytes = (n * k) as f64 / 2.0 + 4.0 * (n * k / 64) as f64 + act;
            let nf4_dq_bytes = (n * k) as f64 / 2.0 + (n * k / 64) as f64 + act;
            let int8_bytes = (n * k) as f64 + 4.0 * n as f64 + act;
            rows.push((
                m,
                k,
                n,
                cublas_ms,
                nf4_ms,
                nf4_dq_ms,
                int8_ms,
                dense_ms,
                deq_ms,
                int8_deq_ms,
                nf4_lora_ms,
                nf4_gemv_ms,
                nf4_bytes,
                nf4_dq_bytes,
                int8_bytes,
            ));
            c.bench_function(&format!("quant4_linear_nf4/m{m}_k{k}_n{n}"), |bch| {
                bch.iter_custom(|iters| {
                    let ms = time_ms(&s, iters as usize, 1, || {
                        gpu.quant4_linear(&x, &plain, None, m, &mut y).unwrap()
                    });
                    Duration::from_secs_f64(ms * 1e-3 * iters as f64)
                })
            });
        }
    }
    println!(
        "\nquantised products vs cuBLAS bf16 (dense), bf16 activations, on {}",
        gpu.name()
    );
    println!(
        "{:>4} {:>5} {:>6} {:>9} {:>8} {:>6} {:>9} {:>6} {:>8} {:>6} {:>8} {:>6} {:>10} {:>11} {:>11} {:>11}",
        "M",
        "K",
        "N",
        "cuBLAS us",
        "nf4 us",
        "x",
        "nf4dq us",
        "x",
        "int8 us",
        "x",
        "dense us",
        "x",
        "deq+gemm",
        "i8 deq+gemm",
        "nf4+lora us",
        "nf4 gemv us"
    );
    let mut json = Vec::new();
    for (m, k, n, cb, q, qd, i8, dn, dq, i8dq, ql, qg, qb, qdb, ib) in &rows {
        println!(
            "{m:>4} {k:>5} {n:>6} {:>9.2} {:>8.2} {:>5.2}x {:>9.2} {:>5.2}x {:>8.2} {:>5.2}x {:>8.2} {:>5.2}x {:>10.2} {:>11.2} {:>11.2} {:>11.2}",
            cb * 1e3,
            q * 1e3,
            cb / q,
            qd * 1e3,
            cb / qd,
            i8 * 1e3,
            cb / i8,
            dn * 1e3,
            cb / dn,
            dq * 1e3,
            i8dq * 1e3,
            ql * 1e3,
            qg * 1e3
        );
        println!(
            "{:>26} GB/s: nf4 {:.0} ({:.0}% of copy), nf4dq {:.0} ({:.0}%), int8 {:.0} ({:.0}%)",
            "",
            qb / (q * 1e-3) / 1e9,
            100.0 * qb / (q * 1e-3) / 1e9 / copy_gbs,
            qdb / (qd * 1e-3) / 1e9,
            100.0 * qdb / (qd * 1e-3) / 1e9 / copy_gbs,
            ib / (i8 * 1e-3) / 1e9,
            100.0 * ib / (i8 * 1e-3) / 1e9 / copy_gbs
        );
        json.push(format!(
            "{{\"m\":{m},\"k\":{k},\"n\":{n},\"cublas_ms\":{cb},\"nf4_ms\":{q},\"nf4_dq_ms\":{qd},\"int8_ms\":{i8},\"dense_linear_ms\":{dn},\"dequant_gemm_ms\":{dq},\"int8_dequant_gemm_ms\":{i8dq},\"nf4_lora_ms\":{ql},\"nf4_gemv_ms\":{qg}}}"
        ));
    }
    common::write_bench_json(
        gpu.name(),
        copy_gbs,
        &[("rows", format!("[{}]", json.join(",")))],
    );
}

fn cpu_benches(c: &mut Criterion) {
    println!("no CUDA device: benchmarking the CPU dequantisation reference, not the kernels");
    let w = nf4(256, 512, false);
    c.bench_function("quant4_dequantize_cpu_reference/n256_k512", |bch| {
        bch.iter(|| reference::dequantize::<bf16>(&w).unwrap())
    });
}

fn benches(c: &mut Criterion) {
    common::gpu_or_cpu(c, gpu_benches, cpu_benches);
}

criterion_group! {
    name = quantized;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(quantized);
