//! The base layer's products on the GPU: the public entry points, the choice between the GEMV
//! kernels (decode, with the adapters' LoRA term in their epilogue) and the tiled kernel, and the
//! launches of `kernels/linear.cu` (the dense GEMV, the tiled kernel of every format).
use super::{gemv_max_m, LinearWeight, QuantizedWeight, GEMV_COLUMNS_PER_BLOCK};
use crate::device::{Gpu, KernelModule};
use crate::error::{invalid, Result};
use crate::int8::Int8Device;
use crate::lora::{LoraAdapter, LoraShape};
use crate::lora_shrink::{fits_gemv_epilogue, ShrinkHidden};
use crate::quant4::Quant4Device;
use crate::sys::{
    GemvOperands, LinearParams, LoraGemvEpilogue, LINEAR_BLOCK_M, LINEAR_BLOCK_N, LINEAR_THREADS,
};
use crate::validate::{
    validate_bias, validate_dims, validate_lora_forward, validate_weight, AdapterLens,
};
use crate::Element;
use cudarc::driver::{CudaView, DevicePtr, DevicePtrMut};

impl Gpu {
    /// `y = x · Wᵀ + bias` for x `[m, k]`, W `[n, k]`, bias `[n]`, y `[m, n]`, row-major, element type
    /// `T` (f32, f16, bf16; f32 accumulation, one rounding). Up to [`GEMV_MAX_M`](super::GEMV_MAX_M) rows take a GEMV
    /// kernel (decode), more rows the tiled tensor-core kernel. Buffers may be longer than needed;
    /// every argument is checked before the launch, which is asynchronous on [`Gpu::stream`].
    pub fn linear<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        bias: Option<&CudaView<'_, T>>,
        shape: LoraShape,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let none: &[LoraAdapter<'_, CudaView<'_, T>>] = &[];
        self.linear_lora_forward(x, weight, bias, none, shape, y)
    }

    /// The base layer and its LoRA adapters from x and a dense W:
    /// `y = x · Wᵀ + bias + Σᵢ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ`. At decode sizes (m ≤ [`GEMV_MAX_M`](super::GEMV_MAX_M), up to 8 adapters
    /// and 256 summed ranks) the adapters' term is fused into the GEMV's epilogue after a small shrink
    /// launch, so W is read once and y written once; otherwise the tiled product is followed by the
    /// fused LoRA forward in place on y.
    pub fn linear_lora_forward<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        bias: Option<&CudaView<'_, T>>,
        adapters: &[LoraAdapter<'_, impl DevicePtr<T>>],
        shape: LoraShape,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let LoraShape { k, n, .. } = shape;
        validate_dims(&[("shape.k", k), ("shape.n", n)])?;
        validate_weight(weight.len(), k, n)?;
        let stream = self.stream().clone();
        let (w, _gw) = weight.device_ptr(&stream);
        self.product_with_lora(x, LinearWeight::Dense(w), bias, adapters, shape, y)
    }

    /// `y = x · dequant(W)ᵀ + bias` for a quantised W: [`Gpu::quant4_linear`] or
    /// [`Gpu::int8_linear`] (weight-only).
    pub fn quantized_linear<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        weight: QuantizedWeight<'_>,
        bias: Option<&CudaView<'_, T>>,
        m: usize,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let none: &[LoraAdapter<'_, CudaView<'_, T>>] = &[];
        self.quantized_lora_forward(x, weight, bias, none, m, y)
    }

    /// LoRA on a quantised base (QLoRA on 4-bit, peft's `Linear8bitLt` with adapters on int8):
    /// `y = x · dequant(W)ᵀ + bias + Σᵢ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ`. At decode sizes (m ≤ [`GEMV_MAX_M`](super::GEMV_MAX_M), up to
    /// 8 adapters and 256 summed ranks) the adapters' term is fused into the GEMV's epilogue after a
    /// small shrink launch, so the packed weight is read once and y written once; otherwise the tiled
    /// product is followed by the fused LoRA forward in place on y. For DoRA, follow
    /// [`Gpu::quantized_linear`] with [`Gpu::dora_forward_inplace`] and a factor from
    /// [`Gpu::dora_factor_quantized`]; [`crate::layer::Layer`] does both.
    pub fn quantized_lora_forward<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        weight: QuantizedWeight<'_>,
        bias: Option<&CudaView<'_, T>>,
        adapters: &[LoraAdapter<'_, impl DevicePtr<T>>],
        m: usize,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let [n, k] = weight.shape();
        let stream = self.stream().clone();
        let (operand, _guards) = weight.operand(&stream);
        self.product_with_lora(x, operand, bias, adapters, LoraShape::new(m, k, n), y)
    }

    /// `y = x · dequant(W)ᵀ + bias` for x [m, k], y [m, n], never materialising the dequantised weight.
    /// Up to [`GEMV_MAX_M`](super::GEMV_MAX_M) rows take the 4-bit GEMV kernel of `kernels/quant4.cu` (a warp per output
    /// column, the packed W streamed once); more rows take the tiled tensor-core kernel of
    /// `kernels/linear.cu`, which dequantises 128 x 32 tiles of W into shared memory (each tile rounded
    /// to `T`, as bitsandbytes' dequantise-then-matmul does).
    pub fn quant4_linear<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        weight: &Quant4Device,
        bias: Option<&CudaView<'_, T>>,
        m: usize,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.quantized_linear(x, QuantizedWeight::Quant4(weight), bias, m, y)
    }

    /// Weight-only `y = x · (CB · SCB / 127)ᵀ + bias` for x [m, k], y [m, n], never materialising the
    /// dequantised weight. Up to [`GEMV_MAX_M`](super::GEMV_MAX_M) rows take the GEMV kernel of `kernels/int8.cu` (a warp
    /// per output column, CB streamed once); more rows take the tiled tensor-core kernel of
    /// `kernels/linear.cu` (codes converted exactly to `T` in shared memory, SCB / 127 applied to each
    /// output column's f32 sum).
    pub fn int8_linear<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        weight: &Int8Device,
        bias: Option<&CudaView<'_, T>>,
        m: usize,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.quantized_linear(x, QuantizedWeight::Int8(weight), bias, m, y)
    }

    /// The base product of any format plus the adapters' term (see [`Gpu::linear_lora_forward`]);
    /// validates everything but the weight (its owner did) before launching.
    fn product_with_lora<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        weight: LinearWeight,
        bias: Option<&CudaView<'_, T>>,
        adapters: &[LoraAdapter<'_, impl DevicePtr<T>>],
        shape: LoraShape,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        validate_lora_forward(
            shape,
            x.len(),
            None,
            Some(y.len()),
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
                let scratch = self.scratch::<ShrinkHidden>();
                let mut hidden = scratch.lock().unwrap_or_else(|e| e.into_inner());
                let buffer = hidden.get(&stream)?;
                let lora = self.gemv_lora(x_ptr, shape, adapters, &stream, buffer)?;
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

    /// One launch of the base product: the GEMV kernel of W's format up to [`GEMV_MAX_M`](super::GEMV_MAX_M) rows (with
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
        match weight {
            LinearWeight::Dense(w) => {
                let grid = (n.div_ceil(GEMV_COLUMNS_PER_BLOCK) as u32, 1);
                let dtype = T::DTYPE.name();
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
                let io = GemvOperands {
                    x,
                    bias,
                    y,
                    shape,
                    vector_k: vector_x && vector_w,
                };
                self.launch_quant4_gemv::<T>(q, &io, lora)
            }
            LinearWeight::Int8 { cb, scb } => {
                let io = GemvOperands {
                    x,
                    bias,
                    y,
                    shape,
                    vector_k: vector_x && vector_w,
                };
                self.launch_int8_gemv::<T>((cb, scb), &io, lora)
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
            &format!("linear_tiled_{variant}_{}", T::DTYPE.name()),
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
