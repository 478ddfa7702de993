//! The end-to-end demonstration: loads peft adapters exactly as `save_pretrained` wrote them (the
//! shipped `adapter_lora` and `adapter_dora`), builds the small model of their golden cases from the
//! base weights in `expected.safetensors` with one crate layer per module (the GPU layer when a GPU is
//! present, the CPU reference otherwise), and prints each module's and the model's error against
//! peft's own outputs, unmerged and merged, with the time per call. Then it runs the single-layer LoRA
//! and DoRA golden cases through the fused forwards.
//!
//!     cargo run --release --example quickstart [ADAPTER_DIR | GOLDEN_DIR]
//!
//! ADAPTER_DIR is a folder with `adapter_config.json`, `adapter_model.safetensors` and an
//! `expected.safetensors` in the golden layout (`tests/data/golden/README.md`); GOLDEN_DIR (default
//! `tests/data/golden`) holds the shipped adapter folders and cases.
use half::{bf16, f16};
use lora_kernels::dora::reference as dora_reference;
use lora_kernels::golden::{
    discover, golden_dir, rel_error, tolerance, AdapterModel, GoldenCase, ModelLayers,
};
use lora_kernels::lora::reference;
use lora_kernels::{DType, Element, Gpu, LoraAdapter, LoraShape, Result};
use std::path::{Path, PathBuf};
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
    Ok((rel_error(&got, &expected), tolerance(T::DTYPE), us))
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
                lora_kernels::DoraAdapter::new(adapter, &factor),
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
                    lora_kernels::DoraAdapter::new(adapter, &factor),
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
    Ok((rel_error(&got, &expected), tolerance(T::DTYPE), us))
}

/// Microseconds per call of `f` over `reps` calls, and its last result.
fn timed<R>(reps: usize, mut f: impl FnMut() -> Result<R>) -> Result<(R, f64)> {
    let mut out = f()?;
    let t = Instant::now();
    for _ in 0..reps {
        out = f()?;
    }
    Ok((out, t.elapsed().as_secs_f64() * 1e6 / reps as f64))
}

/// The small model of an adapter folder through the crate's layers, against peft's outputs; returns
/// the number of comparisons outside tolerance.
fn run_adapter_folder(dir: &Path, gpu: Option<&Gpu>) -> Result<usize> {
    let model = AdapterModel::load(dir)?;
    let mut layers = ModelLayers::new(&model, gpu)?;
    let case = &model.expected;
    let tol = tolerance(DType::F32);
    println!(
        "{}: peft adapter (r {}, {}{}), {} layer(s), f32",
        dir.display(),
        model.module(&model.module_names()[0])?.rank,
        if model.adapter.use_dora {
            "DoRA"
        } else {
            "LoRA"
        },
        if model.adapter.use_rslora {
            ", rsLoRA"
        } else {
            ""
        },
        model.layers
    );
    println!(
        "  {:<22} {:>12} {:>11} {:>8} {:>10}",
        "module", "m x in->out", "rel err", "result", "us/call"
    );
    let mut failures = 0;
    let mut report = |what: &str, dims: String, got: &[f32], want: &[f64], us: f64| {
        let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
        let err = rel_error(&got, want);
        let ok = err <= tol;
        failures += usize::from(!ok);
        println!(
            "  {:<22} {:>12} {:>11.3e} {:>8} {:>10.1}",
            what,
            dims,
            err,
            if ok { "ok" } else { "FAILED" },
            us
        );
    };
    let reps = 20;
    for name in model.module_names() {
        let input: Vec<f32> = case.values(&format!("{name}.input"))?;
        let module = model.module(&name)?;
        let m = input.len() / module.in_features;
        let (out, us) = timed(reps, || layers.module_forward(&name, &input))?;
        let dims = format!("{m}x{}->{}", module.in_features, module.out_features);
        report(
            &name,
            dims,
            &out,
            &case.values_f64(&format!("{name}.output"))?,
            us,
        );
    }
    let x: Vec<f32> = case.values("x")?;
    let want = case.values_f64("output")?;
    let dims = format!("{}x{}", case.shape("x")?[0], case.shape("x")?[1]);
    let (out, us) = timed(reps, || {
        model.forward(&x, |name, input| layers.module_forward(name, input))
    })?;
    report("model", dims.clone(), &out, &want, us);
    layers.merge(true)?;
    let (out, us) = timed(reps, || {
        model.forward(&x, |name, input| layers.module_forward(name, input))
    })?;
    report("model, merged", dims, &out, &want, us);
    layers.unmerge()?;
    println!();
    Ok(failures)
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
    let mut failures = 0;
    println!("peft adapters end to end through the crate's layers, on the {target}\n");
    if dir.join("adapter_config.json").exists() {
        failures += run_adapter_folder(&dir, gpu.as_ref())?;
        println!("us/call: wall-clock per call over 20 calls, host copies included on the GPU.");
        return finish(failures);
    }
    for folder in ["adapter_lora", "adapter_dora"] {
        failures += run_adapter_folder(&dir.join(folder), gpu.as_ref())?;
    }
    println!("fused LoRA and DoRA forwards against peft's outputs, on the {target}\n");
    println!(
        "{:<18} {:>5} {:>14} {:>4} {:>11} {:>9} {:>8} {:>10}",
        "case", "dtype", "m x k -> n", "r", "rel err", "tol", "result", "us/call"
    );
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
    println!(
        "\nus/call: wall-clock per call over 20 calls. On the GPU the adapter models copy activations \
         to and from the host at every module, and the single-layer cases launch 20 times, then \
         synchronise."
    );
    finish(failures)
}

fn finish(failures: usize) -> Result<()> {
    if failures > 0 {
        eprintln!("{failures} comparison(s) outside tolerance");
        std::process::exit(1);
    }
    Ok(())
}
