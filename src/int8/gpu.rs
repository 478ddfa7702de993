//! GPU launch of the LLM.int8 weight-only product (`kernels/int8.cu`).
use super::Int8Weight;
use crate::device::{Gpu, KernelModule};
use crate::error::invalid;
use crate::error::Result;
use crate::lora::LoraShape;
use crate::sys::{
    GemvOperands, Int8LinearParams, Int8LlmParams, LoraGemvEpilogue, INT8_LLM_BLOCK_M,
    INT8_LLM_BLOCK_N, INT8_THREADS,
};
use crate::validate::{at_least, validate_bias, validate_lora_forward};
use crate::Element;
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut};

/// A row-wise int8 weight on the GPU: CB `[n, k]` and SCB `[n]`.
#[derive(Debug)]
pub struct Int8Device {
    pub(crate) cb: CudaSlice<u8>,
    pub(crate) scb: CudaSlice<f32>,
    pub(crate) shape: [usize; 2],
}

impl Int8Device {
    /// [n, k] = (out_features, in_features).
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }
}

impl Gpu {
    /// Copies a validated int8 weight to the GPU.
    pub fn upload_int8(&self, weight: &Int8Weight) -> Result<Int8Device> {
        weight.validate()?;
        let s = self.stream();
        let bytes: Vec<u8> = weight.cb.iter().map(|&c| c as u8).collect();
        Ok(Int8Device {
            cb: s.clone_htod(&bytes)?,
            scb: s.clone_htod(&weight.scb)?,
            shape: weight.shape,
        })
    }

    /// Copies an int8 weight back to the host (e.g. after a merge on the GPU). Synchronises the stream.
    pub fn download_int8(&self, weight: &Int8Device) -> Result<Int8Weight> {
        let s = self.stream();
        let cb = s
            .clone_dtoh(&weight.cb)?
            .into_iter()
            .map(|c| c as i8)
            .collect();
        Ok(Int8Weight {
            shape: weight.shape,
            cb,
            scb: s.clone_dtoh(&weight.scb)?,
        })
    }

    /// `out = T(CB · SCB · (1/127))` [n, k]: bitsandbytes' dequantisation rounded to `T` (what peft's
    /// `dequantize_module_weight` gives, and the first step of dequantise-then-GEMM).
    pub fn int8_dequantize<T: Element, O: DevicePtrMut<T>>(
        &self,
        weight: &Int8Device,
        out: &mut O,
    ) -> Result<()> {
        let [n, k] = weight.shape;
        at_least(
            "out",
            out.len(),
            n.checked_mul(k),
            &format!("[n={n}, k={k}]"),
        )?;
        self.check_dtype(T::DTYPE, "the int8 kernels")?;
        let stream = self.stream().clone();
        let (func, _) = self.kernel(
            KernelModule::Int8,
            &format!("int8_dequantize_{}", T::DTYPE.name()),
            INT8_THREADS,
        )?;
        let (cb, _gc) = weight.cb.device_ptr(&stream);
        let (scb, _gs) = weight.scb.device_ptr(&stream);
        let (y, _gy) = out.device_ptr_mut(&stream);
        let params = Int8LinearParams {
            cb,
            scb,
            y,
            n: n as i32,
            k: k as i32,
            ..Default::default()
        };
        let grid = (n * k).div_ceil(INT8_THREADS as usize);
        // SAFETY: CB [n, k] and SCB [n] were validated on upload; out holds n * k elements.
        unsafe { self.launch(&func, (grid as u32, 1), INT8_THREADS, &params) }
    }

    /// One launch of the int8 GEMV (`int8_gemv_*`, a warp per output column, up to 8 rows of x) for
    /// [`Gpu::int8_linear`] and the other products of [`crate::linear`], with the adapters' LoRA term
    /// `lora` in its epilogue (empty: none). The caller validated every extent and holds the buffers.
    pub(crate) fn launch_int8_gemv<T: Element>(
        &self,
        (cb, scb): (u64, u64),
        io: &GemvOperands,
        lora: &LoraGemvEpilogue,
    ) -> Result<()> {
        self.check_dtype(T::DTYPE, "the int8 kernels")?;
        let GemvOperands {
            x,
            bias,
            y,
            shape,
            vector_k,
        } = *io;
        let LoraShape { m, k, n } = shape;
        let (func, _) = self.kernel(
            KernelModule::Int8,
            &format!("int8_gemv_{}", T::DTYPE.name()),
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
            vector_k: vector_k as i32,
            lora: *lora,
        };
        let grid = (n.div_ceil(INT8_THREADS as usize / 32) as u32, 1);
        // SAFETY: CB and SCB were validated on upload; x [m, k], y [m, n], bias [n] and the
        // epilogue's buffers were validated or allocated by the callers.
        unsafe { self.launch(&func, grid, INT8_THREADS, &params) }
    }

