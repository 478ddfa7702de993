//! The LoRA term of the decode path, fused into the GEMV kernels' epilogue: `lora_shrink`
//! (`kernels/lora_shrink.cu`) forms hidden = Σᵢ sᵢ·x·Aᵢᵀ in f32, then the base product's GEMV
//! (dense, 4-bit or int8) adds hidden·Bᵀ to each output column before it stores it, so the base
//! product and the adapters' expand are one pass over the weight and y is written once.
//!
//! No CPU reference of its own: the shrink's output is the GEMV epilogue's input, and the products it
//! serves ([`crate::Gpu::linear_lora_forward`], [`crate::Gpu::quantized_lora_forward`]) are tested
//! against [`crate::lora::reference::lora_forward`] over [`crate::linear::reference::linear`].
mod gpu;

pub(crate) use gpu::{fits_gemv_epilogue, ShrinkHidden};
