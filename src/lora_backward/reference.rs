//! CPU references of the backward: simple loops accumulating in f64, each gradient rounded once to
//! the element type. The specification `kernels/lora_backward.cu` is tested against.
use super::{validate_backward, AdapterGrads, Backward, BackwardStep, DoraLens, DoraSaved};
use crate::dora::reference::dora_factor;
use crate::error::Result;
use crate::lora::{LoraAdapter, LoraShape};
use crate::validate::AdapterLens;
use crate::Element;

/// The backward of LoRA adapters on one base, `y = x·Wᵀ + bias + Σᵢ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ`: every adapter's
/// dA and dB, and dX = G·W + Σᵢ sᵢ·Hᵢ·Aᵢ (without G·W when `weight` is `None`, for a caller that
/// differentiates the base itself). x `[m, k]`, `grad_output` G `[m, n]`, W `[n, k]`.
pub fn lora_backward<T: Element>(
    x: &[T],
    grad_output: &[T],
    weight: Option<&[T]>,
    adapters: &[LoraAdapter<'_, [T]>],
    shape: LoraShape,
) -> Result<Backward<Vec<T>>> {
    let steps: Vec<_> = adapters
        .iter()
        .map(|&adapter| BackwardStep {
            adapter,
            dora: None,
        })
        .collect();
    backward(x, grad_output, weight, &steps, shape)
}

/// The backward of one DoRA adapter, `y = bias + f ⊙ (base − bias + s·(x·Aᵀ)·Bᵀ)` with
/// f = m / max(norm, eps): dA, dB, d magnitude, and dX = G_f·W + s·H·A (without G_f·W when `weight`
/// is `None`).
pub fn dora_backward<T: Element>(
    x: &[T],
    grad_output: &[T],
    weight: Option<&[T]>,
    adapter: LoraAdapter<'_, [T]>,
    dora: DoraSaved<'_, [T], [f32]>,
    shape: LoraShape,
) -> Result<Backward<Vec<T>>> {
    let step = BackwardStep {
        adapter,
        dora: Some(dora),
    };
    backward(x, grad_output, weight, &[step], shape)
}

/// The backward of a chain of adapters applied in order after the base (peft's order with several
/// active adapters; see the [module documentation](super)). Gradients are returned in `steps`' order.
pub fn backward<T: Element>(
    x: &[T],
    grad_output: &[T],
    weight: Option<&[T]>,
    steps: &[BackwardStep<'_, [T], [f32]>],
    shape: LoraShape,
) -> Result<Backward<Vec<T>>> {
    validate_backward(
        shape,
        x.len(),
        grad_output.len(),
        weight.map(<[T]>::len),
        &step_lens(steps, <[T]>::len, <[f32]>::len),
    )?;
    let LoraShape { m, k, n } = shape;
    let xf: Vec<f64> = x[..m * k].iter().map(|v| v.to_f64()).collect();
    let g: Vec<f64> = grad_output[..m * n].iter().map(|v| v.to_f64()).collect();
    // The product of the factors of the DoRA adapters after the current one, per output column.
    let mut column_scale = vec![1.0f64; n];
    let mut dx = vec![0.0f64; m * k];
    let mut grads = Vec::with_capacity(steps.len());
    for step in steps.iter().rev() {
        let ad = &step.adapter;
        let (r, s) = (ad.rank, ad.scale as f64);
        let a: Vec<f64> = ad.lora_a[..r * k].iter().map(|v| v.to_f64()).collect();
        let b: Vec<f64> = ad.lora_b[..n * r].iter().map(|v| v.to_f64()).collect();
        let factor: Option<Vec<f64>> = match &step.dora {
            Some(d) => Some(
                dora_factor(&d.magnitude[..n], &d.norm[..n])?
                    .into_iter()
                    .map(f64::from)
                    .collect(),
            ),
            None => None,
        };
        // G_f = G ⊙ column_scale ⊙ f: this adapter's output gradient times its own factor.
        let g_f: Vec<f64> = (0..m * n)
            .map(|e| {
                let j = e % n;
                g[e] * column_scale[j] * factor.as_ref().map_or(1.0, |f| f[j])
            })
            .collect();
        let l = matmul_nt(&xf, &a, m, k, r); // L = x·Aᵀ [m, r]
        let h = matmul_nn(&g_f, &b, m, n, r); // H = G_f·B [m, r]
        let mut db = vec![0.0f64; n * r]; // s·G_fᵀ·L
        for i in 0..m {
            for j in 0..n {
                for q in 0..r {
                    db[j * r + q] += g_f[i * n + j] * l[i * r + q];
                }
            }
        }
        let mut da = vec![0.0f64; r * k]; // s·Hᵀ·x
        for i in 0..m {
            for q in 0..r {
                for c in 0..k {
                    da[q * k + c] += h[i * r + q] * xf[i * k + c];
                }
            }
        }
        for i in 0..m {
            for q in 0..r {
                for c in 0..k {
                    dx[i * k + c] += s * h[i * r + q] * a[q * k + c];
                }
            }
        }
        let magnitude = match (&step.dora, &factor) {
            (Some(d), Some(f)) => {
                let grad = dora_magnitude_grad(&g, &column_scale, d, &l, &b, s, shape, r);
                for (scale, fj) in column_scale.iter_mut().zip(f) {
                    *scale *= fj;
                }
                Some(grad)
            }
            _ => None,
        };
        grads.push(AdapterGrads {
            lora_a: da.into_iter().map(|v| T::from_f64(s * v)).collect(),
            lora_b: db.into_iter().map(|v| T::from_f64(s * v)).collect(),
            magnitude,
        });
    }
    grads.reverse();
    if let Some(w) = weight {
        // dX += (G ⊙ column_scale)·W
        for i in 0..m {
            for j in 0..n {
                let gij = g[i * n + j] * column_scale[j];
                for c in 0..k {
                    dx[i * k + c] += gij * w[j * k + c].to_f64();
                }
            }
        }
    }
    Ok(Backward {
        x: dx.into_iter().map(T::from_f64).collect(),
        adapters: grads,
    })
}

/// colsum(G ⊙ column_scale ⊙ (base − bias + s·L·Bᵀ)) / max(norm, eps).
#[allow(clippy::too_many_arguments)]
fn dora_magnitude_grad<T: Element>(
    g: &[f64],
    column_scale: &[f64],
    d: &DoraSaved<'_, [T], [f32]>,
    l: &[f64],
    b: &[f64],
    s: f64,
    shape: LoraShape,
    r: usize,
) -> Vec<T> {
    let LoraShape { m, n, .. } = shape;
    (0..n)
        .map(|j| {
            let bias = d.bias.map_or(0.0, |b| b[j].to_f64());
            let sum: f64 = (0..m)
                .map(|i| {
                    let u: f64 = (0..r).map(|q| l[i * r + q] * b[j * r + q]).sum();
                    let pre = d.base[i * n + j].to_f64() - bias + s * u;
                    g[i * n + j] * column_scale[j] * pre
                })
                .sum();
            let norm = d.norm[j];
            let c = if norm < crate::dora::DORA_NORM_EPS {
                crate::dora::DORA_NORM_EPS
            } else {
                norm
            };
            T::from_f64(sum / c as f64)
        })
        .collect()
}

/// p `[rows, depth]` · qᵀ for q `[cols, depth]`: `[rows, cols]`.
fn matmul_nt(p: &[f64], q: &[f64], rows: usize, depth: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            out[i * cols + j] = (0..depth)
                .map(|c| p[i * depth + c] * q[j * depth + c])
                .sum();
        }
    }
    out
}

/// p `[rows, depth]` · q `[depth, cols]`: `[rows, cols]`.
fn matmul_nn(p: &[f64], q: &[f64], rows: usize, depth: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; rows * cols];
    for i in 0..rows {
        for d in 0..depth {
            let v = p[i * depth + d];
            for j in 0..cols {
                out[i * cols + j] += v * q[d * cols + j];
            }
        }
    }
    out
}

pub(super) fn step_lens<S: ?Sized, N: ?Sized>(
    steps: &[BackwardStep<'_, S, N>],
    len: impl Fn(&S) -> usize,
    norm_len: impl Fn(&N) -> usize,
) -> Vec<(AdapterLens, Option<DoraLens>)> {
    steps
        .iter()
        .map(|st| {
            (
                AdapterLens::of(std::slice::from_ref(&st.adapter), &len)[0],
                st.dora.map(|d| DoraLens {
                    magnitude: len(d.magnitude),
                    norm: norm_len(d.norm),
                    base: len(d.base),
                    bias: d.bias.map(&len),
                }),
            )
        })
        .collect()
}
