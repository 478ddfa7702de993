//! Fused CUDA kernels for LoRA-family adapters, with CPU references.
//!
//! One module per kernel family, named as its `kernels/<family>.cu`, each with its CPU reference
//! (`reference`, f64 accumulation, the specification the kernels are tested against and the fallback
//! without a GPU) and its launches (on [`Gpu`]):
//!
//! - [`lora`]: the fused LoRA forward `y = base + Σᵢ sᵢ · (x · Aᵢᵀ) · Bᵢᵀ` in one launch
//!   ([`Gpu::lora_forward`]), and the adapter and shape types every family takes.
//! - [`linear`]: the base layer `y = x·Wᵀ + bias` for a dense, 4-bit or int8 W ([`Gpu::linear`],
//!   [`Gpu::quantized_linear`]; a GEMV at decode sizes, tiled on tensor cores above), with the
//!   adapters' LoRA term in the GEMV epilogue ([`Gpu::linear_lora_forward`],
//!   [`Gpu::quantized_lora_forward`]); the decode-path shrink is the private `lora_shrink` family.
//! - [`dora`]: DoRA's weight norm and factor ([`Gpu::dora_factor`]: one pass over a dense, 4-bit or
//!   int8 W, B·A never in memory), its forwards ([`Gpu::dora_forward`]), and merge / unmerge of LoRA
//!   and DoRA adapters into dense and int8 W ([`Gpu::merge_adapter`]).
//! - [`quant4`]: bitsandbytes' NF4/FP4 format (quantise on the CPU and GPU, dequantise, `Linear4bit`
//!   state dicts) and its GEMV.
//! - [`int8`]: bitsandbytes' LLM.int8 weights (row-wise quantise, dequantise, `Linear8bitLt` state
//!   dicts), the weight-only GEMV and LLM.int8 with its outlier threshold ([`Gpu::int8_linear_llm`]).
//! - [`mixed_batch`]: one adapter (or none) per row of a batch, one launch
//!   ([`Gpu::lora_forward_mixed`]).
//! - [`lora_backward`]: the training backward of LoRA, DoRA and QLoRA/QDoRA adapters (dX, dA, dB,
//!   d magnitude; [`Gpu::lora_backward`], [`Gpu::dora_backward`]), deterministic, with W frozen and
//!   quantised W dequantised on the fly.
//! - [`layer`]: a peft layer's forward states (disabled, mixed batch, merged, active adapters) over
//!   a dense, 4-bit or int8 base, on the GPU ([`layer::Layer`]) and as the CPU reference.
//! - [`peft`]: loading adapters as peft's `save_pretrained` writes them.
//! - `candle` (cargo feature `candle`): `candle::LoraLinear`, a candle `Module` with LoRA/DoRA
//!   adapters whose forward and backward are the CPU references, trained with candle's autograd.
//! - `golden` (cargo feature `golden`, off by default; test support, not API): reading the golden
//!   cases computed by the real peft and bitsandbytes, and the tests' comparators.
//! - [`device`]: the [`Gpu`] handle; [`sys`]: the parameter structs and constants shared with the
//!   kernels (bindgen output of `kernels/lora_params.h`).
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

mod adapter;
// candle integration: LoRA/DoRA layers as candle ops with gradients (cargo feature `candle`).
#[cfg(feature = "candle")]
pub mod candle;
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
pub mod lora_backward;
mod lora_shrink;
pub mod mixed_batch;
pub mod peft;
pub mod quant4;
pub mod sys;
mod validate;

mod kernel_images {
    include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));
}

pub use device::Gpu;
pub use dora::{DoraAdapter, DoraFactor};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use lora::{LoraAdapter, LoraShape, LoraWorkspace, MAX_RANK};
pub use mixed_batch::MixedAdapters;
