//! CPU references for DoRA: simple loops accumulating in f64, rounded once. The specification the
//! kernels of `kernels/dora.cu` and the DoRA epilogue of the fused forward are tested against.
use super::DORA_NORM_EPS;
use crate::error::{invalid, Result};
use crate::int8::reference::{dequantize_to, quantize_rowwise};
use crate::int8::Int8Weight;
use crate::lora::reference::{check_finite, delta_row};
use crate::lora::{LoraAdapter, LoraShape};
use crate::validate::{validate_bias, validate_lora_forward, validate_rows, AdapterLens};
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
    delta_row(adapter, k, row)
        .into_iter()
        .enumerate()
        .map(|(c, d)| weight[row * k + c].to_f64() + d)
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
    let mut out = Vec::with_capacity(n * k);
    for row in 0..n {
        let f = factor.map_or(1.0, |f| f[row] as f64);
        let delta = delta_row(&adapter, k, row);
        out.extend((0..k).map(|c| T::from_f64(merged[row * k + c].to_f64() / f - delta[c])));
    }
    check_finite(&out, k)?;
    Ok(out)
}

/// peft's merge into bitsandbytes' 8-bit layer: W is dequantised to `T`, the adapter is added
/// (`f ⊙ (W + s·B·A)` with a DoRA factor, `W + s·B·A` without, rounded to `T`), and the result is
/// quantised row-wise again ([`crate::int8::reference::quantize_rowwise`]; the reference of
/// [`crate::Gpu::merge_adapter_int8`]). A non-finite result is an error.
pub fn merge_adapter_int8<T: Element>(
    weight: &Int8Weight,
    adapter: LoraAdapter<'_, [T]>,
    factor: Option<&[f32]>,
) -> Result<Int8Weight> {
    requantized(weight, |w, k, n| {
        dora_merged_weight(w, adapter, factor, k, n)
    })
}

/// Undoes [`merge_adapter_int8`]: `W / f − s·B·A` (or `W − s·B·A`) on the dequantised weight, requantised.
pub fn unmerge_adapter_int8<T: Element>(
    weight: &Int8Weight,
    adapter: LoraAdapter<'_, [T]>,
    factor: Option<&[f32]>,
) -> Result<Int8Weight> {
    requantized(weight, |w, k, n| {
        dora_unmerged_weight(w, adapter, factor, k, n)
    })
}

