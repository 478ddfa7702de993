//! CPU references for LoRA: deliberately simple loops accumulating in f64, rounded once to the
//! element type. They are the specification the GPU kernels are tested against, and the fallback
//! when there is no GPU.
use super::{LoraAdapter, LoraShape};
use crate::error::{invalid, Result};
use crate::validate::{validate_lora_forward, validate_rows, AdapterLens};
use crate::Element;

fn lens<T>(adapters: &[LoraAdapter<'_, [T]>]) -> Vec<AdapterLens> {
    AdapterLens::of(adapters, <[T]>::len)
}

/// `y = base + Σᵢ sᵢ · (x · Aᵢᵀ) · Bᵢᵀ`, returned as a new [m, n] buffer.
pub fn lora_forward<T: Element>(
    x: &[T],
    base: &[T],
    adapters: &[LoraAdapter<'_, [T]>],
    shape: LoraShape,
) -> Result<Vec<T>> {
    let LoraShape { m, k, n } = shape;
    validate_lora_forward(shape, x.len(), Some(base.len()), m * n, &lens(adapters))?;
    let mut acc: Vec<f64> = base[..m * n].iter().map(|v| v.to_f64()).collect();
    for ad in adapters {
        let r = ad.rank;
        for i in 0..m {
            // hidden = s · x[i] · Aᵀ
            let hidden: Vec<f64> = (0..r)
                .map(|j| {
                    let dot: f64 = (0..k)
                        .map(|c| x[i * k + c].to_f64() * ad.lora_a[j * k + c].to_f64())
                        .sum();
                    dot * ad.scale as f64
                })
                .collect();
            for col in 0..n {
                let dot: f64 = (0..r)
                    .map(|j| hidden[j] * ad.lora_b[col * r + j].to_f64())
                    .sum();
                acc[i * n + col] += dot;
            }
        }
    }
    Ok(acc.into_iter().map(T::from_f64).collect())
}

/// In place: `y += Σᵢ sᵢ · (x · Aᵢᵀ) · Bᵢᵀ`.
pub fn lora_forward_inplace<T: Element>(
    x: &[T],
    adapters: &[LoraAdapter<'_, [T]>],
    shape: LoraShape,
    y: &mut [T],
) -> Result<()> {
    let out = lora_forward(x, y, adapters, shape)?;
    y[..out.len()].copy_from_slice(&out);
    Ok(())
}

/// The dense update `ΔW = s · B · A` [n, k] (peft's `get_delta_weight`, fan_in_fan_out = false).
pub fn lora_delta_weight<T: Element>(
    adapter: LoraAdapter<'_, [T]>,
    k: usize,
    n: usize,
) -> Result<Vec<T>> {
    let shape = LoraShape::new(1, k, n);
    validate_lora_forward(shape, k, None, n, &lens(&[adapter]))?;
    let r = adapter.rank;
    let mut out = Vec::with_capacity(n * k);
    for row in 0..n {
        for col in 0..k {
            let dot: f64 = (0..r)
                .map(|j| {
                    adapter.lora_b[row * r + j].to_f64() * adapter.lora_a[j * k + col].to_f64()
                })
                .sum();
            out.push(T::from_f64(dot * adapter.scale as f64));
        }
    }
    Ok(out)
}

/// The merged weight `W + s · B · A` [n, k] (peft's `merge`), with peft's `safe_merge` check:
/// a non-finite result is an error.
pub fn lora_merged_weight<T: Element>(
    weight: &[T],
    adapter: LoraAdapter<'_, [T]>,
    k: usize,
    n: usize,
) -> Result<Vec<T>> {
    validate_rows(k, n, weight.len(), &lens(&[adapter])[0], None, None)?;
    let mut out = Vec::with_capacity(n * k);
    for row in 0..n {
        out.extend(
            delta_row(&adapter, k, row)
                .into_iter()
                .enumerate()
                .map(|(c, d)| T::from_f64(weight[row * k + c].to_f64() + d)),
        );
    }
    check_finite(&out, k)?;
    Ok(out)
}

/// Row `row` of `s·B·A`, in f64.
pub(crate) fn delta_row<T: Element>(
    adapter: &LoraAdapter<'_, [T]>,
    k: usize,
    row: usize,
) -> Vec<f64> {
    let r = adapter.rank;
    (0..k)
        .map(|c| {
            let ba: f64 = (0..r)
                .map(|j| adapter.lora_b[row * r + j].to_f64() * adapter.lora_a[j * k + c].to_f64())
                .sum();
            adapter.scale as f64 * ba
        })
        .collect()
}

/// A merged W `[.., k]` must be finite (peft's `safe_merge`); names the first non-finite element.
pub(crate) fn check_finite<T: Element>(w: &[T], k: usize) -> Result<()> {
    match w.iter().position(|v| !v.to_f64().is_finite()) {
        None => Ok(()),
        Some(pos) => Err(invalid(
            "weight",
            "a merge with finite results (safe merge)",
            format!("a non-finite value at [{}, {}]", pos / k, pos % k),
        )),
    }
}
