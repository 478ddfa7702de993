//! Runs the LoRA and DoRA golden cases (outputs of the real peft) through the crate, on the GPU when
//! one is present and on the CPU reference otherwise, and prints each case's error against peft's own
//! output with the time per call.
//!
//!     cargo run --release --example quickstart [GOLDEN_DIR]
use half::{bf16, f16};
use lora_kernels::dora::reference as dora_reference;
use lora_kernels::golden::{discover, golden_dir, rel_error, GoldenCase};
use lora_kernels::lora::reference;
use lora_kernels::{DType, Element, Gpu, LoraAdapter, LoraShape, Result};
use std::path::PathBuf;
use std::time::Instant;

/// Runs one `lora` case; returns (relative error against peft, tolerance, microseconds per call).
fn run_case<T: Element>(case: &GoldenCase, gpu: Option<&Gpu>) -> Result<(f64, f64, f64)> {
    let xs = case.shape("x")?;
    let shape = LoraShape::new(xs[0], xs[1], case.shape("weight")?[0]);
    let rank = case.shape("lora_A")?[0];
    let scale = case.scaling()? as f32;
    let (x, base, a, b) = (
        case.values::<T>("x")?,
        case.values::<T>("base_output")?,
        case.values::<T>("lora_A")?,
        case.values::<T>("lora_B")?,
    );
    let expected = case.values_f64("output")?;
    let reps = 20;
    let (out, us) = match gpu {
        Some(gpu) => {
            let s = gpu.stream();
            let (xd, bd, ad, bbd) = (
                s.clone_htod(&x)?,
                s.clone_htod(&base)?,
                s.clone_htod(&a)?,
                s.clone_htod(&b)?,
            );
            let mut y = s.alloc_zeros::<T>(shape.m * shape.n)?;
            let adapter = LoraAdapter::new(&ad, &bbd, rank, scale);
            gpu.lora_forward(&xd, &bd, &[adapter], shape, &mut y)?;
            gpu.synchronize()?;
            let t = Instant::now();
            for _ in 0..reps {
                gpu.lora_forward(&xd, &bd, &[adapter], shape, &mut y)?;
            }
            gpu.synchronize()?;
            (
                s.clone_dtoh(&y)?,
                t.elapsed().as_secs_f64() * 1e6 / reps as f64,
            )
        }
        None => {
            let adapter = LoraAdapter::new(&a[..], &b[..], rank, scale);
            let t = Instant::now();
            let mut out = Vec::new();
            for _ in 0..reps {
                out = reference::lora_forward(&x, &base, &[adapter], shape)?;
            }
            (out, t.elapsed().as_secs_f64() * 1e6 / reps as f64)
        }
    };
    let got: Vec<f64> = out.iter().map(|v| v.to_f64()).collect();
    Ok((rel_error(&got, &expected), T::DTYPE.tolerance(), us))
}

