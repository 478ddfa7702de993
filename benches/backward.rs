//! The training backward (`src/lora_backward`, `kernels/lora_backward.cu`) on Llama-like shapes (bf16;
//! K = N = 4096 at m = 512, 4096 and 16384 tokens, K = 4096 / N = 14336 at m = 512; ranks 16 and 64),
//! each path and its baseline timed with CUDA events in the same run:
//!
//! - LoRA: `Gpu::lora_backward` with a dense W (dX, dA, dB) against the unfused cuBLAS sequence peft's
//!   autograd runs, six bf16 GEMMs: L = x·Aᵀ, H = G·B, dB = s·Gᵀ·L, dA = s·Hᵀ·x, dX = G·W,
//!   dX += s·H·A;
//! - DoRA: `Gpu::dora_backward` (dX, dA, dB, d magnitude; the detached norm from the forward's
//!   `DoraFactor::norms`) against a lower bound on peft's unfused path: the six GEMMs above on G ⊙ f,
//!   the elementwise G ⊙ f and the magnitude column sum each as a device copy of the same bytes (m·n
//!   read and m·n written: no elementwise kernel moves them faster), and the cuBLAS B·A `[n, k]` that
//!   peft materialises for the norm every step. peft runs more elementwise passes than that, so its
//!   real time is higher. The row `dora+norm` adds the crate's own per-step norm pass
//!   (`Gpu::dora_weight_norm`, which a training step runs in the forward) to the fused side, against
//!   the same baseline;
//! - QLoRA: `Gpu::lora_backward` with an NF4 W (blocksize 64, plain absmax; `DxWeight::Quantized`,
//!   dequantised on the fly) against dequantise-then-cuBLAS (`Gpu::quant4_dequantize` into a bf16
//!   buffer, then the six GEMMs), the way Unsloth and bitsandbytes run it; and `qlora dX`, the base
//!   term dX = G·dequant(W) alone (no adapter) against the dequantisation and one GEMM.
//!
//! The fused calls include what `backward_chain` allocates (stream-ordered: the f32 L and H scratch
//! and the gradients); the baselines' buffers are allocated once, outside the timing. Reported per row:
//! time, the ratio baseline / fused, achieved GB/s and TFLOP/s, and the floor: the larger of the
//! memory floor (each input read once and each output written once, over the device-to-device copy
//! bandwidth measured in the same run) and the compute floor (the FLOPs over the cuBLAS bf16 rate of an
//! 8192³ GEMM measured in the same run), with the fused time's share of it.
//!
//! Targets (`shared/docs/performance.md`), not results: ≥ 1.5× the unfused cuBLAS sequence, ≥ 2× for
//! DoRA, ≥ 2× dequantise-then-cuBLAS for the QLoRA dX at m ≤ 512.
//!
//! The table goes to stdout and, with `LORA_KERNELS_BENCH_OUT=path`, to a JSON file. Without a GPU the
//! CPU reference of the LoRA backward is benchmarked instead on a tiny shape, and the output says so.
mod common;

use common::{copy_bandwidth_gbs, random_bf16, time_ms};
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;
use lora_kernels::linear::QuantizedWeight;
use lora_kernels::lora_backward::{reference, DoraSaved, DxWeight};
use lora_kernels::quant4::QuantType;
use lora_kernels::{Gpu, LoraAdapter, LoraShape};
use std::time::Duration;

/// (K, N, token counts m).
const CASES: &[(usize, usize, &[usize])] =
    &[(4096, 4096, &[512, 4096, 16384]), (4096, 14336, &[512])];
const RANKS: &[usize] = &[16, 64];
const SCALE: f32 = 2.0;

