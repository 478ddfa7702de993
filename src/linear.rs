//! The base layer's matmul `y = x·Wᵀ + bias` on the GPU (`kernels/linear.cu`): a tiled kernel on
//! tensor cores (f16/bf16; f32 on CUDA cores) with W dense, bitsandbytes 4-bit or LLM.int8 codes, the
//! quantised ones dequantised tile by tile in shared memory. It is what a [`crate::layer`] runs for its
//! base, what [`Gpu::dora_forward_linear`] runs when the caller has no base output, and the large-m
//! path of [`Gpu::quant4_linear`] and [`Gpu::int8_linear`] (decode-sized m takes their GEMV kernels).
//!
//! The CPU reference of the dense product is [`crate::lora::reference::linear`].
use crate::device::{Gpu, KernelModule};
use crate::error::{invalid, Result};
use crate::int8::Int8Device;
use crate::lora::{validate_bias, validate_lora_forward, AdapterLens, LoraAdapter, LoraShape};
use crate::quant4::Quant4Device;
use crate::sys::{
    LinearParams, LinearWeightFormat, LinearWeightFormat_LINEAR_DENSE,
    LinearWeightFormat_LINEAR_INT8, LinearWeightFormat_LINEAR_QUANT4, Quant4Weights,
    LINEAR_BLOCK_M, LINEAR_BLOCK_N, LINEAR_THREADS,
};
use crate::Element;
use cudarc::driver::{CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, SyncOnDrop};
use std::sync::Arc;

// SAFETY: plain C struct of integers and floats, laid out by bindgen from kernels/lora_params.h.
unsafe impl DeviceRepr for LinearParams {}

/// Rows of x above which the products leave their GEMV kernels (a warp per output column, W streamed
/// by the whole device) for the tiled kernel (which reads W once per 64 rows).
pub const GEMV_MAX_M: usize = 8;

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

/// A quantised base weight on the GPU, borrowed: what [`Gpu::quantized_linear`],
/// [`Gpu::quantized_lora_forward`] and the DoRA norm of a quantised base
/// ([`Gpu::dora_factor_quantized`]) read.
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
    /// The kernel's name for this format (`linear_{variant}{dtype}`, the LINEAR_* formats of
    /// kernels/lora_params.h).
    fn kernel_variant(&self) -> &'static str {
        match self {
            LinearWeight::Dense(_) => "",
            LinearWeight::Quant4(_) => "quant4_",
            LinearWeight::Int8 { .. } => "int8_",
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
    fn vectorizable(&self, k: usize, elem: usize) -> bool {
        match self {
            LinearWeight::Dense(w) => k % (16 / elem) == 0 && w % 16 == 0,
            LinearWeight::Quant4(q) => k % 32 == 0 && q.packed % 16 == 0 && q.blocksize >= 32,
            LinearWeight::Int8 { cb, .. } => k % 16 == 0 && cb % 16 == 0,
        }
    }
}

impl Gpu {
    /// `y = x · Wᵀ + bias` for x `[m, k]`, W `[n, k]`, bias `[n]`, y `[m, n]`, row-major, element type
    /// `T` (f32, f16, bf16; f32 accumulation, one rounding). Up to [`GEMV_MAX_M`] rows take a GEMV
    /// kernel (decode), more rows the tiled tensor-core kernel. Buffers may be longer than needed; every
    /// argument is checked before the launch, which is asynchronous on [`Gpu::stream`].
    pub fn linear<T, X, W, Y>(
        &self,
        x: &X,
        weight: &W,
        bias: Option<&CudaView<'_, T>>,
        shape: LoraShape,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        W: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        validate_lora_forward(shape, x.len(), None, y.len(), &[])?;
        let LoraShape { k, n, .. } = shape;
        if weight.len() < n * k {
            return Err(invalid(
                "weight",
                format!("at least {} elements ([n={n}, k={k}])", n * k),
                weight.len(),
            ));
        }
        validate_bias(bias.map(|b| b.len()), n)?;
        let stream = self.stream().clone();
        let (x_ptr, _gx) = x.device_ptr(&stream);
        let (w_ptr, _gw) = weight.device_ptr(&stream);
        let (y_ptr, _gy) = y.device_ptr_mut(&stream);
        let bias_guard = bias.map(|b| b.device_ptr(&stream));
        let bias_ptr = bias_guard.as_ref().map_or(0, |(p, _)| *p);
        if shape.m <= GEMV_MAX_M {
            return self.launch_linear_gemv::<T>(w_ptr, x_ptr, bias_ptr, y_ptr, shape);
        }
        self.launch_linear::<T>(LinearWeight::Dense(w_ptr), x_ptr, bias_ptr, y_ptr, shape)
    }

