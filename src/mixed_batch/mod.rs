//! The mixed-batch LoRA forward on the GPU (`kernels/mixed_batch.cu`): peft's `adapter_names`, one
//! adapter (or none) per row; one launch at decode sizes, two (shrink once per row, then expand) for
//! prefill; no host synchronisation.
//!
//! Layout: `reference.rs` (the CPU reference: each row through the LoRA reference), `gpu.rs` (the
//! adapter table and the launches).
mod gpu;
pub mod reference;

pub use gpu::MixedAdapters;