/// `update` applied to the weight dequantised to `T` ([n, k] → [n, k]), quantised row-wise again.
fn requantized<T: Element>(
    weight: &Int8Weight,
    update: impl FnOnce(&[T], usize, usize) -> Result<Vec<T>>,
) -> Result<Int8Weight> {
    let [n, k] = weight.shape;
    let w: Vec<T> = dequantize_to(weight)?;
    quantize_rowwise(&update(&w, k, n)?, weight.shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8::reference::{dequantize, dequantize_to, quantize_rowwise};

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
        let base = crate::linear::reference::linear(&x, &weight, Some(&bias), shape).unwrap();
        let y = dora_forward(&x, &base, Some(&bias), adapter, &factor, shape).unwrap();
        assert_eq!(y[1], bias[1]);
        assert_eq!(y[n + 1], bias[1]);
    }

    /// The factored DoRA norm, `‖W‖² + 2s·rowsum((W·Aᵀ) ⊙ B) + s²·rowsum((B·(A·Aᵀ)) ⊙ B)`, in f32 as a
    /// kernel would evaluate it (each term accumulated in f32).
    fn factored_norm_f32(
        w: &[f32],
        a: &[f32],
        b: &[f32],
        k: usize,
        n: usize,
        r: usize,
        s: f32,
    ) -> Vec<f32> {
        let aat: Vec<f32> = (0..r * r)
            .map(|e| {
                (0..k)
                    .map(|c| a[(e / r) * k + c] * a[(e % r) * k + c])
                    .sum()
            })
            .collect();
        (0..n)
            .map(|i| {
                let row = &w[i * k..(i + 1) * k];
                let brow = &b[i * r..(i + 1) * r];
                let ww: f32 = row.iter().map(|v| v * v).sum();
                let wa: Vec<f32> = (0..r)
                    .map(|j| (0..k).map(|c| row[c] * a[j * k + c]).sum())
                    .collect();
                let cross: f32 = (0..r).map(|j| wa[j] * brow[j]).sum();
                let quad: f32 = (0..r)
                    .map(|j| brow[j] * (0..r).map(|l| aat[j * r + l] * brow[l]).sum::<f32>())
                    .sum();
                (ww + 2.0 * s * cross + s * s * quad).max(0.0).sqrt()
            })
            .collect()
    }

    /// Why the kernels form W + s·B·A directly rather than use the factored form: on ordinary rows the
    /// two agree to f32 rounding, but on a row where s·B·A nearly cancels W (what the zero rows of real
    /// checkpoints look like after training) the factored form subtracts large, nearly equal terms
    /// and loses every digit, while the direct form (f32 accumulation of the squares of W + s·B·A, as
    /// the kernels do) stays accurate. Both read W once; the factored form needs a GEMM (W·Aᵀ) plus
    /// the row norms of W, the direct form a rank-r product per element, on tensor cores in the norm
    /// kernel.
    #[test]
    fn the_direct_norm_survives_cancellation_the_factored_form_does_not() {
        let (k, n, r, s) = (512, 3, 4, 0.5f32);
        let a: Vec<f32> = (0..r * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let b: Vec<f32> = (0..n * r)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.1 + 0.05)
            .collect();
        let mut w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 29 % 89) as f32 - 44.0) * 0.02)
            .collect();
        // Row 2: W = −s·B·A + a residual 1e-4 of its size.
        for c in 0..k {
            let ba: f32 = (0..r).map(|j| b[2 * r + j] * a[j * k + c]).sum();
            w[2 * k + c] = -s * ba + 1e-4 * ((c % 5) as f32 - 2.0) * ba.abs().max(1e-3);
        }
        let adapter = LoraAdapter::new(&a[..], &b[..], r, s);
        let exact = dora_weight_norm(&w, adapter, k, n).unwrap(); // f64 accumulation
                                                                  // The direct form in f32, as the kernels accumulate it.
        let direct: Vec<f32> = (0..n)
            .map(|i| {
                (0..k)
                    .map(|c| {
                        let ba: f32 = (0..r).map(|j| b[i * r + j] * a[j * k + c]).sum();
                        let v = w[i * k + c] + s * ba;
                        v * v
                    })
                    .sum::<f32>()
                    .sqrt()
            })
            .collect();
        let factored = factored_norm_f32(&w, &a, &b, k, n, r, s);
        let rel = |x: f32, y: f32| ((x - y) / y).abs();
        println!("exact {exact:?}\ndirect {direct:?}\nfactored {factored:?}");
        for i in 0..2 {
            assert!(
                rel(direct[i], exact[i]) < 1e-5 && rel(factored[i], exact[i]) < 1e-4,
                "row {i}"
            );
        }
        assert!(
            rel(direct[2], exact[2]) < 1e-4,
            "direct: {} vs {}",
            direct[2],
            exact[2]
        );
        assert!(
            rel(factored[2], exact[2]) > 1e-1,
            "factored form unexpectedly accurate: {} vs {}",
            factored[2],
            exact[2]
        );
    }

    /// Merging into an int8 weight equals merging into its dequantised weight and requantising, and
    /// unmerging comes back to the original within int8 rounding.
    #[test]
    fn merge_requantises_and_unmerge_comes_back() {
        let (n, k, r) = (5, 40, 3);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.002)
            .collect();
        let a: Vec<f32> = (0..r * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.01)
            .collect();
        let b: Vec<f32> = (0..n * r)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.01)
            .collect();
        let q = quantize_rowwise(&w, [n, k]).unwrap();
        let adapter = LoraAdapter::new(&a[..], &b[..], r, 0.5);
        let merged = merge_adapter_int8(&q, adapter, None).unwrap();
        let dense: Vec<f32> = dequantize_to(&q).unwrap();
        let want = dora_merged_weight(&dense, adapter, None, k, n).unwrap();
        assert_eq!(merged, quantize_rowwise(&want, [n, k]).unwrap());
        assert_ne!(merged.cb, q.cb, "the adapter moves the codes");
        let back = dequantize(&unmerge_adapter_int8(&merged, adapter, None).unwrap()).unwrap();
        let orig = dequantize(&q).unwrap();
        let step = q.scb.iter().fold(0.0f32, |m, &s| m.max(s)) / 127.0;
        for (x, y) in back.iter().zip(&orig) {
            assert!((x - y).abs() <= 2.0 * step, "{x} vs {y}");
        }
    }
}
