//! The base layer's product `y = x·Wᵀ + bias` on the GPU, for every weight format: W dense
//! (element type), bitsandbytes 4-bit or LLM.int8 codes. Up to [`GEMV_MAX_M`] rows (decode) a GEMV
//! kernel per format streams W with the whole device (`kernels/linear.cu`, `quant4.cu`, `int8.cu`),
//! with the adapters' LoRA term optionally fused into its epilogue; above, a tiled tensor-core kernel
//! (`kernels/linear.cu`) dequantises quantised tiles in shared memory. It is what a [`crate::layer`]
//! runs for its base, and what [`Gpu::dora_forward_linear`] runs when the caller has no base output.
//!
//! The CPU reference of the dense product is [`crate::lora::reference::linear`].
use crate::device::{Gpu, KernelModule};
use crate::error::{invalid, Result};
use crate::int8::Int8Device;
use crate::lora::gemv::fits_gemv_epilogue;
use crate::lora::{validate_bias, validate_lora_forward, AdapterLens, LoraAdapter, LoraShape};
use crate::quant4::Quant4Device;
use crate::sys::{
    Int8LinearParams, LinearParams, LinearWeightFormat, LinearWeightFormat_LINEAR_DENSE,
    LinearWeightFormat_LINEAR_INT8, LinearWeightFormat_LINEAR_QUANT4, LoraGemvEpilogue,
    Quant4Params, Quant4Weights, INT8_THREADS, LINEAR_BLOCK_M, LINEAR_BLOCK_N, LINEAR_THREADS,
    QUANT4_THREADS,
};
use crate::Element;
use cudarc::driver::{CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, SyncOnDrop};
use std::sync::Arc;

// SAFETY: plain C struct of integers and floats, laid out by bindgen from kernels/lora_params.h.
unsafe impl DeviceRepr for LinearParams {}

/// Output columns per block of the GEMV kernels (a warp each).
const GEMV_COLUMNS_PER_BLOCK: usize = LINEAR_THREADS as usize / 32;

/// Rows of x above which the products leave their GEMV kernels (a warp per output column, W streamed
/// by the whole device; 8 rows per pass) for the tiled kernel (which reads W once per 64 rows).
/// `LORA_KERNELS_GEMV_MAX_M` overrides it at run time (the quantised bench times both sides of the
/// crossover); the LoRA epilogue of the GEMVs stays limited to 8 rows.
pub const GEMV_MAX_M: usize = 8;

