//! CPU references for LoRA: deliberately simple loops accumulating in f64, rounded once to the
//! element type. They are the specification the GPU kernels are tested against, and the fallback
//! when there is no GPU.
use super::{validate_bias, validate_lora_forward, AdapterLens, LoraAdapter, LoraShape};
use crate::error::{invalid, Result};
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

/// peft's mixed batch (`adapter_names`): row i of x uses `adapters[indices[i]]`, or no adapter when
/// `indices[i]` is −1 (peft's `"__base__"`): `y[i] = base[i] + s·(x[i]·Aᵀ)·Bᵀ` of that adapter.
pub fn lora_forward_mixed<T: Element>(
    x: &[T],
    base: &[T],
    adapters: &[LoraAdapter<'_, [T]>],
    indices: &[i32],
    shape: LoraShape,
) -> Result<Vec<T>> {
    let LoraShape { m, k, n } = shape;
    validate_lora_forward(shape, x.len(), Some(base.len()), m * n, &lens(adapters))?;
    if indices.len() < m {
        return Err(invalid(
            "indices",
            format!("at least {m} entries (one per row)"),
            indices.len(),
        ));
    }
    if let Some(row) = indices[..m]
        .iter()
        .position(|&i| i < -1 || i >= adapters.len() as i32)
    {
        return Err(invalid(
            format!("indices[{row}]"),
            format!("-1 (no adapter) to {}", adapters.len() as i32 - 1),
            indices[row],
        ));
    }
    let mut out = base[..m * n].to_vec();
    for i in 0..m {
        if indices[i] < 0 {
            continue;
        }
        let ad = adapters[indices[i] as usize];
        let row = lora_forward(
            &x[i * k..(i + 1) * k],
            &base[i * n..(i + 1) * n],
            &[ad],
            LoraShape::new(1, k, n),
        )?;
        out[i * n..(i + 1) * n].copy_from_slice(&row);
    }
    Ok(out)
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
    crate::dora::reference::dora_merged_weight(weight, adapter, None, k, n)
}

/// A dense linear layer `x · Wᵀ + bias` for x [m, k], W [n, k]: the base layer the adapters sit on.
pub fn linear<T: Element>(
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    shape: LoraShape,
) -> Result<Vec<T>> {
    let LoraShape { m, k, n } = shape;
    validate_lora_forward(shape, x.len(), None, m * n, &[])?;
    if weight.len() < n * k {
        return Err(invalid(
            "weight",
            format!("at least {} elements ([n={n}, k={k}])", n * k),
            weight.len(),
        ));
    }
    validate_bias(bias.map(|b| b.len()), n)?;
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for row in 0..n {
            let dot: f64 = (0..k)
                .map(|c| x[i * k + c].to_f64() * weight[row * k + c].to_f64())
                .sum();
            let b = bias.map_or(0.0, |b| b[row].to_f64());
            out.push(T::from_f64(dot + b));
        }
    }
    Ok(out)
}
