//! The DoRA forwards on the GPU: the fused LoRA kernel of the `lora` family (`kernels/lora.cu`)
//! with its DoRA epilogue (the factor f applied to the base-minus-bias plus the LoRA term), from the
//! base layer's output, in place, or after the crate's own base product.
use super::gpu::{check_factor, lens};
use super::DoraAdapter;
use crate::device::Gpu;
use crate::error::Result;
use crate::lora::gpu::DoraEpilogue;
use crate::lora::LoraShape;
use crate::validate::{validate_bias, validate_lora_forward};
use crate::Element;
use cudarc::driver::{CudaView, DevicePtr, DevicePtrMut};

impl Gpu {
    /// The DoRA forward from the base layer's output, one fused launch:
    /// `y = bias + f ⊙ (base − bias + s·(x·Aᵀ)·Bᵀ)` with x [m, k], base and y [m, n], the layer's
    /// bias `[n]` (if any) and the adapter's cached factor f. With f = m / ‖W + s·B·A‖ and
    /// base = x·Wᵀ + bias this is peft's eval forward `bias + f ⊙ (x·(W + s·B·A)ᵀ)`.
    ///
    /// Scratch comes from the handle's workspace, as for [`Gpu::lora_forward`] (a caller-owned
    /// one through [`Gpu::with_workspace`]).
    pub fn dora_forward<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        base: &impl DevicePtr<T>,
        bias: Option<&CudaView<'_, T>>,
        adapter: DoraAdapter<'_, impl DevicePtr<T>>,
        shape: LoraShape,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let DoraAdapter { lora, factor } = adapter;
        validate_lora_forward(
            shape,
            x.len(),
            Some(base.len()),
            Some(y.len()),
            &[lens(&lora)],
        )?;
        check_factor(factor, shape.n)?;
        validate_bias(bias.map(|b| b.len()), shape.n)?;
        let stream = self.stream().clone();
        let (base_ptr, _gb) = base.device_ptr(&stream);
        let (factor_ptr, _gf) = factor.values.device_ptr(&stream);
        let bias_guard = bias.map(|b| b.device_ptr(&stream));
        let epilogue = DoraEpilogue {
            factor: factor_ptr,
            bias: bias_guard.as_ref().map_or(0, |(p, _)| *p),
        };
        self.lora_forward_launch(x, Some(base_ptr), &[lora], shape, y, Some(epilogue))
    }

    /// The DoRA forward in place: y holds the base layer's output `x·Wᵀ + bias` on entry and
    /// `bias + f ⊙ (y − bias + s·(x·Aᵀ)·Bᵀ)` on return (one fused launch, as [`Gpu::dora_forward`]).
    pub fn dora_forward_inplace<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        bias: Option<&CudaView<'_, T>>,
        adapter: DoraAdapter<'_, impl DevicePtr<T>>,
        shape: LoraShape,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let DoraAdapter { lora, factor } = adapter;
        validate_lora_forward(shape, x.len(), None, Some(y.len()), &[lens(&lora)])?;
        check_factor(factor, shape.n)?;
        validate_bias(bias.map(|b| b.len()), shape.n)?;
        let stream = self.stream().clone();
        let (factor_ptr, _gf) = factor.values.device_ptr(&stream);
        let bias_guard = bias.map(|b| b.device_ptr(&stream));
        let epilogue = DoraEpilogue {
            factor: factor_ptr,
            bias: bias_guard.as_ref().map_or(0, |(p, _)| *p),
        };
        self.lora_forward_launch(x, None, &[lora], shape, y, Some(epilogue))
    }

    /// The DoRA forward when the caller has no base output: the crate computes it,
    /// `y = bias + f ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ)` for W `[n, k]`, in two launches: the base product
    /// `y = x·Wᵀ + bias` ([`Gpu::linear`]: a GEMV at decode sizes, tiled above), then the fused LoRA
    /// forward with the DoRA epilogue in place on y (y is read once more and written once more; the
    /// rank-r work is the same as [`Gpu::dora_forward`]).
    pub fn dora_forward_linear<T: Element>(
        &self,
        x: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        bias: Option<&CudaView<'_, T>>,
        adapter: DoraAdapter<'_, impl DevicePtr<T>>,
        shape: LoraShape,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        validate_lora_forward(shape, x.len(), None, Some(y.len()), &[lens(&adapter.lora)])?;
        check_factor(adapter.factor, shape.n)?;
        self.linear(x, weight, bias, shape, y)?;
        self.dora_forward_inplace(x, bias, adapter, shape, y)
    }
}
