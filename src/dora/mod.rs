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
mod forward;
pub(crate) mod gpu;
mod merge;
pub mod reference;

pub use gpu::DoraFactor;

/// Norms below this count as zero: `f = m / max(norm, DORA_NORM_EPS)`.
pub const DORA_NORM_EPS: f32 = crate::sys::DORA_NORM_EPS as f32;
