//! DoRA (weight-decomposed LoRA, peft's `use_dora=True`): the weight norm `‖W + s·B·A‖` per output
//! row without forming B·A in memory, the forward with the magnitude factor fused into the LoRA
//! epilogue, and merge / unmerge in one pass over W.
//!
//! Layout: `reference.rs` (the f64 CPU references), `gpu.rs` (the factor and norm, and the launcher of
//! every row pass of `kernels/dora.cu`), `forward.rs` (the forwards: the `lora` family's fused kernel
//! with the DoRA epilogue), `merge.rs` (merge / unmerge into dense and int8 W, and the GPU int8
//! quantiser, the same requantising row pass).
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
//!
//! NaN: a NaN that goes in comes out. A NaN in W, A or B makes that row's norm NaN, and a NaN norm
//! gives a NaN factor (the max with the epsilon propagates NaN, as peft's `m / norm` does; it does
//! not turn into `m / eps`). A negative norm cannot occur (it is a square root).
mod forward;
pub(crate) mod gpu;
mod merge;
pub mod reference;

pub use gpu::DoraFactor;

use crate::lora::LoraAdapter;

/// A DoRA adapter as the GPU forwards take it: its LoRA part (A, B, rank, scale) and its cached
/// factor `f = m / max(‖W + s·B·A‖, DORA_NORM_EPS)` from [`crate::Gpu::dora_factor`].
#[derive(Debug)]
pub struct DoraAdapter<'a, S: ?Sized> {
    /// A, B, the rank and the scale.
    pub lora: LoraAdapter<'a, S>,
    /// The factor of this adapter on this layer's W, one per output row.
    pub factor: &'a DoraFactor,
}

impl<S: ?Sized> Clone for DoraAdapter<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S: ?Sized> Copy for DoraAdapter<'_, S> {}

impl<'a, S: ?Sized> DoraAdapter<'a, S> {
    /// A DoRA adapter from its LoRA part and its factor.
    pub fn new(lora: LoraAdapter<'a, S>, factor: &'a DoraFactor) -> Self {
        DoraAdapter { lora, factor }
    }
}

/// Norms below this count as zero: `f = m / max(norm, DORA_NORM_EPS)`.
pub const DORA_NORM_EPS: f32 = crate::sys::DORA_NORM_EPS as f32;
