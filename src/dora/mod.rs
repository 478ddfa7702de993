//! DoRA (weight-decomposed LoRA, peft's `use_dora=True`): the weight norm `‖W + s·B·A‖` per output
//! row without forming B·A in memory, the forward with the magnitude factor fused into the LoRA
//! epilogue, and merge / unmerge in one pass over W.
//!
//! With m the magnitude vector `[n]` and `f = m / max(‖W + s·B·A‖, DORA_NORM_EPS)` per output row, the
//! eval forward is `y = bias + f ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ)`. Given `base = x·Wᵀ + bias` (as peft passes
//! `base_result`) the crate computes `y = bias + f ⊙ (base − bias + s·(x·Aᵀ)·Bᵀ)` in the fused LoRA
//! kernel. f only changes when W, A, B or m change, so it is computed once ([`crate::Gpu::dora_factor`])
//! and reused by every forward (the cached norm).
//!
//! Zero rows: where `‖W + s·B·A‖` is below [`DORA_NORM_EPS`] the norm is taken as that epsilon, so f is
//! finite (`m / 1e-12`). Such a row of `W + s·B·A` is zero, so its output is the bias (exactly, when the
//! row's W and B·A are zero; peft divides by zero there and returns inf or NaN).
pub(crate) mod gpu;
pub mod reference;

pub use gpu::DoraFactor;

use crate::error::Result;
use crate::lora::{at_least, validate_adapter, validate_dims, AdapterLens};

/// Norms below this count as zero: `f = m / max(norm, DORA_NORM_EPS)`.
pub const DORA_NORM_EPS: f32 = crate::sys::DORA_NORM_EPS as f32;

/// Checks the arguments of a row pass over W [n, k] with one adapter; `magnitude` and `factor` are the
/// lengths of those buffers when the pass reads them.
pub(crate) fn validate_rows(
    k: usize,
    n: usize,
    weight_len: usize,
    adapter: &AdapterLens,
    magnitude_len: Option<usize>,
    factor_len: Option<usize>,
) -> Result<()> {
    validate_dims(&[("k", k), ("n", n)])?;
    at_least(
        "weight",
        weight_len,
        n.checked_mul(k),
        &format!("[n={n}, k={k}]"),
    )?;
    validate_adapter("adapter", adapter, k, n)?;
    if let Some(len) = magnitude_len {
        at_least("magnitude", len, Some(n), &format!("[n={n}]"))?;
    }
    if let Some(len) = factor_len {
        at_least("factor", len, Some(n), &format!("[n={n}]"))?;
    }
    Ok(())
}