/// Row-major `c [m, n] = alpha · op(a) · op(b) + beta · c` with `op(a)` `[m, depth]` (`a` stored as
/// `[depth, m]` when `a_t`) and `op(b)` `[depth, n]` (`b` stored as `[n, depth]` when `b_t`): the
/// column-major product cᵀ = op(b)ᵀ · op(a)ᵀ.
#[allow(clippy::too_many_arguments)]
fn gemm(
    blas: &CudaBlas,
    (m, n, depth): (usize, usize, usize),
    a: &impl DevicePtr<bf16>,
    a_t: bool,
    b: &impl DevicePtr<bf16>,
    b_t: bool,
    alpha: f32,
    beta: f32,
    c: &mut impl DevicePtrMut<bf16>,
) {
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    let cfg = GemmConfig {
        transa: op(b_t),
        transb: op(a_t),
        m: n as i32,
        n: m as i32,
        k: depth as i32,
        alpha: bf16::from_f32(alpha),
        lda: if b_t { depth } else { n } as i32,
        ldb: if a_t { m } else { depth } as i32,
        beta: bf16::from_f32(beta),
        ldc: n as i32,
    };
    unsafe { blas.gemm(cfg, b, a, c).unwrap() };
}

/// The baselines' buffers, allocated once.
struct Scratch {
    l: CudaSlice<bf16>,
    h: CudaSlice<bf16>,
    da: CudaSlice<bf16>,
    db: CudaSlice<bf16>,
}

/// The six GEMMs of peft's autograd for one LoRA adapter: L = x·Aᵀ, H = G·B, dB = s·Gᵀ·L,
/// dA = s·Hᵀ·x, dX = G·W, dX += s·H·A.
#[allow(clippy::too_many_arguments)]
fn cublas_lora_backward(
    blas: &CudaBlas,
    shape: LoraShape,
    r: usize,
    x: &CudaSlice<bf16>,
    g: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    a: &CudaSlice<bf16>,
    b: &CudaSlice<bf16>,
    sc: &mut Scratch,
    dx: &mut CudaSlice<bf16>,
) {
    let LoraShape { m, k, n } = shape;
    gemm(blas, (m, r, k), x, false, a, true, 1.0, 0.0, &mut sc.l);
    gemm(blas, (m, r, n), g, false, b, false, 1.0, 0.0, &mut sc.h);
    gemm(
        blas,
        (n, r, m),
        g,
        true,
        &sc.l,
        false,
        SCALE,
        0.0,
        &mut sc.db,
    );
    gemm(
        blas,
        (r, k, m),
        &sc.h,
        true,
        x,
        false,
        SCALE,
        0.0,
        &mut sc.da,
    );
    gemm(blas, (m, k, n), g, false, w, false, 1.0, 0.0, dx);
    gemm(blas, (m, k, r), &sc.h, false, a, false, SCALE, 1.0, dx);
}

/// One row of the table.
struct Row {
    path: &'static str,
    m: usize,
    k: usize,
    n: usize,
    r: usize,
    fused_ms: f64,
    baseline_ms: f64,
    bytes: f64,
    flops: f64,
}

