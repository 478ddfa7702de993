//! `mixed_batch` cases: one adapter (or none) per row of the batch.
use crate::common::f64s;
use crate::Check;
use lora_kernels::golden::{tolerance, GoldenCase};
use lora_kernels::{Element, Gpu, LoraAdapter, LoraShape, Result};

pub(crate) fn mixed_batch_cpu<T: Element>(case: &GoldenCase) -> Result<Check> {
    let xs = case.shape("x")?;
    let shape = LoraShape::new(xs[0], xs[1], case.shape("weight")?[0]);
    let scalings: Vec<f64> =
        serde_json::from_str(case.meta("scalings")?).map_err(|e| lora_kernels::Error::File {
            path: case.path.display().to_string(),
            message: format!("scalings: {e}"),
        })?;
    let x: Vec<T> = case.values("x")?;
    let bias: Option<Vec<T>> = if case.has("bias") {
        Some(case.values("bias")?)
    } else {
        None
    };
    let base = lora_kernels::linear::reference::linear(
        &x,
        &case.values::<T>("weight")?,
        bias.as_deref(),
        shape,
    )?;
    let buffers: Vec<(Vec<T>, Vec<T>, usize)> = (0..scalings.len())
        .map(|i| {
            Ok((
                case.values(&format!("lora_A.{i}"))?,
                case.values(&format!("lora_B.{i}"))?,
                case.shape(&format!("lora_A.{i}"))?[0],
            ))
        })
        .collect::<Result<_>>()?;
    let adapters: Vec<_> = buffers
        .iter()
        .zip(&scalings)
        .map(|((a, b, r), &s)| LoraAdapter::new(&a[..], &b[..], *r, s as f32))
        .collect();
    let indices: Vec<i32> = case
        .values_f64("adapter_index")?
        .iter()
        .map(|&v| v as i32)
        .collect();
    let out = lora_kernels::mixed_batch::reference::lora_forward_mixed(
        &x, &base, &adapters, &indices, shape,
    )?;
    let mut check = Check::new();
    check.compare(
        "output",
        &f64s(&out),
        &case.values_f64("output")?,
        tolerance(T::DTYPE),
    );
    Ok(check)
}

/// A `mixed_batch` case on the GPU: the adapter table once, then one launch for the batch.
pub(crate) fn mixed_batch_gpu<T: Element>(gpu: &Gpu, case: &GoldenCase) -> Result<Check> {
    let xs = case.shape("x")?;
    let shape = LoraShape::new(xs[0], xs[1], case.shape("weight")?[0]);
    let scalings: Vec<f64> =
        serde_json::from_str(case.meta("scalings")?).map_err(|e| lora_kernels::Error::File {
            path: case.path.display().to_string(),
            message: format!("scalings: {e}"),
        })?;
    let s = gpu.stream();
    let x: Vec<T> = case.values("x")?;
    let bias: Option<Vec<T>> = if case.has("bias") {
        Some(case.values("bias")?)
    } else {
        None
    };
    let base = lora_kernels::linear::reference::linear(
        &x,
        &case.values::<T>("weight")?,
        bias.as_deref(),
        shape,
    )?;
    let mut buffers = Vec::new();
    for i in 0..scalings.len() {
        let a = s.clone_htod(&case.values::<T>(&format!("lora_A.{i}"))?)?;
        let b = s.clone_htod(&case.values::<T>(&format!("lora_B.{i}"))?)?;
        buffers.push((a, b, case.shape(&format!("lora_A.{i}"))?[0]));
    }
    let adapters: Vec<_> = buffers
        .iter()
        .zip(&scalings)
        .map(|((a, b, r), &sc)| LoraAdapter::new(a, b, *r, sc as f32))
        .collect();
    let table = gpu.mixed_adapters(&adapters, shape.k, shape.n)?;
    let indices: Vec<i32> = case
        .values_f64("adapter_index")?
        .iter()
        .map(|&v| v as i32)
        .collect();
    let mut y = s.alloc_zeros::<T>(shape.m * shape.n)?;
    gpu.lora_forward_mixed(
        &s.clone_htod(&x)?,
        &s.clone_htod(&base)?,
        &table,
        &s.clone_htod(&indices)?,
        shape,
        &mut y,
    )?;
    let mut check = Check::new();
    check.compare(
        "output",
        &f64s(&s.clone_dtoh(&y)?),
        &case.values_f64("output")?,
        tolerance(T::DTYPE),
    );
    Ok(check)
}
