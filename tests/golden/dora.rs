//! `dora` cases: the weight norm, the DoRA forward, merge and unmerge.
use crate::common::f64s;
use crate::lora::{lora_case, LoraCase};
use crate::Check;
use lora_kernels::dora::reference as dora_reference;
use lora_kernels::golden::{tolerance, GoldenCase};
use lora_kernels::{Element, Gpu, LoraAdapter, Result};

/// The pieces of a `dora` case: the LoRA pieces plus the magnitude.
fn dora_case<T: Element>(case: &GoldenCase) -> Result<(LoraCase<T>, Vec<T>)> {
    Ok((lora_case::<T>(case)?, case.values("magnitude")?))
}

pub(crate) fn dora_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let (c, magnitude) = dora_case::<T>(case)?;
    let (k, n) = (c.shape.k, c.shape.n);
    let tol = tolerance(T::DTYPE);
    let mut check = Check::new();
    let adapter = LoraAdapter::new(&c.lora_a[..], &c.lora_b[..], c.rank, c.scale);
    let norm = dora_reference::dora_weight_norm(&c.weight, adapter, k, n)?;
    let norm_f64: Vec<f64> = norm.iter().map(|&v| v as f64).collect();
    check.compare(
        "weight_norm",
        &norm_f64,
        &case.values_f64("weight_norm")?,
        tol,
    );
    let factor = dora_reference::dora_factor(&magnitude, &norm)?;
    let base: Vec<T> = case.values("base_output")?;
    let out =
        dora_reference::dora_forward(&c.x, &base, c.bias.as_deref(), adapter, &factor, c.shape)?;
    check.compare("output", &f64s(&out), &case.values_f64("output")?, tol);
    let merged = dora_reference::dora_merged_weight(&c.weight, adapter, Some(&factor), k, n)?;
    check.compare(
        "merged_weight",
        &f64s(&merged),
        &case.values_f64("merged_weight")?,
        tol,
    );
    let unmerged = dora_reference::dora_unmerged_weight(&merged, adapter, Some(&factor), k, n)?;
    check.compare("unmerge(merge(W))", &f64s(&unmerged), &f64s(&c.weight), tol);
    Ok(check)
}

pub(crate) fn dora_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let (c, magnitude) = dora_case::<T>(case)?;
    let (k, n) = (c.shape.k, c.shape.n);
    let tol = tolerance(T::DTYPE);
    let mut check = Check::new();
    let s = gpu.stream();
    let (x, a, b, w) = (
        s.clone_htod(&c.x)?,
        s.clone_htod(&c.lora_a)?,
        s.clone_htod(&c.lora_b)?,
        s.clone_htod(&c.weight)?,
    );
    let m = s.clone_htod(&magnitude)?;
    let adapter = LoraAdapter::new(&a, &b, c.rank, c.scale);
    let mut norm = s.alloc_zeros::<f32>(n)?;
    gpu.dora_weight_norm(&w, adapter, k, n, &mut norm)?;
    let norm_f64: Vec<f64> = s.clone_dtoh(&norm)?.iter().map(|&v| v as f64).collect();
    check.compare(
        "weight_norm",
        &norm_f64,
        &case.values_f64("weight_norm")?,
        tol,
    );
    let factor = gpu.dora_factor(&w, adapter, &m, k, n)?;
    let base = s.clone_htod(&case.values::<T>("base_output")?)?;
    let bias = match &c.bias {
        Some(b) => Some(s.clone_htod(b)?),
        None => None,
    };
    let bias_view = bias.as_ref().map(|b| b.slice(..));
    let mut y = s.alloc_zeros::<T>(c.shape.m * n)?;
    gpu.dora_forward(
        &x,
        &base,
        bias_view.as_ref(),
        lora_kernels::DoraAdapter::new(adapter, &factor),
        c.shape,
        &mut y,
    )?;
    check.compare(
        "output",
        &f64s(&s.clone_dtoh(&y)?),
        &case.values_f64("output")?,
        tol,
    );
    let mut merged = s.clone_htod(&c.weight)?;
    gpu.merge_adapter(&mut merged, adapter, Some(&factor), k, n, true)?;
    check.compare(
        "merged_weight",
        &f64s(&s.clone_dtoh(&merged)?),
        &case.values_f64("merged_weight")?,
        tol,
    );
    gpu.unmerge_adapter(&mut merged, adapter, Some(&factor), k, n, true)?;
    check.compare(
        "unmerge(merge(W))",
        &f64s(&s.clone_dtoh(&merged)?),
        &f64s(&c.weight),
        tol,
    );
    Ok(check)
}
