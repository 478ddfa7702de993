//! `lora` cases: the base product, the fused forward (out of place and in place), delta and merged
//! weights.
use crate::common::f64s;
use crate::Check;
use lora_kernels::golden::{tolerance, GoldenCase};
use lora_kernels::lora::reference;
use lora_kernels::{Element, Gpu, LoraAdapter, LoraShape, Result};

/// The pieces of a `lora` case.
pub(crate) struct LoraCase<T> {
    pub(crate) shape: LoraShape,
    pub(crate) rank: usize,
    pub(crate) scale: f32,
    pub(crate) x: Vec<T>,
    pub(crate) weight: Vec<T>,
    pub(crate) bias: Option<Vec<T>>,
    pub(crate) lora_a: Vec<T>,
    pub(crate) lora_b: Vec<T>,
}

pub(crate) fn lora_case<T: Element>(case: &GoldenCase) -> Result<LoraCase<T>> {
    let xs = case.shape("x")?;
    let ws = case.shape("weight")?;
    let rank = case.shape("lora_A")?[0];
    Ok(LoraCase {
        shape: LoraShape::new(xs[0], xs[1], ws[0]),
        rank,
        scale: case.scaling()? as f32,
        x: case.values("x")?,
        weight: case.values("weight")?,
        bias: if case.has("bias") {
            Some(case.values("bias")?)
        } else {
            None
        },
        lora_a: case.values("lora_A")?,
        lora_b: case.values("lora_B")?,
    })
}

pub(crate) fn lora_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let c = lora_case::<T>(case)?;
    let tol = tolerance(T::DTYPE);
    let mut check = Check::new();
    let adapter = LoraAdapter::new(&c.lora_a[..], &c.lora_b[..], c.rank, c.scale);
    let base =
        lora_kernels::linear::reference::linear(&c.x, &c.weight, c.bias.as_deref(), c.shape)?;
    check.compare(
        "base_output",
        &f64s(&base),
        &case.values_f64("base_output")?,
        tol,
    );
    let base_golden: Vec<T> = case.values("base_output")?;
    let out = reference::lora_forward(&c.x, &base_golden, &[adapter], c.shape)?;
    check.compare("output", &f64s(&out), &case.values_f64("output")?, tol);
    let delta = reference::lora_delta_weight(adapter, c.shape.k, c.shape.n)?;
    check.compare(
        "delta_weight",
        &f64s(&delta),
        &case.values_f64("delta_weight")?,
        tol,
    );
    let merged = reference::lora_merged_weight(&c.weight, adapter, c.shape.k, c.shape.n)?;
    check.compare(
        "merged_weight",
        &f64s(&merged),
        &case.values_f64("merged_weight")?,
        tol,
    );
    Ok(check)
}

pub(crate) fn lora_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let c = lora_case::<T>(case)?;
    let tol = tolerance(T::DTYPE);
    let mut check = Check::new();
    let s = gpu.stream();
    let base_golden: Vec<T> = case.values("base_output")?;
    let (x, a, b) = (
        s.clone_htod(&c.x)?,
        s.clone_htod(&c.lora_a)?,
        s.clone_htod(&c.lora_b)?,
    );
    let base = s.clone_htod(&base_golden)?;
    let mut y = s.alloc_zeros::<T>(c.shape.m * c.shape.n)?;
    let adapter = LoraAdapter::new(&a, &b, c.rank, c.scale);
    gpu.lora_forward(&x, &base, &[adapter], c.shape, &mut y)?;
    let expected = case.values_f64("output")?;
    check.compare("output", &f64s(&s.clone_dtoh(&y)?), &expected, tol);
    let mut y_inplace = s.clone_htod(&base_golden)?;
    gpu.lora_forward_inplace(&x, &[adapter], c.shape, &mut y_inplace)?;
    check.compare(
        "output (in place)",
        &f64s(&s.clone_dtoh(&y_inplace)?),
        &expected,
        tol,
    );
    Ok(check)
}