fn gpu_benches(c: &mut Criterion, gpu: &Gpu) {
    let s = gpu.stream().clone();
    unsafe { s.context().disable_event_tracking() };
    let blas = CudaBlas::new(s.clone()).unwrap();
    let copy_gbs = copy_bandwidth_gbs(&s);
    // The compute floor's rate: one 8192³ bf16 GEMM on cuBLAS.
    let gemm_tflops = {
        let d = 8192;
        let (p, q) = (
            s.clone_htod(&random_bf16(d * d, 11, 1.0)).unwrap(),
            s.clone_htod(&random_bf16(d * d, 12, 1.0)).unwrap(),
        );
        let mut o = s.alloc_zeros::<bf16>(d * d).unwrap();
        let ms = time_ms(&s, 3, 7, || {
            gemm(&blas, (d, d, d), &p, false, &q, false, 1.0, 0.0, &mut o)
        });
        2.0 * (d * d * d) as f64 / (ms * 1e-3) / 1e12
    };
    println!(
        "device: {} ({} SMs), copy bandwidth {copy_gbs:.0} GB/s (read + write), cuBLAS bf16 {gemm_tflops:.0} TFLOP/s (8192^3)",
        gpu.name(),
        gpu.sm_count()
    );
    let up = |v: &[bf16]| s.clone_htod(v).unwrap();
    let mut rows: Vec<Row> = Vec::new();
    for &(k, n, ms) in CASES {
        let m_max = *ms.iter().max().unwrap();
        let w_host = random_bf16(n * k, 1, 1.0 / (k as f32).sqrt());
        let w = up(&w_host);
        let nf4 =
            lora_kernels::quant4::reference::quantize(&w_host, [n, k], 64, QuantType::Nf4, false)
                .unwrap();
        let nf4 = gpu.upload_quant4(&nf4).unwrap();
        drop(w_host);
        let nf4_bytes = (n * k) as f64 / 2.0 + 4.0 * (n * k).div_ceil(64) as f64;
        let mut w_deq = s.alloc_zeros::<bf16>(n * k).unwrap();
        let mut ba = s.alloc_zeros::<bf16>(n * k).unwrap();
        let x_host = random_bf16(m_max * k, 2, 1.0);
        let g_host = random_bf16(m_max * n, 3, 1.0);
        let base_host = random_bf16(m_max * n, 4, 1.0);
        for &m in ms {
            let shape = LoraShape::new(m, k, n);
            let (x, g, base) = (
                up(&x_host[..m * k]),
                up(&g_host[..m * n]),
                up(&base_host[..m * n]),
            );
            let mut dx = s.alloc_zeros::<bf16>(m * k).unwrap();
            let mut g_f = s.alloc_zeros::<bf16>(m * n).unwrap();
            let mut colsum = s.alloc_zeros::<bf16>(m * n).unwrap();
            let (calls, reps) = match m {
                m if m >= 16384 => (1, 5),
                m if m >= 4096 => (2, 7),
                _ => (5, 11),
            };
            for &r in RANKS {
                let a = up(&random_bf16(r * k, 5, 1.0 / (k as f32).sqrt()));
                let b = up(&random_bf16(n * r, 6, 0.5 / (r as f32).sqrt()));
                let magnitude = up(&random_bf16(n, 7, 1.0));
                let adapter = LoraAdapter::new(&a, &b, r, SCALE);
                let factor = gpu.dora_factor(&w, adapter, &magnitude, k, n).unwrap();
                let mut norm = s.alloc_zeros::<f32>(n).unwrap();
                let mut sc = Scratch {
                    l: s.alloc_zeros(m * r).unwrap(),
                    h: s.alloc_zeros(m * r).unwrap(),
                    da: s.alloc_zeros(r * k).unwrap(),
                    db: s.alloc_zeros(n * r).unwrap(),
                };
                let dora = DoraSaved {
                    magnitude: &magnitude,
                    norm: factor.norms(),
                    base: &base,
                    bias: None,
                };
                let lora_ms = time_ms(&s, calls, reps, || {
                    gpu.lora_backward(
                        &x,
                        &g,
                        DxWeight::Dense(&w),
                        &[adapter],
                        shape,
                        &mut dx,
                        false,
                    )
                    .unwrap();
                });
                let cublas_ms = time_ms(&s, calls, reps, || {
                    cublas_lora_backward(&blas, shape, r, &x, &g, &w, &a, &b, &mut sc, &mut dx)
                });
                let dora_ms = time_ms(&s, calls, reps, || {
                    gpu.dora_backward(
                        &x,
                        &g,
                        DxWeight::Dense(&w),
                        adapter,
                        dora,
                        shape,
                        &mut dx,
                        false,
                    )
                    .unwrap();
                });
                let dora_norm_ms = time_ms(&s, calls, reps, || {
                    gpu.dora_weight_norm(&w, adapter, k, n, &mut norm).unwrap();
                    gpu.dora_backward(
                        &x,
                        &g,
                        DxWeight::Dense(&w),
                        adapter,
                        dora,
                        shape,
                        &mut dx,
                        false,
                    )
                    .unwrap();
                });
                let peft_dora_ms = time_ms(&s, calls, reps, || {
                    s.memcpy_dtod(&g, &mut g_f).unwrap(); // G ⊙ f
                    s.memcpy_dtod(&base, &mut colsum).unwrap(); // the magnitude column sum
                    gemm(&blas, (n, k, r), &b, false, &a, false, 1.0, 0.0, &mut ba); // B·A
                    cublas_lora_backward(&blas, shape, r, &x, &g_f, &w, &a, &b, &mut sc, &mut dx)
                });
                let quant = DxWeight::Quantized(QuantizedWeight::Quant4(&nf4));
                let qlora_ms = time_ms(&s, calls, reps, || {
                    gpu.lora_backward(&x, &g, quant, &[adapter], shape, &mut dx, false)
                        .unwrap();
                });
                let deq_ms = time_ms(&s, calls, reps, || {
                    gpu.quant4_dequantize(&nf4, &mut w_deq).unwrap();
                    cublas_lora_backward(&blas, shape, r, &x, &g, &w_deq, &a, &b, &mut sc, &mut dx)
                });
                let no_adapters: &[LoraAdapter<'_, CudaSlice<bf16>>] = &[];
                let qdx_ms = time_ms(&s, calls, reps, || {
                    gpu.lora_backward(&x, &g, quant, no_adapters, shape, &mut dx, false)
                        .unwrap();
                });
                let deq_dx_ms = time_ms(&s, calls, reps, || {
                    gpu.quant4_dequantize(&nf4, &mut w_deq).unwrap();
                    gemm(
                        &blas,
                        (m, k, n),
                        &g,
                        false,
                        &w_deq,
                        false,
                        1.0,
                        0.0,
                        &mut dx,
                    );
                });

                // Bytes: inputs read once, outputs written once (bf16 unless said).
                let adapter_bytes = 2.0 * (2 * (r * k + n * r)) as f64; // A, B in; dA, dB out
                let act = 2.0 * (m * k + m * n + m * k) as f64; // x, G in; dX out
                let dense_w = 2.0 * (n * k) as f64;
                let dora_extra = (2 * n + 4 * n + 2 * m * n + 2 * n) as f64; // magnitude, norm, base, dmag
                let flops = 2.0 * (m * n * k) as f64 + 2.0 * (m * r * (3 * k + 2 * n)) as f64;
                let row = |path, fused_ms, baseline_ms, bytes, flops| Row {
                    path,
                    m,
                    k,
                    n,
                    r,
                    fused_ms,
                    baseline_ms,
                    bytes,
                    flops,
                };
                rows.push(row(
                    "lora",
                    lora_ms,
                    cublas_ms,
                    act + dense_w + adapter_bytes,
                    flops,
                ));
                let dora_bytes = act + dense_w + adapter_bytes + dora_extra;
                rows.push(row("dora", dora_ms, peft_dora_ms, dora_bytes, flops));
                // The norm pass reads W, A and B once more and writes the f32 norm.
                let norm_bytes = dense_w + 2.0 * (r * k + n * r) as f64 + 4.0 * n as f64;
                let norm_flops = 2.0 * (n * k * r) as f64;
                rows.push(row(
                    "dora+norm",
                    dora_norm_ms,
                    peft_dora_ms,
                    dora_bytes + norm_bytes,
                    flops + norm_flops,
                ));
                rows.push(row(
                    "qlora",
                    qlora_ms,
                    deq_ms,
                    act + nf4_bytes + adapter_bytes,
                    flops,
                ));
                let dx_bytes = 2.0 * (m * n + m * k) as f64 + nf4_bytes; // G, W in; dX out
                rows.push(row(
                    "qlora dX",
                    qdx_ms,
                    deq_dx_ms,
                    dx_bytes,
                    2.0 * (m * n * k) as f64,
                ));

                if m <= 4096 {
                    c.bench_function(&format!("lora_backward_bf16/m{m}_k{k}_n{n}_r{r}"), |bch| {
                        bch.iter_custom(|iters| {
                            let ms = time_ms(&s, iters as usize, 1, || {
                                gpu.lora_backward(
                                    &x,
                                    &g,
                                    DxWeight::Dense(&w),
                                    &[adapter],
                                    shape,
                                    &mut dx,
                                    false,
                                )
                                .unwrap();
                            });
                            Duration::from_secs_f64(ms * 1e-3 * iters as f64)
                        })
                    });
                }
            }
        }
    }
    println!(
        "\ntraining backward (dX, dA, dB; DoRA d magnitude) vs the unfused path, bf16, on {}",
        gpu.name()
    );
    println!("baselines: lora = cuBLAS 6 GEMMs; dora, dora+norm = peft lower bound (6 GEMMs on G*f, 2 copies for the elementwise steps, B.A GEMM); qlora = NF4 dequantise + 6 GEMMs; qlora dX = dequantise + 1 GEMM");
    println!(
        "{:>9} {:>5} {:>5} {:>6} {:>3} {:>10} {:>11} {:>7} {:>7} {:>7} {:>9} {:>7}",
        "path",
        "m",
        "K",
        "N",
        "r",
        "fused us",
        "baseline us",
        "ratio",
        "GB/s",
        "TFLOP/s",
        "floor us",
        "%floor"
    );
    let mut json = Vec::new();
    for row in &rows {
        let Row {
            path,
            m,
            k,
            n,
            r,
            fused_ms,
            baseline_ms,
            bytes,
            flops,
        } = row;
        let floor_ms = (bytes / (copy_gbs * 1e9)).max(flops / (gemm_tflops * 1e12)) * 1e3;
        println!(
            "{path:>9} {m:>5} {k:>5} {n:>6} {r:>3} {:>10.1} {:>11.1} {:>6.2}x {:>7.0} {:>7.1} {:>9.1} {:>6.1}%",
            fused_ms * 1e3,
            baseline_ms * 1e3,
            baseline_ms / fused_ms,
            bytes / (fused_ms * 1e-3) / 1e9,
            flops / (fused_ms * 1e-3) / 1e12,
            floor_ms * 1e3,
            100.0 * floor_ms / fused_ms
        );
        json.push(format!(
            "{{\"path\":{path:?},\"m\":{m},\"k\":{k},\"n\":{n},\"r\":{r},\"fused_ms\":{fused_ms},\"baseline_ms\":{baseline_ms},\"bytes\":{bytes},\"flops\":{flops},\"floor_ms\":{floor_ms}}}"
        ));
    }
    common::write_bench_json(
        gpu.name(),
        copy_gbs,
        &[
            ("cublas_tflops", format!("{gemm_tflops}")),
            ("rows", format!("[{}]", json.join(","))),
        ],
    );
}

fn cpu_benches(c: &mut Criterion) {
    println!(
        "no CUDA device: benchmarking the CPU reference of the LoRA backward (f64), not the kernels"
    );
    let (m, k, n, r) = (32, 128, 128, 16);
    let (x, g, w) = (
        random_bf16(m * k, 1, 1.0),
        random_bf16(m * n, 2, 1.0),
        random_bf16(n * k, 3, 0.1),
    );
    let (a, b) = (random_bf16(r * k, 4, 0.1), random_bf16(n * r, 5, 0.1));
    c.bench_function(
        &format!("lora_backward_cpu_reference/m{m}_k{k}_n{n}_r{r}"),
        |bch| {
            bch.iter(|| {
                reference::lora_backward(
                    &x,
                    &g,
                    Some(&w[..]),
                    &[LoraAdapter::new(&a[..], &b[..], r, SCALE)],
                    LoraShape::new(m, k, n),
                )
                .unwrap()
            })
        },
    );
}

fn benches(c: &mut Criterion) {
    common::gpu_or_cpu(c, gpu_benches, cpu_benches);
}

criterion_group! {
    name = backward;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(backward);
