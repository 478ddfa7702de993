//! The base layer's product `y = x·Wᵀ + bias` on the GPU, for every weight format: W dense
//! (element type), bitsandbytes 4-bit or LLM.int8 codes. Up to [`GEMV_MAX_M`] rows (decode) a GEMV
//! kernel per format streams W with the whole device (`kernels/linear.cu`, `quant4.cu`, `int8.cu`),
//! with the adapters' LoRA term optionally fused into its epilogue; above, a tiled tensor-core kernel
//! (`kernels/linear.cu`) dequantises quantised tiles in shared memory. It is what a [`crate::layer`]
//! runs for its base, and what [`crate::Gpu::dora_forward_linear`] runs when the caller has no base output.
//!
//!
//! Layout: `reference.rs` (the CPU reference of the dense product), `gpu.rs` (the public products and
//! the dispatch: the dense GEMV and the tiled kernel of `kernels/linear.cu` launch here, the 4-bit and
//! int8 GEMVs in their own families, [`crate::quant4`] and [`crate::int8`]).
mod gpu;
pub mod reference;

use crate::int8::Int8Device;
use crate::quant4::Quant4Device;
use crate::sys::{
    LinearWeightFormat, LinearWeightFormat_LINEAR_DENSE, LinearWeightFormat_LINEAR_INT8,
    LinearWeightFormat_LINEAR_QUANT4, Quant4Weights, LINEAR_THREADS,
};
use cudarc::driver::{CudaStream, DevicePtr, SyncOnDrop};
use std::sync::Arc;

/// Output columns per block of the GEMV kernels (a warp each).
pub(crate) const GEMV_COLUMNS_PER_BLOCK: usize = LINEAR_THREADS as usize / 32;

/// Rows of x above which the products leave their GEMV kernels (a warp per output column, W streamed
/// by the whole device; 8 rows per pass) for the tiled kernel (which reads W once per 64 rows).
/// `LORA_KERNELS_GEMV_MAX_M` overrides it at run time (the quantised bench times both sides of the
/// crossover); the LoRA epilogue of the GEMVs stays limited to 8 rows.
pub const GEMV_MAX_M: usize = 8;

/// [`GEMV_MAX_M`], or `LORA_KERNELS_GEMV_MAX_M` when set to a positive number.
pub(crate) fn gemv_max_m() -> usize {
    std::env::var("LORA_KERNELS_GEMV_MAX_M")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(GEMV_MAX_M)
}

/// The weight operand of a launch (the tiled product, the DoRA row passes), as device addresses
/// (already validated by its owner).
#[derive(Clone, Copy)]
pub(crate) enum LinearWeight {
    /// Element-type W `[n, k]`.
    Dense(u64),
    /// bitsandbytes 4-bit codes and their absmax.
    Quant4(Quant4Weights),
    /// LLM.int8 codes CB `[n, k]` and row scales SCB `[n]` (f32).
    Int8 { cb: u64, scb: u64 },
}

/// A quantised base weight on the GPU, borrowed: what [`crate::Gpu::quantized_linear`],
/// [`crate::Gpu::quantized_lora_forward`] and the DoRA norm of a quantised base
/// ([`crate::Gpu::dora_factor_quantized`]) read.
#[derive(Clone, Copy, Debug)]
pub enum QuantizedWeight<'a> {
    /// bitsandbytes 4-bit (NF4/FP4).
    Quant4(&'a Quant4Device),
    /// LLM.int8 codes and row scales (weight-only products).
    Int8(&'a Int8Device),
}

impl<'a> QuantizedWeight<'a> {
    /// [n, k] = (out_features, in_features).
    pub fn shape(&self) -> [usize; 2] {
        match self {
            QuantizedWeight::Quant4(w) => w.shape(),
            QuantizedWeight::Int8(w) => w.shape(),
        }
    }

    /// The kernels' operand, with the guards that keep the buffers in use.
    pub(crate) fn operand<'s>(
        &self,
        stream: &'s Arc<CudaStream>,
    ) -> (LinearWeight, Vec<SyncOnDrop<'s>>)
    where
        'a: 's,
    {
        match *self {
            QuantizedWeight::Quant4(w) => {
                let d = w.device_weights(stream);
                (LinearWeight::Quant4(d.params), d.guards)
            }
            QuantizedWeight::Int8(w) => {
                let (cb, g1) = w.cb.device_ptr(stream);
                let (scb, g2) = w.scb.device_ptr(stream);
                (LinearWeight::Int8 { cb, scb }, vec![g1, g2])
            }
        }
    }
}

impl LinearWeight {
    /// The tiled kernel's name for this format (`linear_tiled_{variant}_{dtype}`, the LINEAR_*
    /// formats of kernels/lora_params.h).
    pub(crate) fn kernel_variant(&self) -> &'static str {
        match self {
            LinearWeight::Dense(_) => "dense",
            LinearWeight::Quant4(_) => "quant4",
            LinearWeight::Int8 { .. } => "int8",
        }
    }

    /// (LINEAR_* format, dense or int8 weight address, int8 scales, 4-bit weights) as the kernels'
    /// parameter structs take them.
    pub(crate) fn fields(&self) -> (LinearWeightFormat, u64, u64, Quant4Weights) {
        match *self {
            LinearWeight::Dense(w) => (
                LinearWeightFormat_LINEAR_DENSE,
                w,
                0,
                Quant4Weights::default(),
            ),
            LinearWeight::Quant4(q) => (LinearWeightFormat_LINEAR_QUANT4, 0, 0, q),
            LinearWeight::Int8 { cb, scb } => (
                LinearWeightFormat_LINEAR_INT8,
                cb,
                scb,
                Quant4Weights::default(),
            ),
        }
    }

    /// Whether W's rows load as 16-byte vectors (see `vector_w` in kernels/lora_params.h).
    pub(crate) fn vectorizable(&self, k: usize, elem: usize) -> bool {
        match self {
            LinearWeight::Dense(w) => k % (16 / elem) == 0 && w % 16 == 0,
            LinearWeight::Quant4(q) => k % 32 == 0 && q.packed % 16 == 0 && q.blocksize >= 32,
            LinearWeight::Int8 { cb, .. } => k % 16 == 0 && cb % 16 == 0,
        }
    }
}