/// Runs one `dora` case: the factor f = m / ‖W + s·B·A‖ once (the cached norm), then the forward
/// `bias + f ⊙ (base − bias + s·(x·Aᵀ)·Bᵀ)`; returns (relative error, tolerance, microseconds per
/// forward).
fn run_dora_case<T: Element>(case: &GoldenCase, gpu: Option<&Gpu>) -> Result<(f64, f64, f64)> {
    let xs = case.shape("x")?;
    let (k, n) = (xs[1], case.shape("weight")?[0]);
    let shape = LoraShape::new(xs[0], k, n);
    let rank = case.shape("lora_A")?[0];
    let scale = case.scaling()? as f32;
    let (x, base, a, b, w, m) = (
        case.values::<T>("x")?,
        case.values::<T>("base_output")?,
        case.values::<T>("lora_A")?,
        case.values::<T>("lora_B")?,
        case.values::<T>("weight")?,
        case.values::<T>("magnitude")?,
    );
    let bias: Option<Vec<T>> = if case.has("bias") {
        Some(case.values("bias")?)
    } else {
        None
    };
    let expected = case.values_f64("output")?;
    let reps = 20;
    let (out, us) = match gpu {
        Some(gpu) => {
            let s = gpu.stream();
            let (xd, bd, ad, bbd, wd, md) = (
                s.clone_htod(&x)?,
                s.clone_htod(&base)?,
                s.clone_htod(&a)?,
                s.clone_htod(&b)?,
                s.clone_htod(&w)?,
                s.clone_htod(&m)?,
            );
            let bias_d = match &bias {
                Some(v) => Some(s.clone_htod(v)?),
                None => None,
            };
            let bias_view = bias_d.as_ref().map(|v| v.slice(..));
            let adapter = LoraAdapter::new(&ad, &bbd, rank, scale);
            let factor = gpu.dora_factor(&wd, adapter, &md, k, n)?;
            let mut y = s.alloc_zeros::<T>(shape.m * n)?;
            gpu.dora_forward(
                &xd,
                &bd,
                bias_view.as_ref(),
                adapter,
                &factor,
                shape,
                &mut y,
            )?;
            gpu.synchronize()?;
            let t = Instant::now();
            for _ in 0..reps {
                gpu.dora_forward(
                    &xd,
                    &bd,
                    bias_view.as_ref(),
                    adapter,
                    &factor,
                    shape,
                    &mut y,
                )?;
            }
            gpu.synchronize()?;
            (
                s.clone_dtoh(&y)?,
                t.elapsed().as_secs_f64() * 1e6 / reps as f64,
            )
        }
        None => {
            let adapter = LoraAdapter::new(&a[..], &b[..], rank, scale);
            let norm = dora_reference::dora_weight_norm(&w, adapter, k, n)?;
            let factor = dora_reference::dora_factor(&m, &norm)?;
            let t = Instant::now();
            let mut out = Vec::new();
            for _ in 0..reps {
                out = dora_reference::dora_forward(
                    &x,
                    &base,
                    bias.as_deref(),
                    adapter,
                    &factor,
                    shape,
                )?;
            }
            (out, t.elapsed().as_secs_f64() * 1e6 / reps as f64)
        }
    };
    let got: Vec<f64> = out.iter().map(|v| v.to_f64()).collect();
    Ok((rel_error(&got, &expected), T::DTYPE.tolerance(), us))
}

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(golden_dir);
    let gpu = match Gpu::new(0) {
        Ok(g) if lora_kernels::device::kernels_built() => Some(g),
        Ok(_) => {
            println!("kernels not built into this binary: using the CPU reference");
            None
        }
        Err(e) => {
            println!("{e}: using the CPU reference");
            None
        }
    };
    let target = gpu
        .as_ref()
        .map_or("CPU reference".to_string(), |g| format!("GPU {}", g.name()));
    println!("fused LoRA and DoRA forwards against peft's outputs, on the {target}\n");
    println!(
        "{:<18} {:>5} {:>14} {:>4} {:>11} {:>9} {:>8} {:>10}",
        "case", "dtype", "m x k -> n", "r", "rel err", "tol", "result", "us/call"
    );
    let mut failures = 0;
    for path in discover(&dir)? {
        let case = GoldenCase::load(&path)?;
        let dtype = case.dtype().ok();
        let (err, tol, us) = match (case.kind.as_str(), dtype) {
            ("lora", Some(DType::F32)) => run_case::<f32>(&case, gpu.as_ref())?,
            ("lora", Some(DType::F16)) => run_case::<f16>(&case, gpu.as_ref())?,
            ("lora", Some(DType::BF16)) => run_case::<bf16>(&case, gpu.as_ref())?,
            ("dora", Some(DType::F32)) => run_dora_case::<f32>(&case, gpu.as_ref())?,
            ("dora", Some(DType::F16)) => run_dora_case::<f16>(&case, gpu.as_ref())?,
            ("dora", Some(DType::BF16)) => run_dora_case::<bf16>(&case, gpu.as_ref())?,
            _ => continue,
        };
        let dtype = dtype.expect("matched above");
        let xs = case.shape("x")?;
        let dims = format!("{}x{}->{}", xs[0], xs[1], case.shape("weight")?[0]);
        let ok = err <= tol;
        failures += usize::from(!ok);
        println!(
            "{:<18} {:>5} {:>14} {:>4} {:>11.3e} {:>9.0e} {:>8} {:>10.2}",
            case.name,
            dtype,
            dims,
            case.shape("lora_A")?[0],
            err,
            tol,
            if ok { "ok" } else { "FAILED" },
            us
        );
    }
    println!("\nus/call: wall-clock per call over 20 calls (GPU: launches then one synchronize).");
    if failures > 0 {
        eprintln!("{failures} case(s) outside tolerance");
        std::process::exit(1);
    }
    Ok(())
}