    /// `y = x · dequant(W)ᵀ + bias` for a quantised W: [`Gpu::quant4_linear`] or
    /// [`Gpu::int8_linear`] (weight-only).
    pub fn quantized_linear<T, X, Y>(
        &self,
        x: &X,
        weight: QuantizedWeight<'_>,
        bias: Option<&CudaView<'_, T>>,
        m: usize,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        match weight {
            QuantizedWeight::Quant4(w) => self.quant4_linear(x, w, bias, m, y),
            QuantizedWeight::Int8(w) => self.int8_linear(x, w, bias, m, y),
        }
    }

    /// LoRA on a quantised base (QLoRA on 4-bit, peft's `Linear8bitLt` with adapters on int8):
    /// `y = x · dequant(W)ᵀ + bias + Σᵢ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ`, as two launches: [`Gpu::quantized_linear`]
    /// into y, then the fused LoRA forward in place on y (which reads and writes y once more: m·n
    /// elements, small beside the weight at decode sizes; one launch's latency is the price of not
    /// fusing the adapter into the GEMV epilogue). For DoRA, follow [`Gpu::quantized_linear`] with
    /// [`Gpu::dora_forward_inplace`] and a factor from [`Gpu::dora_factor_quantized`];
    /// [`crate::layer::Layer`] does both.
    pub fn quantized_lora_forward<T, X, S, Y>(
        &self,
        x: &X,
        weight: QuantizedWeight<'_>,
        bias: Option<&CudaView<'_, T>>,
        adapters: &[LoraAdapter<'_, S>],
        m: usize,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        S: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        let [n, k] = weight.shape();
        let shape = LoraShape::new(m, k, n);
        validate_lora_forward(
            shape,
            x.len(),
            None,
            y.len(),
            &AdapterLens::of(adapters, |s| s.len()),
        )?;
        self.quantized_linear(x, weight, bias, m, y)?;
        self.lora_forward_inplace(x, adapters, shape, y)
    }

    /// The decode path of a dense W (m ≤ [`GEMV_MAX_M`]): a warp per output column.
    fn launch_linear_gemv<T: Element>(
        &self,
        weight: u64,
        x: u64,
        bias: u64,
        y: u64,
        shape: LoraShape,
    ) -> Result<()> {
        self.check_dtype(T::DTYPE, "the dense GEMV kernel")?;
        let LoraShape { m, k, n } = shape;
        let elem = std::mem::size_of::<T>();
        let (func, _) = self.kernel(
            KernelModule::Linear,
            &format!("linear_gemv_{}", T::DTYPE.name()),
            LINEAR_THREADS,
        )?;
        let params = LinearParams {
            x,
            weight,
            bias,
            y,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            vector_x: (k % (16 / elem) == 0 && x % 16 == 0) as i32,
            vector_w: LinearWeight::Dense(weight).vectorizable(k, elem) as i32,
            ..Default::default()
        };
        // SAFETY: the caller validated x [m, k] (m <= 8), W [n, k], bias [n] and y [m, n].
        unsafe {
            self.launch(
                &func,
                (n.div_ceil(LINEAR_THREADS as usize / 32) as u32, 1),
                LINEAR_THREADS,
                &params,
            )
        }
    }

    /// One launch of the tiled kernel; the caller validated every extent and holds the buffers.
    pub(crate) fn launch_linear<T: Element>(
        &self,
        weight: LinearWeight,
        x: u64,
        bias: u64,
        y: u64,
        shape: LoraShape,
    ) -> Result<()> {
        self.check_dtype(T::DTYPE, "the tiled linear kernel")?;
        let LoraShape { m, k, n } = shape;
        let elem = std::mem::size_of::<T>();
        let variant = weight.kernel_variant();
        let vector_w = weight.vectorizable(k, elem);
        let (func, _) = self.kernel(
            KernelModule::Linear,
            &format!("linear_{variant}{}", T::DTYPE.name()),
            LINEAR_THREADS,
        )?;
        let grid_y = m.div_ceil(LINEAR_BLOCK_M as usize);
        if grid_y > 65535 {
            return Err(invalid(
                "shape.m",
                format!("at most {} rows", 65535 * LINEAR_BLOCK_M),
                m,
            ));
        }
        let (_, dense, scb, quant4) = weight.fields();
        let params = LinearParams {
            x,
            weight: dense,
            scb,
            bias,
            y,
            quant4,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            vector_x: (k % (16 / elem) == 0 && x % 16 == 0) as i32,
            vector_w: vector_w as i32,
            vector_y: (n % 2 == 0 && y % 4 == 0) as i32,
        };
        // SAFETY: the callers validated x [m, k], y [m, n], bias [n] and the weight's extents; the
        // kernel reads and writes only inside them (every tile access is bounds-checked).
        unsafe {
            self.launch(
                &func,
                (n.div_ceil(LINEAR_BLOCK_N as usize) as u32, grid_y as u32),
                LINEAR_THREADS,
                &params,
            )
        }
    }
}
