//! CPU references for DoRA: simple loops accumulating in f64, rounded once. The specification the
//! kernels of `kernels/dora.cu` and the DoRA epilogue of the fused forward are tested against.
use super::{validate_rows, DORA_NORM_EPS};
use crate::error::{invalid, Result};
use crate::lora::{validate_bias, validate_lora_forward, AdapterLens, LoraAdapter, LoraShape};
use crate::Element;

fn lens<T>(adapter: &LoraAdapter<'_, [T]>) -> AdapterLens {
    AdapterLens::of(std::slice::from_ref(adapter), <[T]>::len)[0]
}

/// Row `row` of `W + s·B·A`, in f64.
fn combined_row<T: Element>(
    weight: &[T],
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
            weight[row * k + c].to_f64() + adapter.scale as f64 * ba
        })
        .collect()
}

/// The DoRA weight norm `‖W[i,:] + s·(B·A)[i,:]‖₂` for every output row i of W [n, k].
pub fn dora_weight_norm<T: Element>(
    weight: &[T],
    adapter: LoraAdapter<'_, [T]>,
    k: usize,
    n: usize,
) -> Result<Vec<f32>> {
    validate_rows(k, n, weight.len(), &lens(&adapter), None, None)?;
    Ok((0..n)
        .map(|row| {
            combined_row(weight, &adapter, k, row)
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect())
}

/// The DoRA factor `f = m / max(norm, DORA_NORM_EPS)` per output row.
pub fn dora_factor<T: Element>(magnitude: &[T], norm: &[f32]) -> Result<Vec<f32>> {
    if magnitude.len() < norm.len() {
        return Err(invalid(
            "magnitude",
            format!("at least {} elements (one per norm)", norm.len()),
            magnitude.len(),
        ));
    }
    Ok(norm
        .iter()
        .zip(magnitude)
        .map(|(&nv, m)| (m.to_f64() / (nv.max(DORA_NORM_EPS) as f64)) as f32)
        .collect())
}

/// The DoRA forward from the base layer's output: `y = bias + f ⊙ (base − bias + s·(x·Aᵀ)·Bᵀ)`,
/// x `[m, k]`, base and y `[m, n]`, f and bias `[n]`.
pub fn dora_forward<T: Element>(
    x: &[T],
    base: &[T],
    bias: Option<&[T]>,
    adapter: LoraAdapter<'_, [T]>,
    factor: &[f32],
    shape: LoraShape,
) -> Result<Vec<T>> {
    let LoraShape { m, k, n } = shape;
    validate_lora_forward(shape, x.len(), Some(base.len()), m * n, &[lens(&adapter)])?;
    if factor.len() < n {
        return Err(invalid(
            "factor",
            format!("at least {n} elements ([n={n}])"),
            factor.len(),
        ));
    }
    validate_bias(bias.map(|b| b.len()), n)?;
    let r = adapter.rank;
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        let hidden: Vec<f64> = (0..r)
            .map(|j| {
                (0..k)
                    .map(|c| x[i * k + c].to_f64() * adapter.lora_a[j * k + c].to_f64())
                    .sum::<f64>()
            })
            .collect();
        for col in 0..n {
            let lora: f64 = (0..r)
                .map(|j| hidden[j] * adapter.lora_b[col * r + j].to_f64())
                .sum::<f64>()
                * adapter.scale as f64;
            let b = bias.map_or(0.0, |b| b[col].to_f64());
            let f = factor[col] as f64;
            out.push(T::from_f64(b + f * (base[i * n + col].to_f64() - b + lora)));
        }
    }
    Ok(out)
}

/// The merged weight `f[:, None] ⊙ (W + s·B·A)` (peft's DoRA merge; with no factor, the LoRA merge
/// `W + s·B·A`). A non-finite result is an error (peft's `safe_merge`).
pub fn dora_merged_weight<T: Element>(
    weight: &[T],
    adapter: LoraAdapter<'_, [T]>,
    factor: Option<&[f32]>,
    k: usize,
    n: usize,
) -> Result<Vec<T>> {
    let out = dora_merged_weight_unchecked(weight, adapter, factor, k, n)?;
    check_finite(&out, k)?;
    Ok(out)
}

/// [`dora_merged_weight`] without the finite check (peft's merge with `safe_merge=False`).
pub fn dora_merged_weight_unchecked<T: Element>(
    weight: &[T],
    adapter: LoraAdapter<'_, [T]>,
    factor: Option<&[f32]>,
    k: usize,
    n: usize,
) -> Result<Vec<T>> {
    validate_rows(
        k,
        n,
        weight.len(),
        &lens(&adapter),
        None,
        factor.map(<[f32]>::len),
    )?;
    let mut out = Vec::with_capacity(n * k);
    for row in 0..n {
        let f = factor.map_or(1.0, |f| f[row] as f64);
        out.extend(
            combined_row(weight, &adapter, k, row)
                .into_iter()
                .map(|v| T::from_f64(f * v)),
        );
    }
    Ok(out)
}

/// Undoes [`dora_merged_weight`]: `W = W' / f[:, None] − s·B·A` (with no factor, `W' − s·B·A`).
pub fn dora_unmerged_weight<T: Element>(
    merged: &[T],
    adapter: LoraAdapter<'_, [T]>,
    factor: Option<&[f32]>,
    k: usize,
    n: usize,
) -> Result<Vec<T>> {
    validate_rows(
        k,
        n,
        merged.len(),
        &lens(&adapter),
        None,
        factor.map(<[f32]>::len),
    )?;
    let r = adapter.rank;
    let mut out = Vec::with_capacity(n * k);
    for row in 0..n {
        let f = factor.map_or(1.0, |f| f[row] as f64);
        for c in 0..k {
            let ba: f64 = (0..r)
                .map(|j| adapter.lora_b[row * r + j].to_f64() * adapter.lora_a[j * k + c].to_f64())
                .sum();
            out.push(T::from_f64(
                merged[row * k + c].to_f64() / f - adapter.scale as f64 * ba,
            ));
        }
    }
    check_finite(&out, k)?;
    Ok(out)
}

fn check_finite<T: Element>(w: &[T], k: usize) -> Result<()> {
    match w.iter().position(|v| !v.to_f64().is_finite()) {
        None => Ok(()),
        Some(pos) => Err(invalid(
            "weight",
            "a merge with finite results (safe merge)",
            format!("a non-finite value at [{}, {}]", pos / k, pos % k),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero row of W + s·B·A (W row and B row zero) has norm 0, a finite factor, and its output is
    /// the bias exactly.
    #[test]
    fn zero_rows_give_the_bias() {
        let (m, k, n, r) = (2, 6, 3, 2);
        let x: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.1 - 0.4).collect();
        let mut weight: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).sin()).collect();
        let a: Vec<f32> = (0..r * k).map(|i| (i as f32 * 0.3).cos()).collect();
        let mut b: Vec<f32> = (0..n * r).map(|i| i as f32 * 0.2 + 0.1).collect();
        weight[k..2 * k].iter_mut().for_each(|v| *v = 0.0);
        b[r..2 * r].iter_mut().for_each(|v| *v = 0.0);
        let bias = [0.5f32, -1.25, 2.0];
        let adapter = LoraAdapter::new(&a[..], &b[..], r, 2.0);
        let norm = dora_weight_norm(&weight, adapter, k, n).unwrap();
        assert_eq!(norm[1], 0.0);
        let factor = dora_factor(&[1.0f32, 3.0, 1.0], &norm).unwrap();
        assert!(factor.iter().all(|f| f.is_finite()));
        let shape = LoraShape::new(m, k, n);
        let base = crate::lora::reference::linear(&x, &weight, Some(&bias), shape).unwrap();
        let y = dora_forward(&x, &base, Some(&bias), adapter, &factor, shape).unwrap();
        assert_eq!(y[1], bias[1]);
        assert_eq!(y[n + 1], bias[1]);
    }
}
