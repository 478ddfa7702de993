//! The fused LoRA forward `y = base + Σᵢ sᵢ · (x · Aᵢᵀ) · Bᵢᵀ` (`kernels/lora.cu`): its CPU reference
//! and GPU launch, and the adapter and shape types every family takes.
//!
//! Layouts are row-major: x [m, k], Aᵢ [rᵢ, k], Bᵢ [n, rᵢ], base and y [m, n]. `base` is what the
//! caller's base layer produced (peft's `result = base_layer(x)`, bias included). Several adapters are
//! summed in one call, as peft does for several active adapters; the scale sᵢ is the caller's number
//! (`alpha / r`, or `alpha / sqrt(r)` for rsLoRA).
pub(crate) mod gpu;
pub mod reference;

pub use crate::adapter::{LoraAdapter, LoraShape, MAX_RANK};