/// [`GEMV_MAX_M`], or `LORA_KERNELS_GEMV_MAX_M` when set to a positive number.
fn gemv_max_m() -> usize {
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
    /// kernel (decode), more rows the tiled tensor-core kernel. Buffers may be longer than needed;
    /// every argument is checked before the launch, which is asynchronous on [`Gpu::stream`].
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
        self.linear_lora_forward::<T, X, W, W, Y>(x, weight, bias, &[], shape, y)
    }

    /// The base layer and its LoRA adapters from x and a dense W:
    /// `y = x · Wᵀ + bias + Σᵢ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ`. At decode sizes (m ≤ [`GEMV_MAX_M`], up to 8 adapters
    /// and 256 summed ranks) the adapters' term is fused into the GEMV's epilogue after a small shrink
    /// launch, so W is read once and y written once; otherwise the tiled product is followed by the
    /// fused LoRA forward in place on y.
    pub fn linear_lora_forward<T, X, W, S, Y>(
        &self,
        x: &X,
        weight: &W,
        bias: Option<&CudaView<'_, T>>,
        adapters: &[LoraAdapter<'_, S>],
        shape: LoraShape,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        W: DevicePtr<T>,
        S: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        let LoraShape { k, n, .. } = shape;
        if weight.len() < n * k {
            return Err(invalid(
                "weight",
                format!("at least {} elements ([n={n}, k={k}])", n * k),
                weight.len(),
            ));
        }
        let stream = self.stream().clone();
        let (w, _gw) = weight.device_ptr(&stream);
        self.product_with_lora(x, LinearWeight::Dense(w), bias, adapters, shape, y)
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
        self.quantized_lora_forward::<T, X, X, Y>(x, weight, bias, &[], m, y)
    }

    /// LoRA on a quantised base (QLoRA on 4-bit, peft's `Linear8bitLt` with adapters on int8):
    /// `y = x · dequant(W)ᵀ + bias + Σᵢ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ`. At decode sizes (m ≤ [`GEMV_MAX_M`], up to
    /// 8 adapters and 256 summed ranks) the adapters' term is fused into the GEMV's epilogue after a
    /// small shrink launch, so the packed weight is read once and y written once; otherwise the tiled
    /// product is followed by the fused LoRA forward in place on y. For DoRA, follow
    /// [`Gpu::quantized_linear`] with [`Gpu::dora_forward_inplace`] and a factor from
    /// [`Gpu::dora_factor_quantized`]; [`crate::layer::Layer`] does both.
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
        let stream = self.stream().clone();
        let (operand, _guards) = weight.operand(&stream);
        self.product_with_lora(x, operand, bias, adapters, LoraShape::new(m, k, n), y)
    }

    /// The base product of any format plus the adapters' term (see [`Gpu::linear_lora_forward`]);
    /// validates everything but the weight (its owner did) before launching.
    fn product_with_lora<T, X, S, Y>(
        &self,
        x: &X,
        weight: LinearWeight,
        bias: Option<&CudaView<'_, T>>,
        adapters: &[LoraAdapter<'_, S>],
        shape: LoraShape,
        y: &mut Y,
    ) -> Result<()>
    where
        T: Element,
        X: DevicePtr<T>,
        S: DevicePtr<T>,
        Y: DevicePtrMut<T>,
    {
        validate_lora_forward(
            shape,
            x.len(),
            None,
            y.len(),
            &AdapterLens::of(adapters, |s| s.len()),
        )?;
        validate_bias(bias.map(|b| b.len()), shape.n)?;
        let fused =
            shape.m <= gemv_max_m() && fits_gemv_epilogue(shape, adapters.iter().map(|a| a.rank));
        {
            let stream = self.stream().clone();
            let (x_ptr, _gx) = x.device_ptr(&stream);
            let (y_ptr, _gy) = y.device_ptr_mut(&stream);
            let bias_guard = bias.map(|b| b.device_ptr(&stream));
            let bias_ptr = bias_guard.as_ref().map_or(0, |(p, _)| *p);
            if fused {
                let lora = self.gemv_lora::<T, S>(x_ptr, shape, adapters, &stream)?;
                return self.launch_product::<T>(
                    weight,
                    x_ptr,
                    bias_ptr,
                    y_ptr,
                    shape,
                    &lora.epilogue,
                );
            }
            let none = LoraGemvEpilogue::default();
            self.launch_product::<T>(weight, x_ptr, bias_ptr, y_ptr, shape, &none)?;
        }
        if adapters.is_empty() {
            return Ok(());
        }
        self.lora_forward_inplace(x, adapters, shape, y)
    }

    /// One launch of the base product: the GEMV kernel of W's format up to [`GEMV_MAX_M`] rows (with
    /// the LoRA epilogue `lora`, which must be empty above), the tiled kernel above. The caller
    /// validated every extent and holds the buffers.
    pub(crate) fn launch_product<T: Element>(
        &self,
        weight: LinearWeight,
        x: u64,
        bias: u64,
        y: u64,
        shape: LoraShape,
        lora: &LoraGemvEpilogue,
    ) -> Result<()> {
        let LoraShape { m, k, n } = shape;
        if m > gemv_max_m() {
            debug_assert_eq!(lora.hidden, 0, "the tiled kernel has no LoRA epilogue");
            return self.launch_linear::<T>(weight, x, bias, y, shape);
        }
        let elem = std::mem::size_of::<T>();
        let vector_x = k % (16 / elem) == 0 && x % 16 == 0;
        let vector_w = weight.vectorizable(k, elem);
        let grid = (n.div_ceil(GEMV_COLUMNS_PER_BLOCK) as u32, 1);
        let dtype = T::DTYPE.name();
        match weight {
            LinearWeight::Dense(w) => {
                self.check_dtype(T::DTYPE, "the dense GEMV kernel")?;
                let (func, _) = self.kernel(
                    KernelModule::Linear,
                    &format!("linear_gemv_{dtype}"),
                    LINEAR_THREADS,
                )?;
                let params = LinearParams {
                    x,
                    weight: w,
                    bias,
                    y,
                    m: m as i32,
                    n: n as i32,
                    k: k as i32,
                    vector_x: vector_x as i32,
                    vector_w: vector_w as i32,
                    lora: *lora,
                    ..Default::default()
                };
                // SAFETY: x [m, k] (m <= 8), W [n, k], bias [n], y [m, n] and the epilogue's hidden
                // [m, rank_total] and B [n, rank] were validated or allocated by the callers.
                unsafe { self.launch(&func, grid, LINEAR_THREADS, &params) }
            }
            LinearWeight::Quant4(q) => {
                self.check_dtype(T::DTYPE, "the 4-bit kernels")?;
                let (func, _) = self.kernel(
                    KernelModule::Quant4,
                    &format!("quant4_linear_{dtype}"),
                    QUANT4_THREADS,
                )?;
                let params = Quant4Params {
                    w: q,
                    x,
                    bias,
                    out: y,
                    m: m as i32,
                    vector_k: (vector_x && vector_w) as i32,
                    lora: *lora,
                };
                // SAFETY: the weight was validated on upload; x, y, bias and the epilogue as above.
                unsafe { self.launch(&func, grid, QUANT4_THREADS, &params) }
            }
            LinearWeight::Int8 { cb, scb } => {
                self.check_dtype(T::DTYPE, "the int8 kernels")?;
                let (func, _) = self.kernel(
                    KernelModule::Int8,
                    &format!("int8_linear_{dtype}"),
                    INT8_THREADS,
                )?;
                let params = Int8LinearParams {
                    cb,
                    scb,
                    x,
                    bias,
                    y,
                    m: m as i32,
                    n: n as i32,
                    k: k as i32,
                    vector_k: (vector_x && vector_w) as i32,
                    lora: *lora,
                };
                // SAFETY: CB and SCB were validated on upload; x, y, bias and the epilogue as above.
                unsafe { self.launch(&func, grid, INT8_THREADS, &params) }
            }
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
            lora: LoraGemvEpilogue::default(),
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
