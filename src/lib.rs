//! Fused CUDA kernels for LoRA-family adapters, with CPU references.
//!
//! - [`Gpu::lora_forward`]: the fused LoRA forward `y = base + Σᵢ sᵢ · (x · Aᵢᵀ) · Bᵢᵀ` in one launch.
//! - [`Gpu::linear`], [`Gpu::linear_lora_forward`]: the base layer `y = x·Wᵀ + bias` (a GEMV at
//!   decode sizes, tiled on tensor cores above), with its LoRA adapters riding in the GEMV epilogue
//!   ([`linear`]; also for 4-bit and int8 W).
//! - [`Gpu::dora_factor`], [`Gpu::dora_forward`], [`Gpu::merge_adapter`]: DoRA's weight norm (one
//!   pass over W, B·A never in memory; from a dense, 4-bit or int8 W), its forward with the magnitude
//!   in the fused epilogue, and merge / unmerge of LoRA and DoRA adapters ([`dora`]).
//! - [`lora::reference`], [`dora::reference`]: simple f64 CPU references of every op, the
//!   specification the kernels are tested against and the fallback without a GPU.
//! - [`quant4`]: bitsandbytes' NF4/FP4 format (quantise on the CPU and GPU, dequantise, `Linear4bit`
//!   state dicts), [`Gpu::quant4_linear`], and QLoRA ([`Gpu::quantized_lora_forward`]).
//! - [`int8`]: bitsandbytes' LLM.int8 weights (row-wise quantise on the CPU and GPU, dequantise,
//!   `Linear8bitLt` state dicts), the weight-only [`Gpu::int8_linear`], LLM.int8 with its outlier
//!   threshold [`Gpu::int8_linear_llm`], and merging into an 8-bit base by requantising.
//! - [`Gpu::lora_forward_mixed`]: one adapter (or none) per row of a batch, one launch.
//! - [`layer`]: a peft layer's forward states (disabled, mixed batch, merged, active adapters) over
//!   a dense, 4-bit or int8 base, on the GPU ([`layer::Layer`]) and as the CPU reference.
//! - [`peft`]: loading adapters as peft's `save_pretrained` writes them.
//! - `golden` (cargo feature `golden`, off by default; test support, not API): reading the golden
//!   cases computed by the real peft and bitsandbytes, and the tests' comparators.
//!
//! Kernels are compiled by `build.rs` from `kernels/*.cu` into an embedded fatbin; a build without
//! nvcc embeds the committed PTX (`ptx/*.ptx`), which the driver JIT-compiles, and only a kernel
//! with neither makes GPU calls return [`Error::KernelsNotBuilt`]. Creating a [`Gpu`] on a machine
//! without a driver or device returns [`Error::NoDevice`].
//!
//! ```no_run
//! use half::bf16;
//! use lora_kernels::{Gpu, LoraAdapter, LoraShape};
//!
//! # fn main() -> lora_kernels::Result<()> {
//! let gpu = Gpu::new(0)?;
//! let (m, k, n, r) = (4, 4096, 4096, 16);
//! let stream = gpu.stream();
//! let host = |len: usize| (0..len).map(|i| bf16::from_f32((i % 7) as f32 * 0.01)).collect::<Vec<_>>();
//! let x = stream.clone_htod(&host(m * k))?;
//! let base = stream.clone_htod(&host(m * n))?;
//! let a = stream.clone_htod(&host(r * k))?;
//! let b = stream.clone_htod(&host(n * r))?;
//! let mut y = stream.alloc_zeros::<bf16>(m * n)?;
//! let adapter = LoraAdapter::new(&a, &b, r, 32.0 / r as f32);
//! gpu.lora_forward(&x, &base, &[adapter], LoraShape::new(m, k, n), &mut y)?;
//! let y_host = stream.clone_dtoh(&y)?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod device;
pub mod dora;
pub mod dtype;
pub mod error;
// Test support (the golden-case reader and comparators), behind the `golden` feature: not API.
#[cfg(feature = "golden")]
pub mod golden;
pub mod int8;
pub mod layer;
pub mod linear;
pub mod lora;
pub mod peft;
pub mod quant4;
pub mod sys;

mod kernel_images {
    include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));
}

pub use device::Gpu;
pub use dora::DoraFactor;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use lora::{LoraAdapter, LoraShape, MAX_RANK};