    /// LLM.int8 as bitsandbytes runs it on CUDA (the mode beside the weight-only
    /// [`Gpu::int8_linear`]; its CPU reference is [`super::reference::linear_llm_int8`]): x rounded
    /// to f16 and quantised row-wise to int8 (columns holding an activation with |x| ≥ `threshold`
    /// are left out, and with several rows zeroed in every row), int8 × int8 → int32 on tensor cores,
    /// dequantised with both scales through an f16 result, plus the bias, plus the outlier columns in
    /// the input dtype against their dequantised weights. `threshold` 0 disables the outlier split
    /// (bitsandbytes' default is 6.0). Four launches; the call allocates its scratch (the int8
    /// activations, their scales and the outlier columns).
    ///
    /// NaN, as the reference: a row of x holding a NaN or an infinity (after the f16 rounding) gives
    /// NaN in every output of that row (its scale is NaN); such a value is not an outlier.
    pub fn int8_linear_llm<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        weight: &Int8Device,
        bias: Option<&CudaView<'_, T>>,
        threshold: f32,
        m: usize,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let [n, k] = weight.shape;
        validate_lora_forward(LoraShape::new(m, k, n), x.len(), None, Some(y.len()), &[])?;
        validate_bias(bias.map(|b| b.len()), n)?;
        if !threshold.is_finite() || threshold < 0.0 {
            return Err(invalid("threshold", "a finite number ≥ 0", threshold));
        }
        let grid_y = m.div_ceil(INT8_LLM_BLOCK_M as usize);
        if grid_y > 65535 || m > i32::MAX as usize {
            return Err(invalid(
                "m",
                format!("at most {} rows", 65535 * INT8_LLM_BLOCK_M),
                m,
            ));
        }
        self.check_dtype(T::DTYPE, "the int8 kernels")?;
        let stream = self.stream().clone();
        let ca_stride = k.div_ceil(16) * 16;
        let mut ca = stream.alloc_zeros::<u8>(m * ca_stride)?;
        let mut sca = stream.alloc_zeros::<f32>(m)?;
        let mut flags = stream.alloc_zeros::<u8>(k)?;
        let mut cols = stream.alloc_zeros::<u32>(k + 1)?;
        let (x_ptr, _gx) = x.device_ptr(&stream);
        let (y_ptr, _gy) = y.device_ptr_mut(&stream);
        let bias_guard = bias.map(|b| b.device_ptr(&stream));
        let (cb, _gc) = weight.cb.device_ptr(&stream);
        let (scb, _gs) = weight.scb.device_ptr(&stream);
        let (ca_ptr, _g1) = ca.device_ptr_mut(&stream);
        let (sca_ptr, _g2) = sca.device_ptr_mut(&stream);
        let (flags_ptr, _g3) = flags.device_ptr_mut(&stream);
        let (cols_ptr, _g4) = cols.device_ptr_mut(&stream);
        let params = Int8LlmParams {
            x: x_ptr,
            cb,
            scb,
            bias: bias_guard.as_ref().map_or(0, |(p, _)| *p),
            y: y_ptr,
            ca: ca_ptr,
            sca: sca_ptr,
            flags: flags_ptr,
            cols: cols_ptr,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            ca_stride: ca_stride as i32,
            threshold,
            vector_cb: (k % 16 == 0 && cb % 16 == 0) as i32,
        };
        let dtype = T::DTYPE.name();
        let launch = |name: &str, grid: (u32, u32)| -> Result<()> {
            let (func, _) = self.kernel(KernelModule::Int8, name, INT8_THREADS)?;
            // SAFETY: x [m, k], y [m, n] and bias [n] were checked above; CB and SCB hold [n, k] and
            // [n] (validated on upload); the scratch buffers were allocated for m, k and ca_stride.
            unsafe { self.launch(&func, (grid.0.max(1), grid.1.max(1)), INT8_THREADS, &params) }
        };
        launch(&format!("int8_llm_outliers_{dtype}"), (m as u32, 1))?;
        launch("int8_llm_columns", (1, 1))?;
        launch(&format!("int8_llm_quantize_{dtype}"), (m as u32, 1))?;
        launch(
            &format!("int8_llm_gemm_{dtype}"),
            (n.div_ceil(INT8_LLM_BLOCK_N as usize) as u32, grid_y as u32),
        )
    }
}
